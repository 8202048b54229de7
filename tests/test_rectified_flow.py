"""Tests of rectified_flow.py against closed forms, brute force and scipy.

Gaussian data x_1 ~ N(m, S) with x_0 ~ N(0, I) give every flow of the method in closed form.
1-rectified flow (independent coupling): (x_t, x_1 - x_0) are jointly Gaussian, so
  v1(x, t) = E[x_1 - x_0 | x_t = x] = m + (t S - (1 - t) I) C_t^{-1} (x - t m),  C_t = (1 - t)^2 I + t^2 S.
Its ODE paths are x_t = t m + C_t^{1/2} x_0 (symmetric root), curved, ending at x_1 = m + S^{1/2} x_0.
2-rectified flow (coupling x_1 = m + A x_0, A = S^{1/2}): x_t = t m + B_t x_0 with B_t = (1 - t) I + t A,
  v2(x, t) = m + (A - I) B_t^{-1} (x - t m),  constant along each path: straight.
In the eigenbasis of S (eigenvalue l) the 1-RF path is t m + s_t z with s_t = sqrt((1 - t)^2 + t^2 l),
so its straightness is sum_i c_i z_i^2 with c_i = int_0^1 (ds_t/dt)^2 dt - (sqrt(l_i) - 1)^2.
"""
import argparse
import copy
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy import integrate, stats

import common
import rectified_flow
from rectified_flow import RectifiedFlow, transport_cost


def gaussian_problem(d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(d, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    lam = torch.linspace(0.2, 2.5, d, dtype=torch.float64)
    return m, q @ torch.diag(lam) @ q.T, q, lam


def sym_sqrt(S):
    lam, q = torch.linalg.eigh(S)
    return q @ torch.diag(lam.sqrt()) @ q.T


def flat_net(field):
    """net(x, t, y) for x of any shape (B, ...), computing field on x.flatten(1) in float64."""
    def net(x, t, y=None):
        return field(x.flatten(1).double(), t.double()).view(x.shape).to(x.dtype)
    return net


def rf1_field(m, S):
    eye = torch.eye(len(m), dtype=torch.float64)

    def field(x, t):
        tt = t.view(-1, 1, 1)
        C = (1 - tt) ** 2 * eye + tt ** 2 * S  # (B, d, d)
        return m + ((tt * S - (1 - tt) * eye) @ torch.linalg.solve(C, (x - tt[:, :, 0] * m)[..., None]))[..., 0]
    return flat_net(field)


def rf2_field(m, S):
    eye, A = torch.eye(len(m), dtype=torch.float64), sym_sqrt(S)

    def field(x, t):
        B = (1 - t.view(-1, 1, 1)) * eye + t.view(-1, 1, 1) * A
        return m + ((A - eye) @ torch.linalg.solve(B, (x - t[:, None] * m)[..., None]))[..., 0]
    return flat_net(field)


def noise(n, shape, seed=0, dtype=torch.float64):
    return torch.randn((n,) + tuple(shape), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def endpoint(m, S, z):
    """The exact ODE endpoint m + S^{1/2} z, z (B, ...) flattened to (B, d) and back."""
    return (m + z.flatten(1).double() @ sym_sqrt(S)).view(z.shape).to(z.dtype)


class Spy:
    """A network that records its inputs and returns answer(x, t)."""

    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def __call__(self, x, t, y=None):
        self.calls.append((x.clone(), t.clone(), y))
        return self.answer(x, t)


# -----------------------------------------------------------------------------
# time sampling and the loss

@pytest.mark.parametrize("kind, cdf", [("uniform", stats.uniform.cdf),
                                       ("logit_normal", lambda t: stats.norm.cdf(stats.logistic.ppf(t)))])
def test_time_sampling_follows_its_law(kind, cdf):
    torch.manual_seed(0)
    t = RectifiedFlow(kind).sample_time(20000).numpy()
    assert ((t > 0) & (t < 1)).all()
    assert stats.kstest(t, cdf).pvalue > 1e-3
    other = stats.uniform.cdf if kind == "logit_normal" else (lambda t: stats.norm.cdf(stats.logistic.ppf(t)))
    assert stats.kstest(t, other).pvalue < 1e-6  # the test tells the two laws apart


@settings(deadline=None, max_examples=20)
@given(shape=st.sampled_from([(2,), (3,), (1, 4, 4)]), batch=st.integers(1, 6), seed=st.integers(0, 10 ** 6),
       kind=st.sampled_from(["uniform", "logit_normal"]))
def test_loss_regresses_the_straight_path_velocity(shape, batch, seed, kind):
    x0, x1 = noise(batch, shape, seed), noise(batch, shape, seed + 1) + 3
    spy = Spy(lambda x, t: torch.zeros_like(x))
    loss = RectifiedFlow(kind).loss(spy, x1, x0=x0)
    (z, t, _), = spy.calls
    tt = t.view(-1, *[1] * len(shape))
    torch.testing.assert_close(z, (1 - tt) * x0 + tt * x1)  # z_t = (1 - t) x_0 + t x_1
    torch.testing.assert_close(loss, (x1 - x0).pow(2).mean())  # zero velocity: the target's size
    # the network that recovers x_1 - x_0 from (z_t, t) and the known x_1 has zero loss
    exact = RectifiedFlow(kind).loss(lambda x, t, y: (x1 - x) / (1 - t.view(-1, *[1] * len(shape))), x1, x0=x0)
    assert exact < 1e-10


def test_loss_draws_standard_normal_noise_when_x0_is_not_given():
    torch.manual_seed(0)
    x1 = torch.full((40000, 2), 2.0, dtype=torch.float64)
    spy = Spy(lambda x, t: torch.zeros_like(x))
    RectifiedFlow().loss(spy, x1, y=None)
    z, t, _ = spy.calls[0]
    x0 = (z - t[:, None] * x1) / (1 - t[:, None])  # the noise the loss drew
    assert x0.mean(0).abs().max() < 0.03 and (x0.std(0) - 1).abs().max() < 0.03


# -----------------------------------------------------------------------------
# the Euler sampler: exact answers on Gaussian data

def test_sampler_returns_the_gaussian_data_mean_and_covariance():
    m, S, _, _ = gaussian_problem(3)
    x = RectifiedFlow().sample(rf1_field(m, S), (20000, 3), steps=200, generator=torch.Generator().manual_seed(0))
    cov = torch.cov(x.double().T)
    assert (x.double().mean(0) - m).abs().max() < 0.05
    assert (cov - S).abs().max() < 0.08


def test_euler_is_first_order_and_converges_to_the_ode_endpoint():
    m, S, _, _ = gaussian_problem(4, seed=1)
    z = noise(500, (1, 2, 2))  # image-shaped batches work too
    errors = [(RectifiedFlow().sample(rf1_field(m, S), z.shape, steps=n, noise=z) - endpoint(m, S, z)).abs().max()
              for n in (50, 100, 200)]
    assert errors[2] < 0.05
    assert 1.7 < errors[0] / errors[1] < 2.3 and 1.7 < errors[1] / errors[2] < 2.3  # error ~ 1/N


def test_one_step_of_the_1rf_lands_on_the_mean_and_of_the_2rf_on_the_data():
    m, S, _, _ = gaussian_problem(3)
    z = noise(200, (3,))
    one = RectifiedFlow().sample(rf1_field(m, S), z.shape, steps=1, noise=z)
    torch.testing.assert_close(one, m.expand_as(one))  # v1(x, 0) = m - x: the mean, whatever the noise
    torch.testing.assert_close(RectifiedFlow().sample(rf2_field(m, S), z.shape, steps=1, noise=z), endpoint(m, S, z))


def test_sampler_calls_reproducibility_device_and_dtype():
    m, S, _, _ = gaussian_problem(2)
    calls = []
    net = rf1_field(m, S)
    counted = lambda x, t, y: calls.append(1) or net(x, t, y)  # noqa: E731
    flow = RectifiedFlow()
    a = flow.sample(counted, (5, 2), steps=7, generator=torch.Generator().manual_seed(3))
    b = flow.sample(counted, (5, 2), steps=7, generator=torch.Generator().manual_seed(3))
    assert len(calls) == 14 and torch.equal(a, b) and a.dtype == torch.float32
    z = noise(5, (2,))
    assert flow.sample(net, z.shape, steps=3, noise=z).dtype == torch.float64
    with pytest.raises(ValueError):
        flow.sample(net, (5, 2), steps=0)


def test_guided_at_w_2_is_uncond_plus_w_times_cond_minus_uncond():
    """guided(net, x, t, y, w) = v_uncond + w (v_cond - v_uncond), with outputs known independently;
    a single network call when y is None or w = 1."""
    calls = []

    def net(x, t, y):
        calls.append(y is None)
        return 2 * x + t[:, None] if y is None else -x + y[:, None].to(x.dtype)  # v_uncond, v_cond
    x, t, y = noise(4, (2,)), torch.linspace(0, 1, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    v_uncond, v_cond = 2 * x + t[:, None], -x + y[:, None].double()
    torch.testing.assert_close(RectifiedFlow().guided(net, x, t, y, cfg_scale=2.0), 2 * v_cond - v_uncond)
    assert sorted(calls) == [False, True]
    calls.clear()
    torch.testing.assert_close(RectifiedFlow().guided(net, x, t, y), v_cond)
    torch.testing.assert_close(RectifiedFlow().guided(net, x, t, None, cfg_scale=2.0), v_uncond)
    assert calls == [False, True]


@pytest.mark.parametrize("w", [0.0, 1.0, 2.5])
def test_guidance_extrapolates_the_velocities(w):
    a, b = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 3.0])  # unconditional and conditional velocities
    net = lambda x, t, y: (a if y is None else b).expand_as(x)  # noqa: E731
    z, y = noise(4, (2,), dtype=torch.float32), torch.zeros(4, dtype=torch.long)
    x = RectifiedFlow().sample(net, z.shape, steps=3, y=y, cfg_scale=w, noise=z)
    torch.testing.assert_close(x, z + a + w * (b - a))  # v = v_uncond + w (v_cond - v_uncond)


# -----------------------------------------------------------------------------
# reflow pairs, straightness, distillation

def test_reflow_pairs_are_the_ode_endpoints():
    m, S, _, _ = gaussian_problem(3, seed=2)
    z = noise(300, (3,))
    z0, z1 = RectifiedFlow().reflow_pairs(rf1_field(m, S), z, steps=400)
    assert torch.equal(z0, z)
    assert (z1 - endpoint(m, S, z)).abs().max() < 0.02
    assert torch.equal(z1, RectifiedFlow().sample(rf1_field(m, S), z.shape, steps=400, noise=z))


def test_straightness_is_zero_for_straight_flows_and_matches_the_curved_closed_form():
    m, S, q, lam = gaussian_problem(3)
    z = noise(400, (3,))
    flow = RectifiedFlow()
    assert flow.straightness(rf2_field(m, S), z, steps=50) < 1e-10  # reflowed Gaussian: straight
    assert flow.straightness(lambda x, t, y: torch.ones_like(x), z, steps=50) < 1e-12  # a translation
    c = []
    for l in lam.tolist():  # c_i = int (ds/dt)^2 dt - (sqrt(l) - 1)^2, s_t = sqrt((1 - t)^2 + t^2 l)
        ds = lambda t: (t * l - (1 - t)) / math.sqrt((1 - t) ** 2 + t ** 2 * l)  # noqa: E731
        c.append(integrate.quad(lambda t: ds(t) ** 2, 0, 1)[0] - (math.sqrt(l) - 1) ** 2)
    reference = float(((z @ q) ** 2 @ torch.tensor(c, dtype=torch.float64)).mean())
    got = flow.straightness(rf1_field(m, S), z, steps=1000)
    assert reference > 0.05 and got == pytest.approx(reference, rel=0.02)


@settings(deadline=None, max_examples=10)
@given(steps=st.integers(1, 12), seed=st.integers(0, 10 ** 6))
def test_straightness_equals_the_brute_force_path_sum(steps, seed):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(3, 3, generator=g, dtype=torch.float64)
    net = Spy(lambda x, t: torch.sin(x @ W + 3 * t[:, None]))
    z = noise(7, (3,), seed)
    got = RectifiedFlow().straightness(net, z, steps=steps)
    vs = torch.stack([net.answer(x, t) for x, t, _ in net.calls])  # the N velocities, (N, B, 3)
    x1 = z + vs.sum(0) / steps  # the Euler endpoint
    brute = float(((x1 - z)[None] - vs).pow(2).sum(2).mean())  # mean over k and batch of ||(x1 - x0) - v_k||^2
    assert got == pytest.approx(brute, rel=1e-9, abs=1e-12)


def test_distill_loss_is_zero_for_the_exact_one_step_map():
    m, S, _, _ = gaussian_problem(3)
    z = noise(300, (1, 3, 1))
    x1 = endpoint(m, S, z)
    flow = RectifiedFlow()
    assert flow.distill_loss(rf2_field(m, S), z, x1) < 1e-20
    spy = Spy(lambda x, t: torch.zeros_like(x))
    flow.distill_loss(spy, z, x1)
    assert torch.equal(spy.calls[0][0], z) and (spy.calls[0][1] == 0).all()  # called at (x_0, t = 0)
    # the 1-RF's first Euler step lands on m: the loss is the spread of the data around it
    torch.testing.assert_close(flow.distill_loss(rf1_field(m, S), z, x1), (x1 - m.view(1, 1, 3, 1)).pow(2).mean())


def test_distillation_is_the_loss_at_t_zero():
    """E||x_0 + v(x_0, 0) - x_1||^2 == E||v(x_0, 0) - (x_1 - x_0)||^2: distill_loss and the loss with
    time_sampling "zero" agree, and that loss calls the network at (x_0, t = 0) only."""
    m, S, _, _ = gaussian_problem(3)
    z = noise(200, (3,))
    x1 = endpoint(m, S, z) + 0.1 * noise(200, (3,), seed=1)
    net = rf1_field(m, S)
    torch.testing.assert_close(RectifiedFlow("zero").loss(net, x1, x0=z), RectifiedFlow().distill_loss(net, z, x1))
    spy = Spy(lambda x, t: torch.zeros_like(x))
    RectifiedFlow("zero").loss(spy, x1, x0=z)
    assert torch.equal(spy.calls[0][0], z) and (spy.calls[0][1] == 0).all()


# -----------------------------------------------------------------------------
# training: 1-RF learns a 2-D set; reflow lowers the transport cost and straightens the flow

def train(net, loss_fn, iters, lr=2e-3):
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for k in range(iters):
        opt.param_groups[0]["lr"] = lr * (1 - k / iters)  # linear decay: no EMA needed
        loss = loss_fn(net)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def flows_on_moons():
    torch.manual_seed(0)
    data = common.load_data("moons")
    flow = RectifiedFlow()
    net1 = common.make_net("mlp", (2,), 64, time_scale=1000.0)
    train(net1, lambda net: flow.loss(net, data.x_train[torch.randint(0, 50000, (256,))]), 1000)
    z0, z1 = flow.reflow_pairs(net1, torch.randn(5000, 2), steps=50)

    def reflow_loss(net):
        i = torch.randint(0, 5000, (256,))
        return flow.loss(net, z1[i], x0=z0[i])
    net2 = train(copy.deepcopy(net1).train(), reflow_loss, 500, lr=1e-3)  # 2-RF starts from 1-RF, as in the paper
    return data, flow, net1, net2


def test_short_training_learns_moons(flows_on_moons):
    data, flow, net1, _ = flows_on_moons
    test = data.x_test[:500]
    z = torch.randn(500, 2, generator=torch.Generator().manual_seed(1))
    w2 = common.w2_exact(flow.sample(net1, z.shape, steps=50, noise=z), test)
    assert w2 < 0.35 * common.w2_exact(z, test)


def test_reflow_does_not_raise_the_transport_cost_and_straightens(flows_on_moons):
    data, flow, net1, net2 = flows_on_moons
    z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(2))
    independent = transport_cost(z, data.x_test[:2000])  # the 1-RF's training coupling
    cost1 = transport_cost(*flow.reflow_pairs(net1, z, steps=50))
    cost2 = transport_cost(*flow.reflow_pairs(net2, z, steps=50))
    assert cost1 < 0.5 * independent and cost2 <= cost1 * 1.02  # the theorem, up to training error
    s1, s2 = flow.straightness(net1, z, steps=50), flow.straightness(net2, z, steps=50)
    assert s2 < 0.3 * s1
    one_step = [common.w2_exact(flow.sample(n, z.shape, steps=1, noise=z)[:500], data.x_test[:500]) for n in (net1, net2)]
    assert one_step[1] < 0.5 * one_step[0]  # reflow makes one step usable


# -----------------------------------------------------------------------------
# command line

MODEL = ["--data", "moons", "--width", "32"]  # the flags that build the network: a student repeats its teacher's
TINY = MODEL + ["--batch-size", "64", "--iters", "30", "--n-eval", "100", "--steps", "10", "--log-every", "10",
                "--ckpt-every", "10", "--warmup", "5"]


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as e:
        rectified_flow.main(["--help"])
    assert e.value.code == 0 and "--reflow-from" in capsys.readouterr().out


def test_cli_train_reflow_resume_distill_and_sample_only(tmp_path, capsys):
    rf1, rf2, rf2d = tmp_path / "rf1", tmp_path / "rf2", tmp_path / "rf2d"
    q = rectified_flow.main(TINY + ["--out", str(rf1), "--time-sampling", "logit_normal"])
    assert (rf1 / "ckpt.pt").exists() and (rf1 / "samples.png").exists() and q["metric"] == "W2"
    pairs = ["--n-pairs", "300", "--pair-steps", "4"]
    rectified_flow.main(TINY + ["--iters", "20", "--reflow-from", str(rf1 / "ckpt.pt"), "--out", str(rf2)] + pairs)
    assert "pairs     300/300" in capsys.readouterr().out and (rf2 / "pairs.pt").exists()
    rectified_flow.main(["--resume", "--iters", "40", "--out", str(rf2)])  # the pairs are reused
    out = capsys.readouterr().out
    assert "reusing 300 pairs" in out and "iters 20->40" in out
    ckpt2 = common.load_checkpoint(rf2 / "ckpt.pt", ("rectified_flow",))
    assert ckpt2["args"]["data"] == "moons" and ckpt2["args"]["width"] == 32  # the teacher's network
    rectified_flow.main(MODEL + ["--distill-from", str(rf2 / "ckpt.pt"), "--out", str(rf2d), "--iters", "10",
                                 "--batch-size", "64"] + pairs)
    saved = torch.load(rf2d / "pairs.pt", weights_only=True)
    assert saved["x0"].shape == saved["x1"].shape == (300, 2)
    assert (rf2d / "ckpt.pt").exists() and (rf2d / "samples.png").exists()


def test_reflow_resume_is_exact(tmp_path):
    teacher = tmp_path / "t"
    rectified_flow.main(TINY + ["--iters", "10", "--n-eval", "0", "--out", str(teacher)])
    flags = MODEL + ["--reflow-from", str(teacher / "ckpt.pt"), "--n-pairs", "200", "--pair-steps", "3",
                     "--batch-size", "64", "--n-eval", "0", "--ckpt-every", "10"]
    rectified_flow.main(flags + ["--iters", "20", "--out", str(tmp_path / "a")])
    rectified_flow.main(flags + ["--iters", "10", "--out", str(tmp_path / "b")])
    rectified_flow.main(["--resume", "--iters", "20", "--out", str(tmp_path / "b")])
    a, b = (torch.load(tmp_path / k / "ckpt.pt", weights_only=True)["net"] for k in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_distilled_checkpoint_samples_with_one_step(tmp_path, monkeypatch):
    teacher = tmp_path / "t"
    rectified_flow.main(TINY + ["--iters", "5", "--n-eval", "0", "--out", str(teacher)])
    rectified_flow.main(MODEL + ["--distill-from", str(teacher / "ckpt.pt"), "--iters", "5", "--n-pairs", "100",
                                 "--batch-size", "64", "--pair-steps", "2", "--n-eval", "0", "--out", str(tmp_path / "d")])
    seen = []
    real = RectifiedFlow.sample
    monkeypatch.setattr(RectifiedFlow, "sample", lambda self, *a, **k: seen.append(a[2]) or real(self, *a, **k))
    rectified_flow.main(["--ckpt", str(tmp_path / "d" / "ckpt.pt"), "--n-eval", "50"])
    rectified_flow.main(["--ckpt", str(teacher / "ckpt.pt"), "--n-eval", "50"])
    assert seen == [1, 100]


@pytest.mark.parametrize("flags, words", [
    (["--steps", "0"], "--steps"),
    (["--time-sampling", "beta"], "invalid choice"),
    (["--reflow-from", "nowhere.pt"], "not found"),
    (["--reflow-from", "a.pt", "--distill-from", "b.pt"], "exclude"),
    (["--n-pairs", "0"], "positive"),
])
def test_bad_flags_exit_2(flags, words, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        rectified_flow.main(TINY + flags + ["--out", str(tmp_path)])
    assert e.value.code == 2 and words in capsys.readouterr().err


def test_student_starts_from_the_teacher(tmp_path):
    rectified_flow.main(TINY + ["--iters", "3", "--n-eval", "0", "--out", str(tmp_path / "t")])
    rectified_flow.main(MODEL + ["--distill-from", str(tmp_path / "t" / "ckpt.pt"), "--iters", "1", "--lr", "1e-12",
                                 "--n-pairs", "20", "--batch-size", "16", "--pair-steps", "1", "--n-eval", "0",
                                 "--out", str(tmp_path / "s")])
    teacher = torch.load(tmp_path / "t" / "ckpt.pt", weights_only=True)["ema"]
    student = torch.load(tmp_path / "s" / "ckpt.pt", weights_only=True)["net"]
    for k, v in student.items():
        torch.testing.assert_close(v, teacher["module." + k], rtol=0, atol=1e-9)


def test_distillation_records_p_uncond_0_and_leaves_the_flags(tmp_path, parsed_flags):
    """--distill-from trains without label dropout, so its checkpoint records p_uncond 0, while the
    flags common.parse_args returned keep the typed value: main passes what it derives to common.train
    and never writes it into them. The returned dict has the seconds of the pairs and of the training."""
    rectified_flow.main(TINY + ["--iters", "2", "--n-eval", "0", "--out", str(tmp_path / "t")])
    parsed = parsed_flags
    parsed.clear()  # the teacher's run above is not the one under test
    q = rectified_flow.main(MODEL + ["--distill-from", str(tmp_path / "t" / "ckpt.pt"), "--p-uncond", "0.2",
                                     "--iters", "2", "--n-pairs", "20", "--batch-size", "16", "--pair-steps", "1",
                                     "--n-eval", "0", "--out", str(tmp_path / "d")])
    [(args, before)] = parsed
    assert vars(args) == before and args.p_uncond == 0.2
    assert torch.load(tmp_path / "d" / "ckpt.pt", weights_only=True)["args"]["p_uncond"] == 0.0
    assert q["pairs_seconds"] > 0 and q["pairs_cpu_seconds"] > 0 and q["train_seconds"] > 0


def test_student_must_match_the_teacher(tmp_path, capsys):
    """The student builds the teacher's network: flags that build another one end in one line naming
    the teacher's values, before any pairs are made or any checkpoint written."""
    rectified_flow.main(TINY + ["--iters", "2", "--n-eval", "0", "--out", str(tmp_path / "t")])
    capsys.readouterr()
    for flags, want in ((["--data", "moons", "--width", "64"], "(--width 32)"),
                        (["--data", "moons", "--width", "32", "--uncond"], "(no --uncond)"),
                        (["--data", "digits", "--arch", "unet", "--width", "32"], "(--data moons --arch mlp)")):
        with pytest.raises(SystemExit) as e:
            rectified_flow.main(flags + ["--reflow-from", str(tmp_path / "t" / "ckpt.pt"), "--out", str(tmp_path / "s")])
        err = capsys.readouterr().err
        assert e.value.code == 2 and want in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "s" / "pairs.pt").exists() and not (tmp_path / "s" / "ckpt.pt").exists()
    # flags not typed are the teacher's
    rectified_flow.main(["--reflow-from", str(tmp_path / "t" / "ckpt.pt"), "--n-pairs", "32", "--pair-steps", "1",
                         "--iters", "1", "--batch-size", "16", "--n-eval", "0", "--out", str(tmp_path / "s2")])
    saved = torch.load(tmp_path / "s2" / "ckpt.pt", weights_only=True)["args"]
    assert (saved["data"], saved["arch"], saved["width"], saved["uncond"]) == ("moons", "mlp", 32, False)


def test_reflow_and_distillation_train_on_the_teachers_pairs(tmp_path, monkeypatch):
    """main hands common.train the pairs as a data set (x_train = Z_1, x0_train = Z_0, the labels) and
    the loss: the objective for reflow, the objective at t = 0 with no label dropout for distillation."""
    teacher = tmp_path / "t"
    rectified_flow.main(TINY + ["--iters", "3", "--n-eval", "0", "--out", str(teacher)])
    seen = []
    monkeypatch.setattr(common, "train", lambda net, loss, data, args, ckpt: seen.append((loss, data, args)) or net)
    for stage in ("reflow", "distill"):
        rectified_flow.main(MODEL + [f"--{stage}-from", str(teacher / "ckpt.pt"), "--n-pairs", "50", "--pair-steps", "2",
                                     "--batch-size", "16", "--n-eval", "0", "--out", str(tmp_path / stage)])
    for (loss, data, args), stage in zip(seen, ("reflow", "distill")):
        saved = torch.load(tmp_path / stage / "pairs.pt", weights_only=True)
        assert torch.equal(data.x_train, saved["x1"]) and torch.equal(data.x0_train, saved["x0"])
        assert torch.equal(data.y_train, torch.arange(50) % 2) and data.num_classes == 2  # moons: balanced labels
        assert isinstance(loss.__self__, RectifiedFlow) and loss.__func__ is RectifiedFlow.loss
    assert seen[0][0].__self__.time_sampling == "uniform" and seen[0][2].p_uncond == 0.1
    assert seen[1][0].__self__.time_sampling == "zero" and seen[1][2].p_uncond == 0.0


def test_a_curved_path_teacher_is_refused(tmp_path, capsys):
    """Reflow pairs come from the straight path's Euler ODE: a cfm.py teacher of the vp path is refused."""
    import cfm
    cfm.main(["--data", "moons", "--path", "vp", "--iters", "2", "--width", "16", "--batch-size", "16", "--n-eval", "0",
              "--out", str(tmp_path / "t")])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        rectified_flow.main(["--reflow-from", str(tmp_path / "t" / "ckpt.pt"), "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "need the straight path" in err and not (tmp_path / "s" / "pairs.pt").exists(), err


# -----------------------------------------------------------------------------
# the sampling path (--trajectory)

def test_trajectory_starts_at_the_noise_and_ends_at_the_samples():
    flow, net = RectifiedFlow(), common.make_net("mlp", (2,), 16, time_scale=1000.0)
    states = []
    x = flow.sample(net, (5, 2), steps=4, generator=torch.Generator().manual_seed(0), trajectory=states)
    assert len(states) == 4 + 1 and torch.equal(states[-1], x)
    assert torch.equal(states[0], common.start_noise((5, 2), torch.Generator().manual_seed(0)))
    assert torch.equal(x, flow.sample(net, (5, 2), steps=4, generator=torch.Generator().manual_seed(0)))


def test_cli_trajectory_of_1rf_and_its_reflow(tmp_path):
    tiny = ["--data", "checkerboard", "--iters", "2", "--width", "8", "--batch-size", "16", "--n-eval", "0",
            "--steps", "3", "--trajectory", "5"]
    rectified_flow.main([*tiny, "--out", str(tmp_path / "rf1")])
    rectified_flow.main([*tiny, "--reflow-from", str(tmp_path / "rf1" / "ckpt.pt"), "--n-pairs", "32",
                         "--pair-steps", "2", "--out", str(tmp_path / "rf2")])
    for run in ("rf1", "rf2"):
        assert (tmp_path / run / "trajectory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = {k: torch.load(tmp_path / k / "ckpt.pt", weights_only=True) for k in ("rf1", "rf2")}
    sampling = argparse.Namespace(sample_only=True)  # the picture's title names the stage of the checkpoint
    assert [rectified_flow.stage(sampling, ckpt[k]) for k in ("rf1", "rf2")] == ["1-RF", "reflow RF"]
