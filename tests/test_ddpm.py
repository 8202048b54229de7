"""DDPM: the schedule's identities, the posterior against Bayes' rule, the KL against
torch.distributions, the sampler against Gaussian data with the closed-form optimal network,
a short run that learns, and the command line."""
import math
from pathlib import Path

import numpy as np

import pytest
import torch
from hypothesis import given, settings, strategies as st

import common
import ddpm

SCHEDULES = st.sampled_from(["linear", "cosine"])


@settings(deadline=None, max_examples=40)
@given(schedule=SCHEDULES, t=st.integers(1, 1000))
def test_marginal_is_composition_of_single_steps(schedule, t):
    """q(x_t | x_0) in closed form equals t applications of q(x_s | x_{s-1}) = N(sqrt(alpha_s) x, beta_s):
    mean coefficient m_s = sqrt(alpha_s) m_{s-1}, variance v_s = alpha_s v_{s-1} + beta_s."""
    d = ddpm.DDPM(1000, schedule)
    m, v = 1.0, 0.0
    for s in range(1, t + 1):
        a = 1.0 - float(d.beta[s])
        m, v = math.sqrt(a) * m, a * v + float(d.beta[s])
    x0 = torch.randn(3, 2, dtype=torch.float64)
    eps = torch.randn(3, 2, dtype=torch.float64)
    tt = torch.full((3,), t)
    assert torch.allclose(d.q_sample(x0, tt, torch.zeros_like(x0)), m * x0, rtol=1e-9, atol=1e-12)
    noise_part = d.q_sample(x0, tt, eps) - d.q_sample(x0, tt, torch.zeros_like(eps))
    assert torch.allclose(noise_part, math.sqrt(v) * eps, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_schedule_attributes(schedule):
    d = ddpm.DDPM(1000, schedule)
    for a in (d.beta, d.alpha, d.alpha_bar):
        assert a.dtype == torch.float64 and a.shape == (1001,)
    assert d.beta[0] == 0 and d.alpha_bar[0] == 1
    assert (d.beta[1:] > 0).all() and (d.beta <= 0.999).all()
    assert torch.allclose(d.alpha_bar, torch.cumprod(1 - d.beta, 0))
    assert d.alpha_bar[-1] < 1e-4  # x_T is (nearly) pure noise


@settings(deadline=None, max_examples=40)
@given(schedule=SCHEDULES, t=st.integers(2, 1000), seed=st.integers(0, 10**6))
def test_posterior_is_bayes_rule(schedule, t, seed):
    """q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0): a product of two Gaussians in x_{t-1}."""
    d = ddpm.DDPM(1000, schedule)
    g = torch.Generator().manual_seed(seed)
    x0, x_t = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    ab_prev, alpha, beta = float(d.alpha_bar[t - 1]), 1 - float(d.beta[t]), float(d.beta[t])
    # prior N(sqrt(ab_prev) x0, 1 - ab_prev); likelihood in x_{t-1}: N(x_t / sqrt(alpha), beta / alpha)
    prec = 1 / (1 - ab_prev) + alpha / beta
    var = 1 / prec
    mean = var * (math.sqrt(ab_prev) * x0 / (1 - ab_prev) + math.sqrt(alpha) * x_t / beta)
    got_mean, got_var = d.q_posterior(x0, x_t, torch.full((4,), t))
    assert torch.allclose(got_mean, mean, rtol=1e-7, atol=1e-9)
    assert torch.allclose(got_var.expand_as(x0), torch.full_like(x0, var), rtol=1e-7)


def test_posterior_at_t1_is_the_data():
    d = ddpm.DDPM()
    x0, x1 = torch.randn(5, 2), torch.randn(5, 2)
    mean, var = d.q_posterior(x0, x1, torch.ones(5, dtype=torch.long))
    assert torch.allclose(mean, x0, atol=1e-6) and (var == 0).all()


@settings(deadline=None, max_examples=50)
@given(m1=st.floats(-3, 3), m2=st.floats(-3, 3), v1=st.floats(1e-3, 10), v2=st.floats(1e-3, 10))
def test_gaussian_kl_matches_torch_distributions(m1, m2, v1, v2):
    N = torch.distributions.Normal
    t = lambda a: torch.tensor(a, dtype=torch.float64)
    kl = ddpm.gaussian_kl(t(m1), t(v1), t(m2), t(v2))
    ref = torch.distributions.kl_divergence(N(t(m1), t(v1).sqrt()), N(t(m2), t(v2).sqrt()))
    assert torch.allclose(kl, ref, rtol=1e-9, atol=1e-12) and kl >= 0


# -----------------------------------------------------------------------------
# exact answers: Gaussian data x_0 ~ N(m, S). Then x_t ~ N(sqrt(ab) m, ab S + (1 - ab) I) and
# the optimal eps network is E[eps | x_t] = sqrt(1 - ab) (ab S + (1 - ab) I)^{-1} (x_t - sqrt(ab) m).

def gaussian_eps(d, mean, cov):
    def net(x, t, y):
        ab = d.alpha_bar[t].view(-1, 1, 1)  # (B, 1, 1), float64
        cov_t = ab * cov + (1 - ab) * torch.eye(len(mean), dtype=torch.float64)
        r = (x.double() - ab[:, :, 0].sqrt() * mean)[:, :, None]
        return ((1 - ab).sqrt() * torch.linalg.solve(cov_t, r))[:, :, 0].to(x.dtype)
    return net


MEAN = torch.tensor([1.0, -0.5], dtype=torch.float64)
COV = torch.tensor([[0.5, 0.3], [0.3, 0.4]], dtype=torch.float64)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_sampler_recovers_gaussian_data(schedule):
    d = ddpm.DDPM(1000, schedule)
    x = d.sample(gaussian_eps(d, MEAN, COV), (20000, 2), generator=torch.Generator().manual_seed(0))
    assert x.shape == (20000, 2) and x.dtype == torch.float32
    x = x.double()
    assert torch.allclose(x.mean(0), MEAN, atol=0.03)
    assert torch.allclose(torch.cov(x.T), COV, atol=0.03)


def test_guidance_mixes_the_conditional_and_unconditional_eps():
    """w = 1 samples the class, w = 0 the unconditional model; noise= and generator= make it reproducible."""
    d = ddpm.DDPM(200)
    cond, uncond = gaussian_eps(d, MEAN, COV), gaussian_eps(d, -MEAN, COV)
    net = lambda x, t, y: uncond(x, t, None) if y is None else cond(x, t, y)
    y = torch.zeros(8000, dtype=torch.long)
    noise = torch.randn(8000, 2, generator=torch.Generator().manual_seed(1))
    for w, target in ((1.0, MEAN), (0.0, -MEAN)):
        x = d.sample(net, (8000, 2), y=y, cfg_scale=w, generator=torch.Generator().manual_seed(2), noise=noise)
        assert torch.allclose(x.double().mean(0), target, atol=0.06)
    a = d.sample(net, (8000, 2), y=y, cfg_scale=3.0, generator=torch.Generator().manual_seed(2), noise=noise)
    b = d.sample(net, (8000, 2), y=y, cfg_scale=3.0, generator=torch.Generator().manual_seed(2), noise=noise)
    assert torch.equal(a, b)


def test_guidance_at_w2_is_uncond_plus_w_times_the_difference():
    """w outside {0, 1}: eps~ = eps(x, None) + w (eps(x, y) - eps(x, None)), checked on a net whose two
    branches are known, in `guided` and through one sampler step (T = 1: x_0 = (x_1 - beta_1 /
    sqrt(1 - alpha_bar_1) eps~) / sqrt(alpha_1), no noise)."""
    d = ddpm.DDPM(1)
    cond, uncond = torch.tensor([1.0, 2.0]), torch.tensor([0.5, -1.0])
    net = lambda x, t, y: (uncond if y is None else cond).expand_as(x)
    x, y, w = torch.randn(4, 2), torch.zeros(4, dtype=torch.long), 2.0
    want = uncond + w * (cond - uncond)  # (1.5, 5.0); the flipped sign would give (-0.5, -7.0)
    assert torch.allclose(d.guided(net, x, torch.ones(4, dtype=torch.long), y, w), want.expand_as(x))
    x0 = d.sample(net, x.shape, y=y, cfg_scale=w, noise=x)
    beta, ab = float(d.beta[1]), float(d.alpha_bar[1])
    assert torch.allclose(x0, (x - beta / math.sqrt(1 - ab) * want) / math.sqrt(1 - beta), atol=1e-6)


def test_loss_is_zero_for_the_true_noise_and_positive_otherwise():
    d = ddpm.DDPM(100)
    x0 = torch.randn(64, 2)
    torch.manual_seed(0)
    def oracle(x_t, t, y):  # recover eps from x_t exactly, given x0
        ab = d.alpha_bar[t].float()[:, None]
        return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
    assert d.loss(oracle, x0) < 1e-8
    assert d.loss(lambda x_t, t, y: torch.zeros_like(x_t), x0) > 0.5


def test_both_losses_feed_the_forward_process_and_regress_their_targets(monkeypatch):
    """torch.randint and torch.randn_like inside the losses patched to known t (the ends 1 and T
    included) and eps: the eps network and the noisy classifier both see t and
    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, alpha_bar_t = prod_{s <= t}(1 - beta_s)
    written out here (x_1 close to the data, x_T close to the noise); the eps loss is the mean of
    (out - eps)^2 (Algorithm 1), the classifier's the cross-entropy of its logits against y."""
    T = 1000
    d = ddpm.DDPM(T)
    alpha_bar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=torch.float64), 0)  # t = 1..T
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 3, generator=g) + 2  # data away from the noise's mean
    eps = torch.randn(6, 3, generator=g)
    t = torch.tensor([1, 2, 100, 500, 999, T])

    def randint(low, high, size, **kw):
        assert (low, high, tuple(size)) == (1, T + 1, (6,))
        return t.clone()

    def randn_like(like, **kw):
        assert like.shape == eps.shape
        return eps.clone()
    monkeypatch.setattr(torch, "randint", randint)
    monkeypatch.setattr(torch, "randn_like", randn_like)
    ab = alpha_bar[t - 1].float()[:, None]
    want = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    assert (want[0] - x0[0]).abs().max() < 0.05  # t = 1: the data
    assert (want[-1] - eps[-1]).abs().max() < 0.05  # t = T: the noise
    seen, out = {}, torch.randn(6, 3, generator=g)

    def eps_net(x_t, t_in, y):
        seen.update(x_t=x_t, t=t_in, y=y)
        return out
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    loss = d.loss(eps_net, x0, y)
    assert torch.equal(seen["t"], t) and torch.equal(seen["y"], y)
    torch.testing.assert_close(seen["x_t"], want)
    torch.testing.assert_close(loss, (out - eps).pow(2).mean())
    logits = torch.randn(6, 3, generator=g)

    def classifier(x_t, t_in):
        seen.update(x_t=x_t, t=t_in)
        return logits
    seen.clear()
    loss = d.classifier_loss(classifier, x0, y)
    assert torch.equal(seen["t"], t)
    torch.testing.assert_close(seen["x_t"], want)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, y))


# -----------------------------------------------------------------------------
# the variational bound

@settings(deadline=None, max_examples=30)
@given(st.floats(-1.5, 1.5), st.floats(1e-4, 2.0), st.sampled_from([2, 3, 17, 256]))
def test_discretized_gaussian_sums_to_one_over_the_levels(mean, var, levels):
    x = torch.linspace(-1, 1, levels, dtype=torch.float64)
    p = ddpm.discretized_gaussian_log_prob(x, torch.full_like(x, mean), var, levels).exp()
    assert abs(float(p.sum()) - 1) < 1e-9 and (p >= 0).all()
    # an interior bin is Phi(upper) - Phi(lower) of N(mean, var), as torch.distributions computes it
    if levels > 2:
        k, half = levels // 2, 1 / (levels - 1)
        n = torch.distributions.Normal(torch.tensor(mean, dtype=torch.float64), torch.tensor(var, dtype=torch.float64).sqrt())
        ref = n.cdf(x[k] + half) - n.cdf(x[k] - half)
        assert abs(float(p[k]) - float(ref)) < 1e-9


def test_bound_terms_against_torch_distributions():
    """T = 2: L_T and L_1 = KL(q(x_1 | x_2, x_0) || p_theta(x_1 | x_2)) recomputed independently, the
    posterior by precision-weighting (Bayes' rule) and the KLs by torch.distributions, with the same draws."""
    d = ddpm.DDPM(2)
    net = lambda x, t, y: 0.3 * x + 0.1 * t.double()[:, None]  # any network
    x0 = torch.tensor([[-1.0, 0.5], [1.0, 0.0]], dtype=torch.float64)
    terms = d.bound_terms(net, x0, 5, generator=torch.Generator().manual_seed(0), variances=("beta",))["beta"]
    g = torch.Generator().manual_seed(0)
    torch.randn(x0.shape, generator=g)  # the draw for t = 1 (L_0)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float32).double()
    b, a, ab = d.beta, d.alpha, d.alpha_bar
    x2 = ab[2].sqrt() * x0 + (1 - ab[2]).sqrt() * eps
    prec = a[2] / b[2] + 1 / (1 - ab[1])  # q(x_1 | x_2, x_0) ~ q(x_2 | x_1) q(x_1 | x_0)
    mean_q = (a[2].sqrt() / b[2] * x2 + ab[1].sqrt() / (1 - ab[1]) * x0) / prec
    mu = (x2 - b[2] / (1 - ab[2]).sqrt() * net(x2, torch.full((2,), 2), None)) / a[2].sqrt()
    N = torch.distributions.Normal
    L_1 = torch.distributions.kl_divergence(N(mean_q, (1 / prec).sqrt()), N(mu, b[2].sqrt())).sum(1)
    L_T = torch.distributions.kl_divergence(N(ab[2].sqrt() * x0, (1 - ab[2]).sqrt()), N(0.0, 1.0)).sum(1)
    assert torch.allclose(terms["L_mid"], L_1, atol=1e-6) and torch.allclose(terms["L_T"], L_T, atol=1e-12)


def two_point_eps(d):
    """The optimal eps for data uniform on {-1, +1}^D: E[x_0 | x_t] = tanh(sqrt(ab) x_t / (1 - ab))."""
    def net(x, t, y):
        ab = d.alpha_bar[t.cpu()].view(-1, 1).to(x)
        return (x - ab.sqrt() * torch.tanh(ab.sqrt() * x / (1 - ab))) / (1 - ab).sqrt()
    return net


def test_bound_of_the_exact_network_on_two_points_is_just_above_one_bit():
    """Data uniform on {-1, +1}^2 (levels 2): -log2 P(x_0) = 1 bit/dim exactly. With the exact network
    and T = 1000 the bound (beta_tilde) lies above it and within 2%; the larger variance beta is looser."""
    d = ddpm.DDPM(1000)
    g = torch.Generator().manual_seed(0)
    x0 = (torch.randint(0, 2, (4000, 2), generator=g) * 2 - 1).double()
    terms = d.bound_terms(two_point_eps(d), x0, 2, generator=g)
    bpd = {v: sum(tm.values()) / (2 * math.log(2)) for v, tm in terms.items()}  # (B,) each
    m, se = float(bpd["beta_tilde"].mean()), float(bpd["beta_tilde"].std()) / math.sqrt(len(x0))
    assert m > 1 - 3 * se and m < 1.02, (m, se)
    assert float(bpd["beta"].mean()) > m
    assert torch.allclose(d.nll_bound(two_point_eps(d), x0, 2, generator=torch.Generator().manual_seed(0)),
                          sum(d.bound_terms(two_point_eps(d), x0, 2, generator=torch.Generator().manual_seed(0),
                                            variances=("beta_tilde",))["beta_tilde"].values()))


def test_stratified_times_estimate_the_sum_without_bias():
    """n_t stratified times: unbiased for sum_{t>=2} L_{t-1} (the spread is large, since the terms
    concentrate at small t, so the mean of 40 estimates is compared within 4 of its standard errors)."""
    d = ddpm.DDPM(1000)
    x0 = (torch.randint(0, 2, (200, 2), generator=torch.Generator().manual_seed(1)) * 2 - 1).double()
    def mid(seed, n_t):
        terms = d.bound_terms(two_point_eps(d), x0, 2, generator=torch.Generator().manual_seed(seed),
                              variances=("beta",), n_t=n_t)
        return float(terms["beta"]["L_mid"].mean())
    full = mid(0, None)
    est = np.array([mid(s, 100) for s in range(1, 41)])
    se = est.std() / math.sqrt(len(est))
    assert abs(est.mean() - full) < 4 * se and se < 0.1 * full, (est.mean(), se, full)


def test_a_network_that_knows_x0_makes_every_middle_term_zero():
    """eps_theta(x_t) = (x_t - sqrt(ab) x_0) / sqrt(1 - ab) gives mu_theta = mu_tilde, so with the
    posterior's variance every L_{t-1} (t >= 2) vanishes."""
    d = ddpm.DDPM(100)
    x0 = torch.rand(16, 3, dtype=torch.float64) * 2 - 1
    def oracle(x_t, t, y):
        ab = d.alpha_bar[t.cpu()].view(-1, 1)
        return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
    terms = d.bound_terms(oracle, x0, 256, generator=torch.Generator().manual_seed(0), variances=("beta_tilde",))
    assert float(terms["beta_tilde"]["L_mid"].abs().max()) < 1e-8


# -----------------------------------------------------------------------------
# learning and the command line

def test_short_run_learns_a_2d_set(tmp_path):
    q = ddpm.main(["--data", "8gaussians", "--iters", "800", "--width", "128", "--n-eval", "500",
                   "--T", "200", "--log-every", "400", "--out", str(tmp_path)])
    test = common.load_data("8gaussians").x_test[:500]
    noise_w2 = common.w2_exact(torch.randn(500, 2, generator=torch.Generator().manual_seed(0)), test)
    assert q["metric"] == "W2" and q["value"] < 0.35 * noise_w2, (q, noise_w2)
    assert (tmp_path / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


TINY = ["--T", "20", "--n-eval", "20", "--batch-size", "16", "--log-every", "3", "--ckpt-every", "3", "--iters", "6"]


def test_cli_train_resume_and_sample_only(tmp_path, capsys):
    out = str(tmp_path / "run")
    ddpm.main(TINY + ["--out", out])
    ckpt = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    assert ckpt["model"] == "ddpm" and ckpt["step"] == 6 and ckpt["args"]["T"] == 20
    assert (tmp_path / "run" / "samples.png").exists()
    ddpm.main(["--iters", "9", "--resume", "--out", out])
    assert torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)["step"] == 9
    # sample-only takes T and the network from the checkpoint, whatever the defaults say
    q = ddpm.main(["--ckpt", str(tmp_path / "run" / "ckpt.pt"), "--n-eval", "20"])
    assert q["metric"] == "FD" and math.isfinite(q["value"])
    assert "FD" in capsys.readouterr().out


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as e:
        ddpm.main(["--help"])
    assert e.value.code == 0 and "--schedule" in capsys.readouterr().out


@pytest.mark.parametrize("flags, words", [
    (["--iters", "0"], "--iters must be positive"),
    (["--data", "nope"], "unknown data set"),
    (["--arch", "mlp"], "2-D points"),
    (["--schedule", "quadratic"], "invalid choice"),
    (["--T", "0"], "--T must be at least 1"),
    (["--batch-size", "5000"], "exceeds the 1297 training examples"),
    (["--ckpt", "/nonexistent/ckpt.pt"], "not found"),
    (["--classify", "-1"], "--classify takes a number of held-out examples"),
    (["--classify", "5", "--uncond"], "--classify needs a conditional model"),
    (["--classify-samples", "10,-3"], "n_samples, the (t, eps) draws per example, must be >= 1"),
    (["--classify-samples", "ten"], "not a comma-separated list"),
    (["--classifier-scale", "2"], "guides an unconditional model: add --uncond"),
    (["--classifier-scale", "-1", "--uncond"], "--classifier-scale must be >= 0"),
    (["--classifier-scale", "nan", "--uncond"], "not a finite number"),
    (["--classifier", "clf.pt", "--uncond"], "add --classifier-scale"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, flags, words):
    with pytest.raises(SystemExit) as e:
        ddpm.main(TINY + ["--out", str(tmp_path)] + flags)
    err = capsys.readouterr().err
    assert e.value.code == 2 and words in err and "Traceback" not in err


def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as e:
        ddpm.main(["--ckpt", str(bad)])
    assert e.value.code == 2 and "corrupt" in capsys.readouterr().err
    other = tmp_path / "other.pt"
    torch.save({"model": "vae", "net": {}, "args": {}}, other)
    with pytest.raises(SystemExit) as e:
        ddpm.main(["--ckpt", str(other)])
    assert e.value.code == 2 and "is a vae checkpoint" in capsys.readouterr().err


# -----------------------------------------------------------------------------
# exact answers on a mixture of two Gaussians in 2-D, x_0 ~ sum_y pi_y N(mu_y, s_y^2 I): then
# x_t | y ~ N(sqrt(ab) mu_y, v_y I) with v_y = ab s_y^2 + 1 - ab, so p(y | x_t) is Bayes' rule on two
# Gaussians, the class-conditional eps*_y = sqrt(1 - ab) (x_t - sqrt(ab) mu_y) / v_y, and the
# unconditional eps* = sum_y p(y | x_t) eps*_y (E[eps | x_t] by the tower rule).

MIX_MU = torch.tensor([[-1.0, 0.3], [1.0, -0.2]], dtype=torch.float64)
MIX_SD = torch.tensor([0.5, 0.8], dtype=torch.float64)
MIX_PI = torch.tensor([0.3, 0.7], dtype=torch.float64)


def mix_log_lik(alpha_bar, x, t):
    """log N(x_t; sqrt(ab) mu_y, v_y I) for both classes (B, 2), and the per-class eps*_y (B, 2, D)."""
    ab = alpha_bar[t.cpu()].view(-1, 1)  # (B, 1)
    v = ab * MIX_SD ** 2 + 1 - ab  # (B, 2)
    r = x.double()[:, None] - ab.sqrt()[:, :, None] * MIX_MU  # (B, 2, D)
    log_lik = -0.5 * (r ** 2).sum(-1) / v - 0.5 * x.shape[1] * torch.log(2 * math.pi * v)
    return log_lik, (1 - ab).sqrt()[:, :, None] * r / v[:, :, None]


def mix_classifier(alpha_bar):
    """The exact p(y | x_t, t) as logits log pi_y + log N(x_t; ...): differentiable in x_t."""
    return lambda x, t: MIX_PI.log() + mix_log_lik(alpha_bar, x, t)[0]


def mix_eps(alpha_bar, conditional=True):
    """eps*_y(x_t) for net(x, t, y); the unconditional eps* (which ignores y) if not conditional."""
    def net(x, t, y):
        log_lik, e = mix_log_lik(alpha_bar, x, t)
        if conditional and y is not None:
            return e[torch.arange(len(x)), y].to(x.dtype)
        p = torch.softmax(MIX_PI.log() + log_lik, 1)
        return (p[:, :, None] * e).sum(1).to(x.dtype)
    return net


def mix_draw(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=g, dtype=torch.float64) < MIX_PI[1]).long()
    return MIX_MU[y] + MIX_SD[y, None] * torch.randn(n, 2, generator=g, dtype=torch.float64), y


def log_odds(log_post):
    return log_post[:, 1] - log_post[:, 0]


def test_classify_with_the_exact_eps_recovers_the_bayes_posterior():
    """With eps*_y and the bound's weights, the log-odds classify returns is an unbiased estimate of the
    bound's log-odds, which for T = 1000 lies within ~0.03 nats of Bayes' log p(y=1|x_0) / p(y=0|x_0):
    averaged over 16 runs of 100 draws, every point's estimate is within Monte Carlo error of Bayes
    (z-scores), the bias pooled over 400 points too, and the argmax agrees where Bayes is confident."""
    d = ddpm.DDPM(1000)
    x0, _ = mix_draw(400, 0)
    at_0 = torch.zeros(400, dtype=torch.long)  # t = 0: the data
    bayes = log_odds(torch.log_softmax(MIX_PI.log() + mix_log_lik(d.alpha_bar, x0, at_0)[0], 1))
    runs = []
    for seed in range(16):
        lp = d.classify(mix_eps(d.alpha_bar), x0, 2, 100, torch.Generator().manual_seed(seed), MIX_PI.log(), "elbo")
        assert lp.shape == (400, 2) and lp.dtype == torch.float64
        assert torch.allclose(lp.exp().sum(1), torch.ones(400, dtype=torch.float64))
        runs.append(log_odds(lp))
    runs = torch.stack(runs)
    mean, se = runs.mean(0), runs.std(0) / math.sqrt(len(runs))
    z = (mean - bayes) / se
    assert (z.abs() > 3).double().mean() < 0.03, z.abs().max()  # a t with 15 d.o.f. exceeds 3 about 1% of the time
    pooled, pooled_se = float((mean - bayes).mean()), float((se ** 2).mean().sqrt() / math.sqrt(len(x0)))
    assert abs(pooled) < 4 * pooled_se + 0.03, (pooled, pooled_se)
    confident = torch.sigmoid(bayes.abs()) > 0.9
    assert ((mean > 0) == (bayes > 0))[confident].double().mean() > 0.99
    assert ((runs[0] > 0) == (bayes > 0))[confident].double().mean() > 0.99  # one run of 100 draws already


def test_paired_noise_has_lower_variance_than_independent_noise():
    """The same (t, eps) for every class: the class difference loses the noise of || eps ||^2."""
    d = ddpm.DDPM(1000)
    x0, _ = mix_draw(200, 1)
    def spread(weighting, paired):
        runs = torch.stack([log_odds(d.classify(mix_eps(d.alpha_bar), x0, 2, 50, torch.Generator().manual_seed(s),
                                                weighting=weighting, paired=paired)) for s in range(6)])
        return float(runs.var(0).mean())
    assert spread("elbo", True) < 0.2 * spread("elbo", False)
    assert spread("simple", True) < 0.7 * spread("simple", False)


def test_classify_prior_and_bad_input():
    """log_prior enters by Bayes' rule: a net that cannot tell the classes apart returns the prior."""
    d = ddpm.DDPM(50)
    x0 = torch.randn(5, 2)
    prior = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64).log()
    lp = d.classify(lambda x, t, y: torch.zeros_like(x), x0, 3, 4, log_prior=prior)
    assert torch.allclose(lp, prior.expand(5, 3))
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="n_samples"):
            d.classify(lambda x, t, y: x, x0, 3, bad)
    with pytest.raises(ValueError, match="weighting"):
        d.classify(lambda x, t, y: x, x0, 3, 4, weighting="uniform")


def test_classifier_guidance_with_the_exact_classifier_samples_the_class():
    """Exact unconditional eps* and exact p(y | x_t) at s = 1: eps* - sqrt(1 - ab) grad log p(y | x_t) is
    eps*_y, so guided ancestral sampling is the class-conditional sampler (the same path for the same
    draws) and returns the component N(mu_y, s_y^2 I): mean within 4 standard errors, sd within 3%
    (the sampler's own bias at T = 200 is about 2%). Cosine schedule: x_T is pure noise at T = 200."""
    d = ddpm.DDPM(200, "cosine")
    uncond, clf = mix_eps(d.alpha_bar, conditional=False), mix_classifier(d.alpha_bar)
    y = torch.arange(64) % 2
    noise = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    guided = d.sample(uncond, noise.shape, y, generator=torch.Generator().manual_seed(1), noise=noise,
                      classifier=clf, classifier_scale=1.0)
    exact = mix_eps(d.alpha_bar)
    cond = d.sample(exact, noise.shape, y, generator=torch.Generator().manual_seed(1), noise=noise)
    assert torch.allclose(guided, cond, atol=1e-8)
    n = 8000
    y = torch.arange(n) % 2
    x = d.sample(uncond, (n, 2), y, generator=torch.Generator().manual_seed(2), classifier=clf, classifier_scale=1.0)
    for c in (0, 1):
        xc = x[y == c].double()
        assert ((xc.mean(0) - MIX_MU[c]).abs() < 4 * MIX_SD[c] / math.sqrt(len(xc))).all(), (c, xc.mean(0))
        assert ((xc.std(0) / MIX_SD[c] - 1).abs() < 0.03).all(), (c, xc.std(0))


class LinearClassifier(torch.nn.Module):
    """logits = x W^T + b (the time ignored): grad_x log softmax(.)_y = W_y - sum_c p_c W_c."""

    def __init__(self, W, b):
        super().__init__()
        self.W, self.b = torch.nn.Parameter(W), torch.nn.Parameter(b)
        self.inputs = []

    def forward(self, x, t):
        self.inputs.append(x)
        return x @ self.W.T + self.b


def test_classifier_guidance_at_s2_is_the_score_term_computed_here():
    """T = 1, s = 2: one step x_0 = (x_1 - beta_1 / sqrt(1 - ab_1) eps~) / sqrt(alpha_1) with
    eps~ = eps - s sqrt(1 - ab_1) (W_y - sum_c p_c W_c), all computed here; a flipped sign or a
    missing sqrt(1 - ab_1) (= 0.01 here) would be far off."""
    d = ddpm.DDPM(1)
    W, b = torch.tensor([[1.0, -2.0], [0.5, 3.0], [-1.0, 0.0]]), torch.tensor([0.1, -0.2, 0.3])
    clf = LinearClassifier(W.clone(), b.clone())
    x1, y, s, e = torch.randn(4, 2), torch.tensor([0, 1, 2, 1]), 2.0, torch.tensor([0.3, -0.7])
    net = lambda x, t, _: e.expand_as(x)
    p = torch.softmax(x1 @ W.T + b, 1)
    grad = W[y] - p @ W
    beta, ab = float(d.beta[1]), float(d.alpha_bar[1])
    want = (x1 - beta / math.sqrt(1 - ab) * (e - s * math.sqrt(1 - ab) * grad)) / math.sqrt(1 - beta)
    assert torch.allclose(d.sample(net, x1.shape, y, noise=x1, classifier=clf, classifier_scale=s), want, atol=1e-5)


def test_guidance_at_s0_is_unguided_bit_for_bit_and_the_gradient_is_wrt_x_t_only():
    d = ddpm.DDPM(30)
    clf = LinearClassifier(torch.randn(3, 2), torch.zeros(3))
    net = lambda x, t, y: 0.1 * x
    y = torch.tensor([0, 1, 2, 0, 1])
    def run(**kw):
        return d.sample(net, (5, 2), y, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(run(classifier=clf, classifier_scale=0.0), run()) and not clf.inputs  # s = 0: never called
    x = run(classifier=clf, classifier_scale=3.0)
    assert not torch.equal(x, run()) and not x.requires_grad
    assert len(clf.inputs) == 30 and all(i.requires_grad and i.grad_fn is None for i in clf.inputs)  # leaves: x_t
    assert clf.W.grad is None and clf.b.grad is None  # the classifier's parameters: no gradient kept
    with pytest.raises(ValueError, match="labels"):
        d.sample(net, (5, 2), None, classifier=clf, classifier_scale=1.0)


def moons(out, *extra):
    return ["--data", "moons", "--T", "20", "--iters", "20", "--batch-size", "64", "--width", "32", "--n-eval", "50",
            "--log-every", "10", "--out", str(out), *extra]


def test_cli_classifier_guidance_and_zero_shot_classification(tmp_path, capsys, monkeypatch):
    """--uncond --classifier-scale trains both (the classifier into OUT/classifier, true labels), samples
    guided; --resume continues both; --ckpt samples from both; a classifier for other data is refused
    in one line; --classify prints the zero-shot accuracy per n_samples and writes the confusion matrix."""
    q = ddpm.main(moons(tmp_path / "u", "--uncond", "--classifier-scale", "2"))
    clf = torch.load(tmp_path / "u" / "classifier" / "ckpt.pt", weights_only=True)
    assert clf["model"] == "ddpm-classifier" and clf["args"]["p_uncond"] == 0 and not clf["args"]["uncond"]
    assert q["classifier_scale"] == 2 and math.isfinite(q["value"])
    assert q["train_seconds"] > 0 and q["classifier_train_seconds"] > 0 and q["classifier_train_cpu_seconds"] > 0
    started, train = [], common.train  # --resume: both continue from step 20, the classifier is not retrained
    monkeypatch.setattr(common, "train", lambda net, loss, data, args, ckpt=None: started.append(
        (args.model, ckpt and ckpt["step"])) or train(net, loss, data, args, ckpt))
    ddpm.main(["--resume", "--iters", "24", "--n-eval", "10", "--out", str(tmp_path / "u")])
    assert started == [("ddpm", 20), ("ddpm-classifier", 20)]
    assert torch.load(tmp_path / "u" / "classifier" / "ckpt.pt", weights_only=True)["step"] == 24
    monkeypatch.undo()
    q = ddpm.main(["--ckpt", str(tmp_path / "u" / "ckpt.pt"), "--classifier-scale", "4", "--n-eval", "50"])
    assert q["classifier_scale"] == 4 and math.isfinite(q["value"])
    assert not [k for k in q if k.endswith("train_seconds")]  # sampling only: nothing trained
    ddpm.main(["--data", "8gaussians", *moons(tmp_path / "g", "--uncond")[2:]])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        ddpm.main(["--ckpt", str(tmp_path / "g" / "ckpt.pt"), "--classifier-scale", "1",
                   "--classifier", str(tmp_path / "u" / "classifier" / "ckpt.pt")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "trained for --data moons" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as e:  # a diffusion checkpoint is not a classifier
        ddpm.main(["--ckpt", str(tmp_path / "g" / "ckpt.pt"), "--classifier", str(tmp_path / "g" / "ckpt.pt"),
                   "--classifier-scale", "1"])
    assert e.value.code == 2 and "needs one of: ddpm-classifier" in capsys.readouterr().err
    ddpm.main(moons(tmp_path / "c", "--n-eval", "0"))
    q = ddpm.main(["--ckpt", str(tmp_path / "c" / "ckpt.pt"), "--n-eval", "0", "--classify", "40",
                   "--classify-samples", "3,2"])
    assert sorted(q["zero_shot_accuracy"]) == [2, 3] and q["zero_shot_n"] == 40
    assert all(0 <= a <= 1 for a in q["zero_shot_accuracy"].values())
    assert "zero-shot accuracy on 40 held-out examples" in capsys.readouterr().out
    assert (tmp_path / "c" / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -----------------------------------------------------------------------------
# the sampling path (--trajectory)

def png_size(path):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")  # (height, width)


def test_trajectory_starts_at_the_noise_and_ends_at_the_samples():
    method, net = ddpm.DDPM(T=12), common.make_net("mlp", (2,), 16)
    path = []
    x = method.sample(net, (5, 2), generator=torch.Generator().manual_seed(0), trajectory=path)
    assert len(path) == 12 + 1 and torch.equal(path[-1], x)
    assert torch.equal(path[0], common.start_noise((5, 2), torch.Generator().manual_seed(0)))
    assert torch.equal(x, method.sample(net, (5, 2), generator=torch.Generator().manual_seed(0)))  # recording is free


def test_cli_trajectory_and_strip(tmp_path, monkeypatch):
    drawn = []
    save = common.save_trajectory
    monkeypatch.setattr(common, "save_trajectory", lambda states, *a, **k: (drawn.append(states), save(states, *a, **k)))
    tiny = ["--T", "10", "--iters", "2", "--width", "8", "--batch-size", "16", "--n-eval", "0", "--trajectory", "6"]
    ddpm.main(["--data", "checkerboard", "--out", str(tmp_path / "2d"), *tiny])
    assert png_size(tmp_path / "2d" / "trajectory.png") == (18 + 512 + 18, 512)
    g = torch.Generator().manual_seed(0 + 4)  # draw_trajectory's generator: seed + 4
    assert drawn[0].shape == (11, 6, 2) and torch.equal(drawn[0][0], common.start_noise((6, 2), g))
    ddpm.main(["--out", str(tmp_path / "digits"), *tiny])  # images: 6 rows of x_t at 8 steps, 32 pixels each
    assert png_size(tmp_path / "digits" / "strip.png") == (2 + 6 * 34, 2 + 8 * 34)
