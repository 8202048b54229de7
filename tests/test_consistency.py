"""Tests of consistency.py against closed forms. Data x1 ~ N(mu, s^2) per dimension on the path
x_t = t x1 + b_t x0, b_t = 1 - (1 - sigma_min) t: the marginal is N(t mu, sigma_t^2), sigma_t^2 = b_t^2 + t^2 s^2,
the field is v(x, t) = mu + (t s^2 - (1 - sigma_min) b_t) / sigma_t^2 (x - t mu) (Gaussian conditioning of
x1 - (1 - sigma_min) x0 on x_t), the flow map is Phi_{t->r}(x) = r mu + (sigma_r / sigma_t)(x - t mu), and the
consistency function is f*(x, t) = Phi_{t->1}(x) = mu + (sigma_1 / sigma_t)(x - t mu). Float64 throughout."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy import stats

import common
import consistency
from consistency import Consistency


class Gaussian:
    """x1 ~ N(mu, diag(s^2)) and N(0, I) noise on the path with sigma_min: the closed forms above."""

    def __init__(self, mu, s, sigma_min=0.0):
        self.mu, self.s, self.sigma_min = mu, s, sigma_min

    def b(self, t):
        return 1 - (1 - self.sigma_min) * t

    def sigma(self, t):  # (B,) -> (B, D): the marginal's std per dimension
        t = t[:, None]
        return (self.b(t) ** 2 + t ** 2 * self.s ** 2).sqrt()

    def v(self, x, t):
        """E[x1 - (1 - sigma_min) x0 | x_t = x]: Cov(x1 - (1 - sigma_min) x0, x_t) / Var(x_t), not from flow()."""
        tt = t[:, None]
        return self.mu + (tt * self.s ** 2 - (1 - self.sigma_min) * self.b(tt)) / self.sigma(t) ** 2 * (x - tt * self.mu)

    def flow(self, x, t, r):
        return r[:, None] * self.mu + self.sigma(r) / self.sigma(t) * (x - t[:, None] * self.mu)

    def f_star(self, x, t):
        return self.flow(x, t, torch.ones_like(t))

    def F(self, x, t, y=None):
        """The exact network F* = (f* - x) / (1 - t), whose limit at t = 1 is v(x, 1) (F = u(x, 1, t))."""
        one = t == 1
        gap = torch.where(one, torch.ones_like(t), 1 - t)[:, None]
        return torch.where(one[:, None], self.v(x, t), (self.f_star(x, t) - x) / gap)

    def teacher(self, x, t, y=None):  # the exact velocity as a teacher network
        return self.v(x, t.double())

    def posterior(self, z, t, n, generator):
        """n antithetic pairs (x0, x1) whose x_t equals z (D,): x1 from p(x1 | x_t = z), x0 = (z - t x1) / b_t.
        Their mean is the posterior mean exactly, so averages of affine functions of (x0, x1) are exact."""
        var = self.s ** 2 - t ** 2 * self.s ** 4 / (self.b(t) ** 2 + t ** 2 * self.s ** 2)
        mean = self.mu + t * self.s ** 2 / (self.b(t) ** 2 + t ** 2 * self.s ** 2) * (z - t * self.mu)
        e = torch.randn(n // 2, len(z), generator=generator, dtype=torch.float64)
        x1 = mean + var.sqrt() * torch.cat([e, -e])
        return (z - t * x1) / self.b(t), x1


def gaussian(dim, seed, sigma_min=0.0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(dim, generator=g, dtype=torch.float64)
    s = 0.2 + torch.rand(dim, generator=g, dtype=torch.float64)
    return Gaussian(mu, s, sigma_min)


def perturbed_net(arch, shape, seed, num_classes=0):
    """A network of common.py whose output is not zero (its zero-initialised layers are redrawn)."""
    torch.manual_seed(seed)
    net = common.make_net(arch, shape, 8, num_classes=num_classes, time_scale=1000.0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net


# -----------------------------------------------------------------------------
# the consistency function

@settings(deadline=None, max_examples=20)
@given(seed=st.integers(0, 10_000), arch=st.sampled_from(["mlp", "unet"]), sigma_min=st.sampled_from([0.0, 0.3]))
def test_boundary_holds_exactly_for_any_network(seed, arch, sigma_min):
    """f(net, x, 1) = x bit for bit for a network whose output at t = 1 is far from 0; f moves x elsewhere."""
    shape = (2,) if arch == "mlp" else (1, 8, 8)
    net = perturbed_net(arch, shape, seed, num_classes=3)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(5, *shape, generator=g), torch.tensor([0, 1, 2, 0, 1])
    one = torch.ones(5)
    assert net(x, one, y).abs().min() > 0
    cm = Consistency("ict", sigma_min=sigma_min)
    assert torch.equal(cm.f(net, x, one, y), x)
    assert torch.equal(cm.f(net, x, 1.0, y, cfg_scale=3.0), x)  # with guidance too
    t = torch.rand(5, generator=g) * 0.99
    torch.testing.assert_close(cm.f(net, x, t, y), x + (1 - t).view(-1, *[1] * len(shape)) * net(x, t, y))
    assert (cm.f(net, x, t, y) - x).flatten(1).norm(dim=1).min() > 0


@settings(deadline=None, max_examples=15)
@given(seed=st.integers(0, 10_000), dim=st.integers(1, 4), sigma_min=st.sampled_from([0.0, 0.2]))
def test_f_of_the_exact_network_is_the_flow_map_and_constant_along_the_ode(seed, dim, sigma_min):
    """f(F*) = f*; f* is constant along the exact flow (the consistency property) and the continuous form
    d/dt f(x_t, t) = v d_x f + d_t f = 0 holds for the JVP along the exact velocity; v is the flow's time
    derivative (central differences), so the closed forms agree with each other."""
    gs = gaussian(dim, seed, sigma_min)
    cm = Consistency("ict", sigma_min=sigma_min)
    g = torch.Generator().manual_seed(seed + 1)
    x = 2 * torch.randn(16, dim, generator=g, dtype=torch.float64)
    t = 0.98 * torch.rand(16, generator=g, dtype=torch.float64)
    r = t + (1 - t) * torch.rand(16, generator=g, dtype=torch.float64)
    torch.testing.assert_close(cm.f(gs.F, x, t), gs.f_star(x, t), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cm.f(gs.F, gs.flow(x, t, r), r), cm.f(gs.F, x, t), rtol=1e-10, atol=1e-10)
    h = 1e-6
    torch.testing.assert_close(gs.v(x, t), (gs.flow(x, t, t + h) - gs.flow(x, t, t - h)) / (2 * h), rtol=1e-6, atol=1e-6)
    _, dfdt = torch.func.jvp(lambda x_, t_: cm.f(gs.F, x_, t_), (x, t), (gs.v(x, t), torch.ones_like(t)))
    assert dfdt.abs().max() < 1e-10
    _, moved = torch.func.jvp(lambda x_, t_: cm.f(gs.F, x_, t_), (x, t), (gs.v(x, t) + 0.1, torch.ones_like(t)))
    assert moved.abs().max() > 1e-3  # along another field f does change


# -----------------------------------------------------------------------------
# the losses at the exact consistency function

@pytest.mark.parametrize("sigma_min", [0.0, 0.2])
def test_distillation_loss_is_zero_at_the_exact_flow_map(sigma_min):
    """cd with the exact velocity as the teacher: f*(x_t, t) = f*(x_r, r) up to the teacher step's error,
    which falls as h^2 (Heun in 64 and 128 substeps), so the loss vanishes with it; a wrong f, a coarse
    Euler teacher or the same-noise point x_r instead of the teacher's step leave a loss that does not."""
    gs = gaussian(3, 0, sigma_min)
    g = torch.Generator().manual_seed(1)
    x1 = gs.mu + gs.s * torch.randn(512, 3, generator=g, dtype=torch.float64)
    x0 = torch.randn(512, 3, generator=g, dtype=torch.float64)
    cm = Consistency("cd", gs.teacher, sigma_min, teacher_substeps=128)
    t, r = cm.sample_times(512, 0, generator=g)
    assert (r > t).all() and (t == 0).any() and (r == 1).any()
    f_t, f_r = cm.pair(gs.F, x0, x1, t, r)
    coarse = Consistency("cd", gs.teacher, sigma_min, teacher_substeps=64).pair(gs.F, x0, x1, t, r)
    err, err_coarse = (f_t - f_r).abs().max(), (coarse[0] - coarse[1]).abs().max()
    assert err < 1e-6 and 3.5 < err_coarse / err < 4.5, (err, err_coarse)
    assert cm.loss(gs.F, x1, x0=x0, t=t, r=r, step=0) < 1e-8
    wrong = lambda x, t, y=None: 1.1 * gs.F(x, t)  # noqa: E731  (the boundary still holds)
    assert cm.loss(wrong, x1, x0=x0, t=t, r=r, step=0) > 1e-3
    euler = Consistency("cd", gs.teacher, sigma_min, teacher_solver="euler")
    assert euler.loss(gs.F, x1, x0=x0, t=t, r=r, step=0) > 1e-4
    same_noise = Consistency("ict", sigma_min=sigma_min)
    assert same_noise.loss(gs.F, x1, x0=x0, t=t, r=r, step=0) > 1e-3


@pytest.mark.parametrize("solver, order", [("euler", 2), ("heun", 3)])
def test_teacher_step_converges_at_its_order(solver, order):
    """The local error of one teacher step against the exact flow map shrinks like h^2 (Euler) or h^3 (Heun)."""
    gs = gaussian(2, 3)
    cm = Consistency("cd", gs.teacher, teacher_solver=solver)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.full((8,), 0.3, dtype=torch.float64)
    err = [float((cm.teacher_step(x, t, t + h) - gs.flow(x, t, t + h)).abs().max()) for h in (0.08, 0.04)]
    assert 2 ** order * 0.8 < err[0] / err[1] < 2 ** order * 1.25, err


@pytest.mark.parametrize("sigma_min", [0.0, 0.3])
def test_consistency_training_target_is_the_exact_euler_step_in_expectation(sigma_min):
    """ict/ect's target f(x_r, r), x_r = r x1 + b_r x0 with the same (x0, x1): averaged over the pairs that
    share one x_t (antithetic posterior draws: exact for these affine maps), it is f* at the exact field's
    Euler step, x_t + (r - t) v(x_t, t). So at f* the residual f(x_t, t) - f(x_r, r) has conditional mean
    O((r - t)^2): the loss's gradient (in the squared-error regime, residual * weight ~ residual / (r - t))
    vanishes in expectation as the gap shrinks, while single pairs keep residuals of order r - t."""
    gs, g = gaussian(2, 5, sigma_min), torch.Generator().manual_seed(0)
    cm = Consistency("ict", sigma_min=sigma_min)
    z, t = torch.tensor([0.7, -1.3], dtype=torch.float64), 0.4
    means = []
    for h in (0.02, 0.01):
        x0, x1 = gs.posterior(z, t, 2000, g)
        tt, rr = torch.full((2000,), t, dtype=torch.float64), torch.full((2000,), t + h, dtype=torch.float64)
        torch.testing.assert_close(cm.psi(x0, x1, tt), z.expand(2000, 2), rtol=1e-12, atol=1e-12)
        f_t, f_r = cm.pair(gs.F, x0, x1, tt, rr)
        residual = f_t - f_r
        euler = z + h * gs.v(z[None], tt[:1])[0]
        torch.testing.assert_close(f_r.mean(0), gs.f_star(euler[None], rr[:1])[0], rtol=1e-10, atol=1e-10)
        means.append(residual.mean(0).norm().item())
        assert residual.norm(dim=1).mean() > 20 * means[-1]  # single pairs: O(h); their mean: O(h^2)
    assert 3.5 < means[0] / means[1] < 4.5, means


@pytest.mark.parametrize("sigma_min", [0.0, 0.2])
def test_at_r_equal_one_the_pair_is_flow_matching(sigma_min):
    """r = 1: the target is x_1 = x1 + sigma_min x0 and f(x_t, t) - x_1 = (1 - t)(F(x_t, t) - (x1 - (1 - sigma_min) x0))."""
    net, g = perturbed_net("mlp", (2,), 0), torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(64, 2, generator=g, dtype=torch.float64), torch.randn(64, 2, generator=g, dtype=torch.float64)
    net = net.double()
    cm = Consistency("ect", sigma_min=sigma_min)
    t, r = torch.rand(64, generator=g, dtype=torch.float64), torch.ones(64, dtype=torch.float64)
    f_t, f_r = cm.pair(net, x0, x1, t, r)
    assert torch.equal(f_r, x1 + sigma_min * x0) or torch.allclose(f_r, x1 + sigma_min * x0, rtol=0, atol=1e-15)
    x_t = t[:, None] * x1 + (1 - (1 - sigma_min) * t)[:, None] * x0
    want = (1 - t)[:, None] * (net(x_t, t, None) - (x1 - (1 - sigma_min) * x0))
    torch.testing.assert_close(f_t - f_r, want, rtol=1e-10, atol=1e-12)


def test_loss_replays_by_hand():
    """loss = mean over the batch of w(t, r) (sqrt(||f_t - sg f_r||^2 + c^2) - c), c = 0.00054 sqrt(D), with
    iCT's weight 1 / (sigma_t - sigma_r) = t r / (r - t) (noise levels sigma = (1 - t) / t); the gradient flows
    only through f_t; the loss counts its calls."""
    net = perturbed_net("unet", (1, 8, 8), 0, num_classes=10)
    cm = Consistency("ict", stage_iters=3)
    x1, y = torch.randn(16, 1, 8, 8), torch.randint(0, 11, (16,))
    for k in range(4):
        torch.manual_seed(k)
        loss = cm.loss(net, x1, y)
        assert cm.step == k + 1
        grads = torch.autograd.grad(loss, list(net.parameters()))
        torch.manual_seed(k)
        x0 = torch.randn_like(x1)
        t, r = cm.sample_times(16, k)
        f_t = cm.f(net, cm.psi(x0, x1, t), t, y)
        with torch.no_grad():
            f_r = cm.f(net, cm.psi(x0, x1, r), r, y)
        sigma_t, sigma_r = (1 - t) / t, (1 - r) / r
        w = torch.where(t > 0, 1 / (sigma_t - sigma_r), 0.0)
        c = 0.00054 * 8
        ref = (w.float() * (((f_t - f_r) ** 2).sum((1, 2, 3)) + c * c).sqrt() - w.float() * c).mean()
        torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-6)
        for a, b in zip(grads, torch.autograd.grad(ref, list(net.parameters()))):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)


def test_weights():
    t, r = torch.tensor([0.0, 0.2, 0.5, 0.9]), torch.tensor([0.1, 0.3, 1.0, 0.95])
    ws = {}
    for weight in ("ict", "path", "one"):
        cm = Consistency("ict", weight=weight)
        ws[weight] = cm.pair_weight(t.double(), r.double())
    torch.testing.assert_close(ws["path"], 1 / (r - t).double())
    torch.testing.assert_close(ws["one"], torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(ws["ict"], (t * r / (r - t)).double())
    with pytest.raises(ValueError, match="--weight"):
        Consistency(weight="huber")


# -----------------------------------------------------------------------------
# time pairs: iCT's grid and its lognormal, ECT's shrinking gap

def test_ict_grid_doubles_and_maps_onto_the_path():
    cm = Consistency("ict", stage_iters=5)
    assert [cm.grid_size(k) for k in (0, 4, 5, 10, 15, 34, 35, 40, 1000)] == [11, 11, 21, 41, 81, 641, 1281, 1281, 1281]
    assert Consistency("cd", cd_grid=18).grid_size(1000) == 18
    s = cm.grid(11)
    assert s[0] == 0 and s[-1] == math.inf and len(s) == 13
    torch.testing.assert_close(s[[1, -2]], torch.tensor([0.002, 80.0], dtype=torch.float64))
    steps = s[1:-1] ** (1 / 7)  # Karras: sigma^(1/rho) equally spaced
    torch.testing.assert_close(steps.diff(), torch.full((10,), float(steps[1] - steps[0]), dtype=torch.float64))
    t = cm.time_of(s)
    assert t[0] == 1 and t[-1] == 0 and (t.diff() < 0).all()
    torch.testing.assert_close((1 - t[1:-1]) / t[1:-1], s[1:-1])  # sigma = (1 - t) / t


def test_ict_interval_probabilities_are_the_lognormals_mass():
    cm = Consistency("ict")
    s = cm.grid(21)
    p = cm.interval_probs(s)
    ln = stats.lognorm(s=2.0, scale=math.exp(-1.1))  # ln sigma ~ N(-1.1, 2^2)
    cdf = torch.tensor(ln.cdf(s.numpy()), dtype=torch.float64)
    torch.testing.assert_close(p, cdf.diff(), rtol=1e-9, atol=1e-12)
    n = 200_000
    assert cm.grid_size(cm.stage_iters) == 21
    t, r = cm.sample_times(n, cm.stage_iters, generator=torch.Generator().manual_seed(0))
    idx = torch.searchsorted(-cm.time_of(s), -r)  # the interval's lower noise level
    freq = torch.bincount(idx, minlength=len(p)).double() / n
    assert (freq - p).abs().max() < 5 * (p * (1 - p) / n).sqrt().max()
    assert torch.equal(cm.time_of(s)[idx + 1], t)  # neighbours on the grid


def published_t_to_r(sigma, stage, q=2.0, k=8.0, b=1.0):
    """locuslab/ect's ECMLoss.t_to_r_sigmoid as published (training/loss.py), its t the noise level
    sigma: r = t (1 - (1 + k sigmoid(-b t)) / q^(stage + 1)), clamped at 0; stage = floor(k / K)."""
    adj = 1 + k * torch.sigmoid(-b * sigma)
    decay = 1 / q ** (stage + 1)
    return torch.clamp(sigma * (1 - decay * adj), min=0)


def test_ect_gap_is_the_published_mapping():
    """ECT's stages as published: the first stage (k < K) already halves the gap, so r < 1 where
    n(sigma_t) < 2 (sigma_t > ln 7); hand-computed sigma_r at sigma_t = 1, 4, 20 (n = 3.1515, 1.1439,
    1 + 1.6e-8); the benchmark's ECT rows (about 1100-1300 iterations, --stage-iters 200 on digits,
    300 on the checkerboard) end at the gap n/64 on digits and n/16 on the checkerboard below
    k = 1200 (the old mapping: n/32 and n/8), n/128 (the cap) and n/32 from it; the cap a = 7 from
    k = 6 K on."""
    cm = Consistency("ect", stage_iters=10)
    sigma = torch.tensor([1.0, 4.0, 20.0], dtype=torch.float64)
    hand = {0: [0.0, 1.7122206406065352, 9.999999835107712],  # a = 1: n / 2
            9: [0.0, 1.7122206406065352, 9.999999835107712],
            10: [0.2121171572600098, 2.8561103203032676, 14.999999917553858],  # a = 2: n / 4
            25: [0.6060585786300049, 3.428055160151634, 17.49999995877693],  # a = 3: n / 8
            60: [0.9753786611643753, 3.9642534475094773, 19.843749997423558],  # a = 7: n / 128
            10_000: [0.9753786611643753, 3.9642534475094773, 19.843749997423558]}
    for step, want in hand.items():
        got = cm.ect_gap(sigma, step)
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=0)
        if step < 60:  # below the cap: locuslab/ect's formula at stage floor(k / K)
            torch.testing.assert_close(got, published_t_to_r(sigma, step // 10), rtol=1e-12, atol=0)
    # the first stage: r = 1 only where n(sigma_t) >= 2, i.e. sigma_t <= ln 7; r < 1 above it
    g = torch.Generator().manual_seed(0)
    t, r = cm.sample_times(20_000, 0, generator=g)
    sigma_t = (1 - t) / t
    assert (r[sigma_t > math.log(7) + 1e-9] < 1).all() and (r[sigma_t <= math.log(7) - 1e-9] == 1).all()
    assert 0.1 < (r < 1).double().mean() < 0.3  # the lognormal's mass above ln 7: 1 - Phi(0.88) = 0.19
    # the last iterations of the benchmark's ECT rows: the finest gap they reach
    s = torch.tensor([0.5, 2.0, 7.0], dtype=torch.float64)
    n = 1 + 8 * torch.sigmoid(-s)
    for stage_iters, finest, ends in ((200, 64, (1099, 1199)), (200, 128, (1200, 1299)),
                                      (300, 16, (1099, 1199)), (300, 32, (1200, 1299))):
        for last in ends:
            gap = s - Consistency("ect", stage_iters=stage_iters).ect_gap(s, last)
            torch.testing.assert_close(gap, s * n / finest, rtol=1e-12, atol=0)


def test_ect_sample_times_follow_the_stages():
    """sample_times: sigma_t lognormal(-1.1, 2), t = 1 / (1 + sigma_t), and sigma_r the published
    mapping at stage floor(k / K) (capped at a = 7), r > t."""
    cm = Consistency("ect", stage_iters=10)
    sigma_t = torch.exp(-1.1 + 2.0 * torch.randn(4000, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    for stage in range(10):
        t, r = cm.sample_times(4000, 10 * stage + 3, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(t, 1 / (1 + sigma_t))
        want = published_t_to_r(sigma_t, min(stage, 6))
        torch.testing.assert_close((1 - r) / r, want, rtol=1e-9, atol=1e-12)
        assert (r > t).all()
        assert (r < 1).any()  # every stage, the first included, shrinks the gap somewhere


# -----------------------------------------------------------------------------
# the sampler: exact answers from the exact network

def test_one_step_is_exact():
    """Noise standardised to mean 0 and variance 1 per dimension: f*(x_0, 0) = mu + sigma_1 x_0 has the
    moments of p_1 = N(mu, s^2 + sigma_min^2) exactly."""
    gs = gaussian(3, 7, 0.2)
    cm = Consistency("ict", sigma_min=0.2)
    n = torch.randn(4000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    n = (n - n.mean(0)) / n.std(0)
    x = cm.sample(gs.F, n.shape, noise=n)
    assert x.dtype == torch.float64
    torch.testing.assert_close(x.mean(0), gs.mu, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.var(0), gs.s ** 2 + 0.2 ** 2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("steps", [2, 3])
@pytest.mark.parametrize("sigma_min", [0.0, 0.3])
def test_multistep_sampler_keeps_the_exact_marginal(steps, sigma_min):
    """With f* every step's estimate is a draw of p_1 and every re-noised point a draw of p_tau: the samples'
    mean and variance match N(mu, s^2 + sigma_min^2) within 5 standard errors of n = 100000 draws (the
    re-noising's sqrt(b^2 - tau^2 sigma_min^2) matters: b alone would add tau^2 sigma_min^2 of variance)."""
    gs = gaussian(2, 11, sigma_min)
    cm = Consistency("ict", sigma_min=sigma_min)
    n = 100_000
    states = []
    x = cm.sample(gs.F, (n, 2), steps=steps, noise=torch.randn(n, 2, generator=torch.Generator().manual_seed(3),
                                                                dtype=torch.float64),
                  generator=torch.Generator().manual_seed(4), trajectory=states)
    assert len(states) == 2 * steps and torch.equal(states[-1], x)
    var1 = gs.s ** 2 + sigma_min ** 2
    for i, state in enumerate(states[1:]):  # estimates (odd) and re-noised points (even)
        tau = 1.0 if i % 2 == 0 else (i + 1) // 2 / steps
        mean = tau * gs.mu
        var = tau ** 2 * gs.s ** 2 + (1 - (1 - sigma_min) * tau) ** 2 if tau < 1 else var1
        assert ((state.mean(0) - mean).abs() < 5 * (var / n).sqrt()).all(), (i, state.mean(0), mean)
        assert ((state.var(0) - var).abs() < 5 * var * math.sqrt(2 / n)).all(), (i, state.var(0), var)


def test_sampler_calls_f_at_its_times_and_is_reproducible(monkeypatch):
    cm, calls = Consistency("ict"), []
    f = cm.f
    monkeypatch.setattr(cm, "f", lambda net, x, t, y=None, cfg_scale=1.0: calls.append(t.tolist()) or f(net, x, t, y, cfg_scale))
    net = perturbed_net("mlp", (2,), 0)
    x = cm.sample(net, (3, 2), steps=4, generator=torch.Generator().manual_seed(0))
    assert calls == [[0.0] * 3, [0.25] * 3, [0.5] * 3, [0.75] * 3]
    assert torch.equal(x, cm.sample(net, (3, 2), steps=4, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(x, cm.sample(net, (3, 2), steps=4, generator=torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError, match="steps"):
        cm.sample(net, (3, 2), steps=0)


def test_guidance():
    """f with cfg_scale w: x + (1 - t)(F_null + w (F_y - F_null)), two calls; one call when y is None or w = 1."""
    calls = []

    def net(x, t, y):
        calls.append(y is None)
        return torch.full_like(x, 1.0) if y is None else torch.full_like(x, 3.0)
    cm, x, y = Consistency("ict"), torch.zeros(2, 2), torch.tensor([0, 1])
    t = torch.tensor([0.0, 0.5])
    torch.testing.assert_close(cm.f(net, x, t, y, cfg_scale=2.0), (1 - t)[:, None] * (1 + 2 * (3 - 1)) * torch.ones(2, 2))
    assert sorted(calls) == [False, True]
    calls.clear()
    torch.testing.assert_close(cm.f(net, x, t, y), (1 - t)[:, None] * 3.0 * torch.ones(2, 2))
    torch.testing.assert_close(cm.sample(net, (2, 2), steps=1, y=y, cfg_scale=2.0, noise=x), torch.full((2, 2), 5.0))
    assert calls == [False, True, False]  # f without guidance, then the null branch and the label's


# -----------------------------------------------------------------------------
# learning and the command line

def test_short_run_beats_a_gaussian_fitted_to_the_data():
    """Consistency training from scratch (ict), 400 steps on moons: one-step samples are closer (exact W2) to
    held-out points than as many draws of a Gaussian fitted to the training set."""
    torch.manual_seed(0)
    data = common.load_data("moons")
    net = common.make_net("mlp", (2,), 64, time_scale=10.0)  # ict's default
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    cm = Consistency("ict", stage_iters=50)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        loss = cm.loss(net, data.x_train[torch.randint(0, len(data.x_train), (256,), generator=g)])
        opt.zero_grad()
        loss.backward()
        opt.step()
    test, noise = data.x_test[:500], torch.randn(500, 2, generator=g)
    fitted = data.x_train.mean(0) + noise @ torch.linalg.cholesky(torch.cov(data.x_train.T)).T
    w_gauss, w_cm = common.w2_exact(fitted, test), common.w2_exact(cm.sample(net, (500, 2), noise=noise), test)
    assert w_cm < 0.8 * w_gauss, (w_cm, w_gauss)


def test_trajectory_records_the_noise_estimates_and_renoised_points():
    cm, net = Consistency("ict"), perturbed_net("mlp", (2,), 0)
    states = []
    x = cm.sample(net, (5, 2), steps=3, generator=torch.Generator().manual_seed(0), trajectory=states)
    assert len(states) == 2 * 3 and torch.equal(states[-1], x)
    assert torch.equal(states[0], common.start_noise((5, 2), torch.Generator().manual_seed(0)))
    assert torch.equal(x, cm.sample(net, (5, 2), steps=3, generator=torch.Generator().manual_seed(0)))


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Tiny cfm.py checkpoints: the straight path on 8gaussians (two sigma_min), the vp path, and moons."""
    import cfm
    root = tmp_path_factory.mktemp("teachers")
    tiny = ["--width", "16", "--batch-size", "32", "--iters", "4", "--log-every", "2", "--n-eval", "0", "--uncond"]
    for name, flags in {"ot": ["--data", "8gaussians"], "ot-sigma": ["--data", "8gaussians", "--sigma-min", "0.1"],
                        "vp": ["--data", "8gaussians", "--path", "vp"], "moons": ["--data", "moons"]}.items():
        cfm.main(tiny + flags + ["--out", str(root / name)])
    return root


def test_cli(tmp_path, teachers, capsys):
    with pytest.raises(SystemExit) as e:
        consistency.main(["--help"])
    assert e.value.code == 0
    capsys.readouterr()
    out = tmp_path / "run"
    base = ["--width", "16", "--batch-size", "32", "--n-eval", "50", "--log-every", "2", "--uncond"]
    # the default, cd, with its own teacher: a cfm.py checkpoint in OUT/teacher
    q = consistency.main(base + ["--data", "8gaussians", "--iters", "4", "--teacher-iters", "3", "--trajectory", "10",
                                 "--out", str(out)])
    assert (out / "ckpt.pt").exists() and (out / "samples.png").exists() and (out / "trajectory.png").exists()
    assert common.load_checkpoint(out / "teacher" / "ckpt.pt", ("cfm",))["step"] == 3
    assert q["metric"] == "W2" and math.isfinite(q["value"]) and q["teacher_train_seconds"] > 0
    saved = common.load_checkpoint(out / "ckpt.pt", ("consistency",))["args"]
    assert saved["training"] == "cd" and saved["time_scale"] == 1000.0
    q2 = consistency.main(["--ckpt", str(out / "ckpt.pt"), "--steps", "2", "--n-eval", "50", "--out", str(out)])
    assert math.isfinite(q2["value"]) and q2["value"] != q["value"] and "train_seconds" not in q2
    # tuning (ect) from a teacher on file, whose flags (data, uncond, sigma_min) the student takes
    ect = consistency.main(base[:-1] + ["--training", "ect", "--teacher", str(teachers / "ot-sigma" / "ckpt.pt"),
                                        "--iters", "4", "--out", str(tmp_path / "ect")])
    saved = common.load_checkpoint(tmp_path / "ect" / "ckpt.pt", ("consistency",))["args"]
    assert saved["sigma_min"] == 0.1 and saved["data"] == "8gaussians" and saved["uncond"]
    assert "teacher_train_seconds" not in ect and ect["train_seconds"] > 0
    capsys.readouterr()
    ot = str(teachers / "ot" / "ckpt.pt")
    for bad, words in ((["--steps", "0"], "--steps"), (["--cd-grid", "1"], "--cd-grid"),
                       (["--training", "ict", "--teacher", ot], "ict trains from scratch"),
                       (["--teacher", str(out / "ckpt.pt")], "is a consistency checkpoint"),
                       (["--teacher", str(teachers / "vp" / "ckpt.pt")], "vp path"),
                       (["--teacher", str(teachers / "moons" / "ckpt.pt"), "--data", "8gaussians"], "--data moons"),
                       (["--teacher", ot, "--sigma-min", "0.2"], "--sigma-min"),
                       (["--teacher", ot, "--ckpt", str(out / "ckpt.pt")], "exclude each other"),
                       (["--stage-iters", "0"], "--stage-iters"), (["--p-std", "0"], "--p-std"),
                       (["--sigma-min", "1"], "--sigma-min"), (["--teacher-iters", "0"], "--teacher-iters"),
                       (["--weight", "huber"], "--weight"), (["--time-scale", "10"], "--time-scale"),
                       (["--training", "ict", "--time-scale", "0"], "--time-scale")):
        with pytest.raises(SystemExit) as e:
            consistency.main(base + ["--data", "8gaussians", "--out", str(tmp_path / "bad")] + bad)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and words in err and len(err.splitlines()) <= 2, (bad, err)
        assert not (tmp_path / "bad" / "ckpt.pt").exists()


def test_own_teacher_is_cfm_py_and_the_student_starts_from_it(tmp_path, monkeypatch):
    """The default's (cd) teacher trained in the run is the model cfm.py trains with the same flags (its EMA weights, bit
    for bit), and the student starts from those weights; ict starts from a fresh network and trains no teacher."""
    import cfm
    flags = ["--data", "moons", "--width", "16", "--batch-size", "32", "--log-every", "2", "--n-eval", "0"]
    cfm.main(flags + ["--iters", "5", "--out", str(tmp_path / "cfm")])
    seen, train, teachers, step = [], common.train, [], consistency.Consistency.teacher_step

    def spy(net, loss, data, args, ckpt=None):
        seen.append((args.model, {k: v.clone() for k, v in net.state_dict().items()}))
        return train(net, loss, data, args, ckpt)

    def teacher_spy(self, x, t, r, y=None):
        teachers.append({k: v.clone() for k, v in self.teacher.state_dict().items()})
        return step(self, x, t, r, y)
    monkeypatch.setattr(common, "train", spy)
    monkeypatch.setattr(consistency.Consistency, "teacher_step", teacher_spy)
    q = consistency.main(flags + ["--iters", "2", "--teacher-iters", "5", "--out", str(tmp_path / "cm")])
    assert [m for m, _ in seen] == ["cfm", "consistency"] and q["teacher_train_seconds"] > 0
    theirs = common.load_checkpoint(tmp_path / "cfm" / "ckpt.pt", ("cfm",))
    mine = common.load_checkpoint(tmp_path / "cm" / "teacher" / "ckpt.pt", ("cfm",))
    assert all(torch.equal(theirs["ema"][k], mine["ema"][k]) for k in theirs["ema"])
    student = seen[1][1]
    assert all(torch.equal(student[k], theirs["ema"]["module." + k]) for k in student)
    assert len(teachers) == 2 and all(torch.equal(t[k], theirs["ema"]["module." + k]) for t in teachers for k in t)
    seen.clear()
    q = consistency.main(flags + ["--iters", "2", "--training", "ict", "--out", str(tmp_path / "ict")])
    assert [m for m, _ in seen] == ["consistency"] and "teacher_train_seconds" not in q
    assert not (tmp_path / "ict" / "teacher").exists()
    assert common.load_checkpoint(tmp_path / "ict" / "ckpt.pt", ("consistency",))["args"]["time_scale"] == 10.0
    q = consistency.main(["--ckpt", str(tmp_path / "ict" / "ckpt.pt"), "--n-eval", "20"])  # rebuilt at its scale
    assert math.isfinite(q["value"])


def test_main_budget(tmp_path, monkeypatch):
    """digits: the teacher's 1000 and the student's 800 iterations (cd's 800 cost about what ect's 1000 do),
    stages of 200;
    other data: common.DATA_DEFAULTS, teacher 1500, stages of 300."""
    seen = []
    monkeypatch.setattr(common, "train", lambda net, loss, data, args, ckpt: seen.append(args) or net)
    for flags in ([], ["--iters", "5", "--teacher-iters", "7"], ["--data", "moons"]):
        consistency.main(flags + ["--n-eval", "0", "--out", str(tmp_path / str(len(seen)))])
    assert [(a.model, a.iters) for a in seen] == [("cfm", 1000), ("consistency", 800), ("cfm", 7), ("consistency", 5),
                                                  ("cfm", 1500), ("consistency", common.DATA_DEFAULTS["toy"]["iters"])]
    assert [a.stage_iters for a in seen[1::2]] == [200, 200, 300]


@pytest.mark.parametrize("training", ["cd", "ect", "ict"])
def test_resume_is_bit_identical_across_stages(training, tmp_path):
    """--stage-iters 3: the schedule changes stage within the run (ict's grid doubles, ect's gap halves; cd's
    grid is fixed, its own teacher taken from OUT/teacher on resuming), and
    4 iterations + --resume for 4 more equal 8 straight: the loss's iteration count continues from the checkpoint."""
    flags = ["--data", "8gaussians", "--width", "16", "--batch-size", "32", "--log-every", "2", "--ckpt-every", "4",
             "--n-eval", "0", "--stage-iters", "3", "--teacher-iters", "3", "--training", training]
    consistency.main(flags + ["--iters", "8", "--out", str(tmp_path / "straight")])
    consistency.main(flags + ["--iters", "4", "--out", str(tmp_path / "resumed")])
    consistency.main(["--resume", "--iters", "8", "--out", str(tmp_path / "resumed")])
    a, b = (torch.load(tmp_path / d / "ckpt.pt", weights_only=True) for d in ("straight", "resumed"))
    assert a["step"] == b["step"] == 8
    for part in ("net", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
