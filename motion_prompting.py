"""Motion Prompting at toy scale: an image-to-video flow model steered by point tracks through a ControlNet
(Geng et al., 2025, "Motion Prompting: Controlling Video Generation with Motion Trajectories", arXiv
2412.02700), on clips of the bundled digits moving on a canvas; with physctrl.py's tracks as the prompt it
runs the lecture's pipeline, physics condition -> trajectory -> video.

The math.
  clips             a digit (8x8, the bundled set) on a CANVAS x CANVAS canvas, F frames (--frames) at FPS
                    frames a second: its top-left corner o_f moves with a random velocity, gravity (down, +y)
                    and bounces off the walls (restitution e); frame f is the digit shifted by o_f with
                    bilinear interpolation (sub-pixel shifts), ink 0 outside it. Pixel (i, j) has its centre at
                    x = j, y = i (x right, y down). A point of the digit seen at p in frame 0 is at
                    p + o_f - o_0 in frame f: its track, exact by construction. The points are the pixels of
                    frame 0 with ink above INK (dense tracks); every one is visible (the digit stays inside).
                    Training clips use the training digits, held-out clips the held-out digits (disjoint).
  base              p(frames 1..F-1 | frame 0) by cfm.py's straight path on the clip x (B, F, H, W), t = 0 noise,
                    t = 1 data: x_t = (1 - t) x_0 + t x_1 on frames 1..F-1, frame 0 the given frame at every t
                    (Lipman et al., arXiv 2210.02747). --predict x (the default): the network gives the clean clip,
                    L = E || x1_theta(x_t, t)[1:] - x_1[1:] ||^2, and the field is v = (x1_theta - x_t) / (1 - t), since
                    x_1 - x_0 = (x_1 - x_t) / (1 - t) (physctrl.py derives the (1 - t)^2 weighting this puts on the
                    velocity loss; Li & He, arXiv 2511.13720): a clip is mostly the constant background, trivial as a
                    clean clip and not as a velocity, which carries the noise along. --predict v: cfm.py's velocity,
                    L = E || v_theta(x_t, t)[1:] - (x_1 - x_0)[1:] ||^2. The
                    network is common.UNet with the frames as channels (MCVD's layout, Voleti et al., arXiv
                    2205.09853: convolutions over space, every layer mixing all frames) on 2x2 pixels folded into
                    channels (space to depth), so it runs at CANVAS/2; it gives an output for every frame and
                    frame 0's is ignored (the loss skips it, the sampler keeps frame 0 fixed).
  track volume      K tracks (p_k,f) with visibility -> a (F, H, W, C) volume, reshaped (F C, H, W): track k's
                    embedding e_k (C = EMBED sin-cos features of its frame-0 position p_k,0: every track its
                    own, as the paper's unique per-track embeddings) written at p_k,f in frame f where visible,
                    zero elsewhere, splatted bilinearly to the 4 pixels around p_k,f (weights (1 - |dx|)(1 - |dy|),
                    summing to 1, so the written mass is centred exactly on p_k,f: sub-pixel positions survive).
  ControlNet        as controlnet.py (Zhang et al., arXiv 2302.05543), written here on its own: the base locked
                    (never trained), a trainable copy of its encoder reading x with Z_in(volume) added to its
                    first features, its skips and middle output added to the base's through zero convolutions
                    Z_k, so at initialisation v(x, t, volume) = v_theta(x, t) bit for bit. Trained with the base's
                    loss, the volume made from the clip's own tracks, a random number of them (TRAIN_TRACKS, 0
                    meaning all), as the paper trains on sparse and dense tracks alike.
  guidance          v_theta + w (v(., volume) - v_theta) (--cfg-scale w): the locked base is the model without
                    tracks.
  motion error      the end-point error between the prompted tracks and the generated video's: the video's
                    motion is found by cross-correlating frame 0's ink with each generated frame's (FFT, the
                    peak refined by a parabola through it and its neighbours), d_f; a prompted point p_k,0 is
                    then at p_k,0 + d_f, and EPE = mean over frames 1..F-1 and visible prompted points of
                    | p_k,0 + d_f - p_k,f |. On real clips it is the estimator's own error (about 0.1 pixel). The
                    clips' motion is rigid, so every point of a clip errs alike: each row is scored on all of the
                    clip's points, whichever tracks prompted it.
  identity          the share of generated frames 1..F-1 that the feature classifier (trained on the training
                    clips' frames) labels as it labels frame 0; per-frame FD of the generated frames against the
                    frames of other held-out clips, beside its floor (common.quality).
  physics prompt    --tracks FILE (physctrl.py's OUT/tracks.pt: {"tracks" (n, F', N, 2), "visible", "size",
                    "fps"}): trajectory --track-index, resampled to this file's FPS by linear interpolation in
                    time, scaled to the canvas; each of --n-tracks points of a held-out digit takes the motion of
                    the physctrl point nearest it in frame 0 (the two frame-0 centroids aligned): the object's
                    motion transferred to the digit, the lecture's PhysCtrl -> video step. The digit moves
                    rigidly in the clips, so a deforming object's tracks are followed on average.

Departures from the paper: its base is Lumiere, a large text-to-video space-time UNet, here a small UNet over
frames stacked as channels; its tracks come from a point tracker run on real videos, here from the renderer; the
volume enters the copy through one zero convolution at the copy's input resolution.

Run:
  python motion_prompting.py                      # clips, the base (OUT/base), the ControlNet, evaluation
  python motion_prompting.py --base runs/motion_prompting-moving-digits/base/ckpt.pt --iters 2000
  python physctrl.py --ckpt runs/physctrl-springs/ckpt.pt --force 0 8 12 --drag 5 --stiffness 2.5 --out runs/pc1 \\
    && python motion_prompting.py --ckpt runs/motion_prompting-moving-digits/ckpt.pt --tracks runs/pc1/tracks.pt
                                                  # physics condition -> trajectory -> video: OUT/physics.png
  python motion_prompting.py --resume             # continues the base, then the ControlNet, exactly
"""
import argparse
import copy
import hashlib
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common

# -----------------------------------------------------------------------------
# the clips: bundled digits moving on a canvas, with their tracks

CANVAS, DIGIT, FPS = 24, 8, 10  # canvas and digit sizes (pixels), frames a second
SPEED, GRAVITY, RESTITUTION = 2.0, 0.3, 0.8  # initial speed per axis (pixels a frame), g (pixels a frame^2), e
INK = 0.5  # a pixel of frame 0 with ink above this is a tracked point of the digit
EMBED = 8  # channels of a track's embedding
TRAIN_TRACKS = (1, 2, 4, 8, 16, 0)  # tracks per training clip, drawn uniformly; 0: all (dense)
PER_DIGIT = 2  # training clips per training digit (held-out: one per held-out digit)


def motion(n, frames, generator):
    """Top-left corners o (n, frames, 2) (x, y) of a digit: o_0 uniform on the canvas, v_0 uniform in
    [-SPEED, SPEED]^2; each frame v_y += g, o += v, then a wall crossed reflects the position and the velocity
    (both scaled by e past the wall)."""
    hi = CANVAS - DIGIT
    o = torch.rand(n, 2, generator=generator, dtype=torch.float64) * hi
    v = (2 * torch.rand(n, 2, generator=generator, dtype=torch.float64) - 1) * SPEED
    out = [o]
    for _ in range(frames - 1):
        v = v + torch.tensor([0.0, GRAVITY], dtype=torch.float64)
        o = o + v
        low, high = o < 0, o > hi
        o = torch.where(low, -RESTITUTION * o, torch.where(high, hi - RESTITUTION * (o - hi), o))
        v = torch.where(low | high, -RESTITUTION * v, v)
        out.append(o)
    return torch.stack(out, 1)


def render(digits, offsets):
    """Clips (n, F, CANVAS, CANVAS) in [-1, 1]: digits (n, 1, DIGIT, DIGIT) in [-1, 1] shifted by offsets (n, F, 2),
    frame f's pixel (i, j) the digit's ink bilinearly interpolated at (x, y) = (j, i) - o_f, 0 outside it."""
    n, frames = offsets.shape[:2]
    ink = (digits + 1) / 2  # (n, 1, 8, 8) in [0, 1]
    grid = torch.arange(CANVAS, dtype=torch.float64)
    x = grid[None, None, None, :] - offsets[..., 0, None, None]  # (n, F, 1, W): digit column of each pixel
    y = grid[None, None, :, None] - offsets[..., 1, None, None]  # (n, F, H, 1)
    xy = torch.stack(torch.broadcast_tensors(x, y), -1) / (DIGIT - 1) * 2 - 1  # (n, F, H, W, 2), align_corners
    frames_ink = F.grid_sample(ink.repeat_interleave(frames, 0), xy.flatten(0, 1).float(), align_corners=True)
    return frames_ink.view(n, frames, CANVAS, CANVAS) * 2 - 1


def dense_tracks(frame0, offsets):
    """Every pixel's track (B, H W, F, 2) (x, y) given frame 0 (B, H, W) and the corners (B, F, 2): p + o_f - o_0,
    and visibility (B, H W, F): the pixels with ink above INK in frame 0, the points of the digit."""
    B, frames = offsets.shape[:2]
    i, j = torch.meshgrid(torch.arange(CANVAS), torch.arange(CANVAS), indexing="ij")
    p0 = torch.stack([j, i], -1).reshape(-1, 2).to(offsets)  # (H W, 2) pixel centres (x, y)
    tracks = p0[None, :, None] + (offsets - offsets[:, :1])[:, None]  # (B, H W, F, 2)
    visible = ((frame0.flatten(1) + 1) / 2 > INK)[..., None].expand(-1, -1, frames)
    return tracks.float(), visible


def choose(visible, k, generator=None):
    """visible (B, P, F) kept for k of each clip's visible points at random (k (B,) or a number; 0: all)."""
    B, P = visible.shape[:2]
    k = torch.as_tensor(k, device=visible.device).expand(B)
    score = torch.rand(B, P, generator=generator, device=visible.device).masked_fill(~visible[..., 0], -1.0)
    rank = score.argsort(1, descending=True).argsort(1)  # 0 for the highest score
    keep = (rank < torch.where(k > 0, k, P)[:, None]) & visible[..., 0]
    return visible & keep[..., None]


def embed(p):
    """A track's embedding (..., EMBED) from its frame-0 position p (..., 2): cos and sin of each coordinate at
    two frequencies, the slower monotone across the canvas (half a period), the faster for detail."""
    w = torch.tensor([math.pi / CANVAS, 4 * math.pi / CANVAS], device=p.device)
    a = (p[..., :, None] * w).flatten(-2)  # (..., 4): x w1, x w2, y w1, y w2
    return torch.cat([a.cos(), a.sin()], -1)


def rasterise(tracks, visible, size=CANVAS):
    """The track volume (B, F EMBED, size, size) of tracks (B, K, F, 2) with visibility (B, K, F): each track's
    embedding at its position in every frame where visible, splatted bilinearly onto the 4 pixels around it
    (those inside the canvas), zero elsewhere; tracks landing on one pixel add."""
    B, K, frames = visible.shape
    e = embed(tracks[:, :, 0])  # (B, K, EMBED)
    base = tracks.floor()
    frac = tracks - base
    vol = torch.zeros(B, frames, size * size, EMBED, device=tracks.device)
    for dx in (0, 1):
        for dy in (0, 1):
            w = (frac[..., 0] if dx else 1 - frac[..., 0]) * (frac[..., 1] if dy else 1 - frac[..., 1])  # (B, K, F)
            x, y = base[..., 0].long() + dx, base[..., 1].long() + dy
            ok = visible & (x >= 0) & (x < size) & (y >= 0) & (y < size)
            idx = (y.clamp(0, size - 1) * size + x.clamp(0, size - 1)).permute(0, 2, 1)  # (B, F, K)
            val = (w * ok).permute(0, 2, 1)[..., None] * e[:, None]  # (B, F, K, EMBED)
            vol.scatter_add_(2, idx[..., None].expand(-1, -1, -1, EMBED), val)
    return vol.view(B, frames, size, size, EMBED).permute(0, 1, 4, 2, 3).reshape(B, frames * EMBED, size, size)


def displacement(clips):
    """(B, F, 2) the motion (dx, dy) of each frame's content against frame 0's: the peak of the cross-correlation
    c(s) = sum_p ink_0(p) ink_f(p + s) (FFT, zero-padded to 2H x 2W so nothing wraps), refined along each axis by
    the parabola through the peak and its two neighbours."""
    ink = ((clips.double() + 1) / 2).clamp(0, 1)
    B, frames, H, W = ink.shape
    size = (2 * H, 2 * W)
    corr = torch.fft.irfft2(torch.fft.rfft2(ink[:, :1], s=size).conj() * torch.fft.rfft2(ink, s=size), s=size)
    peak = corr.flatten(2).argmax(-1)  # (B, F)
    py, px = peak // size[1], peak % size[1]
    b, f = torch.meshgrid(torch.arange(B), torch.arange(frames), indexing="ij")

    def refine(c0, cm, cp):  # the vertex of the parabola through (-1, cm), (0, c0), (1, cp)
        den = cm - 2 * c0 + cp
        return torch.where(den < 0, 0.5 * (cm - cp) / den.where(den < 0, -1.0), 0.0).clamp(-0.5, 0.5)
    c0 = corr[b, f, py, px]
    dx = px + refine(c0, corr[b, f, py, (px - 1) % size[1]], corr[b, f, py, (px + 1) % size[1]])
    dy = py + refine(c0, corr[b, f, (py - 1) % size[0], px], corr[b, f, (py + 1) % size[0], px])
    d = torch.stack([dx, dy], -1)
    return torch.where(d > d.new_tensor(size) / 2, d - d.new_tensor(size), d).float()  # circular -> signed


def motion_error(clips, tracks, visible):
    """(B,) end-point error (pixels) of the clips' motion against the prompted tracks (B, K, F, 2): the mean over
    frames 1..F-1 and visible prompted points of |p_k,0 + d_f - p_k,f|, d from displacement."""
    d = displacement(clips)  # (B, F, 2)
    err = (tracks[:, :, :1] + d[:, None] - tracks).norm(dim=-1)[:, :, 1:]  # (B, K, F-1)
    v = visible[:, :, 1:].float()
    return (err * v).sum((1, 2)) / v.sum((1, 2)).clamp(min=1)


def load_clips(frames, root=None):
    """Training clips (PER_DIGIT per training digit) and held-out clips (one per held-out digit) with their corners
    as the per-clip condition c: rendered from seeds 0 and 1 and cached under a name that changes with the
    constants. Returns the Dataset and the frames' Dataset (one frame an image, for the feature classifier)."""
    digits = common.load_digits()
    tag = hashlib.sha256(repr((CANVAS, DIGIT, FPS, SPEED, GRAVITY, RESTITUTION, PER_DIGIT)).encode()).hexdigest()[:8]
    path = common.cache_dir(root) / "motion_prompting" / f"clips-{tag}-f{frames}.pt"
    if path.exists():
        d = torch.load(path, weights_only=True)
    else:
        d = {}
        for split, x, per, seed in (("train", digits.x_train, PER_DIGIT, 0), ("test", digits.x_test, 1, 1)):
            o = motion(len(x) * per, frames, torch.Generator().manual_seed(seed))
            d[split] = render(x.repeat_interleave(per, 0), o)
            d[split + "_o"] = o.float()
        path.parent.mkdir(parents=True, exist_ok=True)
        common.atomic_save(d, path)
    y_train, y_test = digits.y_train.repeat_interleave(PER_DIGIT), digits.y_test
    clips = common.Dataset("moving-digits", d["train"], y_train, d["test"], y_test, 10, levels=256,
                           c_train=d["train_o"], c_test=d["test_o"])
    pick = torch.arange(len(d["train"]))  # one frame of each training clip (frame i mod F of clip i)
    frames_data = common.Dataset(f"moving-digits-{tag}-f{frames}-one-frame", d["train"][pick, pick % frames, None], y_train,
                                 d["test"].reshape(-1, 1, CANVAS, CANVAS), y_test.repeat_interleave(frames), 10, levels=256)
    return clips, frames_data


# -----------------------------------------------------------------------------
# the networks: the base (a UNet over frames stacked as channels) and the ControlNet on it

class VideoUNet(common.UNet):
    """net(x, t, y) on clips x (B, F, H, W): common.UNet with the F frames as channels, run on 2x2 pixels folded
    into channels (B, 4 F, H/2, W/2) and unfolded back; residuals as in common.UNet (the ControlNet's)."""

    def __init__(self, frames, width=32, size=CANVAS):
        super().__init__((4 * frames, size // 2, size // 2), width, time_scale=1000.0)
        self.frames = frames

    def body(self, x, c, residuals=None):  # x (B, F, H, W) -> (B, 4F, H/2, W/2) -> UNet -> (B, F, H, W)
        return F.pixel_shuffle(super().body(F.pixel_unshuffle(x, 2), c, residuals), 2)


def zero_conv(c_in, c_out, k):
    conv = nn.Conv2d(c_in, c_out, k, padding=k // 2)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ControlNet(nn.Module):
    """net(x, t, y, control) -> the locked base's output (x1_theta or v) with the copy's residuals added to its skips and middle;
    control None is the base itself. control: a track volume (B, F EMBED, H, W)."""

    COPY = ("cond", "inp", "down", "mid1", "mid_attn", "mid2")  # the trainable copy of the encoder

    def __init__(self, base):
        super().__init__()
        self.base = base.requires_grad_(False).eval()
        for name in self.COPY:
            setattr(self, name, copy.deepcopy(getattr(base, name)).requires_grad_(True))
        chans = [base.inp.out_channels] + [m.conv2.out_channels if isinstance(m, common.ResBlock) else m.out_channels
                                           for m in base.down] + [base.mid2.conv2.out_channels]
        self.control_in = zero_conv(4 * base.frames * EMBED, base.inp.out_channels, 3)  # Z_in, on the folded volume
        self.zero_convs = nn.ModuleList(zero_conv(c, c, 1) for c in chans)  # Z_1..Z_K, Z_mid

    def train(self, mode=True):  # the base stays in eval mode
        super().train(mode)
        self.base.eval()
        return self

    def forward(self, x, t, y=None, control=None):
        if control is None:
            return self.base(x, t, y)
        t = t.expand(x.shape[0]) if t.dim() == 1 and t.shape[0] == 1 else t
        c = F.silu(self.cond([t], y))
        h = self.inp(F.pixel_unshuffle(x, 2)) + self.control_in(F.pixel_unshuffle(control, 2))  # (B, width, H/2, W/2)
        hs = [h]
        for m in self.down:  # common.UNet.encode's loop
            h = m(h, c) if isinstance(m, common.ResBlock) else m(h)
            hs.append(h)
        hs.append(self.mid2(self.mid_attn(self.mid1(h, c)), c))
        return self.base(x, t, y, residuals=[z(h) for z, h in zip(self.zero_convs, hs)])


# -----------------------------------------------------------------------------
# the method: cfm.py's straight path on frames 1..F-1 given frame 0, the volume from the clip's own tracks

class ImageToVideo:
    def __init__(self, control=False, predict="x", solver="midpoint"):
        """control: train the ControlNet (the volume from a random number of the clip's tracks) or the base;
        predict: the network gives the clean clip (x) or the velocity (v); solver: euler or midpoint."""
        if predict not in ("x", "v") or solver not in ("euler", "midpoint"):
            raise ValueError(f"--predict takes x or v and --solver euler or midpoint, got {predict!r} and {solver!r}")
        self.control, self.predict, self.solver = control, predict, solver

    def loss(self, net, x1, y=None, c=None):
        """|| net(x_t, t[, volume])[1:] - target[1:] ||^2, the target x_1 (predict x) or x_1 - x_0 (predict v):
        x_t = (1 - t) x_0 + t x_1 on frames 1..F-1 and frame 0 given; c: the corners (B, F, 2) whose tracks make the
        volume; y is unused (the frame says the digit)."""
        x0, t = torch.randn_like(x1), torch.rand(len(x1), device=x1.device)
        x_t = (1 - common.bcast(t, x1)) * x0 + common.bcast(t, x1) * x1
        x_t[:, 0] = x1[:, 0]
        extra = {}
        if self.control:
            tracks, visible = dense_tracks(x1[:, 0], c)
            k = torch.tensor(TRAIN_TRACKS, device=x1.device)[torch.randint(len(TRAIN_TRACKS), (len(x1),), device=x1.device)]
            extra["control"] = rasterise(tracks, choose(visible, k))
        target = x1 if self.predict == "x" else x1 - x0
        return (net(x_t, t, None, **extra) - target)[:, 1:].pow(2).mean()

    def velocity(self, net, x, t, **control):
        """v_theta = (x1_theta(x_t, t) - x_t) / (1 - t) with predict x, the network's output itself with predict v."""
        out = net(x, t, None, **control)
        return out if self.predict == "v" else (out - x) / (1 - common.bcast(t, x))

    def guided(self, net, x, t, cfg_scale=1.0, control=None):
        """The field, frame 0's set to 0; with a volume and w != 1, v_base + w (v(volume) - v_base)."""
        if control is None:
            v = self.velocity(net, x, t)
        elif cfg_scale == 1.0:
            v = self.velocity(net, x, t, control=control)
        else:
            v_base = self.velocity(net, x, t)
            v = v_base + cfg_scale * (self.velocity(net, x, t, control=control) - v_base)
        return torch.cat([torch.zeros_like(v[:, :1]), v[:, 1:]], 1)

    @torch.no_grad()
    def sample(self, net, frame0, frames, steps=10, cfg_scale=1.0, control=None, generator=None, noise=None):
        """Clips (B, F, H, W) whose frame 0 is frame0 (B, H, W): dx/dt = field from x_0 ~ N(0, I) at t = 0 to t = 1,
        Euler or midpoint steps (the field is evaluated at t < 1 only)."""
        x = common.start_noise((len(frame0), frames, *frame0.shape[1:]), generator, noise).to(frame0.device)
        x = torch.cat([frame0[:, None], x[:, 1:]], 1)  # frame 0 given
        h = 1.0 / steps

        def v(x, t):
            return self.guided(net, x, torch.full((len(x),), t, device=x.device), cfg_scale, control)
        for i in range(steps):
            x = x + h * (v(x, i * h) if self.solver == "euler" else v(x + h / 2 * v(x, i * h), i * h + h / 2))
        return x


# -----------------------------------------------------------------------------
# evaluation, the physics prompt and pictures

def strip(rows, path, tracks=None, visible=None, scale=3):
    """A picture: rows of clips (n, F, H, W) in [-1, 1] as frames left to right, upscaled; with tracks (K, F, 2)
    and visibility (K, F), each visible prompted point drawn as a coloured dot in every row (hue per track)."""
    frames = rows[0].shape[0]
    H = CANVAS * scale
    img = np.full((len(rows) * (H + 2) + 2, frames * (H + 2) + 2, 3), 255, np.uint8)
    n_tracks = 0 if tracks is None else len(tracks)
    colours = common.hues(np.arange(n_tracks) / max(1, n_tracks))
    for r, clip in enumerate(rows):
        for f in range(frames):
            y0, x0 = 2 + r * (H + 2), 2 + f * (H + 2)
            g = ((clip[f].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
            img[y0:y0 + H, x0:x0 + H] = g.repeat(scale, 0).repeat(scale, 1)[..., None]
            if tracks is not None:
                for k in range(len(tracks)):
                    if visible[k, f]:
                        px, py = (tracks[k, f] * scale + (scale - 1) / 2).round().long().tolist()  # the block's centre
                        if 1 <= px < H - 1 and 1 <= py < H - 1:
                            img[y0 + py - 1:y0 + py + 2, x0 + px - 1:x0 + px + 2] = colours[k]
    common.write_png(path, img)


def physics_prompt(path, frame0, frames, n_tracks, index=0):
    """The prompt (1, n_tracks, frames, 2) and visibility from physctrl.py's tracks file: trajectory `index`,
    resampled in time to FPS, scaled to the canvas; n_tracks points of frame0 (H, W) (the ink points farthest
    apart, greedily), each moved as the file's point nearest it in frame 0 once the two centroids are aligned.
    A file that is not a tracks file, covers less time than the clip, or has visible points outside its
    canvas raises a UserError."""
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
        tr, vis, (h, w), fps = d["tracks"].double(), d["visible"].bool(), d["size"], float(d["fps"])
    except FileNotFoundError:
        raise common.UserError(f"--tracks {path} not found: write one with physctrl.py (OUT/tracks.pt)")
    except Exception as e:
        raise common.UserError(f"--tracks {path} is not a tracks file ({type(e).__name__}): pass physctrl.py's "
                               "OUT/tracks.pt, a dict of tracks (n, F, N, 2), visible (n, F, N), size (H, W), fps")
    if tr.dim() != 4 or tr.shape[-1] != 2 or vis.shape != tr.shape[:3] or not 0 <= index < len(tr):
        raise common.UserError(f"--tracks {path}: tracks {tuple(tr.shape)} and visible {tuple(vis.shape)} are not "
                               f"(n, F, N, 2) and (n, F, N), or --track-index {index} is not in 0..{len(tr) - 1}")
    outside = vis & ((tr < 0) | (tr >= torch.tensor([w, h], dtype=torch.float64))).any(-1)
    if outside.any():
        raise common.UserError(f"--tracks {path}: {int(outside.sum())} visible points lie outside its {h}x{w} "
                               "canvas: mark them not visible or clip the tracks")
    if not fps > 0 or not vis[index, 0].any():
        raise common.UserError(f"--tracks {path}: fps {fps:g} and {int(vis[index, 0].sum())} points visible in frame 0 "
                               f"of trajectory {index}: need fps > 0 and at least one visible point")
    if (tr.shape[1] - 1) / fps < (frames - 1) / FPS - 1e-9:
        raise common.UserError(f"--tracks {path} covers {(tr.shape[1] - 1) / fps:.2f} s ({tr.shape[1]} frames at "
                               f"{fps:g} fps); the clip needs {(frames - 1) / FPS:.2f} s ({frames} frames at {FPS} fps)")
    s = torch.arange(frames, dtype=torch.float64) * fps / FPS  # the file's frame at each clip frame (fractional)
    lo = s.floor().long().clamp(max=tr.shape[1] - 1)
    hi, a = (lo + 1).clamp(max=tr.shape[1] - 1), (s - lo)[None, :, None]
    src = (tr[index, lo].permute(1, 0, 2) * (1 - a) + tr[index, hi].permute(1, 0, 2) * a)  # (N, frames, 2)
    src = src * torch.tensor([CANVAS / w, CANVAS / h], dtype=torch.float64)
    seen = vis[index, 0]
    shown = (vis[index, lo] & (vis[index, hi] | (s == lo)[:, None])).T  # (N, frames): at the file frames it blends
    ink = torch.nonzero((frame0 + 1) / 2 > INK).flip(-1).double()  # (P, 2) (x, y) points of the digit
    pick = [int(((ink - ink.mean(0)).norm(dim=-1)).argmax())]  # farthest from the centre, then farthest apart
    while len(pick) < min(n_tracks, len(ink)):
        pick.append(int(torch.cdist(ink, ink[pick]).min(1).values.argmax()))
    p0 = ink[pick]  # (K, 2)
    rel = src[seen, 0] - src[seen, 0].mean(0) + ink.mean(0)  # the file's frame-0 points over the digit
    nearest = torch.cdist(p0, rel).argmin(1)
    tracks = p0[:, None] + src[seen][nearest] - src[seen][nearest][:, :1]  # (K, frames, 2)
    visible = ((tracks >= -0.5) & (tracks <= CANVAS - 0.5)).all(-1) & shown[seen][nearest]
    return tracks[None].float(), visible[None]


def evaluate(method, net, clips, frames_data, args, device):
    """Motion error, identity and per-frame FD on n held-out clips for the base without tracks and the ControlNet
    with 1, 4 and all tracks (the same starting noise for every row), beside the real clips; the picture. Returns
    the figures, and every row's clips under "samples" (on the CPU, for comparisons paired on the same clips)."""
    n = args.n_eval
    real = clips.x_test[:n].to(device)
    tracks, visible = dense_tracks(real[:, 0].cpu(), clips.c_test[:n])
    g = torch.Generator().manual_seed(args.seed + 2)
    prompts = {"base": None, "1 track": 1, "4 tracks": 4, "all tracks": 0}
    noise = torch.randn(real.shape, generator=torch.Generator().manual_seed(args.seed + 1)).to(device)
    reference = common.Dataset(frames_data.name, frames_data.x_train, frames_data.y_train,  # other held-out clips
                               clips.x_test[n:2 * n, 1:].reshape(-1, 1, CANVAS, CANVAS),
                               clips.y_test[n:2 * n].repeat_interleave(args.frames - 1), 10, levels=256)
    classifier, acc = common.feature_net(frames_data, args.data_root)

    def labels(x):  # (B, F) the feature classifier's label of every frame
        with torch.no_grad():
            return classifier(x.reshape(-1, 1, CANVAS, CANVAS).cpu()).argmax(1).view(len(x), -1)
    kept = {name: choose(visible, k, g) for name, k in prompts.items() if k is not None}  # each row's prompted tracks
    rows, q = {"real clips": real}, {"n": n}
    t0 = time.time()
    for name in prompts:
        control = rasterise(tracks, kept[name]).to(device) if name in kept else None
        with common.autocast(device, args.amp):
            rows[name] = method.sample(net, real[:, 0], args.frames, args.steps, args.cfg_scale, control, noise=noise).float()
    q["sample_seconds"] = time.time() - t0
    common.log(f"held-out clips (n={n}; digits never trained on), motion error against the prompted tracks (pixels), "
               f"identity (frames labelled as frame 0 by the feature classifier, its test accuracy {acc:.3f}) and "
               f"per-frame FD:")
    for name, x in rows.items():
        e = motion_error(x.cpu(), tracks, visible)  # every point of the digit (a rigid motion errs the same on each)
        lab = labels(x)
        same = (lab[:, 1:] == lab[:, :1]).float().mean(1)
        quality = common.quality(reference, x[:, 1:].reshape(-1, 1, CANVAS, CANVAS), args.data_root)
        q[name] = {"motion": float(e.mean()), "motion_se": float(e.std() / len(e) ** 0.5), "motion_each": e.tolist(),
                   "identity": float(same.mean()), "fd": quality["value"], "fd_floor": quality["floor"],
                   "fd_floor_sd": quality["floor_sd"]}
        common.log(f"  {name:11s} motion {q[name]['motion']:6.3f} +- {q[name]['motion_se']:.3f}  identity "
                   f"{q[name]['identity']:.3f}  FD {quality['value']:.4g} (floor {quality['floor']:.4g} +- "
                   f"{quality['floor_sd']:.2g}, n={quality['n']})")
    q["ratio_4"] = q["4 tracks"]["motion"] / q["base"]["motion"]
    q["samples"] = {name: x.cpu() for name, x in rows.items()}
    i = 0  # the picture: one clip's real frames, then each row's, the 4 prompted tracks drawn over all of them
    four = kept["4 tracks"][i, :, 0]
    path = Path(args.out) / "tracks.png"
    strip([rows[name][i].cpu() for name in rows], path, tracks[i][four], kept["4 tracks"][i][four])
    common.log(f"  4 tracks / base motion error: {q['ratio_4']:.3f}; picture {path} (rows: real, base, 1, 4, all "
               f"tracks; dots: the 4 prompted tracks)")
    return q


# -----------------------------------------------------------------------------
# the training script

def locked_base(method, data, args, device):
    """(the base (EMA network), the wall and CPU seconds of its training or {}): --base CKPT, else trained first
    with the flow-matching loss into OUT/base, which --resume continues (or takes as it is when finished)."""
    base = VideoUNet(args.frames, args.width).to(device)
    if args.base:
        ckpt = common.load_checkpoint(args.base, ("motion_prompting_base",))
        a = ckpt["args"]
        if (a["frames"], a["width"], a["predict"]) != (args.frames, args.width, args.predict):
            raise common.UserError(f"--base {args.base} has {a['frames']} frames, width {a['width']} and --predict "
                                   f"{a['predict']}, not --frames {args.frames}, --width {args.width} and --predict "
                                   f"{args.predict}: pass those or train a new base")
        return common.load_ema(ckpt, base), {}
    out = Path(args.out) / "base"
    out.mkdir(exist_ok=True)
    ckpt = common.load_checkpoint(out / "ckpt.pt", ("motion_prompting_base",)) \
        if args.resume and (out / "ckpt.pt").exists() else None
    base_args = argparse.Namespace(**{**vars(args), "model": "motion_prompting_base", "out": str(out),
                                      "iters": args.base_iters})
    t0, c0 = time.time(), time.process_time()
    base = common.train(base, method.loss, data, base_args, ckpt)  # L_CFM on clips; the EMA network
    return base, {"base_train_seconds": time.time() - t0, "base_train_cpu_seconds": time.process_time() - c0}


def main(argv=None):
    parser = common.add_args(argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                                     epilog="see the module docstring for the math"))
    own = parser.add_argument_group("motion prompting (--data moving-digits only; --width is the UNet's)")
    own.add_argument("--base", metavar="CKPT", help="the base to control (OUT/base/ckpt.pt of an earlier run; default: "
                     "train one into OUT/base)")
    own.add_argument("--base-iters", type=int, help="iterations of that base when there is no --base (default 1500)")
    own.add_argument("--frames", type=int, help="F, frames per clip, frame 0 given (default 8)")
    own.add_argument("--predict", choices=["x", "v"], help="the network gives the clean clip (x, the default) or the "
                     "velocity (v)")
    own.add_argument("--steps", type=int, help="steps of the sampler (default 10)")
    own.add_argument("--solver", choices=["euler", "midpoint"], help="ODE solver for sampling (default midpoint)")
    own.add_argument("--tracks", metavar="FILE", help="a tracks file (physctrl.py's OUT/tracks.pt) as the prompt of a "
                     "held-out digit's clip: OUT/physics.png, the prompted tracks over the generated frames (instead of the "
                     "evaluation)")
    own.add_argument("--track-index", type=int, default=0, help="which trajectory of --tracks (default 0)")
    own.add_argument("--n-tracks", type=int, default=4, help="points of the digit prompted from --tracks (default 4)")
    args, ckpt = common.parse_args(
        parser, argv, "motion_prompting", model_flags=("frames", "predict"), teacher=(("base",), ("motion_prompting_base",)),
        defaults=dict(data="moving-digits", frames=8, predict="x", steps=10, solver="midpoint", base_iters=1500),
        data_sets={"moving-digits": dict(arch="unet", width=32, iters=1000, batch_size=32, lr=2e-3, n_eval=100)})
    if args.arch != "unet" or not 2 <= args.frames <= 32 or args.steps < 1 or args.base_iters < 1 or args.n_tracks < 1:
        parser.error(f"need --arch unet, --frames in 2..32, --steps, --base-iters and --n-tracks >= 1; got {args.arch}, "
                     f"{args.frames}, {args.steps}, {args.base_iters}, {args.n_tracks}")
    if args.width % 8:
        parser.error(f"--width {args.width} must be a multiple of 8 (the UNet's group norms)")
    method = common.construct(parser, ImageToVideo, False, args.predict, args.solver)  # the base's loss, the sampler
    control = ImageToVideo(True, args.predict, args.solver)  # the ControlNet's loss: the clip's tracks as the volume
    with common.session(args) as device:
        clips, frames_data = load_clips(args.frames, args.data_root)
        if 2 * args.n_eval > len(clips.x_test):  # prompts from n held-out clips, FD against n others
            raise common.UserError(f"--n-eval {args.n_eval}: the prompts come from that many held-out clips and FD "
                                   f"uses as many others; use at most {len(clips.x_test) // 2}")
        if args.tracks:  # the lecture's pipeline: physctrl.py's trajectory as the prompt of a held-out digit (read first)
            frame0 = clips.x_test[0, 0]
            tracks, visible = physics_prompt(args.tracks, frame0, args.frames, args.n_tracks, args.track_index)
        q = {}
        if args.sample_only:
            base = VideoUNet(args.frames, args.width).to(device)
        else:
            base, q = locked_base(method, clips, args, device)  # --base CKPT, or trained first into OUT/base
        controlnet = ControlNet(base).to(device)  # locked base + trainable copy + zero convolutions
        if args.sample_only:
            controlnet = common.load_ema(ckpt, controlnet)
        else:
            t0, c0 = time.time(), time.process_time()
            controlnet = common.train(controlnet, control.loss, clips, args, ckpt)  # the copy and Z only; EMA
            q.update(train_seconds=time.time() - t0, train_cpu_seconds=time.process_time() - c0)
        if not common.is_main():
            return None
        if args.tracks:
            noise = torch.randn((1, args.frames, CANVAS, CANVAS), generator=torch.Generator().manual_seed(args.seed + 1))
            with common.autocast(device, args.amp):
                video = method.sample(controlnet, frame0[None].to(device), args.frames, args.steps, args.cfg_scale,
                                      rasterise(tracks, visible).to(device), noise=noise.to(device)).float().cpu()
            e = float(motion_error(video, tracks, visible)[0])
            path = Path(args.out) / "physics.png"
            strip([torch.full_like(video[0], -1.0), video[0]], path, tracks[0], visible[0])  # the prompt, then the video
            common.log(f"physics prompt {args.tracks} (trajectory {args.track_index}, {len(tracks[0])} tracks): motion "
                       f"error {e:.3f} pixels; picture {path}")
            return q | {"physics_motion": e}
        if args.n_eval == 0:
            return q or None
        return q | evaluate(method, controlnet, clips, frames_data, args, device)


if __name__ == "__main__":
    main()
