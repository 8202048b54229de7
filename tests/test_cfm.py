"""Tests of cfm.py against closed forms, brute force and torch.distributions.

The exact-answer tests use Gaussian data x_1 ~ N(m, S), for which the marginal velocity is
affine. With x_t = a x_0 + t x_1, a = 1 - (1 - sigma_min) t, and the target V = x_1 - (1 - sigma_min) x_0,
(x_t, V) are jointly Gaussian, so u_t(x) = E[V | x_t = x] = m + C_t Sigma_t^{-1} (x - t m) with
Sigma_t = Cov(x_t) = a^2 I + t^2 S and C_t = Cov(V, x_t) = t S - (1 - sigma_min) a I. The exact flow
carries N(0, I) to x_1 = x_t at t = 1, i.e. N(m, S + sigma_min^2 I).
"""
import itertools
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import cfm
import common
from cfm import CFM


def gaussian_field(m, S, sigma_min=0.0):
    """The closed-form marginal velocity u_t(x) of data N(m, S), as a network net(x, t, y)."""
    d = len(m)
    eye = torch.eye(d, dtype=torch.float64)

    def net(x, t, y=None):
        tt = t.double().view(-1, 1, 1)
        a = 1 - (1 - sigma_min) * tt
        cov = a ** 2 * eye + tt ** 2 * S  # (B, d, d)
        cross = tt * S - (1 - sigma_min) * a * eye
        dx = (x.double() - tt[:, :, 0] * m)[..., None]  # (B, d, 1)
        return (m + (cross @ torch.linalg.solve(cov, dx))[..., 0]).to(x.dtype)
    return net


def gaussian_problem(d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(d, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    S = q @ torch.diag(torch.linspace(0.3, 2.0, d, dtype=torch.float64)) @ q.T
    return m, S


def whitened_noise(n, d, seed=0):
    """n points with sample mean exactly 0 and sample covariance (1/n) exactly I."""
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(0)
    L = torch.linalg.cholesky(z.T @ z / n)
    return torch.linalg.solve_triangular(L, z.T, upper=False).T


def moments_error(x, m, cov):
    c = (x - x.mean(0)).T @ (x - x.mean(0)) / len(x)
    return float((x.mean(0) - m).abs().max() + (c - cov).abs().max())


class Counter:
    def __init__(self, net):
        self.net, self.calls = net, 0

    def __call__(self, *a):
        self.calls += 1
        return self.net(*a)


# -----------------------------------------------------------------------------
# path and coupling

@settings(deadline=None, max_examples=25)
@given(sigma_min=st.floats(0.0, 0.9), batch=st.integers(1, 5), shape=st.sampled_from([(2,), (3,), (1, 4, 4)]),
       seed=st.integers(0, 10 ** 6))
def test_velocity_is_time_derivative_of_psi(sigma_min, batch, shape, seed):
    g = torch.Generator().manual_seed(seed)
    x0, x1 = torch.randn(batch, *shape, generator=g, dtype=torch.float64), torch.randn(batch, *shape, generator=g, dtype=torch.float64)
    t = torch.rand(batch, generator=g, dtype=torch.float64)
    flow = CFM(sigma_min)
    _, dpsi_dt = torch.func.jvp(lambda s: flow.psi(x0, x1, s), (t,), (torch.ones_like(t),))
    torch.testing.assert_close(flow.velocity(x0, x1, t), dpsi_dt)
    torch.testing.assert_close(flow.psi(x0, x1, torch.zeros_like(t)), x0)  # noise at t = 0
    torch.testing.assert_close(flow.psi(x0, x1, torch.ones_like(t)), x1 + sigma_min * x0)  # data, blurred by sigma_min


def brute_force_cost(x0, x1):
    return min(sum(float((x0[p[i]] - x1[i]).pow(2).sum()) for i in range(len(x1)))
               for p in itertools.permutations(range(len(x1))))


def source_rows(x0_new, x0):
    """Index j of x0 for every row of x0_new; asserts x0_new is a permutation of x0's rows."""
    dist = torch.cdist(x0_new, x0)
    src = dist.argmin(1)
    assert torch.all(dist.min(1).values == 0) and sorted(src.tolist()) == list(range(len(x0)))
    return src


@settings(deadline=None, max_examples=30)
@given(n=st.integers(1, 6), d=st.integers(1, 3), seed=st.integers(0, 10 ** 6))
def test_ot_couple_is_an_optimal_permutation(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    x0, x1 = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)
    x0_new, x1_new = CFM(coupling="ot").couple(x0, x1)
    assert torch.equal(x1_new, x1)
    source_rows(x0_new, x0)
    assert float((x0_new - x1).pow(2).sum()) == pytest.approx(brute_force_cost(x0, x1), rel=1e-9, abs=1e-12)
    x0_ind, _ = CFM(coupling="independent").couple(x0, x1)
    assert torch.equal(x0_ind, x0)


@settings(deadline=None, max_examples=20)
@given(n=st.integers(2, 7), seed=st.integers(0, 10 ** 6))
def test_ot_couple_with_labels_stays_within_each_label(n, seed):
    g = torch.Generator().manual_seed(seed)
    x0, x1 = torch.randn(n, 2, generator=g, dtype=torch.float64), torch.randn(n, 2, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    x0_new, _ = CFM(coupling="ot").couple(x0, x1, y)
    src = source_rows(x0_new, x0)
    assert torch.equal(y[src], y)  # noise rows move only within a label: p(x_0 | y) stays N(0, I)
    for c in y.unique():
        idx = (y == c).nonzero()[:, 0]
        got = float((x0_new[idx] - x1[idx]).pow(2).sum())
        assert got == pytest.approx(brute_force_cost(x0[idx], x1[idx]), rel=1e-9, abs=1e-12)


def test_ot_under_ddp_is_optimal_per_process_slice_not_globally():
    """What holds under torchrun: common.train gives rank r the rows [r B / N, (r + 1) B / N) of the
    global batch, and the loss couples that slice alone. Each slice's coupling is a permutation of
    the slice's own noise and optimal for the slice (brute force); the union is a valid pairing of
    the global batch whose cost is at least the global optimum, and for some batches above it: the
    coupling depends on the number of processes N (as cfm.py's docstring states)."""
    B, strictly_worse = 6, 0
    flow = CFM(coupling="ot")
    for seed in range(8):
        g = torch.Generator().manual_seed(seed)
        x0, x1 = (torch.randn(B, 2, generator=g, dtype=torch.float64) for _ in range(2))
        for world in (1, 2, 3):
            pieces = []
            for rank in range(world):
                local = slice(rank * B // world, (rank + 1) * B // world)  # as in common.train
                x0_new, x1_new = flow.couple(x0[local], x1[local])
                assert torch.equal(x1_new, x1[local])
                source_rows(x0_new, x0[local])  # a permutation of this process's noise only
                cost = float((x0_new - x1[local]).pow(2).sum())
                assert cost == pytest.approx(brute_force_cost(x0[local], x1[local]), rel=1e-9, abs=1e-12)
                pieces.append(x0_new)
            union = torch.cat(pieces)
            source_rows(union, x0)  # together: a permutation of the global batch's noise
            cost, best = float((union - x1).pow(2).sum()), brute_force_cost(x0, x1)
            assert cost >= best - 1e-9
            if world == 1:
                assert cost == pytest.approx(best, rel=1e-9)
            strictly_worse += cost > best + 1e-9
    assert strictly_worse > 0  # the per-slice coupling really differs from the global one


def test_loss_keeps_labels_with_their_data_under_ot():
    g = torch.Generator().manual_seed(0)
    x1, x0 = torch.randn(12, 2, generator=g), torch.randn(12, 2, generator=g)
    t, y = torch.rand(12, generator=g), torch.randint(0, 3, (12,), generator=g)
    seen = {}

    def spy(x_t, t_in, y_in):
        seen.update(x_t=x_t, t=t_in, y=y_in)
        return torch.zeros_like(x_t)
    flow = CFM(0.1, "ot")
    loss = flow.loss(spy, x1, y, x0=x0, t=t)
    x0_new, _ = flow.couple(x0, x1, y)
    assert not torch.equal(x0_new, x0)  # the coupling did move rows
    assert torch.equal(seen["y"], y) and torch.equal(seen["t"], t)
    torch.testing.assert_close(seen["x_t"], (1 - 0.9 * t[:, None]) * x0_new + t[:, None] * x1)
    torch.testing.assert_close(loss, (x1 - 0.9 * x0_new).pow(2).mean())


class Recorder:
    """A zero velocity field that records what it is shown."""
    def __init__(self):
        self.seen = []

    def __call__(self, x_t, t, y=None):
        self.seen.append((x_t.detach().clone(), t.detach().clone()))
        return torch.zeros_like(x_t)


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_loss_trains_on_dequantized_data(levels):
    """With dequantize_levels = L the network sees x_t built from x1 + Delta (u - 1/2), Delta =
    2 / (L - 1), u ~ U[0, 1)^D drawn from the loss's generator, fresh every batch; without it the
    grid values themselves."""
    g = torch.Generator().manual_seed(levels)
    k = torch.randint(0, levels, (4000, 1, 2, 2), generator=g)
    x1 = (k.double() / (levels - 1) * 2 - 1)
    x0 = torch.randn(x1.shape, generator=g, dtype=torch.float64)
    t = torch.rand(len(x1), generator=g, dtype=torch.float64) * 0.5 + 0.5  # away from t = 0: x1 is recoverable
    width = 2 / (levels - 1)
    net, flow = Recorder(), CFM(dequantize_levels=levels)
    loss = flow.loss(net, x1, x0=x0, t=t, generator=torch.Generator().manual_seed(7))
    x_t = net.seen[0][0]
    tt = t.view(-1, 1, 1, 1)
    seen = (x_t - (1 - tt) * x0) / tt  # the data point the net's input was built from
    u = (seen - x1) / width + 0.5
    # exactly the uniforms of the generator, in order: x~ = x + Delta (u - 1/2)
    expected_u = torch.rand(x1.shape, generator=torch.Generator().manual_seed(7)).double()
    torch.testing.assert_close(u, expected_u, atol=1e-9, rtol=0)
    assert float(u.min()) >= -1e-9 and float(u.max()) < 1 + 1e-9  # inside its own bin
    assert abs(float(u.mean()) - 0.5) < 0.02 and abs(float(u.var()) - 1 / 12) < 0.01  # U[0, 1)
    assert torch.equal(torch.round((seen + 1) / width).long(), k)  # rounds back to the grid value
    torch.testing.assert_close(loss, (seen - x0).pow(2).mean())  # the target is x~ - x0
    flow.loss(net, x1, x0=x0, t=t)  # the next batch (global RNG): fresh u
    assert not torch.allclose(net.seen[1][0], x_t)
    plain = Recorder()
    CFM().loss(plain, x1, x0=x0, t=t)  # off: the grid values
    torch.testing.assert_close(plain.seen[0][0], (1 - tt) * x0 + tt * x1, atol=1e-12, rtol=0)
    for bad in (1, -2, 2.5):
        with pytest.raises(ValueError, match="--dequantize"):
            CFM(dequantize_levels=bad)


# -----------------------------------------------------------------------------
# the losses: L_FM - L_CFM is a constant, on a data set of three points

@pytest.mark.parametrize("sigma_min", [0.0, 0.1])
def test_fm_and_cfm_losses_differ_by_a_network_independent_constant(sigma_min):
    torch.manual_seed(0)
    points = torch.tensor([[2.0, 0.0], [-1.0, 1.5], [0.0, -2.0]], dtype=torch.float64)
    n = 200_000
    g = torch.Generator().manual_seed(1)
    x1 = points[torch.randint(0, 3, (n,), generator=g)]
    x0 = torch.randn(n, 2, generator=g, dtype=torch.float64)
    t = torch.rand(n, generator=g, dtype=torch.float64)
    a = (1 - (1 - sigma_min) * t)[:, None]
    x_t = a * x0 + t[:, None] * x1
    # u_t(x) = sum_k w_k(x) u_t(x | x_1^k), w_k the posterior of point k under p_t(x | x_1^k) = N(t x_1^k, a^2 I)
    logits = -(x_t[:, None] - t[:, None, None] * points[None]).pow(2).sum(-1) / (2 * a ** 2)  # (n, 3)
    w = torch.softmax(logits, 1)
    u_cond_k = (points[None] - (1 - sigma_min) * x_t[:, None]) / a[:, :, None]  # (n, 3, 2)
    u_marg = (w[..., None] * u_cond_k).sum(1)

    nets = [lambda x, s, y: torch.zeros_like(x),
            lambda x, s, y: torch.sin(2 * x) + s[:, None] * x.flip(1)]
    for width in (8, 32):
        mlp = torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.Tanh(), torch.nn.Linear(width, 2)).double()
        nets.append(lambda x, s, y, mlp=mlp: mlp(torch.cat([x, s[:, None]], 1)))
    flow = CFM(sigma_min)
    u_cond = flow.velocity(x0, x1, t)
    gaps = []
    for net in nets:
        cfm_loss = flow.loss(net, x1, x0=x0, t=t)
        fm_loss = (net(x_t, t, None) - u_marg).pow(2).sum(1).mean() / 2  # loss averages over the 2 coordinates
        gaps.append(float((cfm_loss - fm_loss).detach()))
        # Monte-Carlo error of the gap between this net and the zero net: -2 <v, u_cond - u_marg> / 2
        term = (net(x_t, t, None) * (u_cond - u_marg)).sum(1)
        tol = 5 * float(term.std()) / math.sqrt(n) + 1e-9
        assert abs(gaps[-1] - gaps[0]) < tol, (gaps, tol)
    const = float(((u_cond.pow(2).sum(1) - u_marg.pow(2).sum(1)) / 2).mean())
    assert gaps[0] == pytest.approx(const, rel=1e-9)
    assert const > 0.05  # the gap is a real, positive constant (not a trivially equal pair of losses)
    # the gradient identity of the lecture "Generative Modeling" (T.-W. Ke, 2026) on the MLPs' parameters
    mlp = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()
    net = lambda x, s, y: mlp(torch.cat([x, s[:, None]], 1))  # noqa: E731
    g_cfm = torch.autograd.grad(flow.loss(net, x1, x0=x0, t=t), list(mlp.parameters()))
    g_fm = torch.autograd.grad((net(x_t, t, None) - u_marg).pow(2).mean(), list(mlp.parameters()))
    flat = lambda gs: torch.cat([x.flatten() for x in gs])  # noqa: E731
    assert float((flat(g_cfm) - flat(g_fm)).norm()) < 0.03 * float(flat(g_fm).norm())


# -----------------------------------------------------------------------------
# samplers: exact answers on Gaussian data, convergence orders, guidance, NFE

@pytest.mark.parametrize("method,steps,tol", [("euler", 200, 2e-2), ("midpoint", 50, 1e-3), ("rk4", 20, 1e-6)])
@pytest.mark.parametrize("sigma_min", [0.0, 0.2])
def test_sampler_returns_the_gaussian_data_moments(method, steps, tol, sigma_min):
    m, S = gaussian_problem(3)
    noise = whitened_noise(2000, 3)
    x = CFM(sigma_min).sample(gaussian_field(m, S, sigma_min), noise.shape, steps, method, noise=noise)
    cov = S + sigma_min ** 2 * torch.eye(3, dtype=torch.float64)
    assert moments_error(x, m, cov) < tol
    # S and I commute, so the exact flow is x_t = t m + (a^2 I + t^2 S)^{1/2} x_0: x_1 = m + cov^{1/2} x_0
    lam, Q = torch.linalg.eigh(cov)
    assert float((x - m - noise @ (Q @ torch.diag(lam.sqrt()) @ Q.T)).abs().max()) < 5 * tol


@pytest.mark.parametrize("method,order", [("euler", 1), ("midpoint", 2), ("rk4", 4)])
def test_solver_convergence_order(method, order):
    """dx/dt = 2 t x^2 has x(1) = x0 / (1 - x0): halving h must divide the error by 2^order.
    (On the Gaussian flows above the midpoint rule happens to converge at order 3.)"""
    x0 = torch.tensor([[0.3], [-1.0]], dtype=torch.float64)
    exact = x0 / (1 - x0)
    net = lambda x, t, y: 2 * t[:, None] * x ** 2  # noqa: E731
    errs = [float((CFM().sample(net, x0.shape, n, method, noise=x0) - exact).abs().max()) for n in (32, 64)]
    assert 0.8 * 2 ** order < errs[0] / errs[1] < 1.25 * 2 ** order, errs


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
def test_guidance_gives_the_extrapolated_gaussian(method):
    """Two Gaussians with the same S: u_t is affine in the mean m, so guided sampling with w is
    exact sampling of N(m_u + w (m_c - m_u), S)."""
    m_u, S = gaussian_problem(2, seed=1)
    m_c = m_u + torch.tensor([1.0, -0.5], dtype=torch.float64)
    f_u, f_c = gaussian_field(m_u, S), gaussian_field(m_c, S)
    net = Counter(lambda x, t, y: f_u(x, t) if y is None else f_c(x, t))
    noise = whitened_noise(1000, 2)
    y = torch.zeros(1000, dtype=torch.long)
    x = CFM().sample(net, noise.shape, 20, method, y=y, cfg_scale=2.5, noise=noise)
    assert net.calls == 2 * 20 * cfm.STAGES[method]
    m_w = m_u + 2.5 * (m_c - m_u)
    plain = CFM().sample(gaussian_field(m_w, S), noise.shape, 20, method, noise=noise)
    torch.testing.assert_close(x, plain, atol=1e-10, rtol=0)  # the same field, step for step
    if method == "rk4":
        assert moments_error(x, m_w, S) < 1e-5
    net.calls = 0
    CFM().sample(net, noise.shape, 3, method, y=y, noise=noise)  # w = 1: one call per stage
    assert net.calls == 3 * cfm.STAGES[method]


def test_guided_at_w2_is_uncond_plus_w_times_cond_minus_uncond():
    """w = 2, outside {0, 1}: guided = uncond + w (cond - uncond), with a net whose two velocities
    are known, against numbers worked out here. y None or w = 1: one call, the plain network."""
    uncond, cond = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([-1.5, 1.0, 2.5])
    net = Counter(lambda x, t, y: (uncond if y is None else cond).expand_as(x))
    x, t, y = torch.zeros(4, 3), torch.full((4,), 0.3), torch.tensor([0, 1, 0, 1])
    # 0.5 + 2 (-1.5 - 0.5) = -3.5,  -1 + 2 (1 - (-1)) = 3,  2 + 2 (2.5 - 2) = 3
    torch.testing.assert_close(CFM().guided(net, x, t, y, cfg_scale=2.0), torch.tensor([[-3.5, 3.0, 3.0]] * 4),
                               atol=0, rtol=0)
    assert net.calls == 2
    net.calls = 0
    assert torch.equal(CFM().guided(net, x, t, y, cfg_scale=1.0), cond.expand(4, 3)) and net.calls == 1
    net.calls = 0
    assert torch.equal(CFM().guided(net, x, t, None, cfg_scale=2.0), uncond.expand(4, 3)) and net.calls == 1
    # and through the sampler: one Euler step of h = 1 from the noise x_0 gives x_0 + v~
    x0 = torch.randn(4, 3)
    torch.testing.assert_close(CFM().sample(net, x0.shape, 1, "euler", y=y, cfg_scale=2.0, noise=x0),
                               x0 + torch.tensor([-3.5, 3.0, 3.0]))


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
def test_sampler_counts_reproducibility_and_dtype(method):
    net = Counter(lambda x, t, y: -x + t[:, None])
    flow = CFM()
    a = flow.sample(net, (7, 3), steps=5, method=method, generator=torch.Generator().manual_seed(4))
    assert net.calls == 5 * cfm.STAGES[method]
    b = flow.sample(net, (7, 3), steps=5, method=method, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and a.dtype == torch.float32 and a.shape == (7, 3)
    noise = torch.randn(4, 3, dtype=torch.float64)
    assert flow.sample(net, noise.shape, steps=2, method=method, noise=noise).dtype == torch.float64
    with pytest.raises(ValueError):
        flow.sample(net, (2, 3), steps=0, method=method)
    with pytest.raises(ValueError):
        flow.sample(net, (2, 3), steps=2, method="heun")


# -----------------------------------------------------------------------------
# likelihood

@pytest.mark.parametrize("method,steps,tol", [("euler", 400, 5e-2), ("midpoint", 100, 1e-3), ("rk4", 40, 1e-6)])
@pytest.mark.parametrize("sigma_min", [0.0, 0.1])
def test_log_likelihood_matches_the_gaussian_density(method, steps, tol, sigma_min):
    m, S = gaussian_problem(3, seed=2)
    cov = S + sigma_min ** 2 * torch.eye(3, dtype=torch.float64)
    target = torch.distributions.MultivariateNormal(m, cov)
    torch.manual_seed(0)
    x = target.sample((16,))
    ll = CFM(sigma_min).log_likelihood(gaussian_field(m, S, sigma_min), x, steps, method=method)
    torch.testing.assert_close(ll, target.log_prob(x), atol=tol, rtol=0)


@pytest.mark.parametrize("sigma_min", [0.0, 0.1])
def test_rk4_log_likelihood_converges_in_steps(sigma_min):
    """RK4 on Gaussian data: doubling the steps changes log p by less than 1e-6 nats from 40 steps
    on, the change falls about 2^4-fold per doubling, and the figure is the exact log density."""
    m, S = gaussian_problem(3, seed=2)
    cov = S + sigma_min ** 2 * torch.eye(3, dtype=torch.float64)
    target = torch.distributions.MultivariateNormal(m, cov)
    torch.manual_seed(0)
    x = target.sample((16,))
    net, flow = gaussian_field(m, S, sigma_min), CFM(sigma_min)
    ll = {s: flow.log_likelihood(net, x, s, method="rk4") for s in (10, 20, 40, 80)}
    changes = [float((ll[2 * s] - ll[s]).abs().max()) for s in (10, 20, 40)]
    assert changes[2] < 1e-6, changes
    assert 8 < changes[0] / changes[1] < 32, changes  # fourth order
    torch.testing.assert_close(ll[80], target.log_prob(x), atol=1e-7, rtol=0)


class FieldNet(torch.nn.Module):
    """A closed-form field on images (B, C, H, W), flattened for f(x, t); a parameter for its device."""
    def __init__(self, f):
        super().__init__()
        self.f, self.anchor = f, torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x, t, y=None):
        return self.f(x.flatten(1), t).view_as(x)


def gaussian_images(m, S, shape, n=40, levels=17, seed=0):
    """A data set of n grid images on `levels` levels, with the exact field of N(m, S) as the model."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, levels, (n, *shape), generator=g).double() / (levels - 1) * 2 - 1
    y = torch.zeros(n, dtype=torch.long)
    return common.Dataset("gauss", x, y, x, y, 0, levels=levels), FieldNet(gaussian_field(m, S))


def test_held_out_bits_per_dim_is_converged_and_exact_on_gaussian_images(capsys):
    """--bpd's figure on data whose density is known: p = N(m, S) over 2x2 images (exact
    divergence), RK4 at S and 2S; the reported figure is the exact bits/dim of the same
    dequantized points, and the line says converged."""
    m, S = gaussian_problem(4, seed=3)
    data, net = gaussian_images(m, S, (1, 2, 2))
    r = cfm.held_out_bits_per_dim(CFM(), net, data, 30, False, seed=5, steps=20, dequantized=True)
    x_deq = cfm.dequantize(data.x_test[:30], 17, torch.Generator().manual_seed(5))
    exact = cfm.bits_per_dim(torch.distributions.MultivariateNormal(m, S).log_prob(x_deq.flatten(1)), 4, 17)
    assert r["bits_per_dim"] == pytest.approx(float(exact.mean()), abs=1e-6)
    assert abs(r["bits_per_dim"] - r["bits_per_dim_half_steps"]) < 1e-4 and r["bpd_converged"]
    assert r["bpd_steps"] == 40 and r["bpd_half_steps"] == 20 and r["bpd_solver"] == "rk4" and r["bpd_n"] == 30
    assert r["bpd_divergence"] == "exact" and r["bits_per_dim_stderr"] > 0
    line = capsys.readouterr().out
    assert "converged" in line and "NOT" not in line and "rk4 x 40" in line and "dequantized" in line


def test_held_out_bits_per_dim_reports_a_coarse_solver_as_not_converged(capsys):
    """Data concentrated near its mean (S = 0.02 I): the field is stiff near t = 1, RK4 with 1 and
    2 steps differ by far more than 0.01 bits/dim, and the line says NOT converged."""
    m = torch.zeros(4, dtype=torch.float64)
    data, net = gaussian_images(m, 0.02 * torch.eye(4, dtype=torch.float64), (1, 2, 2))
    r = cfm.held_out_bits_per_dim(CFM(), net, data, 20, False, seed=0, steps=1)
    assert abs(r["bpd_step_change"]) >= 0.01 and not r["bpd_converged"]
    assert r["bpd_step_change"] == pytest.approx(r["bits_per_dim"] - r["bits_per_dim_half_steps"])
    assert "NOT converged" in capsys.readouterr().out
    r = cfm.held_out_bits_per_dim(CFM(), net, data, 20, False, seed=0, steps=64)  # enough steps: converged
    assert r["bpd_converged"] and "NOT" not in capsys.readouterr().out


def test_held_out_bits_per_dim_uses_the_same_probes_for_both_step_counts():
    """D = 20 > 16: Hutchinson, one probe per image. Its noise is large per image, but S and 2S see
    the same points, dequantization and probes, so on a smooth field their difference is the
    solver's alone (tiny); and the figure is the exact one within the stated standard error."""
    m, S = gaussian_problem(20, seed=4)
    data, net = gaussian_images(m, S, (1, 4, 5), n=200)
    r = cfm.held_out_bits_per_dim(CFM(), net, data, 200, False, seed=1, steps=8)
    assert r["bpd_divergence"] == "hutchinson" and r["bpd_probes"] == 1
    assert abs(r["bpd_step_change"]) < 1e-4, r
    x_deq = cfm.dequantize(data.x_test, 17, torch.Generator().manual_seed(1))
    exact = cfm.bits_per_dim(torch.distributions.MultivariateNormal(m, S).log_prob(x_deq.flatten(1)), 20, 17)
    assert abs(r["bits_per_dim"] - float(exact.mean())) < 4 * r["bits_per_dim_stderr"], (r, float(exact.mean()))


def test_hutchinson_is_unbiased_and_exact_divergence_is_exact():
    d = 20  # above the "auto" threshold: Hutchinson
    m, S = gaussian_problem(d, seed=5)
    S = S / 4  # log det S = -17: the divergence integral carries most of log p
    net = gaussian_field(m, S)
    target = torch.distributions.MultivariateNormal(m, S)
    torch.manual_seed(1)
    x = target.sample((2,))
    exact = target.log_prob(x)
    flow = CFM()
    torch.testing.assert_close(flow.log_likelihood(net, x, 10, method="rk4", divergence="exact"), exact, atol=1e-3, rtol=0)
    reps = x.repeat_interleave(1500, 0)
    est = flow.log_likelihood(net, reps, 10, method="rk4", generator=torch.Generator().manual_seed(0)).view(2, 1500)
    stderr = est.std(1) / math.sqrt(1500)
    assert torch.all(stderr > 1e-3)  # really an estimate
    assert torch.all((est.mean(1) - exact).abs() < 4 * stderr + 1e-3), (est.mean(1), exact, stderr)
    assert torch.all(stderr < 0.1)
    again = flow.log_likelihood(net, reps[:5], 10, method="rk4", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, est[0, :5])  # the generator decides the probes


def test_log_likelihood_on_images_with_a_unet():
    net = common.make_net("unet", (1, 8, 8), 8, 10, False, 1000.0)
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    ll = CFM().log_likelihood(net, x, 2, y=torch.tensor([0, 1, 2]), method="euler", generator=torch.Generator().manual_seed(0))
    assert ll.shape == (3,) and torch.isfinite(ll).all()
    # an untrained UNet outputs zero (zero-initialised last layer): the flow is the identity
    torch.testing.assert_close(ll, torch.distributions.Normal(0.0, 1.0).log_prob(x).flatten(1).sum(1))


def test_hutchinson_matches_the_exact_divergence_through_a_perturbed_unet():
    """A UNet whose weights are all perturbed (a non-trivial field, D = 64): the exact divergence
    and the mean of many Hutchinson estimates give the same log-likelihood."""
    torch.manual_seed(0)
    net = common.make_net("unet", (1, 8, 8), 8, 0, False, 1000.0)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.rand(1, 1, 8, 8) * 2 - 1
    flow = CFM()
    exact = flow.log_likelihood(net, x, 2, method="euler", divergence="exact")
    gauss = torch.distributions.Normal(0.0, 1.0).log_prob(x).sum()
    assert (exact - gauss).abs() > 0.1  # the field is not the identity flow
    est = flow.log_likelihood(net, x.repeat(400, 1, 1, 1), 2, method="euler", divergence="hutchinson",
                              generator=torch.Generator().manual_seed(0))
    stderr = est.std() / math.sqrt(len(est))
    assert (est.mean() - exact).abs() < 4 * stderr + 1e-4, (est.mean(), exact, stderr)


@settings(deadline=None, max_examples=10)
@given(levels=st.sampled_from([2, 17, 256]), seed=st.integers(0, 10 ** 6))
def test_dequantization_and_bits_per_dim(levels, seed):
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, levels, (50, 6), generator=g)
    x = k.double() / (levels - 1) * 2 - 1
    x_deq = cfm.dequantize(x, levels, g)
    width = 2 / (levels - 1)
    assert torch.equal(torch.round((x_deq + 1) / width).long(), k)  # each point stays in its own bin
    assert float((x_deq - x).abs().max()) <= width / 2
    # the uniform density on the union of the bins, (levels * width)^-D, scores log2(levels) bits/dim
    log_uniform = torch.full((50,), -6 * math.log(levels * width), dtype=torch.float64)
    torch.testing.assert_close(cfm.bits_per_dim(log_uniform, 6, levels),
                               torch.full((50,), math.log2(levels), dtype=torch.float64))


# -----------------------------------------------------------------------------
# the diffusion paths (VP, VE) and the time change between paths

PATH_CASES = [("ot", 0.0), ("ot", 0.2), ("vp", None), ("vp", 0.05), ("ve", None), ("ve", 0.05)]


def vp_alpha(s):
    """alpha_s = exp(-T(s) / 2), T(s) = int_0^s beta, beta linear from 0.1 to 20: written out here."""
    return torch.exp(-(0.1 * s + 19.9 * s ** 2 / 2) / 2)


def coefficients(flow, t):
    """(a, b, a', b') of x_t = a x_1 + b x_0 read off flow.psi by autograd (not from flow.schedule)."""
    one, zero = torch.ones(len(t), 1, dtype=torch.float64), torch.zeros(len(t), 1, dtype=torch.float64)
    a, da = torch.func.jvp(lambda s: flow.psi(zero, one, s), (t,), (torch.ones_like(t),))
    b, db = torch.func.jvp(lambda s: flow.psi(one, zero, s), (t,), (torch.ones_like(t),))
    return a[:, 0], b[:, 0], da[:, 0], db[:, 0]


def exact_path_field(flow, m, S):
    """The marginal field of data N(m, S) on any path x_t = a x_1 + b x_0: (x_t, V = a' x_1 + b' x_0) are
    jointly Gaussian, so u_t(x) = E[V | x_t = x] = a' m + C Sigma^{-1} (x - a m), Sigma = a^2 S + b^2 I,
    C = Cov(V, x_t) = a a' S + b b' I."""
    eye = torch.eye(len(m), dtype=torch.float64)

    def net(x, t, y=None):
        a, b, da, db = (c.view(-1, 1, 1) for c in coefficients(flow, t.double()))
        cov, cross = a ** 2 * S + b ** 2 * eye, a * da * S + b * db * eye
        dx = (x.double() - a[:, :, 0] * m)[..., None]
        return (da[:, :, 0] * m + (cross @ torch.linalg.solve(cov, dx))[..., 0]).to(x.dtype)
    return net


def sqrtm(M):
    lam, Q = torch.linalg.eigh(M)
    return Q @ torch.diag(lam.sqrt()) @ Q.T


def marginal(flow, m, S, t):
    """(mean, cov) of p_t for data N(m, S)."""
    a, b, _, _ = coefficients(flow, torch.tensor([float(t)], dtype=torch.float64))
    return a * m, a ** 2 * S + b ** 2 * torch.eye(len(m), dtype=torch.float64)


@settings(deadline=None, max_examples=20)
@given(case=st.sampled_from(PATH_CASES), batch=st.integers(1, 5), shape=st.sampled_from([(2,), (1, 3, 3)]),
       seed=st.integers(0, 10 ** 6))
def test_each_path_velocity_is_d_dt_psi_and_the_lectures_field(case, batch, shape, seed):
    path, sigma_min = case
    g = torch.Generator().manual_seed(seed)
    x0, x1 = (torch.randn(batch, *shape, generator=g, dtype=torch.float64) for _ in range(2))
    t = torch.rand(batch, generator=g, dtype=torch.float64)
    t[0] = 1.0 if seed % 2 else 0.0  # the ends too: finite, thanks to the floors
    flow = CFM(sigma_min, path=path)
    x_t, dpsi_dt = torch.func.jvp(lambda s: flow.psi(x0, x1, s), (t,), (torch.ones_like(t),))
    torch.testing.assert_close(flow.velocity(x0, x1, t), dpsi_dt, rtol=1e-9, atol=1e-9)
    ok = (flow.psi(torch.ones(1), torch.zeros(1), t) > 0).view(-1)  # b_t > 0 (ot, sigma_min = 0: 0 / 0 at t = 1)
    torch.testing.assert_close(flow.field(x_t, x1, t)[ok], dpsi_dt[ok], rtol=1e-9, atol=1e-9)  # Eqs. 17 / 19
    assert torch.isfinite(dpsi_dt).all()
    # the path written out independently: x_t = a_t x_1 + b_t x_0
    sig = cfm.SIGMA_MIN[path] if sigma_min is None else sigma_min
    tt = t.view(-1, *[1] * len(shape))
    if path == "ot":
        want = (1 - (1 - sig) * tt) * x0 + tt * x1
    elif path == "vp":
        s = 1 - (1 - flow.s_min) * tt
        want = vp_alpha(s) * x1 + (1 - vp_alpha(s) ** 2).sqrt() * x0
    else:
        want = x1 + sig * (10.0 / sig) ** (1 - tt) * x0
    torch.testing.assert_close(x_t, want, rtol=1e-12, atol=1e-12)
    # the noise left at t = 1 is sigma_min on every path; VP's signal there is sqrt(1 - sigma_min^2)
    a1, b1, _, _ = coefficients(flow, torch.ones(1, dtype=torch.float64))
    assert float(b1) == pytest.approx(sig, rel=1e-9, abs=1e-15)
    assert float(a1) == pytest.approx(math.sqrt(1 - sig ** 2) if path == "vp" else 1.0, rel=1e-12)


class SpyField:
    """A stand-in velocity network: records what the loss feeds it and returns a fixed output."""

    def __init__(self, out):
        self.out, self.seen = out, {}

    def __call__(self, x_t, t, y=None):
        self.seen.update(x_t=x_t.clone(), t=t.clone(), y=y)
        return self.out


@pytest.mark.parametrize("path", ["ot", "vp", "ve"])
def test_loss_feeds_each_path_and_regresses_its_velocity(path):
    """On known x_0 (noise), x_1 (data) and t from 0 to 1, both ends included, the network sees t
    and x_t = a_t x_1 + b_t x_0 as the module docstring writes it (ot: (1 - t) x_0 + t x_1;
    vp: alpha_s x_1 + sqrt(1 - alpha_s^2) x_0, s = 1 - (1 - s_min) t;
    ve: x_1 + sigma_min (sigma_max / sigma_min)^(1 - t) x_0): at t = 0 the noise (vp: alpha_1 x_1 +
    sqrt(1 - alpha_1^2) x_0, alpha_1 = e^{-10.05 / 2}; ve: x_1 + sigma_max x_0), at t = 1 the data
    with sigma_min's noise; the loss is the mean of (out - d/dt x_t)^2, d/dt x_t by forward-mode AD
    of those formulas, and the exact target's loss is 0 (a flipped one's is not)."""
    flow = CFM(path=path)
    sig, smax = flow.sigma_min, flow.sigma_max
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(9, 3, generator=g, dtype=torch.float64)
    x1 = torch.randn(9, 3, generator=g, dtype=torch.float64) + 2  # data away from the noise's mean
    t = torch.linspace(0, 1, 9, dtype=torch.float64)

    def path_at(s):  # x_t at the times s (9,), written out from the docstring
        s = s[:, None]
        if path == "ot":
            return (1 - s) * x0 + s * x1
        if path == "vp":
            u = 1 - (1 - flow.s_min) * s
            return vp_alpha(u) * x1 + (1 - vp_alpha(u) ** 2).sqrt() * x0
        return x1 + sig * (smax / sig) ** (1 - s) * x0
    want, velocity = torch.func.jvp(path_at, (t,), (torch.ones_like(t),))
    out = torch.randn(9, 3, generator=g, dtype=torch.float64)
    net = SpyField(out)
    loss = flow.loss(net, x1, x0=x0, t=t)
    assert torch.equal(net.seen["t"], t) and net.seen["y"] is None
    torch.testing.assert_close(net.seen["x_t"], want, rtol=1e-12, atol=1e-12)
    a0 = {"ot": 0.0, "vp": math.exp(-10.05 / 2), "ve": 1.0}[path]  # the signal left at t = 0
    b0 = {"ot": 1.0, "vp": math.sqrt(1 - a0 ** 2), "ve": smax}[path]
    a1 = math.sqrt(1 - sig ** 2) if path == "vp" else 1.0  # t = 1: the data, noise of std sigma_min
    close = dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(net.seen["x_t"][0], a0 * x1[0] + b0 * x0[0], **close)
    torch.testing.assert_close(net.seen["x_t"][-1], a1 * x1[-1] + sig * x0[-1], **close)
    if path == "ot":
        torch.testing.assert_close(velocity, x1 - x0, **close)
    if path == "ve":  # -log(sigma_max / sigma_min) sigma_{1-t} x_0
        torch.testing.assert_close(velocity, -math.log(smax / sig) * (want - x1), **close)
    torch.testing.assert_close(loss, (out - velocity).pow(2).mean(), rtol=1e-10, atol=0)
    assert flow.loss(SpyField(velocity), x1, x0=x0, t=t) < 1e-20
    assert flow.loss(SpyField(-velocity), x1, x0=x0, t=t) > 1.0


@pytest.mark.parametrize("sigma_min", [None, 0.001, 0.2])
def test_the_lectures_two_forms_of_the_vp_field_agree(sigma_min):
    """Eq. 19: alpha'_{1-t} / (1 - alpha_{1-t}^2) (alpha_{1-t} x - x_1)
    = -T'(1-t) / 2 (e^{-T(1-t)} x - e^{-T(1-t)/2} x_1) / (1 - e^{-T(1-t)}), at any x (off the path too),
    with 1 - t replaced by s = 1 - (1 - s_min) t and the chain-rule factor 1 - s_min."""
    flow = CFM(sigma_min, path="vp")
    g = torch.Generator().manual_seed(0)
    x, x1 = torch.randn(64, 3, generator=g, dtype=torch.float64), torch.randn(64, 3, generator=g, dtype=torch.float64)
    t = torch.linspace(0, 1, 64, dtype=torch.float64)
    s = (1 - (1 - flow.s_min) * t)[:, None]
    T, dT = 0.1 * s + 19.9 * s ** 2 / 2, 0.1 + 19.9 * s  # T(s), T'(s) = beta(s)
    second = (1 - flow.s_min) * -dT / 2 * (torch.exp(-T) * x - torch.exp(-T / 2) * x1) / (1 - torch.exp(-T))
    torch.testing.assert_close(flow.field(x, x1, t), second, rtol=1e-8, atol=0)  # 1 - e^{-T} cancels at small T
    # the endpoints: p_0(x | x_1) = N(alpha_1 x_1, (1 - alpha_1^2) I), alpha_1 = exp(-10.05 / 2) = 0.0066
    a0, b0, _, _ = coefficients(flow, torch.zeros(1, dtype=torch.float64))
    assert float(a0) == pytest.approx(math.exp(-10.05 / 2), rel=1e-12) and float(a0 ** 2 + b0 ** 2) == pytest.approx(1)


def test_vp_path_is_ddpm_kernel_at_the_matched_noise_level():
    """q(x_t | x_1) of the VP path and ddpm.py's q(x_k | x_0) are the same family: at the t with
    alpha_{1-t}^2 = alpha_bar_k the two draws coincide for the same (x_1, eps); and the matched t is
    close to the continuous limit's t = 1 - k / K (log alpha_bar_k = -T(k / K) up to sum beta^2 / 2)."""
    import ddpm
    diffusion = ddpm.DDPM(1000, "linear")
    flow = CFM(path="vp")
    g = torch.Generator().manual_seed(0)
    x1, eps = torch.randn(7, 1, 4, 4, generator=g, dtype=torch.float64), torch.randn(7, 1, 4, 4, generator=g, dtype=torch.float64)
    k = torch.tensor([1, 10, 100, 250, 500, 750, 1000])
    ab = diffusion.alpha_bar[k]
    t = flow.snr_time((ab / (1 - ab)).sqrt())
    # inside [0, 1] but for k = K: ddpm.py's alpha_bar_K = 4.0e-5 is a little below VP's alpha_1^2 = e^{-10.05}
    # = 4.3e-5 (sum beta_j < T(1), but prod (1 - beta_j) < e^{-sum beta_j}); the formulas extend to t = -0.0034
    assert float(t[:-1].min()) >= 0 and float(t.max()) <= 1 + 1e-12 and -0.01 < float(t[-1]) < 0  # k = 1: sigma_min
    torch.testing.assert_close(flow.psi(eps, x1, t), diffusion.q_sample(x1, k, eps), rtol=1e-10, atol=1e-12)
    # the continuous limit: beta(k / K) = K beta_k, so T(k / K) ~ sum_j beta_j ~ -log alpha_bar_k
    s = k.double() / 1000
    t_limit = (1 - s) / (1 - flow.s_min)
    a, _, _, _ = coefficients(flow, t_limit)
    gap = (a ** 2).log() - ab.log()  # -T(s) - log alpha_bar_k = sum_j (-log(1 - beta_j) - beta_j) + O(beta / K)
    bound = (diffusion.beta[1:] ** 2).cumsum(0)[k - 1] + 0.02
    assert torch.all(gap.abs() < bound), (gap, bound)
    assert float((t - t_limit).abs().max()) < 0.02


@pytest.mark.parametrize("path", ["ot", "vp", "ve"])
def test_exact_gaussian_field_carries_each_paths_marginals(path):
    """Data N(m, S), the exact marginal field of each path, RK4: started from the exact p_0 the sampler
    ends on the data (blurred by sigma_min) point by point, x_1 = mu_1 + Sigma_1^{1/2} Sigma_0^{-1/2}
    (x_0 - mu_0) (all Sigma_t commute); started from the path's prior N(0, p^2 I) (CFM.sample) it ends on
    the push-forward N(mu_1 - A mu_0, p^2 A^2), A = Sigma_1^{1/2} Sigma_0^{-1/2}, the prior mismatch of the
    path: none for ot, alpha_1 = 0.0066 for vp, mean x_1 at t = 0 for ve."""
    m, S = gaussian_problem(3)
    flow = CFM(path=path)
    net = exact_path_field(flow, m, S)
    mu0, cov0 = marginal(flow, m, S, 0.0)
    mu1, cov1 = marginal(flow, m, S, 1.0)
    A = sqrtm(cov1) @ torch.linalg.inv(sqrtm(cov0))
    eps = whitened_noise(2000, 3)
    x0 = mu0 + eps @ sqrtm(cov0)  # exact samples of p_0, as standard draws for sample(): x_0 = prior_std eps
    x = flow.sample(net, eps.shape, 100, "rk4", noise=x0 / flow.prior_std)
    torch.testing.assert_close(x, mu1 + (x0 - mu0) @ A, atol=1e-6, rtol=0)
    # the data at t = 1: N(m, S + sigma_min^2 I) on ot and ve, N(a m, a^2 S + sigma_min^2 I), a^2 = 1 - sigma_min^2, on vp
    data_mean, data_cov = mu1, cov1
    if path != "vp":
        torch.testing.assert_close(mu1, m)
        torch.testing.assert_close(cov1, S + flow.sigma_min ** 2 * torch.eye(3, dtype=torch.float64))
    assert moments_error(x, data_mean, data_cov) < 1e-6
    x = flow.sample(net, eps.shape, 100, "rk4", noise=eps)
    p = flow.prior_std
    push_mean, push_cov = mu1 - A @ mu0, p ** 2 * A @ A
    assert moments_error(x, push_mean, push_cov) < 1e-6
    mismatch = float((push_mean - data_mean).abs().max() + (push_cov - data_cov).abs().max())
    # ve: mean offset A m ~ S^{1/2} m / sigma_max (|m| ~ 2.2 here), covariance shrunk by S / (S + sigma_max^2)
    assert mismatch < {"ot": 1e-12, "vp": 0.02, "ve": 0.3}[path], mismatch
    if path != "ot":
        assert mismatch > 1e-4  # a real, if small, mismatch: the diffusion paths do not start at their prior
    # the likelihood with the exact field is the push-forward's log density (the data's, up to the mismatch)
    torch.manual_seed(0)
    target = torch.distributions.MultivariateNormal(data_mean, data_cov)
    pts = target.sample((16,))
    ll = flow.log_likelihood(net, pts, 100, method="rk4")
    torch.testing.assert_close(ll, torch.distributions.MultivariateNormal(push_mean, push_cov).log_prob(pts),
                               atol=1e-5, rtol=0)  # RK4 x 100; ve's field has rate log(sigma_max / sigma_min) = 6.9
    assert float((ll - target.log_prob(pts)).abs().max()) < {"ot": 1e-6, "vp": 0.05, "ve": 1.0}[path]  # the mismatch


@pytest.mark.parametrize("path", ["vp", "ve"])
def test_time_change_of_the_ot_field_is_the_other_paths_exact_field(path):
    """psi_B(t) = k_t psi_ot(tau_t) with tau matching a/b: the OT marginal field of Gaussian data,
    reparameterized, is the exact VP / VE marginal field at every (x, t)."""
    m, S = gaussian_problem(3, seed=1)
    ot, other = CFM(), CFM(path=path)
    field = other.reparameterized(exact_path_field(ot, m, S), ot)
    g = torch.Generator().manual_seed(0)
    t = torch.rand(50, generator=g, dtype=torch.float64)
    t[:2] = torch.tensor([0.0, 1.0])
    x = torch.randn(50, 3, generator=g, dtype=torch.float64) * other.schedule(t)[1][:, None] + m
    torch.testing.assert_close(field(x, t), exact_path_field(other, m, S)(x, t), rtol=1e-8, atol=1e-8)
    # VP is OT on tau = a / (a + b), scaled by a + b
    if path == "vp":
        a, b, _, _ = other.schedule(t)
        torch.testing.assert_close(other.psi(x, m.expand(50, 3), t),
                                   (a + b)[:, None] * ot.psi(x, m.expand(50, 3), a / (a + b)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", ["vp", "ve"])
def test_a_model_of_one_path_sampled_under_anothers_time_change_reaches_the_same_endpoints(path):
    """Any field v trained on the OT path (here a random MLP), sampled as a `path` model through
    reparameterized, lands where the OT ODE from the corresponding point lands: x^B(1) = k_1 x^ot(tau_1)
    from x^ot(tau_0) = x^B(0) / k_0. (The converse, a VP model sampled as OT, leaves VP's range: refused.)"""
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2)).double()
    net = lambda x, s, y=None: mlp(torch.cat([x, s[:, None]], 1))  # noqa: E731
    ot, other = CFM(), CFM(path=path)
    eps = torch.randn(20, 2, dtype=torch.float64)
    ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
    a, b, _, _ = other.schedule(ends)
    tau = ot.snr_time(a / b)
    k = b / ot.schedule(tau)[1]
    state, n = (other.prior_std * eps / k[0],), 2000  # the OT ODE on [tau_0, tau_1]
    h = float(tau[1] - tau[0]) / n
    with torch.no_grad():
        for i in range(n):
            state = cfm.ode_step(lambda st, s: (net(st[0], torch.full((20,), s, dtype=torch.float64)),), state,
                                 float(tau[0]) + i * h, h, "rk4")
    errs = [float((other.sample(other.reparameterized(net, ot), eps.shape, steps, "rk4", noise=eps)
                   - k[1] * state[0]).abs().max()) for steps in (200, 800)]
    # the gap is the solvers' alone: it shrinks faster than h^2 (VP's time change is stiff as t -> 1: about h^3 there)
    assert errs[1] < {"vp": 1e-4, "ve": 1e-9}[path] and errs[0] / errs[1] > 30, errs
    with pytest.raises(ValueError, match="range"):
        CFM().sample(CFM().reparameterized(net, CFM(path="vp")), (3, 2), 2)  # OT's t = 0 is beyond VP's noise


def test_path_hyperparameters_are_checked():
    for bad in (dict(path="sde"), dict(path="ve", sigma_min=0.0), dict(path="vp", sigma_min=0.0),
                dict(path="vp", sigma_min=1.0), dict(path="ve", sigma_min=0.1, sigma_max=0.05),
                dict(path="ve", sigma_max=float("inf")), dict(path="ot", sigma_min=-0.1)):
        with pytest.raises(ValueError, match="--path|--sigma"):
            CFM(**bad)
    assert CFM(path="ve").prior_std == 10.0 and CFM(path="vp").prior_std == 1.0 and CFM().sigma_min == 0.0


@pytest.mark.parametrize("path", ["vp", "ve"])
def test_cli_trains_and_samples_each_path(path, tmp_path):
    out = tmp_path / path
    q = cfm.main(["--data", "moons", "--path", path, "--sigma-max", "5", "--iters", "20", "--batch-size", "64",
                  "--width", "32", "--n-eval", "50", "--steps", "2", "--out", str(out), "--device", "cpu"])
    assert q["metric"] == "W2" and math.isfinite(q["value"])
    saved = torch.load(out / "ckpt.pt", weights_only=True)["args"]
    assert saved["path"] == path and saved["sigma_min"] == 0.01 and saved["sigma_max"] == 5.0
    q2 = cfm.main(["--ckpt", str(out / "ckpt.pt"), "--n-eval", "50", "--steps", "2", "--device", "cpu"])
    assert q2["value"] == q["value"]  # the checkpoint's path and prior: the same samples


@pytest.mark.parametrize("name", ["digits", "digits32", "checkerboard", "moons", "8gaussians"])
def test_default_sigma_max_is_at_least_the_largest_distance_between_training_points(name, monkeypatch):
    """Song et al.'s rule for VE's prior, sigma_max ~ the largest distance between training points,
    with the default --sigma-max the command line gives each bundled data set (the module docstring)."""
    class Parsed(Exception):
        pass

    parse = common.parse_args

    def parsed(*a, **k):  # the flags as the command line resolves them, then stop
        raise Parsed(parse(*a, **k)[0])
    monkeypatch.setattr(common, "parse_args", parsed)
    with pytest.raises(Parsed) as e:
        cfm.main(["--data", name, "--path", "ve"])
    x = common.load_data(name).x_train.flatten(1).double()
    if x.shape[1] == 2:  # 2-D points: the farthest pair lies on the convex hull
        from scipy.spatial import ConvexHull
        x = x[torch.from_numpy(ConvexHull(x.numpy()).vertices)]
    assert float(torch.cdist(x, x).max()) <= e.value.args[0].sigma_max


# -----------------------------------------------------------------------------
# learning and the command line

def test_short_training_learns_8gaussians():
    torch.manual_seed(0)
    data = common.load_data("8gaussians")
    net = common.make_net("mlp", (2,), 64, 0, False, 1000.0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    flow, g = CFM(coupling="ot"), torch.Generator().manual_seed(0)
    for _ in range(250):
        x1 = data.x_train[torch.randint(0, len(data.x_train), (128,), generator=g)]
        loss = flow.loss(net, x1, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    test = data.x_test[:500]
    x = flow.sample(net, (500, 2), steps=5, method="midpoint", generator=torch.Generator().manual_seed(1))
    w2_model, w2_noise = common.w2_exact(x, test), common.w2_exact(torch.randn(500, 2), test)
    # W2 between 500 real points and the held-out ones is about 0.33, from the noise about 1
    assert w2_model < 0.5 * w2_noise, (w2_model, w2_noise)


def test_cli_help_and_bad_flags(capsys):
    with pytest.raises(SystemExit) as e:
        cfm.main(["--help"])
    assert e.value.code == 0 and "--coupling" in capsys.readouterr().out
    for bad, words in ((["--steps", "0"], "--steps and --bpd-steps must be at least 1"),
                       (["--solver", "heun"], "invalid choice: 'heun'"), (["--sigma-min", "1.5"], "--sigma-min must be in"),
                       (["--coupling", "sinkhorn"], "invalid choice: 'sinkhorn'"),
                       (["--data", "moons", "--bpd", "10"], "moons is 2-D points"), (["--bpd", "-1"], "got -1"),
                       (["--bpd-steps", "0"], "--bpd-steps must be at least 1"),
                       (["--data", "moons", "--dequantize"], "--dequantize are for images"),
                       (["--path", "sde"], "invalid choice: 'sde'"),
                       (["--path", "ve", "--sigma-min", "0"], "--path ve needs 0 < --sigma-min < --sigma-max"),
                       (["--path", "vp", "--sigma-min", "0"], "for --path vp"),
                       (["--path", "ve", "--sigma-max", "0.001"], "got 0.01 and 0.001")):
        with pytest.raises(SystemExit) as e:
            cfm.main(bad)
        err = capsys.readouterr().err
        assert e.value.code == 2 and words in err, (bad, err)


def test_cli_train_then_sample_only(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--data", "moons", "--iters", "30", "--batch-size", "64", "--width", "32", "--n-eval", "50",
            "--log-every", "10", "--out", str(out), "--coupling", "ot", "--steps", "2", "--device", "cpu"]
    q = cfm.main(args)
    assert (out / "ckpt.pt").exists() and (out / "samples.png").exists() and q["metric"] == "W2"
    assert torch.load(out / "ckpt.pt", weights_only=True)["args"]["dequantize"] is False  # off without --bpd
    q2 = cfm.main(["--ckpt", str(out / "ckpt.pt"), "--solver", "rk4", "--steps", "1", "--n-eval", "50", "--device", "cpu"])
    assert q2["metric"] == "W2" and math.isfinite(q2["value"])
    with pytest.raises(SystemExit) as e:  # a checkpoint that is not there
        cfm.main(["--ckpt", str(tmp_path / "missing.pt")])
    assert e.value.code == 2 and "missing.pt not found" in capsys.readouterr().err


def test_cli_bits_per_dim_on_digits(tmp_path, monkeypatch, capsys):
    # the Frechet distance needs the feature classifier (trained once, slow): not what this tests
    monkeypatch.setattr(common, "quality", lambda data, samples, root=None: {"metric": "FD", "value": 0.0, "floor": 0.0,
                                                                             "floor_sd": 0.0, "n": len(samples)})
    out = tmp_path / "digits"
    q = cfm.main(["--iters", "3", "--batch-size", "16", "--width", "8", "--n-eval", "10", "--uncond",
                  "--bpd", "6", "--bpd-steps", "1", "--out", str(out), "--device", "cpu"])
    assert (out / "ckpt.pt").exists() and (out / "samples.png").exists()
    # --bpd trains on dequantized data by default, and the checkpoint says so
    assert torch.load(out / "ckpt.pt", weights_only=True)["args"]["dequantize"] is True
    # 3 steps barely move the net from the identity flow: about the N(0, I) density's bits/dim (~3 + 1.4)
    assert 3.5 < q["bits_per_dim"] < 5.5 and q["bpd_n"] == 6
    assert q["bpd_steps"] == 2 and q["bpd_half_steps"] == 1 and q["bpd_dequantized_training"] is True
    assert "trained on dequantized data" in capsys.readouterr().out
    # the checkpoint's EMA network, without sampling, gives the same figure (same seed, same draws)
    q2 = cfm.main(["--ckpt", str(out / "ckpt.pt"), "--n-eval", "0", "--bpd", "6", "--bpd-steps", "1",
                   "--device", "cpu"])
    assert "metric" not in q2 and q2["bits_per_dim"] == q["bits_per_dim"] and q2["bpd_dequantized_training"]
    # --no-dequantize trains on the grid values
    cfm.main(["--iters", "2", "--batch-size", "16", "--width", "8", "--n-eval", "0", "--uncond", "--bpd", "2",
              "--bpd-steps", "1", "--no-dequantize", "--out", str(tmp_path / "grid"), "--device", "cpu"])
    assert torch.load(tmp_path / "grid" / "ckpt.pt", weights_only=True)["args"]["dequantize"] is False
    assert "trained on the grid values" in capsys.readouterr().out


# -----------------------------------------------------------------------------
# the sampling path (--trajectory)

@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
@pytest.mark.parametrize("path", ["ot", "ve"])
def test_trajectory_starts_at_the_noise_and_ends_at_the_samples(method, path):
    flow, net = CFM(path=path, sigma_max=5.0), common.make_net("mlp", (2,), 16, time_scale=1000.0)
    noise, states = torch.randn(5, 2), []
    x = flow.sample(net, (5, 2), steps=3, method=method, noise=noise, trajectory=states)
    assert len(states) == 3 + 1 and torch.equal(states[-1], x)
    assert torch.equal(states[0], noise if path == "ot" else flow.prior_std * noise)  # x_0 = prior_std eps
    assert torch.equal(x, flow.sample(net, (5, 2), steps=3, method=method, noise=noise))


def test_cli_trajectory_and_strip(tmp_path):
    tiny = ["--iters", "2", "--width", "8", "--batch-size", "16", "--n-eval", "0", "--steps", "3", "--trajectory", "4"]
    cfm.main(["--data", "checkerboard", "--coupling", "ot", "--out", str(tmp_path / "2d"), *tiny])
    cfm.main(["--out", str(tmp_path / "digits"), *tiny])
    for name, width in (("2d/trajectory.png", 512), ("digits/strip.png", 2 + 4 * 34)):  # strip: 4 columns, 3 steps
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(data[16:20], "big") == width
