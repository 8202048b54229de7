"""vae.py against independent references: torch.distributions for the KL, closed-form gradients
for the reparameterization trick, probabilistic PCA (a linear Gaussian VAE whose log p(x) and true
posterior are exact) for the ELBO <= IWAE_k <= IWAE_k' <= log p(x) ladder and the sampler, brute
force enumeration for the categorical decoder's normalisation, the mean image computed by hand from
the decoder's logits, and short runs of the command line."""
import itertools
import math

import pytest
import torch
import torch.distributions as D
from hypothesis import given, settings, strategies as st

import common
import vae


# -----------------------------------------------------------------------------
# the analytic KL and the reparameterization trick

@settings(deadline=None, max_examples=20)
@given(d=st.integers(1, 6), batch=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_gaussian_kl_equals_torch_distributions(d, batch, seed):
    g = torch.Generator().manual_seed(seed)
    mu = 2 * torch.randn(batch, d, generator=g, dtype=torch.float64)
    logvar = 3 * torch.randn(batch, d, generator=g, dtype=torch.float64)
    q = D.Independent(D.Normal(mu, (0.5 * logvar).exp()), 1)
    p = D.Independent(D.Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1)
    torch.testing.assert_close(vae.gaussian_kl(mu, logvar), D.kl_divergence(q, p), rtol=1e-10, atol=1e-10)


def test_gaussian_kl_equals_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mu = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    logvar = torch.tensor([-1.0, 0.3, 0.8], dtype=torch.float64)
    z = vae.reparameterize(mu, logvar, torch.randn(400_000, 3, generator=g, dtype=torch.float64))
    zeros = torch.zeros_like(z)
    log_ratio = vae.gaussian_log_prob(z, mu, logvar) - vae.gaussian_log_prob(z, zeros, zeros)  # log q - log p
    stderr = log_ratio.std() / math.sqrt(len(z))
    assert abs(log_ratio.mean() - vae.gaussian_kl(mu, logvar)) < 4 * stderr


def test_gaussian_log_prob_equals_torch_distributions():
    g = torch.Generator().manual_seed(1)
    x, mean, logvar = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    ref = D.Independent(D.Normal(mean, (0.5 * logvar).exp()), 1).log_prob(x)
    torch.testing.assert_close(vae.gaussian_log_prob(x, mean, logvar), ref)


def test_reparameterized_gradient_equals_analytic():
    """f(z) = sum_j a_j z_j + b_j z_j^2 has E_q f = sum a mu + b (mu^2 + sigma^2), so
    d/dmu = a + 2 b mu and d/dlogvar = b sigma^2; the pathwise estimate must agree."""
    g = torch.Generator().manual_seed(2)
    a = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    b = torch.tensor([0.3, 1.0, -0.7], dtype=torch.float64)
    mu = torch.tensor([0.2, -0.4, 1.1], dtype=torch.float64, requires_grad=True)
    logvar = torch.tensor([0.1, -0.6, 0.4], dtype=torch.float64, requires_grad=True)
    z = vae.reparameterize(mu, logvar, torch.randn(400_000, 3, generator=g, dtype=torch.float64))
    (a * z + b * z ** 2).sum(1).mean().backward()
    var = logvar.detach().exp()
    torch.testing.assert_close(mu.grad, a + 2 * b * mu.detach(), atol=0.01, rtol=0)
    torch.testing.assert_close(logvar.grad, b * var, atol=0.01, rtol=0)


# -----------------------------------------------------------------------------
# probabilistic PCA: p(z) = N(0, I), p(x|z) = N(W z + b, s2 I), so p(x) = N(b, W W^T + s2 I) and
# p(z|x) = N(M^-1 W^T (x - b), s2 M^-1), M = W^T W + s2 I (diagonal when W's columns are orthogonal)

def ppca(mean_scale=1.0, logvar_shift=0.0):
    """A VAE holding the exact pPCA decoder and the exact (or a deliberately wrong) encoder."""
    g = torch.Generator().manual_seed(3)
    Q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    W = Q[:, :2] * torch.tensor([1.5, 0.7], dtype=torch.float64)  # (3, 2), W^T W = diag(2.25, 0.49)
    b, s2 = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64), 0.25
    M = W.T @ W + s2 * torch.eye(2, dtype=torch.float64)
    A = torch.linalg.solve(M, W.T)  # posterior mean map M^-1 W^T
    enc, dec = torch.nn.Linear(3, 4).double(), torch.nn.Linear(2, 6).double()
    model = vae.VAE((3,), latent_dim=2, levels=0, encoder=enc, decoder=dec)
    with torch.no_grad():
        enc.weight.zero_(), dec.weight.zero_()
        enc.weight[:2] = mean_scale * A
        enc.bias[:2] = -mean_scale * A @ b
        enc.bias[2:] = torch.log(s2 / torch.diagonal(M)) + logvar_shift
        dec.weight[:3], dec.bias[:3] = W, b
        lo = model.min_logvar  # decode() floors logvar softly: invert min + softplus(raw - min) = log s2
        dec.bias[3:] = lo + math.log(math.expm1(math.log(s2) - lo))
    p_x = D.MultivariateNormal(b, W @ W.T + s2 * torch.eye(3, dtype=torch.float64))
    return model, p_x, (A, b, s2 * torch.linalg.inv(M))


def test_ppca_exact_posterior_gives_exact_log_likelihood():
    """With q = p(z|x) every importance weight equals p(x): L_k = log p(x) for every k, also for
    points so far away that p(x) underflows (exp then log would give -inf)."""
    model, p_x, _ = ppca()
    g = torch.Generator().manual_seed(4)
    x = p_x.mean + torch.randn(50, 3, generator=g, dtype=torch.float64) @ p_x.scale_tril.T  # x ~ p(x)
    x = torch.cat([x, torch.tensor([[40.0, -35.0, 60.0]], dtype=torch.float64)])
    exact = p_x.log_prob(x)
    assert exact[-1] < -1000  # exp(log p) is 0 in float64
    for k in (1, 7, 100):
        torch.testing.assert_close(model.log_likelihood(x, k=k, generator=g), exact, atol=1e-9, rtol=1e-9)
    neg_elbo = torch.stack([model.neg_elbo(x[:50], generator=g) for _ in range(1000)])  # (1000, 50)
    stderr = neg_elbo.std() / math.sqrt(neg_elbo.numel())
    assert abs(-neg_elbo.mean() - exact[:50].mean()) < 4 * stderr  # KL(q || p(z|x)) = 0


def test_ppca_bound_ladder_with_an_imperfect_encoder():
    """E[-L(x)] = log p(x) - KL(q || p(z|x)) exactly, and ELBO <= IWAE_10 <= IWAE_100 <= log p(x),
    each gap larger than four standard errors of the Monte Carlo estimates (x held fixed)."""
    model, p_x, (A, b, S) = ppca(mean_scale=0.5, logvar_shift=1.5)
    g = torch.Generator().manual_seed(5)
    x = p_x.mean + torch.randn(400, 3, generator=g, dtype=torch.float64) @ p_x.scale_tril.T  # x ~ p(x)
    exact = p_x.log_prob(x).mean()
    with torch.no_grad():
        mu, logvar = model.encode(x)
    q = D.MultivariateNormal(mu, torch.diag_embed(logvar.exp()))
    post = D.MultivariateNormal((x - b) @ A.T, S)
    elbo_exact = exact - D.kl_divergence(q, post).mean()

    def estimate(fn, repeats):  # mean over x and repeats, and its standard error (x fixed)
        runs = torch.stack([fn() for _ in range(repeats)])  # (repeats, 400)
        return runs.mean(), (runs - runs.mean(0)).std() / math.sqrt(runs.numel())

    with torch.no_grad():
        elbo, se = estimate(lambda: -model.neg_elbo(x, generator=g), 200)
        assert abs(elbo - elbo_exact) < 4 * se
        iwae1, se1 = estimate(lambda: model.log_likelihood(x, k=1, generator=g), 200)
        assert abs(iwae1 - elbo_exact) < 4 * se1  # L_1 is the ELBO, with a sampled KL
        iwae10, se10 = estimate(lambda: model.log_likelihood(x, k=10, generator=g), 50)
        iwae100, se100 = estimate(lambda: model.log_likelihood(x, k=100, generator=g), 20)
    assert elbo_exact < iwae10 - 4 * se10
    assert iwae10 + 4 * se10 < iwae100 - 4 * se100
    assert iwae100 + 4 * se100 < exact


def test_ppca_samples_have_the_model_mean_and_covariance():
    model, p_x, _ = ppca()
    g = torch.Generator().manual_seed(6)
    x = model.sample(200_000, generator=g)
    assert x.shape == (200_000, 3) and x.dtype == torch.float64
    torch.testing.assert_close(x.mean(0), p_x.mean, atol=0.01, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), p_x.covariance_matrix, atol=0.02, rtol=0)
    s2 = 0.25  # the decoder's mean drops the noise: covariance W W^T
    means = model.sample(200_000, generator=g, pixels="mean")
    torch.testing.assert_close(torch.cov(means.T), p_x.covariance_matrix - s2 * torch.eye(3, dtype=torch.float64),
                               atol=0.02, rtol=0)


def test_sampler_is_seeded_and_takes_noise():
    model = vae.VAE((1, 8, 8), latent_dim=4, hidden=16, levels=17)
    a = model.sample(5, generator=torch.Generator().manual_seed(0))
    b = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert a.shape == (5, 1, 8, 8) and torch.equal(a, b)
    levels = (a + 1) / 2 * 16
    assert torch.allclose(levels, levels.round(), atol=1e-5)  # drawn pixels sit on the 17 levels


def test_mean_pixels_are_the_expected_level_under_the_decoder():
    """sample(pixels="mean") is E[x|z] = sum_k p_k(z) v_k: p the decoder's categorical, here exp(l) / sum exp(l)
    of the logits l = decode(z), v_k = -1 + 2 k / 16 the value of level k of 17; z given as noise=, or
    the first draw of the generator."""
    torch.manual_seed(0)
    model = vae.VAE((1, 8, 8), latent_dim=4, hidden=16, levels=17).double()
    g = torch.Generator().manual_seed(5)
    z = torch.randn(3, 4, generator=g, dtype=torch.float64)
    with torch.no_grad():
        logits = model.decode(z)  # (3, 1, 8, 8, 17)
    p = logits.exp() / logits.exp().sum(-1, keepdim=True)
    v = torch.tensor([-1 + 2 * k / 16 for k in range(17)], dtype=torch.float64)
    expected = (p * v).sum(-1)
    assert expected.shape == (3, 1, 8, 8) and expected.std() > 0.01  # not a constant image
    torch.testing.assert_close(model.sample(3, noise=z, pixels="mean"), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.sample(3, generator=torch.Generator().manual_seed(5), pixels="mean"), expected,
                               rtol=1e-12, atol=1e-12)


def test_mean_points_are_the_gaussian_decoders_mean():
    """For points the mean is m(z): in probabilistic PCA, W z + b."""
    model, p_x, _ = ppca()
    W, b = model.decoder.weight[:3].detach(), model.decoder.bias[:3].detach()
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    torch.testing.assert_close(model.sample(5, noise=z, pixels="mean"), z @ W.T + b, rtol=1e-12, atol=1e-12)


# -----------------------------------------------------------------------------
# the categorical decoder is a probability

@settings(deadline=None, max_examples=10)
@given(levels=st.sampled_from([2, 17, 256]), seed=st.integers(0, 1000))
def test_level_index_inverts_level_values(levels, seed):
    model = vae.VAE((1, 2, 2), latent_dim=2, hidden=8, levels=levels)
    k = torch.randint(0, levels, (50,), generator=torch.Generator().manual_seed(seed))
    values = model.level_values(torch.zeros(())).float()[k]
    assert torch.equal(model.level_index(values), k)
    assert values.min() >= -1 and values.max() <= 1


def test_digits_pixels_sit_on_17_levels():
    data = common.load_data("digits")
    model = vae.VAE(data.shape, levels=data.levels)
    k = model.level_index(data.x_test)
    torch.testing.assert_close(model.level_values(data.x_test)[k], data.x_test)


def test_categorical_decoder_sums_to_one_over_all_images():
    """Shape (1, 1, 2) with 3 levels has 9 images: sum_x p(x|z) = 1 for any z, and
    sum_x exp(L_k(x)) estimates sum_x p(x) = 1 without bias."""
    torch.manual_seed(0)
    model = vae.VAE((1, 1, 2), latent_dim=2, hidden=16, levels=3).double()
    vals = model.level_values(torch.zeros((), dtype=torch.float64))
    xs = torch.tensor(list(itertools.product(vals.tolist(), repeat=2)), dtype=torch.float64).view(9, 1, 1, 2)
    z = torch.randn(4, 2, dtype=torch.float64)
    logp = torch.stack([model.log_px_given_z(xs, model.decode(zi.expand(9, 2))) for zi in z])  # (4, 9)
    torch.testing.assert_close(logp.exp().sum(1), torch.ones(4, dtype=torch.float64))
    log_px = model.log_likelihood(xs, k=20_000, generator=torch.Generator().manual_seed(0))
    assert abs(log_px.exp().sum().item() - 1) < 0.03


def test_loss_is_in_nats_per_example():
    """An untrained categorical decoder is near uniform: -ELBO ~ D log L + small KL, not a mean."""
    torch.manual_seed(0)
    model = vae.VAE((1, 8, 8), latent_dim=4, hidden=16, levels=17)
    x = common.load_data("digits").x_train[:64]
    loss = model.loss(x)
    assert loss.dim() == 0 and 0.8 * 64 * math.log(17) < loss.item() < 1.5 * 64 * math.log(17)


# -----------------------------------------------------------------------------
# command line: a short run learns, checkpoints reload, bad flags exit with status 2

@pytest.fixture
def fast_features(monkeypatch):
    """The Frechet distance's classifier, untrained: the plumbing is under test here, not FD."""
    monkeypatch.setattr(common, "feature_net", lambda data, root=None: (common.Classifier().eval(), 0.0))


def independent_pixels_nll(data):
    """Held-out NLL (nats/image) of the best model with independent pixels (smoothed frequencies)."""
    k_tr = ((data.x_train + 1) * 8).round().long().flatten(1)
    k_te = ((data.x_test + 1) * 8).round().long().flatten(1)
    counts = torch.zeros(64, 17).scatter_add_(1, k_tr.T, torch.ones(k_tr.T.shape))
    p = (counts + 0.5) / (counts + 0.5).sum(1, keepdim=True)
    return -p.log().gather(1, k_te.T).sum(0).mean().item()


def test_short_digits_run_learns_and_reloads(tmp_path, fast_features):
    out = tmp_path / "run"
    flags = ["--iters", "300", "--n-eval", "100", "--iwae-k", "100", "--log-every", "200", "--device", "cpu"]
    q = vae.main(flags + ["--out", str(out)])
    for name in ("ckpt.pt", "samples.png", "recon.png", "interp.png", "metrics.jsonl"):
        assert (out / name).is_file(), name
    nll = q["likelihood"]
    baseline = independent_pixels_nll(common.load_data("digits"))  # ~108 nats; uniform is 181
    assert nll["iwae100_nll_nats"] < baseline - 5
    assert nll["iwae100_nll_nats"] <= nll["neg_elbo_nats"] + 0.5
    assert nll["iwae100_nll_bpd"] == pytest.approx(nll["iwae100_nll_nats"] / (64 * math.log(2)))
    again = vae.main(["--ckpt", str(out / "ckpt.pt"), "--out", str(tmp_path / "again"), "--n-eval", "100",
                      "--iwae-k", "100", "--device", "cpu"])
    assert again["likelihood"] == nll  # the same EMA weights and seed
    assert not (tmp_path / "again" / "ckpt.pt").exists()


def test_points_run_uses_a_gaussian_density(tmp_path):
    q = vae.main(["--data", "moons", "--iters", "150", "--batch-size", "256", "--n-eval", "200",
                  "--iwae-k", "20", "--n-nll", "200", "--log-every", "150", "--out", str(tmp_path), "--device", "cpu"])
    assert q["metric"] == "W2" and math.isfinite(q["value"])
    assert (tmp_path / "samples.png").is_file() and not (tmp_path / "recon.png").exists()
    assert "iwae20_nll_bpd" not in q["likelihood"] and math.isfinite(q["likelihood"]["iwae20_nll_nats"])


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as e:
        vae.main(["--help"])
    assert e.value.code == 0 and "--latent-dim" in capsys.readouterr().out


@pytest.mark.parametrize("flags, words", [
    (["--latent-dim", "0"], "--latent-dim must be a positive integer"), (["--hidden", "-3"], "--hidden must be"),
    (["--iwae-k", "-1"], "--iwae-k must be >= 0"), (["--cfg-scale", "2"], "--cfg-scale does not apply"),
    (["--data", "nope"], "unknown data set 'nope'"), (["--pixels", "mode"], "invalid choice: 'mode'"),
    (["--ckpt", "/nonexistent/ckpt.pt"], "/nonexistent/ckpt.pt not found")])
def test_bad_flags_exit_with_status_2(flags, words, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        vae.main(flags + ["--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and words in err and len(err.strip().splitlines()) == 1, err
