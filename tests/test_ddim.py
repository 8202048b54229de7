"""Tests of ddim.py: the generalized step against DDPM's posterior and the marginals q(x_t | x_0),
the visited times, the sampler and the inversion on Gaussian data with the closed-form optimal
eps, guidance, and the command line (including sampling a ddpm.py checkpoint)."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import common
import ddim
import ddpm

T = 1000


def linear_alpha_bar(T):
    """alpha_bar_0..T of the linear schedule, computed here independently of both model files."""
    beta = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - beta, 0)])


def gaussian_eps_net(alpha_bar, means, S):
    """The optimal eps for data N(m_y, S): E[eps | x_t] = sqrt(1 - a_t) C_t^{-1} (x_t - sqrt(a_t) m_y),
    C_t = a_t S + (1 - a_t) I. means[y] per label; means[-1] (the null class) for y=None."""
    def net(x, t, y):  # x (B, D)
        a = alpha_bar[t.cpu()].to(x.dtype).view(-1, 1, 1)
        C = a * S.to(x.dtype) + (1 - a) * torch.eye(S.shape[0], dtype=x.dtype)
        m = (means[-1].expand_as(x) if y is None else means[y]).to(x.dtype)
        r = x - a[..., 0].sqrt() * m
        return (1 - a[..., 0]).sqrt() * torch.linalg.solve(C, r.unsqueeze(-1)).squeeze(-1)
    return net


M = torch.tensor([1.0, -0.5], dtype=torch.float64)
S = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=torch.float64)


def xT_marginal(a_T):
    """q(x_T) = N(sqrt(a_T) m, a_T S + (1 - a_T) I): the exact start, so only the steps can err."""
    return math.sqrt(a_T) * M, a_T * S + (1 - a_T) * torch.eye(2, dtype=torch.float64)


# -----------------------------------------------------------------------------
# the step

@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_schedule_is_ddpms(schedule):
    a, b = ddim.DDIM(T, schedule), ddpm.DDPM(T, schedule)
    for name in ("beta", "alpha", "alpha_bar"):
        assert getattr(a, name).dtype == torch.float64
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert torch.allclose(ddim.DDIM(T).alpha_bar, linear_alpha_bar(T), rtol=1e-12, atol=0)


@settings(deadline=None, max_examples=40)
@given(t=st.integers(1, T), schedule=st.sampled_from(["linear", "cosine"]), seed=st.integers(0, 2 ** 16))
def test_eta1_consecutive_steps_are_ddpm_posterior(t, schedule, seed):
    """eta = 1, t' = t - 1: mean of q(x_{t-1} | x_t, x0_hat) and variance beta_tilde_t (ddpm.py)."""
    d, p = ddim.DDIM(T, schedule), ddpm.DDPM(T, schedule)
    g = torch.Generator().manual_seed(seed)
    x_t, eps, z = (torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(3))
    tt = torch.full((4,), t)
    with_z = d.step(x_t, eps, tt, tt - 1, eta=1.0, noise=z)
    without = d.step(x_t, eps, tt, tt - 1, eta=1.0, noise=torch.zeros_like(z))
    ab = p.alpha_bar[t]
    x0_hat = (x_t - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
    mean, var = p.q_posterior(x0_hat, x_t, tt)
    assert torch.allclose(without, mean, rtol=1e-9, atol=1e-9 / math.sqrt(ab))
    assert torch.allclose(((with_z - without) / z) ** 2, var.expand_as(z), rtol=1e-7, atol=1e-15)
    # and DDPM's Algorithm 2 mean 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - a_t) eps)
    alg2 = (x_t - p.beta[t] / math.sqrt(1 - ab) * eps) / math.sqrt(p.alpha[t])
    assert torch.allclose(without, alg2, rtol=1e-9, atol=1e-9 / math.sqrt(ab))


def test_eta1_all_steps_reproduces_ddpm_sampler():
    """Same seed, same draws: DDIM with steps = T and eta = 1 is DDPM's ancestral sampler."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 3)
    def eps_net(x, t, y):
        return torch.tanh(net(x) + t[:, None] / 50)
    Ts = 50
    a = ddim.DDIM(Ts).sample(eps_net, (8, 3), steps=Ts, eta=1.0, generator=torch.Generator().manual_seed(3))
    b = ddpm.DDPM(Ts).sample(eps_net, (8, 3), generator=torch.Generator().manual_seed(3))
    assert torch.allclose(a.double(), b.double(), atol=1e-5)


@settings(deadline=None, max_examples=60)
@given(data=st.data(), eta=st.floats(0.0, 1.0), schedule=st.sampled_from(["linear", "cosine"]))
def test_step_maps_marginal_onto_marginal(data, eta, schedule):
    """x_t ~ q(x_t | x0), eps = the true noise: x_t' = c0 x0 + ce eps + cz z exactly, and then
    mean c0 x0 = sqrt(a_t') x0 and variance ce^2 + cz^2 = 1 - a_t', for every eta and t' < t."""
    t = data.draw(st.integers(1, T))
    t_prev = data.draw(st.integers(0, t - 1))
    d = ddim.DDIM(T, schedule)
    ab = linear_alpha_bar(T) if schedule == "linear" else ddpm.DDPM(T, "cosine").alpha_bar
    a_t, a_p = ab[t].item(), ab[t_prev].item()

    def run(x0, e, z):  # (B, 3) float64 each
        x_t = math.sqrt(a_t) * x0 + math.sqrt(1 - a_t) * e  # x_t ~ q(x_t | x0)
        tt = torch.full((x0.shape[0],), t)
        return d.step(x_t, e, tt, torch.full_like(tt, t_prev), eta=eta, noise=z)

    basis = torch.eye(3, dtype=torch.float64)[None]  # one unit input at a time
    c0, ce, cz = run(basis[:, 0], basis[:, 1], basis[:, 2])[0]
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2 ** 16)))
    x0, e, z = (torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(3))
    assert torch.allclose(run(x0, e, z), c0 * x0 + ce * e + cz * z, atol=1e-9)  # linear: moments are exact
    assert c0.item() == pytest.approx(math.sqrt(a_p), rel=1e-9)
    assert (ce ** 2 + cz ** 2).item() == pytest.approx(1 - a_p, rel=1e-7, abs=1e-12)
    sigma = eta * math.sqrt((1 - a_p) / (1 - a_t) * (1 - a_t / a_p))
    assert abs(cz.item()) == pytest.approx(sigma, rel=1e-7, abs=1e-12)


def test_loss_is_zero_for_the_true_noise_and_one_for_zero():
    """The network that knows x0 and reads eps off x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps has loss 0."""
    d = ddim.DDIM(T)
    ab = linear_alpha_bar(T)
    x0 = torch.randn(4096, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    def oracle(x_t, t, y):
        a = ab[t].view(-1, 1)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()
    assert d.loss(oracle, x0).item() < 1e-18
    assert d.loss(lambda x_t, t, y: torch.zeros_like(x_t), x0).item() == pytest.approx(1.0, abs=0.05)


def test_eta0_is_deterministic_and_eta_positive_is_not():
    d = ddim.DDIM(T)
    g = torch.Generator().manual_seed(0)
    x_t, eps, z = (torch.randn(4, 2, generator=g) for _ in range(3))
    t = torch.full((4,), 500)
    assert torch.equal(d.step(x_t, eps, t, t - 100, eta=0.0, noise=z), d.step(x_t, eps, t, t - 100, eta=0.0))
    net = gaussian_eps_net(d.alpha_bar, M[None], S)
    noise = torch.randn(16, 2, generator=g, dtype=torch.float64)
    runs = [d.sample(net, noise.shape, 20, eta=0.0, noise=noise, generator=torch.Generator().manual_seed(s))
            for s in (1, 2)]
    assert torch.equal(runs[0], runs[1])
    runs = [d.sample(net, noise.shape, 20, eta=0.5, noise=noise, generator=torch.Generator().manual_seed(s))
            for s in (1, 2)]
    assert not torch.allclose(runs[0], runs[1], atol=1e-3)
    with pytest.raises(ValueError):
        d.step(x_t, eps, t, t - 1, eta=1.5)


# -----------------------------------------------------------------------------
# visited times

@settings(deadline=None, max_examples=60)
@given(data=st.data(), Tn=st.sampled_from([1, 7, 100, 1000]), spacing=st.sampled_from(["uniform", "quadratic"]))
def test_timesteps_start_at_T_and_decrease(data, Tn, spacing):
    steps = data.draw(st.integers(1, Tn))
    ts = ddim.DDIM(Tn).timesteps(steps, spacing)
    assert ts.dtype == torch.long and ts.shape == (steps,)
    assert ts[0].item() == Tn and ts.min().item() >= 1
    assert (ts[1:] < ts[:-1]).all()


def test_timesteps_values_and_bad_input():
    d = ddim.DDIM(T)
    assert d.timesteps(10).tolist() == list(range(1000, 0, -100))
    assert d.timesteps(T).tolist() == list(range(T, 0, -1))
    assert d.timesteps(10, "quadratic").tolist() == [1000, 810, 640, 490, 360, 250, 160, 90, 40, 10]
    for bad in (0, T + 1):
        with pytest.raises(ValueError):
            d.timesteps(bad)
    with pytest.raises(ValueError):
        d.timesteps(10, "cubic")


# -----------------------------------------------------------------------------
# exact answers on Gaussian data

def test_sample_returns_gaussian_data_mean_and_covariance():
    """eta = 0 is an affine map x_T -> x_0: push q(x_T) through it exactly (no sampling noise).
    The mean is exact for any step count; the covariance error shrinks like 1/steps."""
    d = ddim.DDIM(T)
    net = gaussian_eps_net(d.alpha_bar, M[None], S)
    mu_T, C_T = xT_marginal(d.alpha_bar[T].item())
    basis = torch.cat([torch.zeros(1, 2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)])
    errors = {}
    for steps in (10, 100, 1000):
        for spacing in ("uniform", "quadratic"):
            out = d.sample(net, basis.shape, steps, noise=basis, spacing=spacing)
            c, A = out[0], (out[1:] - out[0]).T  # x_0 = A x_T + c
            assert (A @ mu_T + c - M).abs().max() < 1e-9
            errors[steps, spacing] = (A @ C_T @ A.T - S).abs().max().item()
    assert errors[10, "uniform"] > errors[100, "uniform"] > errors[1000, "uniform"]
    assert errors[10, "quadratic"] < errors[10, "uniform"]  # denser near the data helps here
    assert errors[100, "uniform"] < 0.03 and errors[1000, "uniform"] < 3e-3
    # stochastic sampler (eta = 1), all T steps, from the plain N(0, I) start: Monte Carlo
    x = d.sample(net, (10000, 2), T, eta=1.0, generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32
    x = x.double()
    assert (x.mean(0) - M).abs().max() < 0.03
    assert (torch.cov(x.T) - S).abs().max() < 0.03


def test_classifier_free_guidance_combines_the_two_eps():
    d = ddim.DDIM(T)
    means = torch.tensor([[1.0, 0.0], [-1.0, 0.5], [0.0, 0.25]], dtype=torch.float64)  # labels 0, 1, null
    net = gaussian_eps_net(d.alpha_bar, means, S)
    y = torch.tensor([0, 1, 1, 0])
    noise = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w = 3.0
    def guided(x, t, _):
        return net(x, t, None) + w * (net(x, t, y) - net(x, t, None))
    assert torch.allclose(d.sample(net, noise.shape, 20, y=y, cfg_scale=w, noise=noise),
                          d.sample(guided, noise.shape, 20, noise=noise), atol=1e-12)
    assert torch.allclose(d.sample(net, noise.shape, 20, y=y, cfg_scale=0.0, noise=noise),
                          d.sample(net, noise.shape, 20, y=None, noise=noise), atol=1e-12)
    assert torch.equal(d.sample(net, noise.shape, 20, y=y, noise=noise),  # w = 1: the conditional model
                       d.sample(lambda x, t, _: net(x, t, y), noise.shape, 20, noise=noise))


def test_guided_at_w2_is_uncond_plus_w_times_cond_minus_uncond():
    """w = 2, outside {0, 1}: guided = uncond + w (cond - uncond), with a net whose two outputs are
    known, against numbers worked out here. y None or w = 1: one call, the plain network."""
    uncond, cond = torch.tensor([1.0, -2.0]), torch.tensor([4.0, 0.5])
    calls = []

    def net(x, t, y):
        calls.append(y)
        return (uncond if y is None else cond).expand_as(x)
    x, t, y = torch.zeros(3, 2), torch.full((3,), 10), torch.tensor([0, 1, 2])
    d = ddim.DDIM(T)
    # 1 + 2 (4 - 1) = 7,  -2 + 2 (0.5 - (-2)) = 3
    assert torch.equal(d.guided(net, x, t, y, cfg_scale=2.0), torch.tensor([[7.0, 3.0]] * 3))
    assert len(calls) == 2 and any(c is None for c in calls)
    calls.clear()
    assert torch.equal(d.guided(net, x, t, y, cfg_scale=1.0), cond.expand(3, 2)) and len(calls) == 1
    calls.clear()
    assert torch.equal(d.guided(net, x, t, None, cfg_scale=2.0), uncond.expand(3, 2)) and len(calls) == 1
    # and through the sampler: one eta = 0 step from T = 1 lands on x0_hat = (x_1 - sqrt(1 - a_1) eps~) / sqrt(a_1)
    one = ddim.DDIM(1)
    x1, a1 = torch.randn(3, 2), float(one.alpha_bar[1])
    want = (x1 - math.sqrt(1 - a1) * torch.tensor([7.0, 3.0])) / math.sqrt(a1)
    assert torch.allclose(one.sample(net, x1.shape, steps=1, y=y, cfg_scale=2.0, noise=x1), want, atol=1e-5)


def test_invert_then_sample_reconstructs_the_data():
    d = ddim.DDIM(T)
    net = gaussian_eps_net(d.alpha_bar, M[None], S)
    g = torch.Generator().manual_seed(0)
    x0 = M + torch.randn(500, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(S).T
    err = {}
    for steps in (10, 50, 1000):
        x_T = d.invert(net, x0, steps)
        err[steps] = (d.sample(net, x0.shape, steps, noise=x_T) - x0).abs().max().item()
    assert err[10] > err[50] > err[1000] and err[1000] < 0.02  # explicit steps: O(1/steps)
    x_T = d.invert(net, x0, 1000)  # the encoding of the data is the prior q(x_T) ~ N(0, I)
    mu_T, C_T = xT_marginal(d.alpha_bar[T].item())
    assert (x_T.mean(0) - mu_T).abs().max() < 0.15 and (torch.cov(x_T.T) - C_T).abs().max() < 0.2
    x_T = d.invert(net, x0, 50, refine=10)  # fixed-point: the sampler's step solved backwards
    assert (d.sample(net, x0.shape, 50, noise=x_T) - x0).abs().max() < 1e-6


# -----------------------------------------------------------------------------
# classifier guidance, exact on a mixture of two Gaussians: x_t | y ~ N(sqrt(a_t) mu_y, v_y I),
# v_y = a_t s_y^2 + 1 - a_t; eps*_y = sqrt(1 - a_t) (x_t - sqrt(a_t) mu_y) / v_y; eps* = sum_y p(y | x_t) eps*_y

MU2 = torch.tensor([[-1.0, 0.3], [1.0, -0.2]], dtype=torch.float64)
SD2 = torch.tensor([0.5, 0.8], dtype=torch.float64)
PI2 = torch.tensor([0.3, 0.7], dtype=torch.float64)


def mixture(alpha_bar):
    """(exact p(y | x_t) as logits, the class-conditional eps*_y net, the unconditional eps* net)."""
    def parts(x, t):
        a = alpha_bar[t.cpu()].view(-1, 1)
        v = a * SD2 ** 2 + 1 - a  # (B, 2)
        r = x[:, None] - a.sqrt()[:, :, None] * MU2  # (B, 2, D)
        logits = PI2.log() - 0.5 * (r ** 2).sum(-1) / v - torch.log(v)  # D = 2: -(D/2) log(2 pi v) up to a constant
        return logits, (1 - a).sqrt()[:, :, None] * r / v[:, :, None]
    def cond(x, t, y):
        return parts(x, t)[1][torch.arange(len(x)), y]
    def uncond(x, t, y):
        logits, e = parts(x, t)
        return (torch.softmax(logits, 1)[:, :, None] * e).sum(1)
    return (lambda x, t: parts(x, t)[0]), cond, uncond


@pytest.mark.parametrize("eta, steps", [(0.0, 20), (1.0, 50)])
def test_classifier_guidance_with_the_exact_classifier_is_the_class_conditional_sampler(eta, steps):
    """s = 1: eps* - sqrt(1 - a_t) grad log p(y | x_t) = eps*_y at every visited t, so the guided path
    is the class-conditional one for the same draws; s = 0 is the unguided path bit for bit."""
    d = ddim.DDIM(T)
    clf, cond, uncond = mixture(d.alpha_bar)
    y = torch.arange(32) % 2
    noise = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    def run(net, **kw):
        return d.sample(net, noise.shape, steps, eta, y, generator=torch.Generator().manual_seed(1), noise=noise, **kw)
    assert torch.allclose(run(uncond, classifier=clf, classifier_scale=1.0), run(cond), atol=1e-8)
    assert torch.equal(run(uncond, classifier=clf, classifier_scale=0.0), run(uncond))
    assert not torch.allclose(run(uncond, classifier=clf, classifier_scale=-1.0), run(cond), atol=1e-2)


def test_classifier_guidance_at_s2_one_step_and_the_gradient_is_wrt_x_t_only():
    """T = 1, one eta = 0 step: x_0 = (x_1 - sqrt(1 - a_1) eps~) / sqrt(a_1), eps~ = eps - s sqrt(1 - a_1)
    (W_y - sum_c p_c W_c) for logits x W^T + b, computed here; the classifier's parameters keep no gradient."""
    one = ddim.DDIM(1)
    W, b = torch.tensor([[1.0, -2.0], [0.5, 3.0], [-1.0, 0.0]]), torch.tensor([0.1, -0.2, 0.3])
    lin = torch.nn.Linear(2, 3)
    with torch.no_grad():
        lin.weight.copy_(W)
        lin.bias.copy_(b)
    x1, y, s, e = torch.randn(4, 2), torch.tensor([0, 1, 2, 1]), 2.0, torch.tensor([0.3, -0.7])
    a1 = float(one.alpha_bar[1])
    grad = W[y] - torch.softmax(x1 @ W.T + b, 1) @ W
    want = (x1 - math.sqrt(1 - a1) * (e - s * math.sqrt(1 - a1) * grad)) / math.sqrt(a1)
    got = one.sample(lambda x, t, _: e.expand_as(x), x1.shape, 1, y=y, noise=x1,
                     classifier=lambda x, t: lin(x), classifier_scale=s)
    assert torch.allclose(got, want, atol=1e-5) and not got.requires_grad
    assert lin.weight.grad is None and lin.bias.grad is None
    with pytest.raises(ValueError, match="labels"):
        one.sample(lambda x, t, _: x, x1.shape, 1, noise=x1, classifier=lambda x, t: lin(x), classifier_scale=1.0)


# -----------------------------------------------------------------------------
# command line

def test_help():
    with pytest.raises(SystemExit) as e:
        ddim.main(["--help"])
    assert e.value.code == 0


def tiny(out, *extra):
    return ["--data", "moons", "--iters", "20", "--batch-size", "64", "--width", "32", "--n-eval", "50",
            "--log-every", "10", "--out", str(out), *extra]


def test_train_sample_only_and_ddpm_checkpoint(tmp_path, capsys):
    q = ddim.main(tiny(tmp_path / "a", "--steps", "5"))
    assert (tmp_path / "a" / "ckpt.pt").exists() and (tmp_path / "a" / "samples.png").exists()
    assert q["metric"] == "W2" and math.isfinite(q["value"])
    q2 = ddim.main(["--ckpt", str(tmp_path / "a" / "ckpt.pt"), "--steps", "7", "--eta", "1",
                    "--spacing", "quadratic", "--n-eval", "50", "--out", str(tmp_path / "b")])
    assert math.isfinite(q2["value"]) and (tmp_path / "b" / "samples.png").exists()
    # a ddpm.py checkpoint with T = 100: DDIM takes T from it, and eta = 1 over all T steps
    # reproduces DDPM's own samples (same seeds), hence the same quality figure
    q_ddpm = ddpm.main(tiny(tmp_path / "ddpm", "--T", "100"))
    q3 = ddim.main(["--ckpt", str(tmp_path / "ddpm" / "ckpt.pt"), "--steps", "100", "--eta", "1",
                    "--n-eval", "50", "--out", str(tmp_path / "c")])
    assert q3["value"] == pytest.approx(q_ddpm["value"], rel=1e-4)
    with pytest.raises(SystemExit) as e:
        ddim.main(["--ckpt", str(tmp_path / "ddpm" / "ckpt.pt"), "--steps", "101", "--out", str(tmp_path / "d")])
    assert e.value.code == 2 and "--steps must be in 1..T = 1..100" in capsys.readouterr().err


def test_short_training_learns(tmp_path):
    """400 iterations on 8 Gaussians: 20 DDIM steps (eta = 1) land well below the noise's W2.
    (eta = 0 is not used here: after so short a training, eps_theta is poor far in the tails
    of x_T, and the deterministic steps carry that error to x_0 amplified by as much as 1/sqrt(a_T).)"""
    data = common.load_data("8gaussians")
    noise = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
    noise_w2 = common.w2_exact(noise, data.x_test[:500])
    q = ddim.main(["--data", "8gaussians", "--iters", "400", "--batch-size", "256", "--width", "64", "--lr", "2e-3",
                   "--n-eval", "500", "--steps", "20", "--eta", "1", "--log-every", "200", "--out", str(tmp_path)])
    assert q["value"] < 0.35 * noise_w2


@pytest.mark.parametrize("bad, words", [
    (["--eta", "1.5"], "--eta must be in [0, 1], got 1.5"), (["--eta", "-0.1"], "--eta must be in [0, 1]"),
    (["--steps", "0"], "--steps must be in 1..T"), (["--steps", "1001"], "--steps must be in 1..T = 1..1000"),
    (["--schedule", "cubic"], "invalid choice: 'cubic'"), (["--spacing", "cubic"], "invalid choice: 'cubic'"),
    (["--T", "0"], "--T must be at least 1"), (["--ckpt", "/nonexistent/ckpt.pt"], "not found")])
def test_bad_flags_exit_2(bad, words, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        ddim.main(["--out", str(tmp_path), "--iters", "1", *bad])
    err = capsys.readouterr().err
    assert e.value.code == 2 and words in err, err


# -----------------------------------------------------------------------------
# the sampling path (--trajectory)

@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_trajectory_starts_at_the_noise_and_ends_at_the_samples(eta):
    method, net = ddim.DDIM(T=50), common.make_net("mlp", (2,), 16)
    path = []
    x = method.sample(net, (5, 2), steps=7, eta=eta, generator=torch.Generator().manual_seed(0), trajectory=path)
    assert len(path) == 7 + 1 and torch.equal(path[-1], x)
    assert torch.equal(path[0], common.start_noise((5, 2), torch.Generator().manual_seed(0)))
    assert torch.equal(x, method.sample(net, (5, 2), steps=7, eta=eta, generator=torch.Generator().manual_seed(0)))


def test_cli_trajectory(tmp_path):
    ddim.main(["--data", "checkerboard", "--T", "20", "--steps", "4", "--iters", "2", "--width", "8", "--batch-size",
               "16", "--n-eval", "0", "--trajectory", "6", "--out", str(tmp_path)])
    data = (tmp_path / "trajectory.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(data[16:20], "big") == 512
