"""Tests of controlnet.py: the exact answers of zero convolutions (the controlled model starts
bit for bit at the base; the first backward pass reaches the zero convolutions and nothing behind
them), a locked base, a short run that learns the control, and the command line."""
import hashlib
from pathlib import Path

import pytest
import torch
from test_cli import tensors  # flat view of a checkpoint's tensors

import common
import controlnet
from controlnet import ControlNet, FlowMatching

TINY = ["--width", "8", "--batch-size", "16", "--log-every", "2", "--ckpt-every", "4", "--n-eval", "0",
        "--base-iters", "4", "--steps", "2"]


def random_base(num_classes=10, width=8, seed=0):
    """A UNet whose every weight is random (its zero-initialised layers too), so that its output and
    every path through it are non-trivial."""
    torch.manual_seed(seed)
    base = common.make_net("unet", (1, 8, 8), width, num_classes, time_scale=1000.0)
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return base


def copy_params(net):
    """The trainable copy of the encoder and the input zero convolution: everything behind the
    output zero convolutions."""
    return [p for name in ControlNet.COPY for p in getattr(net, name).parameters()] + list(net.control_in.parameters())


def digits_batch(n=32):
    data = common.load_data("digits")
    return data.x_train[:n], data.y_train[:n]


@pytest.mark.parametrize("num_classes, channels", [(10, 1), (0, 3)])
def test_starts_exactly_at_the_base(num_classes, channels):
    """Zero convolutions: at initialisation the controlled output is the base's bit for bit, for any
    input, time, label and condition (large ones included)."""
    base = random_base(num_classes)
    net = ControlNet(base, channels)
    g = torch.Generator().manual_seed(1)
    for scale in (1.0, 1e3):
        x, c = scale * torch.randn(16, 1, 8, 8, generator=g), scale * torch.randn(16, channels, 8, 8, generator=g)
        t = torch.rand(16, generator=g)
        y = torch.randint(0, num_classes, (16,), generator=g) if num_classes else None
        with torch.no_grad():
            assert torch.equal(net(x, t, y, c), base(x, t, y))
            assert torch.equal(net(x, t[:1], None, c), base(x, t[:1], None))  # one time for the batch, null label
    x, _ = digits_batch(16)
    for kind in controlnet.CONDITIONS:  # the real conditions
        c = controlnet.CONDITIONS[kind](x)
        with torch.no_grad():
            assert torch.equal(ControlNet(base, c.shape[1])(x, t, None, c), base(x, t, None))


def test_base_is_locked_and_copied():
    base = random_base()
    net = ControlNet(base, 1)
    assert not any(p.requires_grad for p in net.base.parameters())
    assert all(p.requires_grad for p in net.parameters() if not any(p is q for q in net.base.parameters()))
    for name in ControlNet.COPY:  # the copy starts at the base's weights, in its own tensors
        for a, b in zip(getattr(net, name).parameters(), getattr(base, name).parameters()):
            assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    net.train()
    assert not net.base.training


def test_first_gradients_reach_only_the_zero_convolutions():
    """dL/dW = dL/dZ h^T is non-zero, dL/dh = W^T dL/dZ = 0: after the first backward pass the output
    zero convolutions have gradients, the copy and the input zero convolution exactly zero, the
    base none. After one step the copy's gradients are non-zero, and a few steps move every tensor."""
    net = ControlNet(random_base(), 1)
    flow = FlowMatching("lowres")
    x, y = digits_batch()
    torch.manual_seed(0)
    flow.loss(net, x, y).backward()
    for z in net.zero_convs:
        assert torch.count_nonzero(z.weight.grad) > 0 and torch.count_nonzero(z.bias.grad) > 0
    for p in copy_params(net):
        assert p.grad is not None and torch.count_nonzero(p.grad) == 0
    assert all(p.grad is None for p in net.base.parameters())
    start = [p.detach().clone() for p in copy_params(net)]
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    opt.step()
    for step in range(3):
        opt.zero_grad()
        flow.loss(net, x, y).backward()
        if step == 0:  # the zero convolutions' weights are no longer zero: the copy gets gradients
            assert all(torch.count_nonzero(p.grad) > 0 for p in copy_params(net))
        opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(start, copy_params(net)))


def test_loss_feeds_the_straight_path_and_the_condition_and_regresses_x1_minus_x0(monkeypatch):
    """torch.randn_like and torch.rand inside the loss patched to known x_0 (noise) and t = 0..1:
    for every control (none: the base's loss) the network sees x_t = (1 - t) x_0 + t x_1 (x_0 at
    t = 0, the data at t = 1), t, the label, and the condition computed from the clean x_1 (none
    without a control); the loss is the mean of (out - (x_1 - x_0))^2."""
    x1, y = digits_batch(8)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(x1.shape, generator=g)
    t = torch.linspace(0, 1, 8)

    def randn_like(like, **kw):
        assert like.shape == x0.shape
        return x0.clone()

    def rand(*size, **kw):
        assert size == (8,)
        return t.clone()
    monkeypatch.setattr(torch, "randn_like", randn_like)
    monkeypatch.setattr(torch, "rand", rand)
    for control in (None, *controlnet.CONDITIONS):
        seen, out = {}, torch.randn(x1.shape, generator=g)

        def spy(x_t, t_in, y_in, **extra):
            seen.update(x_t=x_t, t=t_in, y=y_in, extra=extra)
            return out
        loss = FlowMatching(control).loss(spy, x1, y)
        assert torch.equal(seen["t"], t) and torch.equal(seen["y"], y)
        tt = t.view(-1, 1, 1, 1)
        torch.testing.assert_close(seen["x_t"], (1 - tt) * x0 + tt * x1)
        assert torch.equal(seen["x_t"][0], x0[0])  # noise at t = 0
        assert torch.equal(seen["x_t"][-1], x1[-1])  # data at t = 1
        if control is None:
            assert seen["extra"] == {}
        else:
            assert list(seen["extra"]) == ["control"]
            assert torch.equal(seen["extra"]["control"], controlnet.CONDITIONS[control](x1))
        torch.testing.assert_close(loss, (out - (x1 - x0)).pow(2).mean())


def test_guidance_formula():
    """w = 2 on a toy network whose outputs are known: v_base + w (v_control - v_base)."""
    def net(x, t, y, control=None):
        return torch.full_like(x, 1.0) if control is None else torch.full_like(x, 3.0) + control
    flow, x, t, c = FlowMatching("lowres"), torch.zeros(2, 1, 8, 8), torch.zeros(2), torch.ones(2, 1, 8, 8)
    assert torch.equal(flow.guided(net, x, t, None, 2.0, c), torch.full_like(x, 1.0 + 2.0 * (4.0 - 1.0)))
    assert torch.equal(flow.guided(net, x, t, None, 1.0, c), torch.full_like(x, 4.0))  # one call: plain ControlNet
    assert torch.equal(flow.guided(net, x, t, None, 0.0, c), torch.full_like(x, 1.0))  # w = 0: the base
    assert torch.equal(flow.guided(net, x, t, None, 2.0), torch.full_like(x, 1.0))  # no control: the base


def test_conditions_and_fidelity():
    x, _ = digits_batch(64)
    low = controlnet.lowres(x)
    assert low.shape == x.shape and torch.allclose(controlnet.pool4(low), controlnet.pool4(x))
    assert torch.equal(low[..., ::2, ::2], controlnet.pool4(x))  # 8x8: constant on 2x2 blocks
    e = controlnet.edges(x)
    assert e.shape == x.shape and set(e.unique().tolist()) <= {-1.0, 1.0}
    assert not controlnet.edges(torch.full_like(x, 0.3)).gt(0).any()  # a flat image has no edges
    assert torch.equal(controlnet.fidelity("lowres", x, x), torch.zeros(64))  # the floors, exactly
    assert torch.equal(controlnet.fidelity("edges", x, x), torch.ones(64, dtype=torch.float64))
    other = x.roll(1, 0)  # other digits
    assert (controlnet.fidelity("lowres", other, x) > 0).all() and controlnet.fidelity("edges", other, x).mean() < 0.8
    assert torch.equal(controlnet.fidelity("edges", -x, x), torch.ones(64, dtype=torch.float64))  # |grad| only
    with pytest.raises(ValueError, match="unknown --control"):
        FlowMatching("blur")


def test_training_learns_the_control_and_leaves_the_base(tmp_path):
    """A short run (a base of 200 iterations, then 150 of the ControlNet) brings the lowres MSE of
    samples given held-out conditions well below the base's, and the base stays bit for bit the
    base: in the network, the EMA and the optimizer (which holds no state for it)."""
    flags = ["--width", "8", "--batch-size", "64", "--base-iters", "200", "--iters", "150", "--warmup", "20",
             "--n-eval", "0", "--log-every", "100", "--out", str(tmp_path)]
    controlnet.main(flags)
    base_ckpt, ck = (torch.load(p, weights_only=True) for p in (tmp_path / "base" / "ckpt.pt", tmp_path / "ckpt.pt"))
    base_state = {k[len("module."):]: v for k, v in base_ckpt["ema"].items() if k.startswith("module.")}
    assert [k for k, v in base_state.items() if not torch.equal(ck["net"]["base." + k], v)] == []
    assert [k for k, v in base_state.items() if not torch.equal(ck["ema"]["module.base." + k], v)] == []
    trained = {i for i, k in enumerate(ck["net"]) if not k.startswith("base.")}  # parameter order = state order
    assert set(ck["opt"]["state"]) == trained
    data = common.load_data("digits")
    net = common.load_ema(ck, ControlNet(common.make_net("unet", data.shape, 8, 10, time_scale=1000.0), 1))
    x, y = data.x_test[:200], data.y_test[:200]
    flow, noise = FlowMatching("lowres"), torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    controlled = flow.sample(net, x.shape, 5, "midpoint", y, noise=noise, control=controlnet.lowres(x))
    plain = flow.sample(net.base, x.shape, 5, "midpoint", y, noise=noise)
    mse, mse_base = (controlnet.fidelity("lowres", s, x).mean() for s in (controlled, plain))
    assert mse < 0.5 * mse_base, (float(mse), float(mse_base))


# -----------------------------------------------------------------------------
# the command line

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("controlnet")
    controlnet.main(TINY + ["--iters", "8", "--out", str(out)])
    return out


def test_resume_is_bit_identical(trained, tmp_path):
    """Base and ControlNet straight through == the same stopped after 4 ControlNet iterations, then
    --resume: the finished base in OUT/base is taken as it is, the ControlNet continues exactly."""
    controlnet.main(TINY + ["--iters", "4", "--out", str(tmp_path), "--resume", "auto"])
    controlnet.main(["--resume", "auto", "--iters", "8", "--out", str(tmp_path)])
    (s1, a), (s2, b) = tensors(trained / "ckpt.pt"), tensors(tmp_path / "ckpt.pt")
    assert s1 == s2 == 8 and a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    (s1, a), (s2, b) = tensors(trained / "base" / "ckpt.pt"), tensors(tmp_path / "base" / "ckpt.pt")
    assert s1 == s2 == 4 and [k for k in a if not torch.equal(a[k], b[k])] == []


def test_training_never_touches_the_base(trained):
    """After training, the ControlNet's base (network and EMA) is bit for bit the base it was given
    (the EMA of OUT/base), and the optimizer holds state only for the copy and the zero convolutions."""
    base_ckpt, ck = (torch.load(p, weights_only=True) for p in (trained / "base" / "ckpt.pt", trained / "ckpt.pt"))
    base_state = {k[len("module."):]: v for k, v in base_ckpt["ema"].items() if k.startswith("module.")}
    assert [k for k, v in base_state.items() if not torch.equal(ck["net"]["base." + k], v)] == []
    assert [k for k, v in base_state.items() if not torch.equal(ck["ema"]["module.base." + k], v)] == []
    trainable = [k for k in ck["net"] if not k.startswith("base.")]
    assert len(ck["opt"]["state"]) == len(trainable)


def test_base_checkpoint_is_a_cfm_checkpoint(trained, tmp_path):
    """OUT/base/ckpt.pt is what cfm.py writes: --base takes it (its flags come with it), and the
    ControlNet trained on it starts from the same base as the one trained in place."""
    controlnet.main(["--base", str(trained / "base" / "ckpt.pt"), "--iters", "2", "--batch-size", "16",
                     "--n-eval", "0", "--out", str(tmp_path)])
    ck, base = (torch.load(p, weights_only=True) for p in (tmp_path / "ckpt.pt", trained / "ckpt.pt"))
    assert ck["args"]["width"] == 8 and not (tmp_path / "base").exists()
    assert all(torch.equal(v, base["net"][k]) for k, v in ck["net"].items() if k.startswith("base."))


class PixelFeatures:
    """A stand-in for the feature classifier (trained once per session, too slow for these tests)."""
    features = staticmethod(lambda x: controlnet.pool4(x).flatten(1))


def test_ckpt_samples(trained, tmp_path, monkeypatch):
    """--ckpt samples (with guidance on the control) from the checkpoint alone; a fresh edges run
    evaluates too; cfm.py samples from OUT/base/ckpt.pt."""
    monkeypatch.setattr(common, "feature_net", lambda data, root=None: (PixelFeatures(), 1.0))
    q = controlnet.main(["--ckpt", str(trained / "ckpt.pt"), "--n-eval", "20", "--cfg-scale", "2",
                         "--out", str(tmp_path / "a")])
    assert q["control"] == "lowres" and q["n"] == 20 and q["cfg_scale"] == 2 and q["fidelity"] >= 0
    assert (tmp_path / "a" / "control-lowres.png").exists() and (tmp_path / "a" / "samples.png").exists()
    q = controlnet.main(TINY + ["--iters", "2", "--control", "edges", "--n-eval", "20", "--out", str(tmp_path / "b")])
    assert q["control"] == "edges" and 0 <= q["fidelity"] <= 1 and 0 <= q["fidelity_base"] <= 1
    assert (tmp_path / "b" / "control-edges.png").exists()
    import cfm
    assert cfm.main(["--ckpt", str(trained / "base" / "ckpt.pt"), "--n-eval", "20", "--out", str(tmp_path / "c")])


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir()) if p.is_file()}


def expect_exit_2(capsys, argv, words):
    with pytest.raises(SystemExit) as e:
        controlnet.main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2, err
    assert words in err and "Traceback" not in err, err
    assert len(err.splitlines()) <= 2, err


@pytest.mark.parametrize("flags, words", [
    (["--control", "blur"], "invalid choice"),
    (["--arch", "dit"], "needs images and --arch unet"),
    (["--data", "moons"], "needs images and --arch unet"),
    (["--base-iters", "0"], "--base-iters must be at least 1"),
    (["--steps", "0"], "--steps and --base-iters must be at least 1"),
    (["--base", "/no/such/ckpt.pt"], "not found"),
    (["--n-eval", "251"], "use at most 250"),
])
def test_bad_input(flags, words, capsys, tmp_path):
    expect_exit_2(capsys, TINY + ["--out", str(tmp_path)] + flags, words)
    assert not (tmp_path / "ckpt.pt").exists()


def test_bad_checkpoints(trained, capsys, tmp_path):
    before = digest(trained)
    expect_exit_2(capsys, ["--base", str(trained / "ckpt.pt"), "--out", str(tmp_path)], "is a controlnet checkpoint")
    expect_exit_2(capsys, ["--ckpt", str(trained / "base" / "ckpt.pt"), "--out", str(tmp_path)], "is a cfm checkpoint")
    expect_exit_2(capsys, ["--resume", "--out", str(trained), "--width", "16"], "does not fit")
    assert digest(trained) == before
