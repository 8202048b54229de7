"""Tests of ar.py: causality (perturbation and Jacobian), normalisation by enumeration, the sampler
against the model's own probabilities, guidance at w = 2 against separate calls, the KV cache, a
closed-form model, learning beyond independent pixels, command line."""
import dataclasses
import itertools
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import ar
import common


def make(vocab, length, num_classes=0, order="raster", seed=0, dim=16, depth=2):
    """A small float64 model whose head is random (the fresh model is exactly uniform)."""
    torch.manual_seed(seed)
    model = ar.AR(vocab, length, num_classes, dim=dim, depth=depth, heads=2, order=order).double().eval()
    with torch.no_grad():
        model.head.weight.normal_(0, 1.0)
        model.head.bias.normal_(0, 1.0)
        for emb in (model.start, model.tok, model.pos_read, model.pos_next):
            emb.weight.normal_(0, 1.0)
    return model


def all_sequences(vocab, length):
    return torch.tensor(list(itertools.product(range(vocab), repeat=length)))  # (V^n, n)


def tv(p, q):
    return 0.5 * (p - q).abs().sum().item()


def empirical(samples, vocab):
    """Frequencies of the V^n sequences, indexed like all_sequences."""
    length = samples.shape[1]
    code = (samples * vocab ** torch.arange(length - 1, -1, -1)).sum(1)
    return torch.bincount(code, minlength=vocab ** length).double() / len(samples)


# -----------------------------------------------------------------------------
# causality

@settings(deadline=None, max_examples=15)
@given(seed=st.integers(0, 10_000), cut=st.integers(0, 7), order=st.sampled_from(["raster", "random"]))
def test_causal_by_perturbation(seed, cut, order):
    """logits at step i (position sigma_i) do not move when x_{sigma_i} or later tokens change."""
    model, g = make(5, 8, num_classes=3, seed=seed % 7), torch.Generator().manual_seed(seed)
    x = torch.randint(0, 5, (4, 8), generator=g)
    sigma = model.orders(order, 4, "cpu", g)
    later = sigma[:, cut:]  # positions generated at step cut or later
    x2 = x.clone()
    x2.scatter_(1, later, (x.gather(1, later) + torch.randint(1, 5, later.shape, generator=g)) % 5)
    y = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        a, b = model(x, y, sigma), model(x2, y, sigma)  # (B, n, V) at pixel positions
    steps = sigma.argsort(1)  # step of each position
    kept = steps <= cut
    assert torch.equal(a[kept], b[kept])
    if cut < 7:  # the next step reads x_{sigma_cut}, which changed: its logits must move
        nxt = sigma[:, cut + 1]
        assert not torch.allclose(a[torch.arange(4), nxt], b[torch.arange(4), nxt])


@pytest.mark.parametrize("order", ["raster", "random"])
def test_causal_by_jacobian(order):
    """d logits(sigma_k) / d e(x_{sigma_i}) = 0 for k <= i and != 0 for k > i, end to end."""
    model, n = make(6, 7, num_classes=2, order=order, seed=3), 7
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 6, (1, n), generator=g)
    sigma = model.orders(order, 1, "cpu", g)
    delta = torch.zeros(1, n - 1, 16, dtype=torch.float64)  # added to e(x_{sigma_1}), ..., e(x_{sigma_{n-1}})
    holder = {}
    hook = model.tok.register_forward_hook(lambda mod, inp, out: out + holder["d"])

    def logits_in_order(d):
        holder["d"] = d
        return model(x, torch.tensor([1]), sigma)[0, sigma[0]]  # (n, V): row k is step k

    J = torch.autograd.functional.jacobian(logits_in_order, delta)  # (n, V, 1, n - 1, D)
    hook.remove()
    size = J.abs().sum(dim=(1, 2, 4))  # (n steps, n - 1 read tokens)
    for k in range(n):
        for i in range(n - 1):  # read token i is x_{sigma_i}, visible from step i + 1 on
            if k <= i:
                assert size[k, i] == 0, (k, i)
            else:
                assert size[k, i] > 1e-6, (k, i)


# -----------------------------------------------------------------------------
# exact likelihood

@pytest.mark.parametrize("y", [None, 0, 1])
def test_probabilities_sum_to_one(y):
    """sum over all V^n sequences of p_sigma(x) = 1, for the raster order and for random orders."""
    model, seqs = make(3, 4, num_classes=2, seed=5), all_sequences(3, 4)
    labels = None if y is None else torch.full((len(seqs),), y)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for order in ["raster", torch.randperm(4, generator=g), torch.tensor([3, 1, 0, 2])]:
            sigma = order if isinstance(order, str) else order.expand(len(seqs), -1)
            total = torch.logsumexp(model.log_prob(seqs, labels, sigma).double(), 0)
            assert abs(total.item()) < 1e-6


def test_log_prob_is_the_chain_rule():
    """log p(x) = sum_i log Categorical(logits of x_i given the prefix only), each conditional
    computed from a separate call that sees garbage after the prefix."""
    model = make(5, 6, seed=2)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 5, (8, 6), generator=g)
    ref = torch.zeros(8, dtype=torch.float64)
    with torch.no_grad():
        for i in range(6):
            garbage = torch.cat([x[:, :i], torch.randint(0, 5, (8, 6 - i), generator=g)], 1)
            ref += torch.distributions.Categorical(logits=model(garbage)[:, i]).log_prob(x[:, i])
        lp = model.log_prob(x)
        bpd = model.bits_per_dim(x)
    assert torch.allclose(lp.double(), ref, atol=1e-5)
    assert torch.allclose(bpd.double(), -ref / (6 * math.log(2)), atol=1e-5)


def test_closed_form_iid_model():
    """Zero head weights and bias b: p(x) = prod_i softmax(b)[x_i]; samples with temperature tau
    and top-k have per-token frequencies softmax(b / tau) on the k largest entries of b."""
    model = ar.AR(6, 16).double()
    x = torch.randint(0, 6, (10, 16), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(model.log_prob(x).double(), torch.full((10,), -16 * math.log(6), dtype=torch.float64))
    b = torch.tensor([0.5, -1.0, 2.0, 0.0, 1.2, -0.3], dtype=torch.float64)
    with torch.no_grad():
        model.head.bias.copy_(b)
        assert torch.allclose(model.log_prob(x).double(), torch.distributions.Categorical(logits=b).log_prob(x).sum(1))
    for tau, k in [(1.0, 0), (0.5, 0), (2.0, 3)]:
        s = model.sample(4000, temperature=tau, top_k=k, generator=torch.Generator().manual_seed(1))
        freq = torch.bincount(s.flatten(), minlength=6).double() / s.numel()
        logits = b / tau
        if k:
            logits = torch.where(b >= b.topk(k).values[-1], logits, torch.tensor(float("-inf"), dtype=torch.float64))
        assert tv(freq, torch.softmax(logits, 0)) < 0.01, (tau, k)
        assert s.dtype == torch.long and s.shape == (4000, 16)


# -----------------------------------------------------------------------------
# the marginal of a conditional model: log p(x) = logsumexp_y (log p(y) + log p(x | y))

PRIOR = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)  # p(y), not uniform


@pytest.mark.parametrize("order", ["raster", "tensor", "random"])
def test_log_prob_marginal_equals_brute_force(order):
    """log_prob_marginal (one batch of K B sequences) = log sum_y p(y) exp(log p(x | y)), each class a
    separate log_prob call here, summed in probability; the same order for every y (random: drawn
    from equally seeded generators). And p(x) sums to 1 over all V^n sequences."""
    model = make(3, 4, num_classes=3, order="random", seed=6)
    seqs, g = all_sequences(3, 4), torch.Generator().manual_seed(3)
    x = seqs[torch.randperm(len(seqs), generator=g)[:20]]
    arg = {"raster": "raster", "tensor": model.orders("random", 20, "cpu", g), "random": "random"}[order]
    with torch.no_grad():
        sigma = model.orders(arg, 20, "cpu", torch.Generator().manual_seed(5))
        ref = sum(PRIOR[y] * model.log_prob(x, torch.full((20,), y), sigma).double().exp() for y in range(3)).log()
        got = model.log_prob_marginal(x, PRIOR.log(), arg, generator=torch.Generator().manual_seed(5))
        total = model.log_prob_marginal(seqs, PRIOR.log()).exp().sum()
    assert got.dtype == torch.float64 and got.shape == (20,)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-9)
    assert abs(total.item() - 1) < 1e-6


@pytest.mark.parametrize("order", ["raster", "random"])
def test_log_prob_marginal_bounds(order):
    """log p(y) + log p(x | y) <= log p(x) <= max_y log p(x | y) for every x and y (one term of the
    sum; a weighted mean of the p(x | y)), on a model whose label matters (the upper bound strict)."""
    model = make(5, 6, num_classes=3, seed=12)
    x = torch.randint(0, 5, (16, 6), generator=torch.Generator().manual_seed(4))
    sigma = model.orders(order, 16, "cpu", torch.Generator().manual_seed(2))
    with torch.no_grad():
        marginal = model.log_prob_marginal(x, PRIOR.log(), sigma)
        by_class = torch.stack([model.log_prob(x, torch.full((16,), y), sigma).double() for y in range(3)])
    assert (by_class.max(0).values - by_class.min(0).values).min() > 0.1  # the label matters
    assert (PRIOR.log()[:, None] + by_class <= marginal + 1e-9).all()
    assert (marginal <= by_class.max(0).values + 1e-9).all()
    assert (marginal < by_class.max(0).values - 1e-3).all()  # strict: the other classes fit worse


def test_log_prob_marginal_of_a_label_blind_model():
    """A model whose output ignores y (every start embedding the same): p(x) = sum_y p(y) p(x | y)
    = p(x | y) for every y, the null label included, since sum_y p(y) = 1."""
    model = make(4, 5, num_classes=3, seed=7)
    with torch.no_grad():
        model.start.weight.copy_(model.start.weight[:1].expand_as(model.start.weight))
        x = torch.randint(0, 4, (12, 5), generator=torch.Generator().manual_seed(0))
        marginal = model.log_prob_marginal(x, PRIOR.log())
        for y in [None, 0, 1, 2]:
            lp = model.log_prob(x, None if y is None else torch.full((12,), y)).double()
            torch.testing.assert_close(marginal, lp, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="summing to 1"):
        model.log_prob_marginal(x, torch.zeros(3))  # not normalised: p(y) = 1 each
    with pytest.raises(ValueError, match="num_classes"):
        model.log_prob_marginal(x, PRIOR[:2].log())
    with pytest.raises(ValueError, match="unconditional"):
        make(4, 5).log_prob_marginal(x, PRIOR.log())


@pytest.mark.parametrize("uncond", [False, True])
def test_held_out_likelihood_of_the_uniform_model(uncond):
    """A fresh AR is uniform over the 17 levels: every figure is log2(17) bits/dim exactly, the
    marginal too (sum_y p(y) = 1); an unconditional model reports the one figure."""
    data = common.load_digits()
    tokens = dataclasses.replace(data, x_train=ar.to_tokens(data.x_train, 17), x_test=ar.to_tokens(data.x_test, 17))
    model = ar.AR(17, 64, 0 if uncond else 10, dim=16, depth=1, heads=2, order="random")
    q = ar.held_out_likelihood(model, tokens, 40, 0, "digits")
    keys = {"bits_per_dim"} | (set() if uncond else {"bits_per_dim_conditional", "bits_per_dim_null"})
    assert {k for k in q if k.startswith("bits")} == keys and q["bpd_n"] == 40
    assert q["bpd_order"] == "random order, one per image (seed 0)"
    for k in keys:
        assert abs(q[k] - math.log2(17)) < 1e-5, (k, q[k])


# -----------------------------------------------------------------------------
# the sampler draws from the model's own distribution

@pytest.mark.parametrize("case", ["plain", "label", "temperature_topk", "guided", "random_order"])
def test_sample_matches_log_prob(case):
    V, n, N = 3, 3, 20000
    model = make(V, n, num_classes=2, order="random" if case == "random_order" else "raster", seed=11)
    seqs, g = all_sequences(V, n), torch.Generator().manual_seed(2)
    y = None if case in ("plain", "random_order") else 1
    ys = None if y is None else torch.full((N,), y)
    tau, k, w = (0.7, 2, 1.0) if case == "temperature_topk" else (1.0, 0, 2.0 if case == "guided" else 1.0)
    samples = model.sample(N, ys, temperature=tau, generator=g, top_k=k, cfg_scale=w)
    labels = None if y is None else torch.full((len(seqs),), y)
    with torch.no_grad():
        if case == "random_order":  # the mixture over the n! orders, each exact
            p = torch.stack([model.log_prob(seqs, None, torch.tensor(s).expand(len(seqs), -1)).exp()
                             for s in itertools.permutations(range(n))]).mean(0)
        else:  # independent reference: per-position logits, transformed as the sampler should
            logits = model(seqs, labels).double() / tau
            if case == "guided":
                uncond = model(seqs, None).double()
                logits = uncond + w * (logits - uncond)
            if k:
                logits = logits.masked_fill(logits < logits.topk(k, -1).values[..., -1:], float("-inf"))
            p = torch.log_softmax(logits, -1).gather(2, seqs[..., None]).squeeze(2).sum(1).exp()
    assert abs(p.sum().item() - 1) < 1e-6
    assert tv(empirical(samples, V), p.double()) < 0.03


def test_guided_logits_at_w2():
    """guided(x, y, w) = l(x, None) + w (l(x, y) - l(x, None)), the two branches computed here by separate
    calls; a single call when y is None or w = 1."""
    model = make(5, 6, num_classes=3, seed=8)
    x = torch.randint(0, 5, (4, 6), generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        cond, uncond = model(x, y), model(x, None)
        assert (cond - uncond).abs().max() > 0.1  # the label matters
        torch.testing.assert_close(model.guided(x, y, 2.0), uncond + 2.0 * (cond - uncond))
        torch.testing.assert_close(model.guided(x, y, 0.0), uncond)
        assert torch.equal(model.guided(x, y, 1.0), cond) and torch.equal(model.guided(x, None, 2.0), uncond)


def test_guided_sampler_at_w2_equals_a_stepwise_reference():
    """The sampler at w = 2, given the uniforms u: step i draws x_i by inverse CDF from softmax of
    l_i(x_<i, None) + 2 (l_i(x_<i, y) - l_i(x_<i, None)), each branch a full forward call on the prefix."""
    model = make(6, 8, num_classes=3, seed=9)
    y = torch.tensor([0, 1, 2, 0, 1])
    u = torch.rand(5, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)  # the inverse CDF's uniforms
    x = torch.zeros(5, 8, dtype=torch.long)
    with torch.no_grad():
        for i in range(8):
            cond, uncond = model(x, y)[:, i], model(x, None)[:, i]  # causal: x[:, i:] is not read
            cdf = torch.softmax(uncond + 2.0 * (cond - uncond), -1).cumsum(-1)
            x[:, i] = (cdf <= u[:, i:i + 1] * cdf[:, -1:]).sum(-1)
    for cache in (True, False):
        assert torch.equal(model.sample(5, y, noise=u, cfg_scale=2.0, cache=cache), x)
    assert not torch.equal(model.sample(5, y, noise=u, cfg_scale=1.0), x)  # guidance changed the draws


@pytest.mark.parametrize("order", ["raster", "random"])
def test_cached_and_uncached_sampling_agree(order):
    model = make(17, 20, num_classes=10, order=order, seed=4, dim=32)
    y = torch.arange(32) % 10
    for w in (1.0, 3.0):
        a = model.sample(32, y, generator=torch.Generator().manual_seed(7), cfg_scale=w, cache=True)
        b = model.sample(32, y, generator=torch.Generator().manual_seed(7), cfg_scale=w, cache=False)
        assert torch.equal(a, b)
    noise = torch.rand(32, 20, dtype=torch.float64)
    c = model.sample(32, y, noise=noise, order="raster")
    assert torch.equal(c, model.sample(32, y, noise=noise, order="raster", cache=False))
    assert c.min() >= 0 and c.max() < 17
    with pytest.raises(ValueError):
        model.sample(2, temperature=0.0)


# -----------------------------------------------------------------------------
# pixels <-> tokens, learning, command line

def test_tokens_round_trip():
    data = common.load_digits()
    t = ar.to_tokens(data.x_test, 17)
    assert t.shape == (500, 64) and t.min() == 0 and t.max() == 16
    assert torch.allclose(ar.to_images(t, (1, 8, 8), 17), data.x_test, atol=1e-6)
    k = torch.arange(256).float().view(1, 1, 16, 16) / 255 * 2 - 1  # 256 levels -> 16
    q = ar.to_tokens(k, 16)
    assert torch.equal(q.flatten(), (torch.arange(256) / 255 * 15).round().long())
    rgb = torch.stack([torch.full((2, 2), c / 2 * 2 - 1.0) for c in range(3)])[None]  # channel c = level c
    assert ar.to_tokens(rgb, 3)[0, :3].tolist() == [0, 1, 2]  # channels interleaved per pixel


def independent_pixels_bits(x_train, x_test, vocab):
    """Held-out bits/dim of the best model that ignores the chain rule: independent per-pixel
    categoricals, the training tokens' frequencies with add-one (Laplace) smoothing."""
    counts = torch.zeros(x_train.shape[1], vocab).scatter_add_(1, x_train.T, torch.ones(x_train.T.shape))
    p = (counts + 1) / (counts + 1).sum(1, keepdim=True)  # (n, V)
    nats = -p.log().gather(1, x_test.T).sum(0)  # (B,)
    return (nats / (x_train.shape[1] * math.log(2))).mean().item()


def test_short_training_beats_independent_pixels():
    """200 steps on digits (unconditional): held-out bits/dim from log2(17) (the uniform start) to
    clearly below independent per-pixel categoricals on the same data, which no model that ignores
    the chain rule (each pixel on its own) can beat by much."""
    torch.manual_seed(0)
    data = common.load_digits()
    xtr, xte = ar.to_tokens(data.x_train, 17), ar.to_tokens(data.x_test, 17)
    baseline = independent_pixels_bits(xtr, xte, 17)
    model = ar.AR(17, 64, dim=32, depth=1, heads=2)
    before = model.bits_per_dim(xte).mean().item()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        loss = model.loss(xtr[torch.randint(0, len(xtr), (64,), generator=g)])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = model.bits_per_dim(xte).mean().item()
    assert abs(before - math.log2(17)) < 1e-6
    assert 2.0 < baseline < 3.0, baseline  # the baseline itself learnt something (uniform: 4.09)
    assert after < baseline - 0.2, (after, baseline)  # 0.2 bits/dim: 13 nats per digit


def test_cli(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        ar.main(["--help"])
    assert e.value.code == 0
    out = tmp_path / "run"
    tiny = ["--iters", "20", "--batch-size", "32", "--width", "8", "--depth", "1", "--n-eval", "20",
            "--log-every", "10", "--warmup", "5"]
    q = ar.main(tiny + ["--out", str(out), "--order", "random", "--bpd", "50"])
    assert (out / "ckpt.pt").is_file() and (out / "samples.png").is_file()
    assert q["metric"] == "FD" and math.isfinite(q["value"])
    # held-out likelihood: -log p(x) <= -log p(x | y) - log p(y), image by image, so on average
    data = common.load_digits()
    minus_log2_prior = -(torch.bincount(data.y_train).double() / len(data.y_train)).log2()
    slack = minus_log2_prior[data.y_test[:50]].mean().item() / 64
    assert q["bpd_n"] == 50 and q["bpd_order"] == "random order, one per image (seed 2)"
    assert q["bits_per_dim"] <= q["bits_per_dim_conditional"] + slack
    keys = ("bits_per_dim", "bits_per_dim_conditional", "bits_per_dim_null")
    assert all(1 < q[k] < math.log2(17) + 0.5 for k in keys)
    assert "held-out bits/dim, exact, random order" in capsys.readouterr().out
    q2 = ar.main(["--ckpt", str(out / "ckpt.pt"), "--n-eval", "20", "--out", str(tmp_path / "s"), "--no-cache",
                  "--temperature", "0.9", "--top-k", "5", "--cfg-scale", "2", "--bpd", "0"])
    assert math.isfinite(q2["value"]) and (tmp_path / "s" / "samples.png").is_file()


@pytest.mark.parametrize("bad, words", [(["--data", "moons"], "not pixels: use --data digits"),
                                        (["--temperature", "0"], "need --temperature > 0"),
                                        (["--levels", "1"], "--levels must be at least 2"),
                                        (["--order", "zigzag"], "invalid choice: 'zigzag'"),
                                        (["--top-k", "40"], "--top-k in [0, 17]"),
                                        (["--heads", "3"], "--heads dividing the width"),
                                        (["--bpd", "-1"], "--bpd >= 0")])
def test_cli_bad_flags(bad, words, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        ar.main(bad + ["--iters", "1", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and words in err, err
