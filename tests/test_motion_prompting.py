"""motion_prompting.py: the renderer and its tracks against exact answers, the track volume, the motion-error
measure, the ControlNet's safe start and locked base, the sampler against the exact field for Gaussian frames, the
physics prompt from physctrl.py's tracks, and the command line."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import common
import motion_prompting as mp
from test_cli import expect_exit_2, tensors


def digit(i=0):
    return common.load_digits().x_test[i:i + 1]  # (1, 1, 8, 8)


def ink_at(frame, p):
    """The bilinear interpolation of frame (H, W) at points p (K, 2) (x, y), ink in [0, 1]."""
    ink = ((frame.double() + 1) / 2)
    x0, y0 = p[:, 0].floor().long(), p[:, 1].floor().long()
    fx, fy = p[:, 0] - x0, p[:, 1] - y0
    at = lambda y, x: ink[y.clamp(0, mp.CANVAS - 1), x.clamp(0, mp.CANVAS - 1)]  # noqa: E731
    return ((1 - fx) * (1 - fy) * at(y0, x0) + fx * (1 - fy) * at(y0, x0 + 1) + (1 - fx) * fy * at(y0 + 1, x0)
            + fx * fy * at(y0 + 1, x0 + 1))


# ---- the clips

@settings(deadline=None, max_examples=20)
@given(st.floats(0, 16), st.floats(0, 16), st.integers(-6, 6), st.integers(-6, 6))
def test_the_renderer_moves_the_digit_along_its_tracks(ox, oy, dx, dy):
    """Shifted by a whole number of pixels, frame 1 is frame 0 moved exactly; every tracked point of the digit carries
    its ink along its track; a half-pixel shift is the mean of its two neighbours (bilinear); cross-correlation finds
    the shift."""
    o0 = torch.tensor([ox, oy], dtype=torch.float64)
    o1 = (o0 + torch.tensor([dx, dy], dtype=torch.float64)).clamp(0, 16)
    d = (o1 - o0).trunc()  # whole pixels, the digit still inside the canvas
    o1 = o0 + d
    clip = mp.render(digit(3), torch.stack([o0, o1])[None])[0]  # (2, H, W)
    tracks, visible = mp.dense_tracks(clip[None, 0], torch.stack([o0, o1])[None])
    p0, p1 = tracks[0, visible[0, :, 0], 0].double(), tracks[0, visible[0, :, 0], 1].double()
    assert len(p0) > 5 and torch.allclose(ink_at(clip[1], p1), ink_at(clip[0], p0), atol=1e-5)
    assert torch.allclose(mp.displacement(clip[None])[0, 1].double(), d, atol=1e-6)
    o = o0.round().clamp(max=15)  # whole pixels: the half-pixel shift lands between two knots of the interpolation
    half = mp.render(digit(3), torch.stack([o, o + torch.tensor([0.5, 0.0], dtype=torch.float64),
                                           o + torch.tensor([1.0, 0.0], dtype=torch.float64)])[None])[0]
    assert torch.allclose(half[1], (half[0] + half[2]) / 2, atol=1e-5)


@settings(deadline=None, max_examples=10)
@given(st.integers(0, 10 ** 6))
def test_the_motion_stays_on_the_canvas_and_falls_freely_between_walls(seed):
    """Every corner keeps the digit inside the canvas; while no wall is hit, o_f = o_0 + f v_0 + g f (f + 1) / 2 (the
    discrete form of o_0 + v_0 t + g t^2 / 2) in y and o_0 + f v_0 in x."""
    o = mp.motion(64, 8, torch.Generator().manual_seed(seed))
    assert (o >= 0).all() and (o <= mp.CANVAS - mp.DIGIT).all()
    g = torch.Generator().manual_seed(seed)  # the same draws: o_0, then v_0
    torch.rand(64, 2, generator=g, dtype=torch.float64)
    v0 = (2 * torch.rand(64, 2, generator=g, dtype=torch.float64) - 1) * mp.SPEED
    f = torch.arange(8, dtype=torch.float64)[None, :, None]
    free = o[:, :1] + f * v0[:, None] + torch.tensor([0.0, mp.GRAVITY], dtype=torch.float64) * f * (f + 1) / 2
    inside = ((free >= 0) & (free <= mp.CANVAS - mp.DIGIT)).all(-1).all(-1)
    assert inside.any() and torch.allclose(o[inside], free[inside], atol=1e-9)


def test_real_clips_have_no_motion_error_and_shuffled_ones_do():
    """The motion error of held-out clips against their own tracks is the estimator's (under 0.2 pixel); with the
    frames shuffled it is pixels; a clip frozen at frame 0 errs by the mean distance moved."""
    clips, _ = mp.load_clips(8)
    x, o = clips.x_test[:64], clips.c_test[:64]
    tracks, visible = mp.dense_tracks(x[:, 0], o)
    assert mp.motion_error(x, tracks, visible).mean() < 0.2
    assert mp.motion_error(x[:, [0, 7, 3, 5, 1, 2, 6, 4]], tracks, visible).mean() > 2.0
    frozen = x[:, :1].expand_as(x)
    moved = (o[:, 1:] - o[:, :1]).norm(dim=-1).mean(1)
    assert torch.allclose(mp.motion_error(frozen, tracks, visible), moved, atol=1e-4)


def test_train_and_held_out_clips_come_from_their_own_digits():
    """Every training clip shows a training digit (PER_DIGIT clips each) and every held-out clip a held-out one: the
    digit's total ink, which shifts keep, matches its digit in frame 0."""
    clips, frames = mp.load_clips(8)
    digits = common.load_digits()
    assert clips.x_train.shape == (mp.PER_DIGIT * len(digits.x_train), 8, mp.CANVAS, mp.CANVAS)
    assert clips.x_test.shape == (len(digits.x_test), 8, mp.CANVAS, mp.CANVAS)
    ink = lambda x: ((x[:, 0] + 1) / 2).flatten(1).sum(1)  # noqa: E731  the digit's total ink, unchanged by shifts
    train, test = ink(clips.x_train), ink(clips.x_test)
    for k in range(mp.PER_DIGIT):
        assert torch.allclose(train[k::mp.PER_DIGIT], ((digits.x_train + 1) / 2).flatten(1).sum(1), atol=1e-3)
    assert torch.allclose(test, ((digits.x_test + 1) / 2).flatten(1).sum(1), atol=1e-3)


# ---- the track volume

@settings(deadline=None, max_examples=30)
@given(st.floats(0, mp.CANVAS - 1), st.floats(0, mp.CANVAS - 1), st.floats(-3, mp.CANVAS + 2), st.floats(-3, mp.CANVAS + 2))
def test_the_volume_puts_each_embedding_at_its_track_and_nowhere_else(x0, y0, x1, y1):
    """One track: in frame 0 and frame 1 its embedding is written on the (up to 4) pixels around its position with
    weights centred exactly on it and summing to 1 (less only where pixels fall off the canvas); an invisible frame
    and every other pixel are zero."""
    tracks = torch.tensor([[[[x0, y0], [x1, y1], [x1, y1]]]])
    visible = torch.tensor([[[True, True, False]]])
    vol = mp.rasterise(tracks, visible).view(3, mp.EMBED, mp.CANVAS, mp.CANVAS)
    e = mp.embed(tracks[0, 0, 0])
    c = int(e.abs().argmax())
    assert torch.equal(vol[2], torch.zeros_like(vol[2]))
    for f, (x, y) in enumerate([(x0, y0), (x1, y1)]):
        w = vol[f, c] / e[c]  # the weights; every channel is them times its embedding value
        assert torch.allclose(vol[f], w * e[:, None, None], atol=1e-5)
        w = w.double()
        near = torch.zeros_like(w, dtype=torch.bool)
        for i in (math.floor(y), math.floor(y) + 1):
            for j in (math.floor(x), math.floor(x) + 1):
                if 0 <= i < mp.CANVAS and 0 <= j < mp.CANVAS:
                    near[i, j] = True
        assert torch.equal(w[~near], torch.zeros_like(w[~near]))
        if 0 <= x <= mp.CANVAS - 1 and 0 <= y <= mp.CANVAS - 1:
            i, j = torch.meshgrid(torch.arange(mp.CANVAS), torch.arange(mp.CANVAS), indexing="ij")
            assert abs(float(w.sum()) - 1) < 1e-5
            assert abs(float((w * j).sum()) - x) < 1e-4 and abs(float((w * i).sum()) - y) < 1e-4


def test_tracks_are_chosen_among_the_visible_points():
    clips, _ = mp.load_clips(8)
    tracks, visible = mp.dense_tracks(clips.x_test[:16, 0], clips.c_test[:16])
    for k in (1, 4):
        kept = mp.choose(visible, k, torch.Generator().manual_seed(0))
        assert (kept[..., 0].sum(1) == k).all() and not (kept & ~visible).any()
    assert torch.equal(mp.choose(visible, 0), visible)
    kept = mp.choose(visible, torch.tensor([1, 2] * 8))
    assert torch.equal(kept[..., 0].sum(1), torch.tensor([1, 2] * 8))
    assert (tracks[:, :, 0].round() == tracks[:, :, 0]).all()  # frame-0 points are pixel centres


# ---- the networks

def busy_base(frames=4, width=8, seed=0):
    """A base whose every weight is random (its zero-initialised layers too): non-trivial output and paths."""
    torch.manual_seed(seed)
    base = mp.VideoUNet(frames, width)
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return base


def test_the_controlnet_starts_at_the_base_and_never_moves_it():
    """At initialisation the ControlNet's output is the base's bit for bit, for any clip, time and volume (large ones
    too); after training steps on the real loss the base's weights are unchanged while the copy and the zero
    convolutions moved; a nonzero volume then changes the output."""
    base = busy_base()
    net = mp.ControlNet(base)
    g = torch.Generator().manual_seed(1)
    for scale in (1.0, 1e3):
        x = scale * torch.randn(6, 4, mp.CANVAS, mp.CANVAS, generator=g)
        vol = scale * torch.randn(6, 4 * mp.EMBED, mp.CANVAS, mp.CANVAS, generator=g)
        t = torch.rand(6, generator=g)
        with torch.no_grad():
            assert torch.equal(net(x, t, None, vol), base(x, t, None))
    before = {k: v.clone() for k, v in base.state_dict().items()}
    copy_before = [p.clone() for p in net.down.parameters()]
    zero_before = [p.clone() for p in [*net.zero_convs.parameters(), *net.control_in.parameters()]]
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)  # moves by gradient only
    clips, _ = mp.load_clips(4)
    method = mp.ImageToVideo(control=True)
    for _ in range(3):
        loss = method.loss(net, clips.x_train[:8], c=clips.c_train[:8])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())
    assert all(not p.requires_grad for p in base.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(net.down.parameters(), copy_before))
    assert all(not torch.equal(p, q) for p, q in zip([*net.zero_convs.parameters(), *net.control_in.parameters()], zero_before))
    with torch.no_grad():
        assert not torch.allclose(net(x, t, None, vol / 1e3), base(x, t, None))


@pytest.mark.parametrize("predict, solver", [("x", "midpoint"), ("x", "euler"), ("v", "midpoint"), ("v", "euler")])
def test_the_sampler_draws_gaussian_frames_exactly(predict, solver):
    """Frames 1..F-1 ~ N(frame 0 + m, s^2 I) per pixel: on the straight path the exact network gives
    E[x_1 | x_t] = mu + t s^2 (x_t - t mu) / ((1 - t)^2 + t^2 s^2) (predict x) or v = (E[x_1 | x_t] - x_t) / (1 - t)
    (predict v); the sampler with it gives frames of that mean and variance and keeps frame 0."""
    s, m, frames = 0.5, 0.3, 4
    frame0 = torch.rand(1, mp.CANVAS, mp.CANVAS).expand(200, -1, -1) * 2 - 1

    def exact(x, t, y=None):
        mu = x[:, :1] + m  # frame 0 (held fixed by the sampler) + m
        tt = common.bcast(t, x)
        x1 = mu + tt * s ** 2 * (x - tt * mu) / ((1 - tt) ** 2 + tt ** 2 * s ** 2)
        return x1 if predict == "x" else (x1 - x) / (1 - tt)
    method = mp.ImageToVideo(predict=predict, solver=solver)
    steps = 20 if solver == "midpoint" else 200  # Euler's error is O(h): about 7% of s at 20 steps
    out = method.sample(exact, frame0, frames, steps=steps, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, 0], frame0)
    err = out[:, 1:] - frame0[:, None] - m
    assert abs(float(err.mean())) < 0.01 and abs(float(err.std()) - s) < 0.015


# ---- the physics prompt

def physctrl_tracks(path, n_frames=16, fps=20):
    """A tracks file as physctrl.py writes it: a 3x3 patch of points (1 pixel apart) that moves right 0.25 pixel a frame, its right
    column 0.25 pixel a frame faster (a deforming object)."""
    g = torch.stack(torch.meshgrid(torch.arange(3.0), torch.arange(3.0), indexing="xy"), -1).reshape(-1, 2) + 8
    f = torch.arange(n_frames, dtype=torch.float32)[:, None, None]
    extra = (g[:, 0] == g[:, 0].max()).float()[:, None] * torch.tensor([0.25, 0.0])
    tracks = g + f * (torch.tensor([0.25, 0.0]) + extra)  # (F, 9, 2)
    common.atomic_save({"tracks": tracks[None], "visible": torch.ones(1, n_frames, 9, dtype=torch.bool),
                        "size": (mp.CANVAS, mp.CANVAS), "fps": fps}, path)


def test_the_physics_prompt_transfers_the_tracks_motion(tmp_path):
    """Each prompted point of the digit moves as the file's nearest point, resampled from 20 to FPS frames a second
    (clip frame f is file frame 2 f here), and starts on the digit's ink."""
    physctrl_tracks(tmp_path / "t.pt")
    clips, _ = mp.load_clips(8)
    frame0 = clips.x_test[0, 0]
    tracks, visible = mp.physics_prompt(tmp_path / "t.pt", frame0, 8, 4)
    assert tracks.shape == (1, 4, 8, 2) and visible[..., 0].all()
    assert ((frame0[tracks[0, :, 0, 1].long(), tracks[0, :, 0, 0].long()] + 1) / 2 > mp.INK).all()
    step = tracks[0, :, 1:] - tracks[0, :, :-1]  # per clip frame: 2 file frames, 0.5 or 1 pixel right
    assert torch.allclose(step[..., 1], torch.zeros_like(step[..., 1]))
    assert all(torch.allclose(step[k, :, 0], step[k, :1, 0].expand(7)) for k in range(4))
    ink = torch.nonzero((frame0 + 1) / 2 > mp.INK).flip(-1).double()  # (x, y) of the digit's points
    right = tracks[0, :, 0, 0].double() - ink[:, 0].mean() > 0.5  # nearest the fast column (1 right of the centre)
    assert right.any() and not right.all()
    assert torch.allclose(step[:, 0, 0], torch.where(right, 1.0, 0.5).float())
    d = torch.load(tmp_path / "t.pt", weights_only=True)
    d["visible"][:, 7:] = False  # hidden from file frame 7 (between clip frames 3 and 4) on
    common.atomic_save(d, tmp_path / "hidden.pt")
    _, visible = mp.physics_prompt(tmp_path / "hidden.pt", frame0, 8, 4)
    assert visible[0, :, :4].all() and not visible[0, :, 4:].any()


@pytest.mark.parametrize("make, words", [
    (lambda p: physctrl_tracks(p, n_frames=5), "the clip needs 0.30 s"),
    (lambda p: common.atomic_save({"tracks": torch.full((1, 16, 9, 2), 30.0), "visible": torch.ones(1, 16, 9, dtype=torch.bool),
                                   "size": (24, 24), "fps": 20}, p), "outside its 24x24 canvas"),
    (lambda p: common.atomic_save({"x": torch.zeros(1)}, p), "is not a tracks file"),
    (lambda p: common.atomic_save({"tracks": torch.full((1, 16, 9, 2), 5.0), "visible": torch.zeros(1, 16, 9, dtype=torch.bool),
                                   "size": (24, 24), "fps": 20}, p), "at least one visible point"),
])
def test_a_bad_tracks_file_gets_one_line(make, words, trained, capsys, tmp_path):
    make(tmp_path / "t.pt")
    expect_exit_2(capsys, mp.main, ["--ckpt", str(trained / "ckpt.pt"), "--tracks", str(tmp_path / "t.pt"),
                                    "--out", str(tmp_path / "o")], words)


# ---- the command line

def tiny(out, iters=4):
    return ["--width", "8", "--batch-size", "8", "--base-iters", "4", "--iters", str(iters), "--steps", "2",
            "--frames", "4", "--n-eval", "0", "--log-every", "2", "--ckpt-every", "2", "--out", str(out)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("motion_prompting")
    mp.main(tiny(out, 4))
    return out


def test_resume_is_bit_identical(trained, tmp_path):
    """Base and ControlNet straight through == stopped after 2 ControlNet iterations, then --resume."""
    mp.main(tiny(tmp_path, 2))
    mp.main(["--resume", "--iters", "4", "--out", str(tmp_path)])
    for sub in ("", "base"):
        (s1, a), (s2, b) = tensors(trained / sub / "ckpt.pt"), tensors(tmp_path / sub / "ckpt.pt")
        assert s1 == s2 == 4 and [k for k in a if not torch.equal(a[k], b[k])] == []


def test_the_physics_pipeline_and_the_base_checkpoint(trained, tmp_path):
    """--ckpt with --tracks writes the picture and a motion error; --base takes OUT/base/ckpt.pt and starts from it."""
    physctrl_tracks(tmp_path / "t.pt")
    q = mp.main(["--ckpt", str(trained / "ckpt.pt"), "--tracks", str(tmp_path / "t.pt"), "--out", str(tmp_path / "a")])
    assert q["physics_motion"] >= 0 and (tmp_path / "a" / "physics.png").exists()
    mp.main(["--base", str(trained / "base" / "ckpt.pt"), "--frames", "4", "--iters", "2", "--batch-size", "8",
             "--n-eval", "0", "--out", str(tmp_path / "b")])
    ck, first = (torch.load(p, weights_only=True) for p in (tmp_path / "b" / "ckpt.pt", trained / "ckpt.pt"))
    assert not (tmp_path / "b" / "base").exists()
    assert all(torch.equal(v, first["net"][k]) for k, v in ck["net"].items() if k.startswith("base."))


@pytest.mark.parametrize("flags, words", [
    (["--arch", "dit"], "need --arch unet"),
    (["--data", "digits"], "unknown data set"),
    (["--width", "12"], "multiple of 8"),
    (["--n-eval", "251"], "use at most 250"),
    (["--frames", "1"], "--frames in 2..32"),
    (["--tracks", "/no/such/tracks.pt"], "not found"),  # read before any training
])
def test_bad_input_gets_one_line(flags, words, capsys, tmp_path):
    expect_exit_2(capsys, mp.main, tiny(tmp_path) + flags, words)
    assert not (tmp_path / "ckpt.pt").exists()


def test_a_base_of_another_shape_is_refused(trained, capsys, tmp_path):
    expect_exit_2(capsys, mp.main, ["--base", str(trained / "base" / "ckpt.pt"), "--frames", "6", "--out", str(tmp_path)],
                  "has 4 frames")
    expect_exit_2(capsys, mp.main, ["--base", str(trained / "base" / "ckpt.pt"), "--predict", "v", "--out", str(tmp_path)],
                  "--predict x, not")
    expect_exit_2(capsys, mp.main, ["--base", str(trained / "ckpt.pt"), "--out", str(tmp_path)], "motion_prompting checkpoint")


def test_the_loss_gives_frame_0_and_scores_the_frames_after_it():
    """The network sees frame 0 clean at every t and the noisy path elsewhere; what it says about frame 0 costs
    nothing; with the volume, the clip's own tracks reach it."""
    clips, _ = mp.load_clips(4)
    x1, o = clips.x_train[:8], clips.c_train[:8]
    seen = {}

    def spy(x, t, y=None, control=None, frame0_out=0.0):
        seen.update(x=x, control=control)
        out = torch.zeros_like(x)
        out[:, 0] = frame0_out
        return out
    for method in (mp.ImageToVideo(), mp.ImageToVideo(control=True)):
        torch.manual_seed(0)
        a = method.loss(spy, x1, c=o)
        assert torch.equal(seen["x"][:, 0], x1[:, 0]) and not torch.allclose(seen["x"][:, 1:], x1[:, 1:])
        torch.manual_seed(0)
        b = method.loss(lambda *a, **k: spy(*a, **k, frame0_out=5.0), x1, c=o)
        assert torch.equal(a, b)
    torch.manual_seed(0)
    assert mp.ImageToVideo(predict="x").loss(lambda x, t, y=None: x1, x1) == 0  # x-prediction's target is the clip
    vol = seen["control"].view(8, 4, mp.EMBED, mp.CANVAS, mp.CANVAS)
    tracks, visible = mp.dense_tracks(x1[:, 0], o)
    assert (vol[:, 0].abs().sum((1, 2, 3)) > 0).all()  # every clip gets at least one track
    mass = vol[:, 0].abs().sum(1).flatten(1) > 0  # frame 0: only on the digit's points
    assert not (mass & ~visible[:, :, 0]).any()


@pytest.mark.parametrize("predict, control", [("x", False), ("v", False), ("x", True), ("v", True)])
def test_the_loss_feeds_the_straight_path_and_regresses_its_target(predict, control, monkeypatch):
    """On known x_0 (noise), x_1 (clips) and t = 0, 1/3, ..., 1 (the draws fixed): the network sees
    frame 0 clean and x_t = (1 - t) x_0 + t x_1 on frames 1.. (noise at t = 0, the clip at t = 1),
    and t as it is; the loss is the mean over frames 1.. of (out - target)^2, the target x_1
    (predict x) or x_1 - x_0 (predict v); the ControlNet's loss (its volume from the clip's tracks)
    alike."""
    clips, _ = mp.load_clips(4)
    x1, o = clips.x_train[:4], clips.c_train[:4]
    x0 = torch.randn(x1.shape, generator=torch.Generator().manual_seed(0))
    t, rand = torch.linspace(0, 1, 4), torch.rand

    def fixed_rand(*size, **kw):  # t (B,); the ControlNet's choice of tracks as it draws it
        return t.clone() if size == (4,) else rand(*size, **kw)
    monkeypatch.setattr(torch, "randn_like", lambda x, **kw: x0.clone())
    monkeypatch.setattr(torch, "rand", fixed_rand)
    seen = {}

    def spy(x, t, y=None, control=None):
        out = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
        seen.update(x=x.clone(), t=t, control=control, out=out)
        return out
    loss = mp.ImageToVideo(control, predict).loss(spy, x1, c=o)
    assert torch.equal(seen["t"], t) and (seen["control"] is not None) == control
    tt = t[:, None, None, None]
    assert torch.equal(seen["x"][:, 0], x1[:, 0])  # frame 0 given
    assert torch.allclose(seen["x"][:, 1:], ((1 - tt) * x0 + tt * x1)[:, 1:], atol=1e-6, rtol=0)
    assert torch.equal(seen["x"][0, 1:], x0[0, 1:])  # noise at t = 0
    assert torch.allclose(seen["x"][3], x1[3], atol=1e-7)  # the clip at t = 1
    target = x1 if predict == "x" else x1 - x0
    assert torch.allclose(loss, (seen["out"] - target)[:, 1:].pow(2).mean(), atol=1e-6, rtol=0)
