"""common.py: data, networks (forward-mode AD included), EMA, PNG, metrics against brute force and
closed forms, checkpoints and the training loop's guarantees (exact resume, faults, DDP)."""
import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import common
import ddpm

ROOT = Path(__file__).resolve().parent.parent


# -----------------------------------------------------------------------------
# data

def test_digits_are_bundled_scaled_and_split_the_same_way_every_time():
    a, b = common.load_digits(), common.load_digits()
    assert a.shape == (1, 8, 8) and a.num_classes == 10 and a.levels == 17
    assert len(a.x_train) == 1297 and len(a.x_test) == 500
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    levels = torch.unique(torch.cat([a.x_train, a.x_test]))
    assert len(levels) == 17 and levels.min() == -1 and levels.max() == 1
    assert set(a.y_test.tolist()) == set(range(10))


@pytest.mark.parametrize("name", common.TOY_SETS)
def test_toy_sets(name):
    d = common.load_data(name)
    assert d.shape == (2,) and not d.is_image and len(d.x_test) == 10000
    assert d.y_train.min() == 0 and d.y_train.max() == d.num_classes - 1
    x1, y1 = common.toy_2d(name, 100, torch.Generator().manual_seed(3))
    x2, y2 = common.toy_2d(name, 100, torch.Generator().manual_seed(3))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert 0.3 < d.x_train.std() < 3  # roughly unit scale


def test_download_needs_the_flag_and_checks_the_sha256(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    with pytest.raises(common.UserError, match="--download"):
        common.fetch("https://example.invalid/f.bin", target, "0" * 64, download=False)

    def truncated(url, path):  # a download that stops early
        Path(path).write_bytes(b"half a file")
    monkeypatch.setattr(common.urllib.request, "urlretrieve", truncated)
    with pytest.raises(common.UserError, match="SHA-256"):
        common.fetch("https://example.invalid/f.bin", target, "0" * 64, download=True)
    assert not target.exists() and not list(tmp_path.iterdir())

    def offline(url, path):
        raise OSError("Network is unreachable")
    monkeypatch.setattr(common.urllib.request, "urlretrieve", offline)
    with pytest.raises(common.UserError, match="download of .* failed"):
        common.fetch("https://example.invalid/f.bin", target, "0" * 64, download=True)

    good = b"the right bytes"
    monkeypatch.setattr(common.urllib.request, "urlretrieve", lambda url, path: Path(path).write_bytes(good))
    import hashlib
    assert common.fetch("https://example.invalid/f.bin", target, hashlib.sha256(good).hexdigest(), True) == target
    assert target.read_bytes() == good


# -----------------------------------------------------------------------------
# networks

NETS = [("mlp", (2,)), ("unet", (1, 8, 8)), ("unet", (1, 28, 28)), ("unet", (3, 32, 32)), ("dit", (1, 8, 8)),
        ("dit", (3, 32, 32))]


@pytest.mark.parametrize("arch, shape", NETS)
def test_networks_shapes_labels_and_null_class(arch, shape):
    torch.manual_seed(0)
    net = common.make_net(arch, shape, 8, num_classes=10, time_scale=1000.0)
    for p in net.parameters():  # leave the zero-initialised outputs: make every path count
        torch.nn.init.normal_(p, std=0.2)
    x, t, y = torch.randn(3, *shape), torch.rand(3), torch.tensor([0, 4, 9])
    out = net(x, t, y)
    assert out.shape == x.shape
    assert torch.equal(net(x, t, None), net(x, t, torch.full((3,), 10)))  # None is the null class
    assert not torch.allclose(net(x, t, y), net(x, t, None))  # the label matters
    assert not torch.allclose(net(x, t, y), net(x, t + 0.5, y))  # so does time


@pytest.mark.parametrize("arch, shape", [("mlp", (2,)), ("unet", (1, 8, 8)), ("dit", (1, 8, 8))])
def test_guidance_scale_as_an_input(arch, shape):
    """With guidance_input the output depends on w; w=None is w = 1; a number is every example's w;
    a network built without the input refuses a w."""
    torch.manual_seed(0)
    net = common.make_net(arch, shape, 8, num_classes=3, two_times=True, time_scale=10.0, guidance_input=True)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x, r, t, y = torch.randn(3, *shape), torch.rand(3), torch.rand(3), torch.tensor([0, 2, 3])
    assert torch.equal(net(x, r, t, y), net(x, r, t, y, w=torch.ones(3)))
    assert torch.equal(net(x, r, t, y, w=2.5), net(x, r, t, y, w=torch.full((3,), 2.5)))
    assert not torch.allclose(net(x, r, t, y, w=torch.ones(3)), net(x, r, t, y, w=torch.full((3,), 2.0)))
    plain = common.make_net(arch, shape, 8, num_classes=3, two_times=True, time_scale=10.0)
    with pytest.raises(TypeError, match="guidance_input"):
        plain(x, r, t, y, w=torch.ones(3))


@pytest.mark.parametrize("arch, shape", [("mlp", (2,)), ("unet", (1, 8, 8)), ("dit", (1, 8, 8))])
def test_forward_mode_ad_through_every_network(arch, shape):
    """torch.func.jvp (MeanFlow's target) works through attention and matches finite differences."""
    torch.manual_seed(0)
    net = common.make_net(arch, shape, 8, num_classes=3, two_times=True, time_scale=10.0).double()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    z, r, t = torch.randn(2, *shape, dtype=torch.float64), torch.rand(2, dtype=torch.float64), torch.rand(2, dtype=torch.float64)
    v = torch.randn_like(z)
    f = lambda z, r, t: net(z, r, t, None)
    out, du = torch.func.jvp(f, (z, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))
    h = 1e-6
    fd = (f(z + h * v, r, t + h) - f(z - h * v, r, t - h)) / (2 * h)
    assert torch.allclose(out, f(z, r, t)) and torch.allclose(du, fd, atol=1e-6, rtol=1e-5)


def test_attention_fallback_equals_the_fused_kernel():
    q, k, v = torch.randn(3, 2, 4, 5, 8).unbind(0)
    dq, dk, dv = torch.randn(3, 2, 4, 5, 8).unbind(0)
    out, tangent = torch.func.jvp(common.attention, (q, k, v), (dq, dk, dv))
    math_attention = lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), -1) @ v
    out_ref, tangent_ref = torch.func.jvp(math_attention, (q, k, v), (dq, dk, dv))
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v), atol=1e-6)
    assert torch.allclose(out, out_ref, atol=1e-6) and torch.allclose(tangent, tangent_ref, atol=1e-5)


def test_ema_follows_the_warmed_up_decay():
    net = torch.nn.Linear(2, 2, bias=False)
    ema = common.make_ema(net, decay=0.9)
    ref = net.weight.detach().clone()
    for n in range(30):
        with torch.no_grad():
            net.weight.add_(1.0)
        ema.update_parameters(net)
        if n == 0:
            ref = net.weight.detach().clone()  # the first update copies the weights
        else:
            d = min(0.9, (1 + n) / (10 + n))
            ref = d * ref + (1 - d) * net.weight.detach()
    assert torch.allclose(ema.module.weight, ref)


# -----------------------------------------------------------------------------
# pictures

def read_png(path):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        assert zlib.crc32(kind + body) == int.from_bytes(data[pos + 8 + n:pos + 12 + n], "big")
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + n
    w, h, depth, color = int.from_bytes(chunks[b"IHDR"][:4], "big"), int.from_bytes(chunks[b"IHDR"][4:8], "big"), \
        chunks[b"IHDR"][8], chunks[b"IHDR"][9]
    ch = 3 if color == 2 else 1
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(h, 1 + w * ch)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(h, w, ch)


def test_png_grid_round_trips(tmp_path):
    x = torch.linspace(-1, 1, 4 * 3 * 2 * 2).view(4, 3, 2, 2)
    common.save_grid(x, tmp_path / "g.png", nrow=2, min_size=2)
    img = read_png(tmp_path / "g.png")
    assert img.shape == (2 * 4 + 2, 2 * 4 + 2, 3)
    assert np.array_equal(img[2:4, 2:4].transpose(2, 0, 1), ((x[0] + 1) * 127.5).round().byte().numpy())
    common.save_points(torch.randn(500, 2), tmp_path / "p.png", ref=torch.randn(500, 2), size=64)
    assert read_png(tmp_path / "p.png").shape == (18 + 64, 2 * 64 + 4, 3)  # a title band, two panels, a bar


def test_text_mask_draws_the_font():
    m = common.text_mask("F-?", scale=1)  # "?" is not in the font: blank
    assert m.shape == (5, 4 * 3 - 1)
    assert m[:, :3].tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 0, 0], [1, 0, 0]]  # "F" = 7, 4, 6, 4, 4
    assert m[:, 4:7].tolist() == [[0, 0, 0], [0, 0, 0], [1, 1, 1], [0, 0, 0], [0, 0, 0]]  # "-"
    assert not m[:, 3].any() and not m[:, 8:].any()  # the gap between glyphs, and the blank
    assert common.text_mask("ab", scale=3).shape == (15, 21) and (common.text_mask("a") == common.text_mask("A")).all()


def test_save_points_is_bright_where_dense_and_labels_each_panel(tmp_path):
    ref = torch.rand(2000, 2) + 1.0  # all in the square [1, 2]^2
    common.save_points(ref - 3.0, tmp_path / "p.png", ref=ref, lim=4.0, size=64)
    img = read_png(tmp_path / "p.png").astype(int)
    band, left, bar, right = img[:18], img[18:, :64], img[18:, 64:68], img[18:, 68:]
    assert (bar == 128).all() and (band == 255).any() and (band[:, :64] == 255).any() and (band[:, 68:] == 255).any()
    # [1, 2]^2 is columns 40..48 and rows 16..24 of a 64-pixel panel over [-4, 4]^2 (y up); [-2, -1]^2 mirrors it
    assert left[18:22, 42:46].sum(-1).min() > 3 * left[40:44, 16:24].sum(-1).max() > 0
    assert right[42:46, 18:22].sum(-1).min() > 3 * right[18:22, 42:46].sum(-1).max() > 0
    assert (left[0, 0] == common.HEAT[0]).all()  # empty is the dark end of the scale


def test_save_trajectory_draws_lines_from_grey_starts_to_coloured_ends(tmp_path):
    # two straight paths of 4 steps: (-2, 0) -> (2, 0) along y = 0, and (0, -3) -> (0, 3) along x = 0
    t = torch.linspace(0, 1, 5)[:, None]
    states = torch.stack([torch.cat([4 * t - 2, 0 * t], 1), torch.cat([0 * t, 6 * t - 3], 1)], 1)  # (5, 2, 2)
    common.save_trajectory(states, tmp_path / "t.png", lim=4.0, size=64, title="x")
    img = read_png(tmp_path / "t.png").astype(int)
    assert img.shape == (18 + 64 + 18, 64, 3)
    img = img[18:-18]  # pixel (row, col) of (x, y) is (8 (4 - y), 8 (x + 4))
    assert (img[32, 16] == 150).all() and (img[56, 32] == 150).all()  # the starts: grey dots
    first, second = img[32, 48], img[8, 32]  # the ends, each in its own path's colour
    assert first.max() == 255 and second.max() == 255 and not (first == second).all()
    assert (img[32, 24:29] != 12).any(1).all() and (img[44:48, 32] != 12).any(1).all()  # the lines between
    assert (img[4, 4] == 12).all()  # the background away from them
    long = torch.cat([states[:1].expand(999, 2, 2), states[-1:]])  # 1000 steps: drawn through 101 states
    common.save_trajectory(long, tmp_path / "long.png", lim=4.0, size=64)
    assert (read_png(tmp_path / "long.png")[18:-18][32, 48] == first).all()  # the end is still drawn


def test_save_strip_shows_noise_first_and_samples_last(tmp_path):
    states = torch.rand(11, 3, 1, 8, 8) * 2 - 1  # (S + 1, N, C, H, W)
    common.save_strip(states, tmp_path / "s.png")  # 8 columns of 32-pixel images, one row per example
    img = read_png(tmp_path / "s.png")[..., 0]
    assert img.shape == (2 + 3 * 34, 2 + 8 * 34)
    def cell(r, c):
        return img[2 + 34 * r:34 * (r + 1), 2 + 34 * c:34 * (c + 1)]
    def pixels(x):
        return ((x + 1) * 127.5).round().byte().repeat_interleave(4, 0).repeat_interleave(4, 1).numpy()
    for r in range(3):
        assert (cell(r, 0) == pixels(states[0, r, 0])).all() and (cell(r, 7) == pixels(states[-1, r, 0])).all()
    common.save_strip(states[:3], tmp_path / "short.png")  # fewer states than columns: each once
    assert read_png(tmp_path / "short.png").shape[1] == 2 + 3 * 34


def test_record_appends_only_when_asked():
    path, x = [], torch.zeros(2)
    common.record(path, x)
    common.record(None, x)
    assert len(path) == 1 and path[0] is x


# -----------------------------------------------------------------------------
# metrics

@settings(deadline=None, max_examples=30)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 6))
def test_w2_exact_is_the_best_assignment(seed, n):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, 2, generator=g, dtype=torch.float64), torch.randn(n, 2, generator=g, dtype=torch.float64)
    best = min(sum(((a[i] - b[p[i]]) ** 2).sum().item() for i in range(n)) for p in itertools.permutations(range(n)))
    assert math.isclose(common.w2_exact(a, b), math.sqrt(best / n), rel_tol=1e-9)


@settings(deadline=None, max_examples=30)
@given(m=st.lists(st.floats(-3, 3), min_size=2, max_size=2), s1=st.lists(st.floats(0.1, 3), min_size=2, max_size=2),
       s2=st.lists(st.floats(0.1, 3), min_size=2, max_size=2))
def test_frechet_distance_closed_form_for_diagonal_covariances(m, s1, s2):
    """Sets whose sample covariances are exactly diagonal: FD = |m1 - m2|^2 + sum (sqrt(v1) - sqrt(v2))^2."""
    design = torch.tensor([[1.0, 1], [1, -1], [-1, 1], [-1, -1]], dtype=torch.float64)  # mean 0, cov 4/3 I
    f1 = design * torch.tensor(s1, dtype=torch.float64)
    f2 = design * torch.tensor(s2, dtype=torch.float64) + torch.tensor(m, dtype=torch.float64)
    v1, v2 = (4 / 3 * torch.tensor(s, dtype=torch.float64) ** 2 for s in (s1, s2))
    want = sum(x * x for x in m) + ((v1.sqrt() - v2.sqrt()) ** 2).sum().item()
    assert math.isclose(common.frechet_distance(f1, f2), want, rel_tol=1e-6, abs_tol=1e-9)


def test_quality_of_real_data_is_near_its_floor_and_noise_is_far():
    data = common.load_digits()
    real = common.quality(data, data.x_train[:500])
    noise = common.quality(data, torch.rand(500, 1, 8, 8) * 2 - 1)
    assert real["classifier_acc"] > 0.9
    assert real["value"] < 1.5 * real["floor"] < noise["value"] / 5
    # the floor is mean +- sd over draws of training digits, recomputed here independently
    net, _ = common.feature_net(data)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        f_train, f_test = net.features(data.x_train), net.features(data.x_test)
        floors = [common.frechet_distance(f_train[torch.randperm(len(f_train), generator=g)[:500]], f_test)
                  for _ in range(real["floor_draws"])]
    assert real["floor_draws"] >= 10 and abs(real["floor"] - np.mean(floors)) < 1e-9
    assert abs(real["floor_sd"] - np.std(floors, ddof=1)) < 1e-9 and "+- " in common.format_quality(real)
    # samples are rounded to the data's levels first: noise inside a bin changes nothing
    jitter = data.x_train[:500] + (torch.rand(500, 1, 8, 8) - 0.5) * (2 / 16) * 0.98
    assert common.quality(data, jitter)["value"] == real["value"]


@pytest.mark.parametrize("size", [8, 28, 32])
def test_feature_classifier_pools_maps_of_at_most_4x4(size):
    # a global average pool over larger maps forgets where a stroke is (digits32 scored 0.77 so)
    clf = common.Classifier(1, 10, size)
    before_pool = clf.features[:-2](torch.zeros(2, 1, size, size))  # (B, 64, h, w)
    assert before_pool.shape[1] == 64 and 2 <= before_pool.shape[-1] <= 4


def test_memorisation_check_flags_copies_and_not_held_out_digits():
    data = common.load_digits()
    copies = common.memorised(data.x_train[:200], data)
    fresh = common.memorised(data.x_test[250:450], data)
    noise = common.memorised(torch.rand(200, 1, 8, 8) * 2 - 1, data)
    assert copies["memorised"] == 1.0 and fresh["memorised"] < 0.05 and noise["memorised"] == 0.0
    assert copies["memorised_heldout"] < 0.05


# -----------------------------------------------------------------------------
# checkpoints and the training loop

def test_atomic_save_killed_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    common.atomic_save({"model": "ddpm", "net": {"w": torch.ones(3)}, "step": 1}, path)

    def dying_save(obj, f):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt  # the process is killed while writing
    monkeypatch.setattr(common.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        common.atomic_save({"model": "ddpm", "net": {"w": torch.zeros(3)}, "step": 2}, path)
    monkeypatch.undo()
    assert common.load_checkpoint(path, ("ddpm",))["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def toy_args(out, *flags):
    """The shared flags as a model file gets them, for a run on moons."""
    parser = common.add_args(argparse.ArgumentParser())
    args, _ = common.parse_args(parser, ["--data", "moons", "--width", "16", "--batch-size", "8", "--log-every", "100",
                                         "--out", str(out), *flags], "toy")
    return args


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    data = common.load_data("moons")
    for nan_after, out in ((5, tmp_path / "late"), (1, tmp_path / "early")):
        calls = []
        def loss_fn(net, x, y):
            calls.append(1)
            loss = net(x, torch.rand(len(x)), y).pow(2).mean()
            return loss * float("nan") if len(calls) > nan_after else loss
        args = toy_args(out, "--iters", "10", "--ckpt-every", "4")
        with pytest.raises(SystemExit) as e, common.session(args):
            common.train(common.make_net("mlp", (2,), 16, 2), loss_fn, data, args)
        err = capsys.readouterr().err
        assert e.value.code == 2 and "diverged" in err and "lower --lr" in err, err
        if nan_after == 5:  # diverged after the checkpoint at step 4: it is named, whole and finite
            assert f"last good checkpoint: {out / 'ckpt.pt'}" in err, err
            ck = common.load_checkpoint(out / "ckpt.pt", ("toy",))
            assert ck["step"] == 4 and all(torch.isfinite(v).all() for v in ck["net"].values())
        else:  # diverged before any checkpoint: none is named, none is written
            assert "no checkpoint was written yet" in err and not (out / "ckpt.pt").exists(), err


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_label_dropout_sends_the_null_class_at_rate_p_uncond(tmp_path, p):
    """The training loop drops labels to the null class (index num_classes) with probability
    p_uncond: the loss, and so the network, receives exactly the labels or the null class."""
    n_cls = 3
    data = common.Dataset("toy", torch.randn(100, 2), torch.ones(100, dtype=torch.long), torch.randn(10, 2),
                          torch.ones(10, dtype=torch.long), n_cls)
    seen = []
    def loss_fn(net, x, y):
        seen.append(y.clone())
        return net(x, torch.rand(len(x)), y).pow(2).mean()
    args = toy_args(tmp_path, "--iters", "100", "--batch-size", "100", "--p-uncond", str(p))
    common.train(common.make_net("mlp", (2,), 16, n_cls), loss_fn, data, args)
    y = torch.cat(seen)
    assert set(y.tolist()) <= {1, n_cls}
    rate = float((y == n_cls).double().mean())  # 10000 draws: sd 0.0046 at p = 0.3
    assert abs(rate - p) < 0.025, rate
    seen.clear()
    args = toy_args(tmp_path, "--iters", "2", "--uncond")
    common.train(common.make_net("mlp", (2,), 16, 0), lambda net, x, y: seen.append(y) or net(x, x[:, 0], y).mean(),
                 data, args)
    assert seen == [None, None]  # an unconditional run never sees labels


def test_flags_fill_from_typed_then_checkpoint_then_defaults(tmp_path, capsys):
    """parse_args: what was typed wins, --resume takes the rest from the checkpoint, then the data set's
    budget, then the shared defaults; '--resume auto' starts fresh when no checkpoint exists yet."""
    parser = lambda: common.add_args(argparse.ArgumentParser())
    args, ck = common.parse_args(parser(), ["--data", "moons", "--out", str(tmp_path), "--resume", "auto"], "toy")
    assert ck is None and not args.resume and args.iters == common.DATA_DEFAULTS["toy"]["iters"]
    assert args.warmup == common.DEFAULTS["warmup"] and args.arch == "mlp" and args.uncond is False
    common.atomic_save({"model": "toy", "net": {}, "args": dict(vars(args), iters=7, lr=0.5, seed=3)}, tmp_path / "ckpt.pt")
    args, ck = common.parse_args(parser(), ["--out", str(tmp_path), "--resume", "auto", "--seed", "4"], "toy")
    assert ck is not None and args.resume and (args.data, args.iters, args.lr, args.seed) == ("moons", 7, 0.5, 4)
    args, _ = common.parse_args(parser(), ["--ckpt", str(tmp_path / "ckpt.pt")], "toy")
    assert args.sample_only and args.data == "moons" and args.lr == common.DATA_DEFAULTS["toy"]["lr"]
    for flag in ("--lr", "--cfg-scale", "--p-uncond", "--ema-decay", "--grad-clip"):
        for bad in ("nan", "inf", "-inf"):
            with pytest.raises(SystemExit) as e:
                common.parse_args(parser(), [f"{flag}={bad}"], "toy")
            assert e.value.code == 2 and "not a finite number" in capsys.readouterr().err


def test_quality_refuses_non_finite_samples():
    data = common.load_data("moons")
    x = data.x_test[:50].clone()
    x[3, 1] = float("nan")
    with pytest.raises(common.UserError, match="1 of 50 samples are not finite"):
        common.quality(data, x)


DDP_SCRIPT = textwrap.dedent("""
    import importlib, sys, torch, torch.distributed as dist
    sys.path.insert(0, {root!r})
    import common
    train = common.train
    def keep_weights(net, loss_fn, data, args, ckpt=None):
        ema = train(net, loss_fn, data, args, ckpt)
        torch.save(net.state_dict(), f"{{args.out}}/rank{{dist.get_rank()}}.pt")
        return ema
    common.train = keep_weights
    importlib.import_module(sys.argv[1]).main(sys.argv[2:])
""")


@pytest.mark.parametrize("model, own", [("ddpm", ["--T", "50"]), ("meanflow", [])])
def test_ddp_two_processes_agree_and_match_one_process(tmp_path, model, own):
    """torchrun, two CPU processes (gloo): the ranks end with identical weights, and the loss follows
    one process with the same global batch. meanflow.py runs torch.func.jvp inside the DDP forward."""
    flags = ["--data", "moons", "--iters", "150", "--width", "64", "--batch-size", "256", "--log-every", "10",
             "--n-eval", "0", "--device", "cpu"] + own
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(root=str(ROOT)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), model] + flags + ["--out", str(tmp_path / "ddp")], env=env, timeout=240,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # every rank holds the same weights
    __import__(model).main(flags + ["--out", str(tmp_path / "single")])
    def losses(path):
        return [json.loads(line)["loss"] for line in open(path / "metrics.jsonl") if "loss" in line]
    a, b = losses(tmp_path / "ddp"), losses(tmp_path / "single")
    assert len(a) == len(b) == 15
    assert abs(np.mean(a[-5:]) - np.mean(b[-5:])) < 0.15 * abs(np.mean(b[-5:])), (a, b)


def test_mnist_and_cifar10_readers_parse_their_formats(tmp_path, monkeypatch):
    """The readers, fed small files in the real formats (IDX; CIFAR's binary records in a tar)."""
    import gzip, hashlib, io, struct, tarfile
    g = torch.Generator().manual_seed(0)
    files = {}
    for split, n in (("train", 5), ("t10k", 3)):
        img = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        lab = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)
        files[f"{split}-images-idx3-ubyte.gz"] = (struct.pack(">I3I", 2051, n, 28, 28) + img.numpy().tobytes(), img)
        files[f"{split}-labels-idx1-ubyte.gz"] = (struct.pack(">II", 2049, n) + lab.numpy().tobytes(), lab)
    sums = {}
    for name, (raw, _) in files.items():
        (tmp_path / "mnist").mkdir(exist_ok=True)
        blob = gzip.compress(raw)
        (tmp_path / "mnist" / name).write_bytes(blob)
        sums[name] = hashlib.sha256(blob).hexdigest()
    monkeypatch.setattr(common, "MNIST_FILES", sums)
    d = common.load_data("mnist", root=tmp_path)
    assert d.shape == (1, 28, 28) and len(d.x_train) == 5 and len(d.x_test) == 3
    assert torch.equal(((d.x_train[:, 0] + 1) / 2 * 255).round().byte(), files["train-images-idx3-ubyte.gz"][1])
    assert torch.equal(d.y_test, files["t10k-labels-idx1-ubyte.gz"][1].long())

    recs = {f"data_batch_{i}.bin": 2 for i in range(1, 6)} | {"test_batch.bin": 3}
    buf, first = io.BytesIO(), None
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, n in recs.items():
            rec = torch.randint(0, 256, (n, 3073), generator=g, dtype=torch.uint8)
            rec[:, 0] %= 10
            first = rec if name == "data_batch_1.bin" else first
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = rec.numel()
            tar.addfile(info, io.BytesIO(rec.numpy().tobytes()))
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "cifar-10-binary.tar.gz").write_bytes(buf.getvalue())
    monkeypatch.setattr(common, "CIFAR_SHA256", hashlib.sha256(buf.getvalue()).hexdigest())
    d = common.load_data("cifar10", root=tmp_path)
    assert d.shape == (3, 32, 32) and len(d.x_train) == 10 and len(d.x_test) == 3
    assert torch.equal(d.y_train[:2], first[:, 0].long())
    assert torch.equal(((d.x_train[0] + 1) / 2 * 255).round().byte().flatten(), first[0, 1:])


def test_unet_residual_hook_changes_nothing_unless_used():
    """The UNet's optional residuals (ControlNet's injection): absent or all zero, the output is the plain
    UNet's bit for bit; one non-zero residual changes it."""
    torch.manual_seed(0)
    net = common.make_net("unet", (1, 8, 8), 8, 10)
    for p in net.parameters():
        p.data.normal_(0, 0.1)
    x, t, y = torch.randn(4, 1, 8, 8), torch.rand(4), torch.randint(0, 10, (4,))
    c = torch.nn.functional.silu(net.cond([t], y))
    hs, h = net.encode(x, c)
    zeros = [torch.zeros_like(a) for a in hs] + [torch.zeros_like(h)]
    plain = net(x, t, y)
    assert torch.equal(net(x, t, y, residuals=zeros), plain) and torch.equal(net.decode(hs, h, c), plain)
    zeros[-1] = zeros[-1] + 0.1
    assert not torch.allclose(net(x, t, y, residuals=zeros), plain)


def test_digits32_is_digits_resized_on_256_levels():
    small, big = common.load_data("digits"), common.load_data("digits32")
    assert big.shape == (1, 32, 32) and big.levels == 256 and torch.equal(big.y_train, small.y_train)
    assert torch.allclose(big.x_train.mean((2, 3)), small.x_train.mean((2, 3)), atol=0.05)
    assert torch.allclose((big.x_train + 1) / 2 * 255, ((big.x_train + 1) / 2 * 255).round(), atol=1e-4)


def brute_kid(x, y, mu, sd):
    """KID by explicit loops: each row standardised by hand, (x_k - mu_k) / sd_k, then the
    U-statistic over pairs of distinct items with k(a, b) = (a.b / d + 1)^3, x 1e3."""
    def z(rows):
        return [[(float(v) - float(m)) / float(s) for v, m, s in zip(r, mu, sd)] for r in rows]

    def k(a, b):
        return (sum(p * q for p, q in zip(a, b)) / len(a) + 1) ** 3

    def within(u):
        return np.mean([k(u[i], u[j]) for i in range(len(u)) for j in range(len(u)) if i != j])
    x, y = z(x), z(y)
    return 1e3 * (within(x) + within(y) - 2 * np.mean([k(a, b) for a in x for b in y]))


def kid_x1e3(a, b, stats):
    z = common.standardised
    return common.KID_SCALE * common.kid(z(a, stats), z(b, stats))


def test_kid_is_the_u_statistic_of_the_cubic_kernel_on_standardised_features_by_brute_force():
    g = torch.Generator().manual_seed(0)
    units, shift = torch.tensor([1.0, 30.0, 0.05]), torch.tensor([4.0, -50.0, 0.2])  # own units
    train = torch.randn(40, 3, generator=g) * units + shift
    a = torch.randn(12, 3, generator=g) * units + shift
    b = (torch.randn(9, 3, generator=g) + 0.4) * units + shift
    mu = [np.mean(train[:, k].tolist()) for k in range(3)]
    sd = [np.std(train[:, k].tolist(), ddof=1) for k in range(3)]
    stats = (train.double().mean(0), train.double().std(0))
    assert common.KID_SCALE == 1e3
    assert math.isclose(kid_x1e3(a, b, stats), brute_kid(a, b, mu, sd), rel_tol=1e-9)
    raw = brute_kid(a, b, [0] * 3, [1] * 3) / 1e3  # kid itself: the features as given, unscaled
    assert math.isclose(common.kid(a, b), raw, rel_tol=1e-9)


def test_kid_is_zero_in_expectation_for_one_law_and_positive_for_two():
    # standardised by a separate training draw (a fixed map), both sets from one law: E KID = 0
    g = torch.Generator().manual_seed(3)
    units, shift = torch.tensor([1.0, 8.0, 0.1, 3.0]), torch.tensor([5.0, 2.0, -1.0, 10.0])
    law = lambda n, dx=0.0: (torch.randn(n, 4, generator=g) + dx) * units + shift  # noqa: E731
    train = law(200)
    stats = (train.double().mean(0), train.double().std(0))
    same = [kid_x1e3(law(30), law(20), stats) for _ in range(400)]
    se = np.std(same, ddof=1) / math.sqrt(len(same))
    assert abs(np.mean(same)) < 3 * se  # tolerance: 3 standard errors of the mean of 400 draws
    apart = [kid_x1e3(law(30, 0.5), law(20), stats) for _ in range(100)]
    assert np.mean(apart) > 10 * se + 3 * np.std(apart, ddof=1) / 10


def test_kid_ignores_a_per_feature_change_of_the_features_units_and_fd_does_not(monkeypatch):
    data = common.load_digits()
    g = torch.Generator().manual_seed(0)
    worse = data.x_train[:500] + 0.3 * torch.randn(500, 1, 8, 8, generator=g)  # a clearly worse set
    before = common.quality(data, worse)
    scale = torch.exp(torch.randn(64, generator=g, dtype=torch.float64))
    scale[0] = 1000.0  # one feature in other units, each of the rest too, every set alike
    offset = 100 * torch.randn(64, generator=g, dtype=torch.float64)
    features = common.features
    monkeypatch.setattr(common, "features",
                        lambda d, x, root=None: features(d, x, root).double() * scale + offset)
    monkeypatch.setattr(common, "_FEATURE_STATS", {})
    monkeypatch.setattr(common, "_FLOORS", {})
    after = common.quality(data, worse)
    assert after["value"] > 2 * before["value"]  # FD is in the features' units: the change is real
    for key in ("kid", "kid_floor", "kid_floor_sd"):
        assert math.isclose(after[key], before[key], rel_tol=1e-6), key


def test_quality_of_more_samples_than_held_out_images_uses_all_of_them_and_its_floor_says_its_n():
    data = common.load_digits()
    q = common.quality(data, data.x_train[:1000])
    f_s, f_test = common.features(data, data.x_train[:1000]), common.features(data, data.x_test)
    assert q["n"] == 1000 and q["floor_n"] == len(data.x_test) == 500
    assert math.isclose(q["value"], common.frechet_distance(f_s, f_test))
    # KID: standardised by the training split's features, recomputed here independently, x 1e3
    f_train = common.features(data, data.x_train).double()
    mu, sd = f_train.mean(0), f_train.std(0)
    z_s, z_test = (f_s.double() - mu) / sd, (f_test.double() - mu) / sd

    def u_statistic(x, y):
        k = lambda a, b: (a @ b.T / a.shape[1] + 1) ** 3  # noqa: E731
        off = lambda m: m[~torch.eye(len(m), dtype=torch.bool)].mean()  # noqa: E731
        return 1e3 * float(off(k(x, x)) + off(k(y, y)) - 2 * k(x, y).mean())
    assert q["kid_scale"] == 1e3 and math.isclose(q["kid"], u_statistic(z_s, z_test), rel_tol=1e-9)
    assert abs(q["kid"]) < 3 * q["kid_floor_sd"] + abs(q["kid_floor"])  # real digits: KID within its floor's spread
    text = common.format_quality(q)
    assert "at n=500" in text and f"KID x 1e3 {q['kid']:.3g} (floor" in text


def test_kid_floor_on_real_digits_is_centred_near_zero_with_its_sd_about_its_mean():
    """The floor compares real with real: its KID is 0 in expectation, so the mean of its draws
    (all against the one held-out set) is of the order of their sd, standardised or not; what the
    floor's sd is small against is a worse set's KID."""
    data = common.load_digits()
    q = common.quality(data, data.x_train[:500])
    f_train = common.features(data, data.x_train).double()
    f_test = common.features(data, data.x_test).double()
    mu, sd = f_train.mean(0), f_train.std(0)
    z_train, z_test = (f_train - mu) / sd, (f_test - mu) / sd
    g = torch.Generator().manual_seed(1)
    floors = [1e3 * common.kid(z_train[torch.randperm(len(z_train), generator=g)[:500]], z_test)
              for _ in range(q["floor_draws"])]
    assert math.isclose(q["kid_floor"], np.mean(floors), rel_tol=1e-9)
    assert math.isclose(q["kid_floor_sd"], np.std(floors, ddof=1), rel_tol=1e-9)
    assert abs(q["kid_floor"]) < 2 * q["kid_floor_sd"]  # consistent with 0 (a V-statistic is not)
    g = torch.Generator().manual_seed(0)
    worse = common.quality(data, data.x_train[:500] + 0.3 * torch.randn(500, 1, 8, 8, generator=g))
    assert worse["kid"] > q["kid_floor"] + 5 * q["kid_floor_sd"]


def test_kid_checks_replicates_are_the_metrics_of_the_resampled_sets():
    """benchmarks/kid_check.py: replicate 0 is common's FD and KID; a resampled replicate's FD is
    the FD of the resampled sets, its KID the U-statistic over positions whose items differ."""
    sys.path.insert(0, str(Path(common.__file__).resolve().parent / "benchmarks"))
    import kid_check
    g = torch.Generator().manual_seed(0)
    a = torch.randn(30, 4, generator=g).double() * 3 + 1
    b = torch.randn(20, 4, generator=g).double() + 0.5
    stats = (torch.full((4,), 1.0, dtype=torch.float64), torch.full((4,), 3.0, dtype=torch.float64))
    ia, ib = kid_check.resamples(30, 2, g), kid_check.resamples(20, 2, g)
    got = kid_check.replicates(a, b, stats, kid_check.counts(ia, 30), kid_check.counts(ib, 20))
    za, zb = (a - 1) / 3, (b - 1) / 3
    assert math.isclose(float(got["fd"][0]), common.frechet_distance(a, b), rel_tol=1e-9)
    assert math.isclose(float(got["kid"][0]), 1e3 * common.kid(za, zb), rel_tol=1e-9)
    assert math.isclose(float(got["kid_raw"][0]), common.kid(a, b), rel_tol=1e-9)
    for r in (1, 2):
        x, y = ia[r].tolist(), ib[r].tolist()
        assert math.isclose(float(got["fd"][r]), common.frechet_distance(a[x], b[y]), rel_tol=1e-9)
        k = lambda u, v: (float(u @ v) / 4 + 1) ** 3  # noqa: E731

        def within(z, idx):
            return np.mean([k(z[i], z[j]) for i in idx for j in idx if i != j])
        cross = np.mean([k(za[i], zb[j]) for i in x for j in y])
        assert math.isclose(float(got["kid"][r]), 1e3 * (within(za, x) + within(zb, y) - 2 * cross),
                            rel_tol=1e-9)


def test_kid_below_zero_is_printed_with_its_scale_and_why():
    q = dict(metric="FD", value=15.0, floor=16.6, floor_sd=5.1, n=2000, floor_n=500, kid=-1.5,
             kid_floor=22.4, kid_floor_sd=20.0, kid_scale=1e3)
    assert "KID x 1e3 -1.5 (< 0: unbiased, near 0; floor 22.4 +- 20)" in common.format_quality(q)
    assert "KID x 1e3 1.5 (floor 22.4 +- 20)" in common.format_quality(dict(q, kid=1.5))
    old = dict(q, kid=488.0, kid_scale=None)  # a result from before kid_scale: raw features
    assert "KID (raw features) 488 (floor" in common.format_quality(old)
