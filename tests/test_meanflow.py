"""Tests of meanflow.py against closed forms: a Gaussian data set N(m, S) with N(0, I) noise, whose
average velocity u(z, r, t) is known exactly (the flow map between two Gaussians with commuting
covariances), plus reverse-mode references for the JVP through common.py's networks."""
import math

import pytest
import torch
import torch.distributed as dist
from hypothesis import given, settings, strategies as st
from scipy import stats

import common
import meanflow
from meanflow import MeanFlow


class GaussianFlow:
    """x0 ~ N(0, I), x1 ~ N(m, S), z_t = (1 - t) x0 + t x1 ~ N(t m, Sigma_t), Sigma_t = (1 - t)^2 I + t^2 S.
    All Sigma_t share S's eigenvectors Q, so the ODE's flow map is
    Phi_{t->r}(z) = r m + Q diag(s_r / s_t) Q^T (z - t m), s_t = sqrt((1 - t)^2 + t^2 lambda),
    and u(z, r, t) = (z - Phi_{t->r}(z)) / (t - r). Float64 throughout."""

    def __init__(self, m, S):
        self.m, self.S = m, S
        self.lam, self.Q = torch.linalg.eigh(S)

    def s(self, t):  # (B,) -> (B, D): square roots of Sigma_t's eigenvalues
        t = t[:, None]
        return ((1 - t) ** 2 + t ** 2 * self.lam).sqrt()

    def flow(self, z, t, r):
        w = (z - t[:, None] * self.m) @ self.Q  # coordinates in the eigenbasis
        return r[:, None] * self.m + (w * self.s(r) / self.s(t)) @ self.Q.T

    def v(self, z, t):
        # v = m + (t S - (1 - t) I) Sigma_t^{-1} (z - t m): E[x1 - x0 | z_t = z], derived independently of flow()
        w = (z - t[:, None] * self.m) @ self.Q
        tt = t[:, None]
        return self.m + (w * (tt * self.lam - (1 - tt)) / self.s(t) ** 2) @ self.Q.T

    def __call__(self, z, r, t, y=None):  # the exact network u(z, r, t)
        gap = (t - r)[:, None]
        safe = torch.where(gap.abs() < 1e-12, torch.ones_like(gap), gap)
        return torch.where(gap.abs() < 1e-12, self.v(z, t), (z - self.flow(z, t, r)) / safe)


def random_gaussian(dim, seed):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(dim, generator=g, dtype=torch.float64)
    A = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    return m, A @ A.T / dim + 0.1 * torch.eye(dim, dtype=torch.float64)


# -----------------------------------------------------------------------------
# the MeanFlow identity and its JVP

@settings(deadline=None, max_examples=15)
@given(seed=st.integers(0, 10_000), dim=st.integers(1, 4))
def test_identity_on_gaussian_flow(seed, dim):
    m, S = random_gaussian(dim, seed)
    flow = GaussianFlow(m, S)
    g = torch.Generator().manual_seed(seed + 1)
    B = 16
    z = 2 * torch.randn(B, dim, generator=g, dtype=torch.float64)
    t = torch.rand(B, generator=g, dtype=torch.float64)
    r = torch.rand(B, generator=g, dtype=torch.float64)  # both r > t and r < t
    v = flow.v(z, t)
    # v is the velocity of flow(): d/dt Phi_{t0->t}(z) at t = t0, by central differences
    h = 1e-6
    fd_v = (flow.flow(z, t, t + h) - flow.flow(z, t, t - h)) / (2 * h)
    torch.testing.assert_close(v, fd_v, rtol=1e-6, atol=1e-6)
    # du/dt from the JVP against finite differences along the trajectory z_s = Phi_{t->s}(z)
    u, dudt = MeanFlow.u_and_dudt(flow, z, r, t, v)
    torch.testing.assert_close(u, flow(z, r, t))
    fd = (flow(flow.flow(z, t, t + h), r, t + h) - flow(flow.flow(z, t, t - h), r, t - h)) / (2 * h)
    torch.testing.assert_close(dudt, fd, rtol=1e-5, atol=1e-5)
    # the identity u = v - (t - r) du/dt holds for the exact u, so the target reproduces it
    torch.testing.assert_close(MeanFlow().target(flow, z, r, t, v), u, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(v - (t - r)[:, None] * fd, u, rtol=1e-5, atol=1e-5)


def test_u_at_r_equals_t_is_v():
    m, S = random_gaussian(3, 0)
    flow = GaussianFlow(m, S)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 3, generator=g, dtype=torch.float64)
    t = torch.rand(8, generator=g, dtype=torch.float64)
    for d in (1e-6, -1e-6):  # the closed form's limit r -> t from both sides (not its r = t branch)
        torch.testing.assert_close(flow(z, t + d, t), flow.v(z, t), rtol=1e-5, atol=1e-5)
    # and for any network the target at r = t is v itself: those pairs are plain flow matching
    net = common.make_net("mlp", (3,), 32, two_times=True, time_scale=1000.0)
    zf, tf, vf = z.float(), t.float(), torch.randn(8, 3, generator=g)
    assert torch.equal(MeanFlow().target(net, zf, tf, tf, vf), vf)
    assert not torch.allclose(MeanFlow().target(net, zf, (tf + 0.3).clamp(max=1), tf, vf), vf)


def perturbed_net(arch, shape, seed):
    torch.manual_seed(seed)
    net = common.make_net(arch, shape, 8, num_classes=10, two_times=True, time_scale=1000.0)
    with torch.no_grad():  # zero-initialised output layers would make every derivative 0
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


@pytest.mark.parametrize("arch", ["unet", "dit"])
def test_jvp_through_attention_networks(arch):
    """torch.func.jvp runs through common.py's UNet and DiT (both with attention) and matches a
    reverse-mode reference: the Jacobian rows by backward passes, contracted with (v, 0, 1)."""
    net = perturbed_net(arch, (1, 8, 8), 0)
    g = torch.Generator().manual_seed(1)
    z, v = torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 1, 8, 8, generator=g)
    r, t = torch.tensor([0.9, 0.6]), torch.tensor([0.2, 0.5])
    y = torch.tensor([3, 10])
    u, dudt = MeanFlow.u_and_dudt(net, z, r, t, v, y)
    jz, jr, jt = torch.autograd.functional.jacobian(lambda a, b, c: net(a, b, c, y), (z, r, t))
    ref = (jz.flatten(0, 3).flatten(1) @ v.flatten()).view_as(u) + (jt.flatten(0, 3) @ torch.ones(2)).view_as(u)
    assert dudt.abs().max() > 1e-3
    torch.testing.assert_close(dudt, ref, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(u, net(z, r, t, y), rtol=1e-5, atol=1e-5)


# -----------------------------------------------------------------------------
# the sampler: exact answers from the exact network

@pytest.mark.parametrize("steps", [1, 2])
def test_sampling_exact_gaussian(steps):
    """Noise standardised to mean 0 and covariance I exactly; the exact u maps it in 1 or 2 jumps to
    points whose mean and covariance are the data's m and S exactly (the flow map is affine)."""
    m, S = random_gaussian(3, 7)
    flow = GaussianFlow(m, S)
    g = torch.Generator().manual_seed(0)
    n = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    n = n - n.mean(0)
    n = n @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(n.T))).T
    x = MeanFlow().sample(flow, n.shape, steps=steps, noise=n)
    assert x.dtype == torch.float64
    torch.testing.assert_close(x.mean(0), m, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(torch.cov(x.T), S, rtol=1e-9, atol=1e-9)
    # seeded draws are reproducible
    a = MeanFlow().sample(flow, (5, 3), steps=steps, generator=torch.Generator().manual_seed(3))
    b = MeanFlow().sample(flow, (5, 3), steps=steps, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_sampling_calls_and_guidance():
    """steps network calls at times (r, t) = (1/k (i + 1), i/k); cfg_scale w gives u_null + w (u_y - u_null)."""
    calls = []

    def net(z, r, t, y):
        calls.append((float(r[0]), float(t[0]), y is None))
        return torch.full_like(z, 1.0) if y is None else torch.full_like(z, 3.0)
    x = MeanFlow().sample(net, (2, 2), steps=2, y=torch.tensor([0, 1]), noise=torch.zeros(2, 2))
    assert calls == [(0.5, 0.0, False), (1.0, 0.5, False)]
    torch.testing.assert_close(x, torch.full((2, 2), 3.0))
    calls.clear()
    x = MeanFlow().sample(net, (2, 2), steps=1, y=torch.tensor([0, 1]), cfg_scale=2.0, noise=torch.zeros(2, 2))
    assert len(calls) == 2
    torch.testing.assert_close(x, torch.full((2, 2), 1.0 + 2.0 * (3.0 - 1.0)))


def test_guided_at_w_2_is_uncond_plus_w_times_cond_minus_uncond():
    """guided(net, z, r, t, y, w) = u_uncond + w (u_cond - u_uncond), with outputs known independently;
    a single network call when y is None or w = 1."""
    calls = []

    def net(z, r, t, y):
        calls.append(y is None)
        return z * r[:, None] - t[:, None] if y is None else 3 * z + y[:, None].float()  # u_uncond, u_cond
    g = torch.Generator().manual_seed(0)
    z, r, t, y = torch.randn(4, 2, generator=g), torch.rand(4, generator=g), torch.rand(4, generator=g), torch.arange(4)
    u_uncond, u_cond = z * r[:, None] - t[:, None], 3 * z + y[:, None].float()
    torch.testing.assert_close(MeanFlow().guided(net, z, r, t, y, cfg_scale=2.0), 2 * u_cond - u_uncond)
    assert sorted(calls) == [False, True]
    calls.clear()
    torch.testing.assert_close(MeanFlow().guided(net, z, r, t, y), u_cond)
    torch.testing.assert_close(MeanFlow().guided(net, z, r, t, None, cfg_scale=2.0), u_uncond)
    assert calls == [False, True]


# -----------------------------------------------------------------------------
# the loss: time pairs, adaptive weight, gradient, guidance folded into the target

class Gaussian1D:
    """x1 ~ N(0, s^2) in 1-D, x0 ~ N(0, 1): sigma_t^2 = (1 - t)^2 + t^2 s^2, the flow map is
    z_r = (sigma_r / sigma_t) z_t, so u(z, r, t) = z (1 - sigma_r / sigma_t) / (t - r) (u(z, t, t) = v(z, t) =
    z sigma_t' / sigma_t). Written from these formulas alone, not from GaussianFlow."""

    def __init__(self, s):
        self.s = s

    def sigma(self, t):
        return ((1 - t) ** 2 + t ** 2 * self.s ** 2).sqrt()[:, None]

    def v(self, z, t):
        return z * ((t * self.s ** 2 - (1 - t)) / ((1 - t) ** 2 + t ** 2 * self.s ** 2))[:, None]

    def __call__(self, z, r, t, y=None):
        gap = (t - r)[:, None]
        same = gap.abs() < 1e-12
        return torch.where(same, self.v(z, t), z * (1 - self.sigma(r) / self.sigma(t)) / torch.where(same, 1.0, gap))


@pytest.mark.parametrize("tangent", ["sample", "model"])
def test_target_of_each_tangent_on_a_1d_gaussian(tangent):
    """From the exact u and the exact v the target is u (the MeanFlow identity), for both tangents; for a
    conditional v (a draw of x1 - x0), the target has its documented form v - (t - r)(v' d_z u + d_t u),
    with v' = v (sample) or v' = u(z, t, t) (model), d_z u and d_t u by central differences."""
    exact, g = Gaussian1D(0.5), torch.Generator().manual_seed(0)
    z = 2 * torch.randn(32, 1, generator=g, dtype=torch.float64)
    r, t = torch.rand(32, generator=g, dtype=torch.float64), torch.rand(32, generator=g, dtype=torch.float64)
    mf = MeanFlow(tangent=tangent)
    u = exact(z, r, t)
    torch.testing.assert_close(mf.target(exact, z, r, t, exact.v(z, t)), u, rtol=1e-9, atol=1e-9)
    v = exact.v(z, t) + torch.randn(32, 1, generator=g, dtype=torch.float64)  # one conditional velocity
    h = 1e-6
    dz = (exact(z + h, r, t) - exact(z - h, r, t)) / (2 * h)
    dt = (exact(z, r, t + h) - exact(z, r, t - h)) / (2 * h)
    v_prime = v if tangent == "sample" else exact.v(z, t)
    torch.testing.assert_close(mf.target(exact, z, r, t, v), v - (t - r)[:, None] * (v_prime * dz + dt),
                               rtol=1e-6, atol=1e-6)


def test_jvp_only_on_pairs_with_r_not_t(monkeypatch):
    """The JVP sees exactly the pairs with r != t (their target needs du/dt; the others' is v), and
    --ratio 0 runs none: plain flow matching at its price."""
    seen = []
    jvp = MeanFlow.u_and_dudt
    monkeypatch.setattr(MeanFlow, "u_and_dudt", staticmethod(lambda net, z, r, t, v, y=None, w=None: seen.append((r, t))
                                                             or jvp(net, z, r, t, v, y, w)))
    net, x1 = perturbed_net("mlp", (2,), 0), torch.randn(64, 2)
    for ratio in (0.5, 0.0):
        seen.clear()
        torch.manual_seed(3)
        MeanFlow(ratio=ratio).loss(net, x1)
        torch.manual_seed(3)
        r, t = MeanFlow(ratio=ratio).sample_times(64)
        if ratio == 0:
            assert seen == []
        else:
            assert len(seen) == 1 and torch.equal(seen[0][0], r[r != t]) and torch.equal(seen[0][1], t[r != t])


def test_model_tangent_costs_one_forward_and_is_checked():
    net = perturbed_net("mlp", (2,), 0)
    calls = []
    net.register_forward_hook(lambda *a: calls.append(1))
    x1 = torch.randn(16, 2)
    MeanFlow(tangent="sample").loss(net, x1)
    n_sample = len(calls)
    calls.clear()
    MeanFlow(tangent="model").loss(net, x1)
    assert len(calls) == n_sample + 1
    with pytest.raises(ValueError, match="--tangent"):
        MeanFlow(tangent="data")


def test_sample_times():
    mf = MeanFlow(ratio=0.25, time_mu=0.4, time_sigma=1.0)
    r, t = mf.sample_times(40000, generator=torch.Generator().manual_seed(0))
    assert (t <= r).all() and ((t > 0) & (r < 1)).all()
    frac = (r != t).double().mean().item()
    assert abs(frac - 0.25) < 4 * math.sqrt(0.25 * 0.75 / 40000)
    # with ratio 1 every pair is (min, max) of two independent logit-normal(0.4, 1) draws
    r, t = MeanFlow(ratio=1.0).sample_times(20000, generator=torch.Generator().manual_seed(1))
    logit = lambda p: torch.log(p / (1 - p)).double().numpy()
    both = torch.cat([t, r])
    assert stats.kstest(logit(both), stats.norm(0.4, 1.0).cdf).pvalue > 1e-3
    # the smaller of two: P(logit t <= a) = 1 - (1 - Phi(a))^2
    assert stats.kstest(logit(t), lambda a: 1 - stats.norm.sf(a, 0.4, 1.0) ** 2).pvalue > 1e-3


@pytest.mark.parametrize("p", [0.0, 1.0, 0.5])
def test_loss_value_and_gradient(p):
    """loss = mean sg(w) ||u - sg(u_tgt)||^2 with u from a plain forward: same value, same gradient."""
    net = perturbed_net("mlp", (2,), 0)
    mf = MeanFlow(ratio=0.5, adaptive_p=p)
    x1, y = torch.randn(64, 2), torch.randint(0, 10, (64,))
    torch.manual_seed(5)
    loss = mf.loss(net, x1, y)
    grads = torch.autograd.grad(loss, list(net.parameters()))
    torch.manual_seed(5)  # replay the same draws by hand
    r, t = mf.sample_times(64)
    x0 = torch.randn_like(x1)
    z = (1 - t[:, None]) * x0 + t[:, None] * x1
    tgt = mf.target(net, z, r, t, x1 - x0, y)
    assert not tgt.requires_grad
    err = (net(z, r, t, y) - tgt).pow(2).sum(1)
    ref = ((err.detach() + 1e-3) ** -p * err).mean()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, torch.autograd.grad(ref, list(net.parameters()))):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_folded_velocity_folds_cfg():
    """v~ = omega v + kappa u_y + (1 - omega - kappa) u_null, v kept for dropped labels; and the fixed
    point at r = t is guidance of scale omega / (1 - kappa)."""
    v_null, v_c = torch.tensor([1.0, -2.0]), torch.tensor([[3.0, 0.5], [-1.0, 4.0], [0.0, 0.0]])
    omega, kappa = 1.5, 0.4
    scale = omega / (1 - kappa)

    def net(z, r, t, y):  # u_null = v_null; u_y = the guided velocity of scale omega / (1 - kappa)
        if y is None:
            return v_null.expand_as(z)
        return v_null + scale * (v_c[y] - v_null)
    z, t = torch.zeros(3, 2), torch.tensor([0.1, 0.5, 0.9])
    y = torch.tensor([0, 1, 2])  # 2 is the null class of a 2-class set: its v~ stays v
    mf = MeanFlow(cfg_omega=omega, cfg_kappa=kappa, null_class=2)
    v = torch.randn(3, 2)
    got = mf.folded_velocity(net, z, t, v, y)
    want = omega * v + kappa * net(z, t, t, y) + (1 - omega - kappa) * v_null
    torch.testing.assert_close(got[:2], want[:2])
    torch.testing.assert_close(got[2], v[2])
    # with v at its conditional mean v_c, v~ equals the network: the guided field is a fixed point
    fixed = mf.folded_velocity(net, z[:2], t[:2], v_c[:2], y[:2])
    torch.testing.assert_close(fixed, net(z[:2], t[:2], t[:2], y[:2]))
    assert torch.equal(MeanFlow().folded_velocity(net, z, t, v, y), v)  # omega = 1: nothing folded
    with pytest.raises(ValueError):
        MeanFlow(cfg_omega=2.0).folded_velocity(net, z, t, v, y)


class GuidedGaussians1D:
    """Classes c of a 1-D set, x1 | c ~ N(0, s_c^2), the null class x1 ~ N(0, s_0^2), x0 ~ N(0, 1). Each
    velocity is linear in z: v(z, t | c) = z a_c(t), a_c = d/dt log sigma_c, sigma_c(t)^2 = (1 - t)^2 + t^2 s_c^2.
    So the guided field v_null + w (v_c - v_null) = z ((1 - w) a_0 + w a_c) has the flow map
    z_r = z_t (sigma_0(r) / sigma_0(t))^(1 - w) (sigma_c(r) / sigma_c(t))^w, and u = z (1 - that) / (t - r):
    the exact network u(z, r, t | y, w) of a model that takes the scale w as its input."""

    def __init__(self, s_null, s_class):
        self.s_null, self.s_class = s_null, s_class

    def __call__(self, z, r, t, y=None, w=None):
        n = len(self.s_class)
        s_c = torch.full_like(t, self.s_null) if y is None else torch.where(y == n, self.s_null, self.s_class[y.clamp(max=n - 1)])
        w = torch.ones_like(t) if w is None else w
        sigma = lambda tt, s: ((1 - tt) ** 2 + tt ** 2 * s ** 2).sqrt()
        a = lambda s: (t * s ** 2 - (1 - t)) / sigma(t, s) ** 2  # d/dt log sigma at t
        ratio = (sigma(r, self.s_null) / sigma(t, self.s_null)) ** (1 - w) * (sigma(r, s_c) / sigma(t, s_c)) ** w
        gap = t - r
        same = gap.abs() < 1e-12
        v = (1 - w) * a(torch.full_like(t, self.s_null)) + w * a(s_c)
        return z * torch.where(same, v, (1 - ratio) / torch.where(same, 1.0, gap))[:, None]


@pytest.mark.parametrize("tangent", ["sample", "model"])
def test_guidance_input_target_on_1d_gaussians(tangent):
    """--cfg-max: with each example's v at its class's exact velocity, the folded v~ is the guided
    velocity of that example's own scale w, and the target from the exact network is the guided field's
    exact average velocity, for every w at once; the null class gets w = 1 and keeps v."""
    exact, g = GuidedGaussians1D(1.0, torch.tensor([0.5, 2.0], dtype=torch.float64)), torch.Generator().manual_seed(0)
    mf = MeanFlow(cfg_max=4.0, null_class=2, tangent=tangent)
    n = 48
    z = 2 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    r, t = torch.rand(n, generator=g, dtype=torch.float64), torch.rand(n, generator=g, dtype=torch.float64)
    y = torch.arange(n) % 3  # 2: a dropped label
    w = torch.where(y == 2, 1.0, mf.sample_scales(n, generator=g).double())
    null_scales = []

    def net(z, r, t, y=None, w=None):
        if y is None:
            null_scales.append(w)
        return exact(z, r, t, y, w)
    v_c = exact(z, t, t, y)  # E[x1 - x0 | z_t, c]: the unguided conditional velocity
    v_folded = mf.folded_velocity(net, z, t, v_c, y, w)
    torch.testing.assert_close(v_folded, exact(z, t, t, y, w), rtol=1e-12, atol=1e-12)
    assert all(torch.equal(s, torch.ones(n, dtype=torch.float64)) for s in null_scales) and null_scales
    torch.testing.assert_close(mf.target(net, z, r, t, v_folded, y, w), exact(z, r, t, y, w), rtol=1e-9, atol=1e-9)
    # a draw of v instead: v~ = v + (1 - 1/w)(u(z, t, t | c, w) - u(z, t, t | null, 1)), and v where dropped
    v = v_c + torch.randn(n, 1, generator=g, dtype=torch.float64)
    want = v + (1 - 1 / w)[:, None] * (exact(z, t, t, y, w) - exact(z, t, t, None))
    got = mf.folded_velocity(net, z, t, v, y, w)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert torch.equal(got[y == 2], v[y == 2])


def test_sample_scales_are_log_uniform():
    w = MeanFlow(cfg_max=8.0).sample_scales(20000, generator=torch.Generator().manual_seed(0))
    assert (w >= 1).all() and (w <= 8).all()
    assert stats.kstest((w.log() / math.log(8)).double().numpy(), "uniform").pvalue > 1e-3
    with pytest.raises(ValueError, match="--cfg-max"):
        MeanFlow(cfg_max=0.5)
    with pytest.raises(ValueError, match="--cfg-max"):
        MeanFlow(cfg_max=2.0, cfg_omega=2.0)


def test_guidance_input_loss_and_sampler():
    """The loss with --cfg-max replays by hand (per-example w, 1 where dropped, given to every network
    call); the sampler makes one call per step with w = --cfg-scale (1 for the null class)."""
    torch.manual_seed(0)
    net = common.make_net("mlp", (2,), 8, num_classes=10, two_times=True, time_scale=10.0, guidance_input=True)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    mf = MeanFlow(ratio=0.5, cfg_max=4.0, null_class=10, adaptive_p=0.0)  # L2: the weight would flatten the loss
    x1, y = torch.randn(64, 2), torch.randint(0, 11, (64,))
    torch.manual_seed(5)
    loss = mf.loss(net, x1, y)
    torch.manual_seed(5)
    r, t = mf.sample_times(64)
    x0 = torch.randn_like(x1)
    w = torch.where(y == 10, 1.0, mf.sample_scales(64))
    z = (1 - t[:, None]) * x0 + t[:, None] * x1
    tgt = mf.target(net, z, r, t, mf.folded_velocity(net, z, t, x1 - x0, y, w), y, w)
    err = (net(z, r, t, y, w=w) - tgt).pow(2).sum(1)
    torch.testing.assert_close(loss, err.mean(), rtol=1e-5, atol=1e-6)
    calls = []

    def fake(z, r, t, y, w=None):
        calls.append((y is None, w.tolist()))
        return torch.ones_like(z)
    mf.sample(fake, (2, 2), steps=2, y=torch.tensor([0, 1]), cfg_scale=2.5)
    assert calls == [(False, [2.5, 2.5])] * 2
    calls.clear()
    mf.sample(fake, (2, 2), steps=1, cfg_scale=2.5)
    assert calls == [(True, [1.0, 1.0])]


def test_ddp_wrapped_net(tmp_path):
    """A DDP-wrapped network (gloo, one process): the JVP runs on .module, the gradient flows through
    the wrapper, two steps in a row work, and the gradient equals the plain network's."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        net = perturbed_net("mlp", (2,), 0)
        ddp = DDP(net)
        mf = MeanFlow(ratio=0.5)
        x1, y = torch.randn(32, 2), torch.randint(0, 10, (32,))
        for _ in range(2):
            torch.manual_seed(3)
            net.zero_grad()
            mf.loss(ddp, x1, y).backward()
        g_ddp = [p.grad.clone() for p in net.parameters()]
        torch.manual_seed(3)
        net.zero_grad()
        mf.loss(net, x1, y).backward()
        for a, p in zip(g_ddp, net.parameters()):
            torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)
    finally:
        dist.destroy_process_group()


# -----------------------------------------------------------------------------
# learning and the command line

def test_short_run_learns():
    """250 steps on 8gaussians: 1- and 2-step samples are much closer (exact W2) to held-out data than
    the noise they start from."""
    torch.manual_seed(0)
    data = common.load_data("8gaussians")
    net = common.make_net("mlp", (2,), 64, num_classes=0, two_times=True, time_scale=10.0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    mf = MeanFlow(ratio=0.75)
    g = torch.Generator().manual_seed(0)
    for _ in range(250):
        x = data.x_train[torch.randint(0, len(data.x_train), (256,), generator=g)]
        loss = mf.loss(net, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    test = data.x_test[:500]
    noise = torch.randn(500, 2, generator=g)
    w_noise = common.w2_exact(noise, test)
    for steps in (1, 2):
        w = common.w2_exact(mf.sample(net, (500, 2), steps=steps, noise=noise), test)
        assert w < 0.6 * w_noise, (steps, w, w_noise)


def test_trajectory_starts_at_the_noise_and_ends_at_the_samples():
    method, net = meanflow.MeanFlow(), common.make_net("mlp", (2,), 16, two_times=True, time_scale=10.0)
    states = []
    x = method.sample(net, (5, 2), steps=2, generator=torch.Generator().manual_seed(0), trajectory=states)
    assert len(states) == 2 + 1 and torch.equal(states[-1], x)
    assert torch.equal(states[0], common.start_noise((5, 2), torch.Generator().manual_seed(0)))
    assert torch.equal(x, method.sample(net, (5, 2), steps=2, generator=torch.Generator().manual_seed(0)))


def test_cli(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        meanflow.main(["--help"])
    assert e.value.code == 0
    out = tmp_path / "run"
    base = ["--data", "8gaussians", "--width", "16", "--batch-size", "32", "--n-eval", "50", "--out", str(out)]
    q = meanflow.main(base + ["--iters", "4", "--log-every", "2", "--cfg-omega", "2.0", "--trajectory", "20"])
    assert (out / "ckpt.pt").exists() and (out / "samples.png").exists() and (out / "trajectory.png").exists()
    assert q["metric"] == "W2" and math.isfinite(q["value"])
    ckpt = common.load_checkpoint(out / "ckpt.pt", ("meanflow",))
    assert ckpt["args"]["cfg_omega"] == 2.0
    q2 = meanflow.main(["--ckpt", str(out / "ckpt.pt"), "--steps", "2", "--n-eval", "50", "--out", str(out)])
    assert math.isfinite(q2["value"]) and q2["value"] != q["value"]
    capsys.readouterr()
    for bad in (["--steps", "0"], ["--ratio", "1.5"], ["--cfg-kappa", "1"], ["--cfg-omega", "2", "--uncond"],
                ["--time-sigma", "0"], ["--time-scale", "0"], ["--ratio", "nan"], ["--cfg-max", "0.5"],
                ["--cfg-max", "2", "--cfg-scale", "3"], ["--cfg-max", "2", "--uncond"], ["--cfg-max", "2", "--cfg-omega", "2"]):
        with pytest.raises(SystemExit) as e:
            meanflow.main(base + bad)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and bad[0] in err and len(err.splitlines()) == 1, (bad, err)


def test_cli_guidance_input(tmp_path):
    """--cfg-max trains a network with the scale as its input; the checkpoint rebuilds it, and sampling
    it at another --cfg-scale gives other samples from the same noise."""
    out = tmp_path / "run"
    q = meanflow.main(["--data", "moons", "--width", "16", "--batch-size", "32", "--iters", "4", "--n-eval", "50",
                       "--cfg-max", "3", "--out", str(out)])
    assert common.load_checkpoint(out / "ckpt.pt", ("meanflow",))["args"]["cfg_max"] == 3.0
    q1 = meanflow.main(["--ckpt", str(out / "ckpt.pt"), "--n-eval", "50", "--out", str(out)])
    q2 = meanflow.main(["--ckpt", str(out / "ckpt.pt"), "--n-eval", "50", "--cfg-scale", "2.5", "--out", str(out)])
    assert q1["value"] == q["value"] and q2["value"] != q["value"] and q2["cfg_scale"] == 2.5


def test_main_budget_and_null_class(tmp_path, monkeypatch):
    """digits trains 900 iterations unless told otherwise (other data: common.DATA_DEFAULTS), and the loss
    knows the data set's null class (the label common.train gives a dropped label)."""
    seen = []
    monkeypatch.setattr(common, "train", lambda net, loss, data, args, ckpt: seen.append((loss, args)) or net)
    for flags in ([], ["--iters", "5"], ["--data", "moons"]):
        meanflow.main(flags + ["--cfg-omega", "2", "--n-eval", "0", "--out", str(tmp_path)])
    assert [args.iters for _, args in seen] == [900, 5, common.DATA_DEFAULTS["toy"]["iters"]]
    assert [loss.__self__.null_class for loss, _ in seen] == [10, 10, 2]
    assert all(loss.__func__ is MeanFlow.loss and loss.__self__.cfg_omega == 2 for loss, _ in seen)


def test_bf16_autocast_leaves_the_target_in_float32():
    """Under bf16 autocast the target (the JVP, and for tangent "model" the tangent's forward u(z, t, t))
    equals float32's bit for bit, for both tangents: autocast is off around both calls. Every parameter
    that starts at 0 (the output convolution, the residual branches' last convolutions, the norms' biases)
    is re-drawn first: a freshly built network outputs 0, so its target is v in any precision and could
    not show a difference."""
    torch.manual_seed(0)
    net = common.make_net("unet", (1, 8, 8), 8, num_classes=10, two_times=True, time_scale=10.0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        zeros = [p for p in net.parameters() if not p.any()]
        for p in zeros:
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    assert len(zeros) >= 2  # at least the output convolution's weight and bias
    z, v = torch.randn(6, 1, 8, 8), torch.randn(6, 1, 8, 8)
    r, t, y = torch.rand(6), torch.rand(6) * 0.5, torch.randint(0, 10, (6,))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        u_low = net(z, t, t, y).float()
    assert not torch.allclose(u_low, net(z, t, t, y), rtol=1e-4, atol=1e-4)  # autocast does round this network
    for tangent in ("model", "sample"):
        method = MeanFlow(tangent=tangent)
        ref = method.target(net, z, r, t, v, y)
        assert (ref - v).norm() > 0.01 * v.norm()  # the network's du/dt is part of the target
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = method.target(net, z, r, t, v, y)
        assert low.dtype == torch.float32 and torch.equal(low, ref), tangent
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # every pair jumps: the loss's JVP runs under autocast
        low_loss = MeanFlow(ratio=1.0).loss(net, torch.randn(6, 1, 8, 8), y)  # (on CPU it fails with autocast on)
    assert low_loss.dtype == torch.float32 and torch.isfinite(low_loss)
