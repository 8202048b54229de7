"""What every model file shares, in the order a model file meets it.

The learning core:
  networks ........ make_net: MLP (2-D points), UNet and DiT (images), all net(x, t, y) or
                    net(x, r, t, y), optionally net(..., w=w) with the guidance scale as an input;
                    y=None is the null class of classifier-free guidance
  EMA ............. make_ema: the averaged weights that sample
  training ........ train(net, loss, data, args, ckpt): AdamW, warmup, clipping, label dropout,
                    EMA, checkpoints, exact --resume, DDP; returns the EMA network
  generation and
  evaluation ...... class_labels, bcast, quality (FD or W2 beside its floor), report
The plumbing:
  errors, device
  and processes ... UserError, session(args): device, seed, torchrun, one-line errors
  data ............ load_data: digits (bundled), 2-D toy sets, mnist / cifar10 (--download)
  pictures ........ PNG grids, 2-D densities, sampling paths and strips, labelled in a bitmap
                    font, with no new dependency
  metrics ......... exact W2, Frechet distance, the feature classifier
  checkpoints ..... atomic writes, weights_only loads, load_ema
  command line .... add_args, parse_args: shared flags, per-data budgets, checkpoint merging

A model file's main() reads: flags (parse_args), session, data (load_data), the network
(make_net), the method, train, sample, report.
"""
import argparse
import contextlib
import gzip
import hashlib
import json
import math
import os
import struct
import sys
import tarfile
import time
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel

HERE = Path(__file__).resolve().parent


# =============================================================================
# THE LEARNING CORE
# =============================================================================

# -----------------------------------------------------------------------------
# networks: net(x, t, y) or, with two_times, net(x, r, t, y); y None means the null class;
# with guidance_input, net(..., w=w) also takes the guidance scale w (default 1)

def timestep_embedding(t, dim, max_period=10000.0):
    """Sinusoidal features of a float time (B,) -> (B, dim), as in the Transformer and DDPM."""
    half = dim // 2
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=dtype) / half)
    args = t.to(dtype)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class Conditioning(nn.Module):
    """Embeds time(s) and label into one vector c (B, dim). The label table has a null class at
    index num_classes, used for y=None and for the labels dropped during training. With
    guidance_input the guidance scale w >= 1 is one more input (improved MeanFlow, arXiv 2512.02012),
    embedded like a time through 1 - 1/w, which maps [1, inf) onto [0, 1) with w = 1 at 0."""

    def __init__(self, dim, num_classes=0, two_times=False, time_scale=1.0, guidance_input=False):
        super().__init__()
        self.time_scale, self.two_times, self.num_classes = time_scale, two_times, num_classes
        self.guidance_input = guidance_input
        n_inputs = (2 if two_times else 1) + guidance_input
        self.mlp = nn.Sequential(nn.Linear(n_inputs * dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.label = nn.Embedding(num_classes + 1, dim) if num_classes > 0 else None

    def forward(self, times, y, w=None):
        if self.guidance_input:  # w: (B,) or a number; None is 1, no guidance
            w = torch.as_tensor(1.0 if w is None else w, dtype=times[0].dtype, device=times[0].device)
            times = [*times, (1 - 1 / w).expand_as(times[0])]
        f = [timestep_embedding(s * self.time_scale, self.mlp[0].in_features // len(times)) for s in times]
        c = self.mlp(torch.cat(f, 1).to(self.mlp[0].weight.dtype))
        if self.label is not None:
            if y is None:
                y = torch.full((c.shape[0],), self.num_classes, dtype=torch.long, device=c.device)
            c = c + self.label(y)
        return c


class TimeNet(nn.Module):
    """Base of the networks: splits net(x, t, y) / net(x, r, t, y) and embeds the condition."""

    def __init__(self, dim, num_classes, two_times, time_scale, guidance_input=False):
        super().__init__()
        self.cond = Conditioning(dim, num_classes, two_times, time_scale, guidance_input)

    def forward(self, x, *rest, w=None, **extra):
        times, y = rest[:-1], rest[-1]
        if len(times) != (2 if self.cond.two_times else 1):
            raise TypeError(f"{type(self).__name__} takes (x, {'r, t' if self.cond.two_times else 't'}, y)")
        if w is not None and not self.cond.guidance_input:
            raise TypeError(f"{type(self).__name__} was built without guidance_input: it takes no w")
        times = [s.expand(x.shape[0]) if s.dim() == 1 and s.shape[0] == 1 else s for s in times]
        return self.body(x, self.cond(times, y, w), **extra)


class MLP(TimeNet):
    """Residual MLP for points (B, D); the condition is added in every block."""

    def __init__(self, dim_in=2, width=256, depth=4, num_classes=0, two_times=False, time_scale=1.0,
                 guidance_input=False):
        super().__init__(width, num_classes, two_times, time_scale, guidance_input)
        self.inp = nn.Linear(dim_in, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, width))
                                    for _ in range(depth))
        self.cond_proj = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, dim_in))

    def body(self, x, c):  # x (B, D), c (B, width)
        h = self.inp(x)
        c = F.silu(c)
        for block, proj in zip(self.blocks, self.cond_proj):
            h = h + block(h + proj(c))
        return self.out(h)


def attention(q, k, v):
    """softmax(q k^T / sqrt(d)) v over (B, heads, N, d). The fused kernel has no forward-mode AD
    (torch.func.jvp, used by MeanFlow), so there the same equation runs as plain matmuls."""
    try:
        return F.scaled_dot_product_attention(q, k, v)
    except NotImplementedError:
        w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
        return w @ v


class ResBlock(nn.Module):
    def __init__(self, c_in, c_out, c_emb, groups=8):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(c_emb, 2 * c_out)
        self.norm2, self.conv2 = nn.GroupNorm(groups, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, c):  # x (B, C, H, W), c (B, c_emb) already SiLU'd
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(c)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class SelfAttention2d(nn.Module):
    def __init__(self, ch, heads=4, groups=8):
        super().__init__()
        self.heads, self.norm = heads, nn.GroupNorm(groups, ch)
        self.qkv, self.proj = nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).view(B, 3, self.heads, C // self.heads, H * W).transpose(-2, -1).unbind(1)
        h = attention(q, k, v).transpose(-2, -1).reshape(B, C, H, W)  # (B, heads, HW, d) -> (B, C, H, W)
        return x + self.proj(h)


class UNet(TimeNet):
    """A small UNet: two ResBlocks per level, attention at the lowest resolution.
    8x8 inputs get levels (1, 2) x width (8 -> 4); 28x28 and 32x32 get (1, 2, 2) (28 -> 14 -> 7)."""

    def __init__(self, shape=(1, 8, 8), width=32, num_classes=0, two_times=False, time_scale=1.0,
                 guidance_input=False):
        super().__init__(4 * width, num_classes, two_times, time_scale, guidance_input)
        C, H, _ = shape
        mults = (1, 2) if H <= 16 else (1, 2, 2)
        chans = [width * m for m in mults]
        emb = 4 * width
        self.inp = nn.Conv2d(C, width, 3, padding=1)
        self.down, self.up = nn.ModuleList(), nn.ModuleList()
        skips, ch = [width], width
        for i, c in enumerate(chans):
            for _ in range(2):
                self.down.append(ResBlock(ch, c, emb))
                ch = c
                skips.append(ch)
            if i < len(chans) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid1, self.mid_attn, self.mid2 = ResBlock(ch, ch, emb), SelfAttention2d(ch), ResBlock(ch, ch, emb)
        for i, c in reversed(list(enumerate(chans))):
            for _ in range(3):
                self.up.append(ResBlock(ch + skips.pop(), c, emb))
                ch = c
            if i > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(ch, ch, 3, padding=1)))
        self.out = nn.Sequential(nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, C, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def encode(self, x, c):
        """The input convolution, the down path and the middle block: (skips, h). c is SiLU'd."""
        h = self.inp(x)
        hs = [h]
        for m in self.down:
            h = m(h, c) if isinstance(m, ResBlock) else m(h)
            hs.append(h)
        return hs, self.mid2(self.mid_attn(self.mid1(h, c)), c)

    def decode(self, hs, h, c):
        """The up path, fed the skips in reverse, and the output convolution."""
        hs = list(hs)
        for m in self.up:
            h = m(torch.cat([h, hs.pop()], 1), c) if isinstance(m, ResBlock) else m(h)
        return self.out(h)

    def body(self, x, c, residuals=None):  # x (B, C, H, W), c (B, 4 width)
        """residuals: optional tensors added to each skip and, last, to the middle block's output
        (ControlNet's injection); None runs the plain UNet."""
        c = F.silu(c)
        hs, h = self.encode(x, c)
        if residuals is not None:
            hs, h = [a + b for a, b in zip(hs, residuals[:-1])], h + residuals[-1]
        return self.decode(hs, h, c)


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero: the condition sets LayerNorm's shift and scale and a
    gate on each residual branch; the gates start at zero, so each block starts as the identity."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))
        self.ada = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x, c):  # x (B, N, dim), c (B, dim) already SiLU'd
        B, N, D = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c)[:, None].chunk(6, dim=2)
        h = self.norm1(x) * (1 + scale1) + shift1
        q, k, v = self.qkv(h).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        x = x + gate1 * self.proj(attention(q, k, v).transpose(1, 2).reshape(B, N, D))
        h = self.norm2(x) * (1 + scale2) + shift2
        return x + gate2 * self.mlp(h)


class DiT(TimeNet):
    """Diffusion Transformer (Peebles & Xie): patches + fixed 2-D sin-cos positions, adaLN-Zero
    blocks, a zero-initialised linear decoder back to patches."""

    def __init__(self, shape=(1, 8, 8), width=128, depth=6, heads=4, patch=2, num_classes=0,
                 two_times=False, time_scale=1.0, guidance_input=False):
        super().__init__(width, num_classes, two_times, time_scale, guidance_input)
        C, H, W = shape
        if H % patch or W % patch:
            raise UserError(f"DiT patch size {patch} must divide the image size {H}x{W}")
        self.shape, self.patch = shape, patch
        self.embed = nn.Conv2d(C, width, patch, stride=patch)
        gh, gw = H // patch, W // patch
        pos = torch.cat([timestep_embedding(torch.arange(gh).repeat_interleave(gw), width // 2, 100.0),
                         timestep_embedding(torch.arange(gw).repeat(gh), width // 2, 100.0)], 1)
        self.register_buffer("pos", pos[None], persistent=False)  # (1, N, width)
        self.blocks = nn.ModuleList(DiTBlock(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, patch * patch * C)
        for m in (self.ada, self.out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def body(self, x, c):  # x (B, C, H, W), c (B, width)
        B, (C, H, W), p = x.shape[0], self.shape, self.patch
        h = self.embed(x).flatten(2).transpose(1, 2) + self.pos  # (B, N, width)
        c = F.silu(c)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.ada(c)[:, None].chunk(2, dim=2)
        h = self.out(self.norm(h) * (1 + scale) + shift)  # (B, N, p*p*C)
        h = h.view(B, H // p, W // p, p, p, C).permute(0, 5, 1, 3, 2, 4)
        return h.reshape(B, C, H, W)


def make_net(arch, shape, width, num_classes=0, two_times=False, time_scale=1.0, guidance_input=False):
    """The network for data of `shape`. time_scale multiplies the time before its sinusoidal
    features: 1 for DDPM's integer t in 1..T, 1000 for a flow's t in [0, 1]. guidance_input: the
    network also takes the guidance scale, net(..., w=w)."""
    kw = dict(num_classes=num_classes, two_times=two_times, time_scale=time_scale, guidance_input=guidance_input)
    if arch == "mlp":
        return MLP(shape[0], width, **kw)
    if arch == "unet":
        return UNet(shape, width, **kw)
    if arch == "dit":
        return DiT(shape, width=4 * width, patch=2 if shape[1] <= 16 else 4, **kw)
    raise UserError(f"unknown architecture {arch!r}: choose mlp, unet or dit")



# -----------------------------------------------------------------------------
# EMA of the weights

class EMA(AveragedModel):
    """The exponential moving average of the weights (and float buffers), stored as
    torch.optim.swa_utils.AveragedModel stores it (module.*, n_averaged), with an update that never
    waits for the GPU: n, the number of updates so far, stays on the CPU. The first update copies
    the weights; update n >= 1 is theta_ema <- d theta_ema + (1 - d) theta with the decay warmed up
    as d = min(decay, (1 + n) / (10 + n)), so that short runs are not dominated by the initial weights."""

    def __init__(self, net, decay):
        super().__init__(net, use_buffers=True)
        self.decay = decay

    @torch.no_grad()
    def update_parameters(self, net):
        n = int(self.n_averaged)  # a CPU buffer (AveragedModel copies it to the GPU: one sync a step)
        mine, theirs = [*self.module.parameters(), *self.module.buffers()], [*net.parameters(), *net.buffers()]
        if n == 0:
            torch._foreach_copy_(mine, theirs)
        else:
            torch._foreach_lerp_(mine, theirs, 1 - min(self.decay, (1 + n) / (10 + n)))
        self.n_averaged += 1


def make_ema(net, decay):
    """The EMA of net's weights: the network that samples."""
    return EMA(net, decay)


# -----------------------------------------------------------------------------
# training: one loop for every model file

class LossModule(nn.Module):
    """The loss as a module: DDP wraps this, not the network, so gradients are synchronised for
    whatever the loss does with the network (MeanFlow's torch.func.jvp included: inside, the
    network is the plain module)."""

    def __init__(self, net, loss_fn):
        super().__init__()
        self.net, self.loss_fn = net, loss_fn

    def forward(self, x, y, **pairs):
        return self.loss_fn(self.net, x, y, **pairs)


def train(net, loss_fn, data, args, ckpt=None):
    """Minimise loss_fn(net, x, y) over minibatches of data.x_train (and data.x0_train, passed as
    x0=, when the data are fixed pairs; data.c_train, passed as c=, when each example has conditions
    beyond its label) and return the EMA network, the one that samples.

    Each step: a batch drawn with replacement, labels dropped to the null class (index
    data.num_classes) with probability args.p_uncond for classifier-free guidance (y is None
    when args.uncond), AdamW with linear warmup and gradient clipping, an EMA update. Every
    args.ckpt_every steps the checkpoint (weights, EMA, optimizer, RNG states) is written
    atomically to args.out/ckpt.pt; ckpt, a loaded checkpoint, continues from it exactly. Under
    torchrun every rank draws the same global batch and trains on its slice."""
    device, out = next(net.parameters()).device, Path(args.out)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    n_train = len(data.x_train)
    if args.batch_size > n_train:
        raise UserError(f"--batch-size {args.batch_size} exceeds the {n_train} training examples "
                        f"of {data.name}: use at most {n_train}")
    if args.batch_size % world:
        raise UserError(f"--batch-size {args.batch_size} does not split over {world} processes: use a multiple of {world}")
    ema = make_ema(net, args.ema_decay)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    model = LossModule(torch.compile(net) if args.compile else net, loss_fn)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    # the batches come from their own generator, the same on every rank; the loss's own noise
    # from the global RNG, seeded per rank
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed + rank)
    step = 0
    if ckpt is not None:
        load_weights(ckpt, net, ema)
        opt.load_state_dict(ckpt["opt"])
        step = ckpt["step"]
        gen.set_state(ckpt["rng"]["data"])
        states = ckpt["rng"]["torch"]
        if len(states) == world:
            torch.set_rng_state(states[rank])
            if device.type == "cuda" and ckpt["rng"].get("cuda"):
                torch.cuda.set_rng_state(ckpt["rng"]["cuda"][rank], device)
        else:
            log(f"checkpoint was written by {len(states)} processes, this run has {world}: noise is reseeded")
        if step >= args.iters:
            log(f"checkpoint is at step {step} >= --iters {args.iters}: nothing to train")
    x_all = data.x_train.to(device)
    y_all = None if args.uncond else data.y_train.to(device)
    x0_all = None if data.x0_train is None else data.x0_train.to(device)
    c_all = None if data.c_train is None else data.c_train.to(device)
    null_class = data.num_classes
    local = slice(rank * args.batch_size // world, (rank + 1) * args.batch_size // world)
    n_params = sum(p.numel() for p in net.parameters())
    log(f"{args.model}: {type(net).__name__} with {n_params / 1e6:.2f}M parameters on {data.name} {list(data.shape)}, "
        f"{'unconditional' if y_all is None else f'{null_class} classes'}, device {device} x {world}, "
        f"iters {step}->{args.iters}, batch {args.batch_size}")

    def gather(x):  # a list of every rank's x (x itself when there is one process)
        if world == 1:
            return [x]
        xs = [None] * world
        dist.all_gather_object(xs, x)
        return xs

    def save():
        torch_states = gather(torch.get_rng_state())
        cuda_states = gather(torch.cuda.get_rng_state(device)) if device.type == "cuda" else None
        if rank == 0:
            rng = {"torch": torch_states, "cuda": cuda_states, "data": gen.get_state()}
            atomic_save({"model": args.model, "args": vars(args), "net": net.state_dict(), "ema": ema.state_dict(),
                         "opt": opt.state_dict(), "step": step, "rng": rng}, out / "ckpt.pt")

    t_start, t_last, step_last = time.time(), time.time(), step
    losses = []
    while step < args.iters:
        idx = torch.randint(0, n_train, (args.batch_size,), generator=gen)  # the global batch
        drop = torch.rand(args.batch_size, generator=gen) < args.p_uncond  # labels to drop (guidance)
        idx, drop = idx[local].to(device, non_blocking=True), drop[local].to(device, non_blocking=True)  # this rank's slice
        x, y = x_all[idx], None if y_all is None else y_all[idx]
        if y is not None:  # classifier-free guidance: the null class with probability p_uncond
            y = torch.where(drop, torch.full_like(y, null_class), y)
        pairs = {} if x0_all is None else {"x0": x0_all[idx]}
        if c_all is not None:
            pairs["c"] = c_all[idx]
        lr = args.lr * min(1.0, (step + 1) / max(1, args.warmup))
        for group in opt.param_groups:
            group["lr"] = lr
        with autocast(device, args.amp):
            loss = model(x, y, **pairs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            nn.utils.clip_grad_norm_(net.parameters(), args.grad_clip)
        opt.step()
        ema.update_parameters(net)
        step += 1
        losses.append(loss.detach().float())
        save_now = step % args.ckpt_every == 0 or step == args.iters
        if step % args.log_every == 0 or save_now:  # checked before any save: a checkpoint is never non-finite
            mean_loss = torch.stack(losses).mean()
            if world > 1:
                dist.all_reduce(mean_loss)
                mean_loss /= world
            mean_loss = mean_loss.item()
            losses.clear()
            if not math.isfinite(mean_loss):
                last = out / "ckpt.pt"
                last = f"last good checkpoint: {last}" if last.exists() else "no checkpoint was written yet"
                raise UserError(f"loss is {mean_loss} between steps {step_last} and {step}: training diverged; "
                                f"lower --lr (now {args.lr}) or use --amp none ({last})")
        if step % args.log_every == 0 or step == args.iters:
            now = time.time()
            rate = (step - step_last) / (now - t_last)
            eta = (args.iters - step) / max(rate, 1e-9)
            log(f"step {step:6d}/{args.iters} | loss {mean_loss:.4f} | lr {lr:.2e} | {rate:.1f} it/s | "
                f"eta {int(eta // 60)}m{int(eta % 60):02d}s")
            if rank == 0:
                with open(out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps({"step": step, "loss": mean_loss, "lr": lr, "it_s": rate}) + "\n")
            t_last, step_last = now, step
        if save_now:
            save()
    log(f"trained {args.model} in {time.time() - t_start:.1f}s; checkpoint {out / 'ckpt.pt'}")
    return ema.module.eval()


# -----------------------------------------------------------------------------
# generation and evaluation

def bcast(t, x):
    """A per-example value t (B,) as (B, 1, ..., 1) in x's dtype and device, to broadcast against x
    (a non-blocking copy from the CPU: the host does not wait for the GPU)."""
    return t.to(device=x.device, dtype=x.dtype, non_blocking=True).view(-1, *[1] * (x.dim() - 1))


def start_noise(shape, generator=None, noise=None):
    """The sampler's starting point: `noise` when given, else N(0, I) drawn with `generator` on its device."""
    if noise is not None:
        return noise
    return torch.randn(shape, generator=generator, device=generator.device if generator is not None else "cpu")


def record(trajectory, x):
    """A sampler's path: append its state x to the list `trajectory` when one is given (every sampler
    takes trajectory=None: its start first, then the state after each step, the last the returned
    samples). The states are not copied: the samplers never change a tensor in place."""
    if trajectory is not None:
        trajectory.append(x)


def class_labels(n, num_classes, device):
    """Balanced labels 0, 1, ..., so a grid of n = 10 k images shows each class in a column;
    None for an unconditional model (num_classes = 0)."""
    return torch.arange(n, device=device) % num_classes if num_classes else None


def quantize(x, levels):
    """Images in [-1, 1] rounded to `levels` equally spaced values, as the data are."""
    return ((x.clamp(-1, 1) + 1) / 2 * (levels - 1)).round() / (levels - 1) * 2 - 1


def features(data, x, root=None):
    """The feature classifier's 64 penultimate features (N, 64) of images x, rounded first to the
    data's levels (so a model is neither rewarded nor punished for where inside a bin it puts a pixel)."""
    net, _ = feature_net(data, root)
    with torch.no_grad():
        return torch.cat([net.features(b) for b in quantize(x.detach().float().cpu(), data.levels).split(1000)])


def quality(data, samples, root=None, floor_draws=20):
    """Sample quality against the held-out set, with its floor. Images: Frechet distance in the
    feature classifier's space ("FD") and the kernel inception distance ("KID", see `kid`: unbiased,
    so comparable at any n) against all held-out images (n samples may exceed them), plus the
    memorisation check (see `memorised`); points: exact W2 against the first n held-out points. The
    floor is the same metric between as many random training examples as there are held-out ones in
    the comparison and the same held-out ones, as mean +- sd over floor_draws draws (FD depends on
    the sample count: an FD of n samples compares with the floor only at n = floor_n).

    KID (keys kid, kid_floor, kid_floor_sd) is KID_SCALE * kid(z(f_s), z(f_test)) with
    z(f) = (f - mu) / sd, mu and sd (64,) the features' per-feature mean and sd over the training
    split (`feature_stats`), and kid_scale = KID_SCALE = 1e3 says so: "KID x 1e3". Corrected: KID
    was the raw MMD^2 on the unstandardised features (no kid_scale key), whose kernel argument
    a.b / d the features' means and units dominated (one feature times 1000 changed KID), printed
    with no scale. FD is unchanged (raw features)."""
    n = len(samples)
    if not data.is_image and n > len(data.x_test):
        raise UserError(f"--n-eval {n} exceeds the {len(data.x_test)} held-out examples of {data.name}")
    samples = samples.detach().float().cpu()
    bad = int((~torch.isfinite(samples.flatten(1))).any(1).sum())
    if bad:
        raise UserError(f"{bad} of {n} samples are not finite (nan or inf): the model diverged or the "
                        "sampler's settings (e.g. --cfg-scale) are extreme; retrain or sample with other flags")
    test = data.x_test[:n]
    q = {"metric": "W2" if not data.is_image else "FD"}
    if not data.is_image:
        q["value"] = w2_exact(samples, test)
    else:
        f_s, f_test = features(data, samples, root), features(data, test, root)
        stats = feature_stats(data, root)
        z_s, z_test = standardised(f_s, stats), standardised(f_test, stats)
        q.update(value=frechet_distance(f_s, f_test), kid=KID_SCALE * kid(z_s, z_test),
                 kid_scale=KID_SCALE, classifier_acc=feature_net(data, root)[1])
        q.update(memorised(quantize(samples, data.levels), data))
    q.update(floor_of(data, len(test), root, floor_draws), n=n)
    return q


_FLOORS = {}  # (data set, its content's sums, n, draws) -> the floor's draws: computed once a process
_FEATURE_STATS = {}  # (data set, its training split's sum, root, the feature net) -> the features' mean, sd
KID_SCALE = 1e3  # KID is reported x 10^3 (as is common), on standardised features


def feature_stats(data, root=None):
    """The per-feature mean and sd (ddof 1) of the feature classifier's features over the training
    split, (d,) each in float64: what `standardised` divides by. Computed once a process per data
    set (like the floors; the classifier itself is cached on disk)."""
    key = (data.name, float(data.x_train.double().sum()), str(root), id(feature_net))  # the net in use
    if key not in _FEATURE_STATS:
        f = features(data, data.x_train, root).double()  # (N, d)
        sd = f.std(0)
        _FEATURE_STATS[key] = (f.mean(0), torch.where(sd > 0, sd, 1.0))  # a constant one: unscaled
    return _FEATURE_STATS[key]


def standardised(f, stats):
    """Features f (N, d) in the training split's units, float64: (f - mu) / sd per feature, with
    stats = (mu, sd) from `feature_stats`. KID's kernel sees these, so a per-feature affine change
    of the features' units (f -> a f + b, a > 0, applied to every set alike) cannot change KID."""
    mu, sd = stats
    return (f.detach().double().cpu() - mu) / sd


def floor_of(data, n, root=None, floor_draws=20):
    """The metrics between n random training examples and the first n held-out ones, as mean and
    sd over floor_draws draws (KID as `quality` defines it: standardised features, x KID_SCALE)."""
    test = data.x_test[:n]
    key = (data.name, float(data.x_train.double().sum()), float(test.double().sum()), n, floor_draws, str(root),
           id(feature_net))  # a test's stand-in for the feature net gets floors of its own
    if key not in _FLOORS:
        g = torch.Generator().manual_seed(1)
        draws = [torch.randperm(len(data.x_train), generator=g)[:n] for _ in range(floor_draws)]
        if not data.is_image:
            _FLOORS[key] = {"floor": [w2_exact(data.x_train[i], test) for i in draws]}
        else:
            f_train, f_test = features(data, data.x_train, root), features(data, test, root)
            stats = feature_stats(data, root)
            z_train, z_test = standardised(f_train, stats), standardised(f_test, stats)
            _FLOORS[key] = {"floor": [frechet_distance(f_train[i], f_test) for i in draws],
                            "kid_floor": [KID_SCALE * kid(z_train[i], z_test) for i in draws]}
    out = {"floor_draws": floor_draws, "floor_n": n}
    for name, v in _FLOORS[key].items():
        out.update({name: float(np.mean(v)), name + "_sd": float(np.std(v, ddof=1))})
    return out


def memorised(samples, data):
    """The share of samples closer (L2, pixels) to their nearest training image than any held-out image
    of the first half of the test set is to its own nearest training image; beside it, the same share
    for the second half of the test set (real digits the model never saw: about 1 / (n/2 + 1) by
    exchangeability). A model that copies its training set scores far above the held-out figure."""
    def nearest_train(x):  # (B,) distance of each row to its nearest training image
        return torch.cdist(x.flatten(1).double(), data.x_train.flatten(1).double()).min(1).values
    half = len(data.x_test) // 2
    tau = nearest_train(data.x_test[:half]).min()
    return {"memorised": float((nearest_train(samples) < tau).double().mean()),
            "memorised_heldout": float((nearest_train(data.x_test[half:]) < tau).double().mean())}


def format_kid(q):
    """KID as printed: its scale stated, its floor beside it, and a value below zero explained (the
    estimate is unbiased, so near a distance of 0 it falls either side), e.g.
    `KID x 1e3 -1.2 (< 0: unbiased, near 0; floor 3.4 +- 5.6)`. A figure without kid_scale is
    the raw-feature KID of older results and is printed as such."""
    scale = q.get("kid_scale")
    name = f"KID x {scale:.0e}".replace("e+0", "e") if scale else "KID (raw features)"
    note = "< 0: unbiased, near 0; " if q["kid"] < 0 else ""
    return f"{name} {q['kid']:.3g} ({note}floor {q['kid_floor']:.3g} +- {q['kid_floor_sd']:.2g})"


def format_quality(q):
    floor_n = f" at n={q['floor_n']}" if q.get("floor_n", q["n"]) != q["n"] else ""
    text = (f"{q['metric']} {q['value']:.4g} (floor {q['floor']:.4g} +- {q['floor_sd']:.2g}, real vs real{floor_n}, "
            f"n={q['n']})")
    if "kid" in q:
        text += "; " + format_kid(q)
    if "memorised" in q:
        text += f"; memorised {100 * q['memorised']:.1f}% (held-out digits {100 * q['memorised_heldout']:.1f}%)"
    return text


def report(samples, data, args, **extra):
    """Write the sample picture, measure quality against held-out data, append it (with extra,
    e.g. sample_seconds) to OUT/metrics.jsonl, print one line, and return the figures (with the
    samples themselves under "samples", on the CPU, for comparisons paired on the same noise)."""
    out = Path(args.out)
    keep = args.sample_only and (out / "ckpt.pt").exists()  # a training run's folder keeps its grid
    grid = out / (f"samples-{args.model}.png" if keep else "samples.png")
    q = quality(data, samples, args.data_root)
    save_samples(samples, grid, data)
    q.update(cfg_scale=args.cfg_scale, **extra)
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"eval": q}) + "\n")
    acc = f", feature classifier test accuracy {q['classifier_acc']:.3f}" if "classifier_acc" in q else ""
    log(f"{args.model} on {data.name}: {format_quality(q)}{acc}; grid {grid}")
    return dict(q, samples=samples.detach().cpu())


# =============================================================================
# THE PLUMBING
# =============================================================================

# -----------------------------------------------------------------------------
# errors, device and processes

class UserError(Exception):
    """A problem with what the user asked for; printed as one line, exit status 2."""


def fail(prog, message):
    """The one way a command line ends on bad input: one line on stderr, exit status 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


def is_main():
    return not dist.is_initialized() or dist.get_rank() == 0


def log(*a):
    if is_main():
        print(*a, flush=True)


def get_device(name):
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible; use --device cpu (or auto)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps: MPS is not available here; use --device cpu (or auto)")
    if name == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


def setup_precision(device):
    if device.type == "cuda":  # TF32 matmuls: ~free accuracy-wise for these models, much faster
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(device, amp):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16")



@contextlib.contextmanager
def session(args):
    """The run's surroundings, around the body of main(): joins torchrun's processes when there
    are several (NCCL on GPUs, gloo on CPUs), picks the device, seeds torch, checks that args.out
    is writable, and turns a UserError raised inside into one line on stderr and exit status 2.
    Yields the device."""
    started = False
    try:
        if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():  # under torchrun
            if args.device in ("cuda", "auto") and torch.cuda.is_available():
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
                dist.init_process_group("nccl")
            else:
                dist.init_process_group("gloo")
            started = True
        device = get_device(args.device)
        setup_precision(device)
        torch.manual_seed(args.seed)
        out = Path(args.out)
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / f".write-test-{os.getpid()}"  # one per process: ranks check side by side
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise UserError(f"cannot write to output folder {out} ({e.strerror}): pass --out to a writable folder")
        yield device
        if started:  # every rank done before the group goes: a rank that tears down early can abort its peer
            dist.barrier()
    except UserError as e:
        fail(f"{args.model}.py" + (f" (rank {dist.get_rank()})" if dist.is_initialized() else ""), e)
    finally:
        if started:
            dist.destroy_process_group()


def construct(parser, cls, *a, **kw):
    """cls(*a, **kw), a method built from the flags; its ValueError (a bad hyperparameter) becomes
    the command line's one-line error."""
    try:
        return cls(*a, **kw)
    except ValueError as e:
        parser.error(str(e))


# -----------------------------------------------------------------------------
# data: x (N, *shape) float in [-1, 1] for images, raw coordinates for points; y (N,) long

@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    levels: int = 0  # number of pixel levels for images (17 for digits, 256 else); 0 for points
    x0_train: torch.Tensor = None  # fixed pairs (reflow, distillation): each x_train row's starting point
    c_train: torch.Tensor = None  # per-example conditions beyond a label (physctrl's physics, motion_prompting's
    # corners): loss(..., c=)
    c_test: torch.Tensor = None

    @property
    def shape(self):
        return tuple(self.x_train.shape[1:])

    @property
    def is_image(self):
        return len(self.shape) == 3


TOY_SETS = ("checkerboard", "moons", "8gaussians")


def toy_2d(name, n, generator=None):
    """n points (n, 2) of a 2-D toy set with labels (n,), scaled to roughly unit variance."""
    g = generator
    if name == "checkerboard":  # 8 unit squares of a 4x4 board; label = square
        sq = torch.randint(0, 8, (n,), generator=g)
        row = sq // 2
        col = 2 * (sq % 2) + row % 2
        u = torch.rand(n, 2, generator=g)
        x = torch.stack([col + u[:, 0], row + u[:, 1]], 1) - 2.0
        return x, sq
    if name == "moons":  # two interleaved half circles; label = moon
        lab = torch.randint(0, 2, (n,), generator=g)
        a = math.pi * torch.rand(n, generator=g)
        x = torch.stack([torch.cos(a), torch.sin(a)], 1)
        x = torch.where(lab[:, None] == 0, x, torch.stack([1 - x[:, 0], 0.5 - x[:, 1]], 1))
        x = x + 0.05 * torch.randn(n, 2, generator=g)
        return 2.0 * (x - torch.tensor([0.5, 0.25])), lab
    if name == "8gaussians":  # 8 Gaussians on a circle of radius 2; label = component
        lab = torch.randint(0, 8, (n,), generator=g)
        a = lab.double() * (2 * math.pi / 8)
        centers = 2.0 * torch.stack([torch.cos(a), torch.sin(a)], 1).float()
        return centers + 0.1 * torch.randn(n, 2, generator=g), lab
    raise UserError(f"unknown 2-D data set {name!r}: choose from {', '.join(TOY_SETS)}")


def load_digits():
    """The bundled UCI optdigits test set: 1797 8x8 images with 17 grey levels (0..16)."""
    path = HERE / "data" / "digits.csv.gz"
    if not path.exists():
        raise UserError(f"bundled data {path} is missing: restore it with git checkout data/")
    with gzip.open(path, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
    x = torch.from_numpy(rows[:, :64]).float().view(-1, 1, 8, 8) / 16 * 2 - 1
    y = torch.from_numpy(rows[:, 64])
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))  # fixed split
    te, tr = perm[:500], perm[500:]
    return Dataset("digits", x[tr], y[tr], x[te], y[te], 10, levels=17)


def cache_dir(root=None):
    return Path(root or os.environ.get("GENMODELS_CACHE") or Path.home() / ".cache" / "genmodels")


MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_FILES = {  # file -> SHA-256
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR_SHA256 = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"


def fetch(url, path, sha256, download):
    """Download url to path once, verifying its SHA-256; never without --download."""
    if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == sha256:
        return path
    if not download:
        raise UserError(f"{path.name} is not in {path.parent}: add --download to fetch it from {url}")
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"downloading {url} -> {path}")
    tmp = path.with_suffix(path.suffix + ".part")
    try:
        urllib.request.urlretrieve(url, tmp)
    except OSError as e:
        raise UserError(f"download of {url} failed ({e}); check the network or copy the file to {path}")
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    if digest != sha256:
        tmp.unlink()
        raise UserError(f"{url} has SHA-256 {digest}, expected {sha256}: the download is truncated "
                        f"or altered; run again, or copy a good file to {path}")
    os.replace(tmp, path)
    return path


def load_mnist(root, download):
    def idx(name):  # the IDX format: magic, dims, then uint8 data
        raw = gzip.decompress(fetch(MNIST_URL + name, cache_dir(root) / "mnist" / name,
                                    MNIST_FILES[name], download).read_bytes())
        ndim = raw[3]
        dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
        return torch.frombuffer(bytearray(raw[4 + 4 * ndim:]), dtype=torch.uint8).view(*dims)
    xs = [idx(f"{s}-images-idx3-ubyte.gz").float().unsqueeze(1) / 255 * 2 - 1 for s in ("train", "t10k")]
    ys = [idx(f"{s}-labels-idx1-ubyte.gz").long() for s in ("train", "t10k")]
    return Dataset("mnist", xs[0], ys[0], xs[1], ys[1], 10, levels=256)


def load_cifar10(root, download):
    path = fetch(CIFAR_URL, cache_dir(root) / "cifar10" / "cifar-10-binary.tar.gz", CIFAR_SHA256, download)
    parts = {}
    with tarfile.open(path) as tar:  # raw bytes: label, then 3x32x32 pixels; nothing is unpickled
        for m in tar.getmembers():
            if m.name.endswith(".bin"):
                rec = np.frombuffer(tar.extractfile(m).read(), dtype=np.uint8).reshape(-1, 3073)
                parts[Path(m.name).name] = rec
    train = np.concatenate([parts[f"data_batch_{i}.bin"] for i in range(1, 6)])
    test = parts["test_batch.bin"]
    def split(rec):
        x = torch.from_numpy(rec[:, 1:].copy()).view(-1, 3, 32, 32).float() / 255 * 2 - 1
        return x, torch.from_numpy(rec[:, 0].astype(np.int64))
    return Dataset("cifar10", *split(train), *split(test), 10, levels=256)


def load_digits32():
    """The bundled digits resized to 32x32 (bilinear) and stored as 8-bit images (256 levels): the
    same information at 16x the pixels, the redundancy an autoencoder removes (latent_diffusion.py)."""
    d = load_digits()
    def up(x):  # (N, 1, 8, 8) -> (N, 1, 32, 32) on the 256-level grid
        x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
        return ((x + 1) / 2 * 255).round() / 255 * 2 - 1
    return Dataset("digits32", up(d.x_train), d.y_train, up(d.x_test), d.y_test, 10, levels=256)


def load_data(name, root=None, download=False):
    if name == "digits":
        return load_digits()
    if name == "digits32":
        return load_digits32()
    if name in TOY_SETS:  # fixed train and test sets, drawn from the same generator
        x, y = toy_2d(name, 60000, torch.Generator().manual_seed(0))
        return Dataset(name, x[:50000], y[:50000], x[50000:], y[50000:], 8 if name != "moons" else 2)
    if name == "mnist":
        return load_mnist(root, download)
    if name == "cifar10":
        return load_cifar10(root, download)
    raise UserError(f"unknown data set {name!r}: choose from {', '.join(DATASETS)}")


DATASETS = ("digits", "digits32") + TOY_SETS + ("mnist", "cifar10")



# -----------------------------------------------------------------------------
# pictures: PNG written with zlib, no new dependency

def write_png(path, img):
    """img: uint8 array (H, W) grey or (H, W, 3) RGB."""
    img = np.ascontiguousarray(img, dtype=np.uint8)
    h, w = img.shape[:2]
    color = 2 if img.ndim == 3 else 0
    raw = b"".join(b"\x00" + img[i].tobytes() for i in range(h))  # filter 0 per row
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    atomic_write(path, lambda f: f.write(png))


def save_grid(x, path, nrow=10, min_size=32):
    """Images (B, C, H, W) in [-1, 1] -> one PNG grid, upscaled to at least min_size pixels."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    B, C, H, W = x.shape
    s = max(1, math.ceil(min_size / H))
    x = x.repeat_interleave(s, 2).repeat_interleave(s, 3)
    rows = math.ceil(B / nrow)
    grid = torch.full((C, rows * (H * s + 2) + 2, nrow * (W * s + 2) + 2), 255, dtype=torch.uint8)
    for i in range(B):
        r, c = divmod(i, nrow)
        grid[:, 2 + r * (H * s + 2):2 + r * (H * s + 2) + H * s, 2 + c * (W * s + 2):2 + c * (W * s + 2) + W * s] = x[i]
    write_png(path, grid[0].numpy() if C == 1 else grid.permute(1, 2, 0).numpy())


def save_strip(states, path, cols=8):
    """A sampler's path on images, states (S + 1, N, C, H, W) from its noise (0) to its samples (S),
    as N rows (one per seed) of x_t at `cols` steps spread evenly over 0..S, noise first, samples
    last. Strips of the same N, cols and image size have the same width: they stack as rows."""
    idx = torch.linspace(0, len(states) - 1, min(cols, len(states))).round().long()
    save_grid(states[idx].transpose(0, 1).flatten(0, 1), path, nrow=len(idx))  # (N cols, C, H, W), a row per seed


# labels: a 3x5 pixel font, each glyph five rows of three pixels, each row an octal digit (4 = left pixel)
FONT = {"A": "25755", "B": "65656", "C": "34443", "D": "65556", "E": "74647", "F": "74644", "G": "34553",
        "H": "55755", "I": "72227", "J": "11152", "K": "55655", "L": "44447", "M": "57755", "N": "65555",
        "O": "25552", "P": "65644", "Q": "25563", "R": "65655", "S": "34216", "T": "72222", "U": "55557",
        "V": "55552", "W": "55775", "X": "55255", "Y": "55222", "Z": "71247", "0": "75557", "1": "26227",
        "2": "61247", "3": "61216", "4": "55711", "5": "74616", "6": "34652", "7": "71222", "8": "25252",
        "9": "25316", " ": "00000", "-": "00700", ".": "00002", ",": "00024", "=": "07070", "+": "02720",
        ":": "02020", "/": "11244", "(": "12221", ")": "42224", ">": "42124", "<": "12421"}


def text_mask(text, scale=2):
    """`text` (upper-cased; characters not in FONT blank) as a boolean mask (5 scale, (4 len - 1) scale)."""
    rows = [[[int(d) >> (2 - k) & 1 for k in range(3)] + [0] for d in FONT.get(c, "00000")] for c in text.upper()]
    mask = np.array(rows, dtype=bool).reshape(-1, 5, 4).transpose(1, 0, 2).reshape(5, -1)[:, :-1]  # (5, 4 len - 1)
    return mask.repeat(scale, 0).repeat(scale, 1)


def titled(img, text, scale=2, pad=4, below=False):
    """An RGB image (H, W, 3) under (below: above) a dark band with `text` in white at its left."""
    mask = text_mask(text, scale)[:, :img.shape[1] - 2 * pad]  # cut what does not fit
    band = np.full((mask.shape[0] + 2 * pad, img.shape[1], 3), 24, np.uint8)
    band[pad:pad + mask.shape[0], pad:pad + mask.shape[1]][mask] = 255
    return np.concatenate([img, band] if below else [band, img], 0)


# a dark-to-bright colour scale (close to matplotlib's "inferno"): 0 -> black, 1 -> pale yellow
HEAT = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
                 [250, 193, 39], [252, 255, 164]], dtype=np.float64)


def heat(v):
    """Values in [0, 1] (H, W) -> RGB (H, W, 3) uint8 on the HEAT scale."""
    pos = np.clip(v, 0, 1) * (len(HEAT) - 1)
    return np.stack([np.interp(pos, np.arange(len(HEAT)), HEAT[:, c]) for c in range(3)], -1).round().astype(np.uint8)


def density(p, lim=4.0, size=256, blur=2.0):
    """2-D points (B, 2) -> (size, size) in [0, 1] over [-lim, lim]^2 (y up): counts per pixel, smoothed
    by a Gaussian of `blur` pixels (a few hundred points still read as a density), then
    sqrt(count / its 99.5th percentile over the occupied pixels), so sparse regions show and a few
    dense pixels do not dim the rest."""
    from scipy.ndimage import gaussian_filter
    p = p.detach().double().cpu().numpy()
    h, _, _ = np.histogram2d(p[:, 1], p[:, 0], bins=size, range=[[-lim, lim], [-lim, lim]])
    h = gaussian_filter(h[::-1], blur)
    top = np.quantile(h[h > 1e-3 * h.max()], 0.995) if h.max() > 0 else 1.0
    return np.sqrt(np.clip(h / top, 0, 1))


def save_points(x, path, ref=None, lim=4.0, size=256, labels=("held-out", "generated")):
    """2-D points (B, 2) as a density picture (square-root scale: dark = empty, bright = dense), titled
    with labels[1] and the number of points; with ref, the real points' picture on the left (labels[0])."""
    panels = [(x, labels[1])] if ref is None else [(ref, labels[0]), (x, labels[1])]
    pictures = [titled(heat(density(p, lim, size)), f"{name} ({len(p)})") for p, name in panels]
    gap = np.full((pictures[0].shape[0], 4, 3), 128, np.uint8)  # a grey bar between the panels
    write_png(path, np.concatenate([pictures[0]] + [a for p in pictures[1:] for a in (gap, p)], 1))


def hues(h, saturation=0.8):
    """Hues h (N,) in [0, 1) -> bright RGB (N, 3) float in [0, 255] (HSV with value 1)."""
    k = (np.array([5.0, 3.0, 1.0]) + 6 * h[:, None]) % 6
    return 255 * (1 - saturation * np.clip(np.minimum(k, 4 - k), 0, 1))


def save_trajectory(states, path, ref=None, lim=4.0, size=512, title="", alpha=None, max_steps=100):
    """Sampling paths on 2-D data, states (S + 1, N, 2) from the noise (0) to the samples (S), as thin
    lines over the grey density of ref (held-out points). Each path has the colour of its starting
    point's angle, so where neighbouring noise goes, and where paths cross, reads at a glance; starts
    are grey dots, ends dots in the path's colour. A pixel crossed k times by
    lines is blended with their mean colour at opacity 1 - (1 - alpha)^k (the drawing order is moot);
    alpha=None: 0.3, lowered down to 0.05 as the lines' total length nears a few times the picture's
    area (long wandering paths, such as DDPM's, would otherwise fill it).
    A path of more than max_steps steps (DDPM's 1000) is drawn through max_steps + 1 evenly spaced
    states, its start and end included: the drawing, not the recorded path, is thinned."""
    keep = torch.linspace(0, len(states) - 1, min(len(states), max_steps + 1)).round().long()
    xy = states[keep].detach().double().cpu().numpy()
    N = xy.shape[1]
    px = np.stack([(xy[..., 0] + lim), (lim - xy[..., 1])], -1) * (size / (2 * lim))  # (S + 1, N, 2): column, row
    px = np.clip(px, -size, 2 * size)  # a point far outside is drawn towards its direction, not to infinity
    img = np.full((size, size, 3), 12.0)
    if ref is not None:  # held-out points: grey, brighter = denser
        img = img + 90 * density(ref, lim, size)[..., None]
    color = hues((np.arctan2(xy[0, :, 1], xy[0, :, 0]) / (2 * np.pi)) % 1)  # (N, 3), by the start's angle
    # the lines: every segment sampled at <= 1 pixel spacing, then each pixel blended with its hits
    a, b = px[:-1].reshape(-1, 2), px[1:].reshape(-1, 2)  # (S N, 2) segment ends, path = index % N
    n = np.ceil(np.abs(b - a).max(1)).astype(np.int64) + 1  # samples per segment
    seg = np.repeat(np.arange(len(a)), n)
    frac = (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)) / np.repeat(np.maximum(n - 1, 1), n)
    p = np.round(a[seg] + frac[:, None] * (b[seg] - a[seg])).astype(np.int64)
    inside = (p >= 0).all(1) & (p < size).all(1)
    pix, seg = p[inside, 1] * size + p[inside, 0], seg[inside]
    if alpha is None:  # ink ~ (total length in pixels) / (pixels in the picture)
        alpha = float(np.clip(0.04 * size * size / max(len(p), 1), 0.05, 0.3))
    hits = np.bincount(pix, minlength=size * size).reshape(size, size)
    mean = np.stack([np.bincount(pix, color[seg % N, c], size * size) for c in range(3)], -1).reshape(size, size, 3)
    mean = mean / np.maximum(hits, 1)[..., None]
    opacity = (1 - (1 - alpha) ** hits)[..., None]
    img = img * (1 - opacity) + mean * opacity

    def dots(points, rgb, r):  # squares of side 2r + 1 at points (M, 2), colours (M, 3)
        for dr in range(-r, r + 1):
            for dc in range(-r, r + 1):
                q = np.round(points).astype(np.int64) + [dc, dr]
                ok = (q >= 0).all(1) & (q < size).all(1)
                img[q[ok, 1], q[ok, 0]] = rgb[ok]
    dots(px[0], np.full((N, 3), 150.0), 1)  # starts: the noise
    dots(px[-1], color, 1)  # ends: the samples
    legend = "grey dots: noise, coloured dots: samples" + (", grey: held-out data" if ref is not None else "")
    write_png(path, titled(titled(img.round().astype(np.uint8), title), legend, below=True))


def save_samples(x, path, data):
    """Images: a grid of the first 100. Points: all of them, beside as many held-out points."""
    if data.is_image:
        save_grid(x[:100], path)
    else:
        save_points(x, path, ref=data.x_test[:len(x)])


def draw_trajectory(sample, data, args, device, num_classes, title=""):
    """--trajectory N: the sampler's path for N examples, drawn. sample(shape=, y=, generator=,
    trajectory=) is the model's sampler with its other arguments bound; it runs once, with its own
    generator (seed + 4: the evaluation's samples stay as they are) and balanced labels, and its
    recorded states (S + 1, N, ...) become OUT/trajectory.png for 2-D data (N paths over the held-out
    points, save_trajectory) or OUT/strip.png for images (N rows of x_t at 8 steps, save_strip);
    when only sampling a training run's folder, trajectory-<model>.png / strip-<model>.png, as
    report() names its grid. Returns the states."""
    n, out, states = args.trajectory, Path(args.out), []
    g = torch.Generator(device).manual_seed(args.seed + 4)
    with autocast(device, args.amp):
        sample(shape=(n, *data.shape), y=class_labels(n, num_classes, device), generator=g, trajectory=states)
    states = torch.stack([s.float().cpu() for s in states])  # (S + 1, N, ...)
    stem = "strip" if data.is_image else "trajectory"
    picture = out / (f"{stem}-{args.model}.png" if args.sample_only and (out / "ckpt.pt").exists() else f"{stem}.png")
    if data.is_image:
        save_strip(states, picture)
    else:
        save_trajectory(states, picture, ref=data.x_test, title=title)
    log(f"{args.model}: {n} sampling paths of {len(states) - 1} steps in {picture}")
    return states



# -----------------------------------------------------------------------------
# metrics, each printed next to its floor (the same metric between two sets of real data)

def w2_exact(a, b):
    """Exact 2-Wasserstein distance between two equal-size point sets (optimal assignment)."""
    from scipy.optimize import linear_sum_assignment
    a, b = a.detach().double().cpu().flatten(1), b.detach().double().cpu().flatten(1)
    if len(a) != len(b):
        raise ValueError(f"w2_exact needs equal-size sets, got {len(a)} and {len(b)}")
    cost = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1).numpy()  # (n, n) squared distances, exact
    rows, cols = linear_sum_assignment(cost)
    return float(np.sqrt(cost[rows, cols].mean()))


def frechet_distance(f1, f2):
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}) between Gaussians fitted to features."""
    from scipy import linalg
    f1, f2 = f1.detach().double().cpu().numpy(), f2.detach().double().cpu().numpy()
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # singular product: regularise as in the FID reference code
        eps = 1e-6 * np.eye(len(s1))
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def kid(f1, f2):
    """Kernel inception distance (arXiv 1801.01401): the unbiased estimate of the squared MMD between
    two feature sets f1 (m, d), f2 (n, d) with the cubic polynomial kernel
    k(a, b) = (a.b / d + 1)^3:
        sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (n (n - 1))
        - 2 sum_{i, j} k(x_i, y_j) / (m n),
    x_i and y_j the rows of f1 and f2, on the features as given, unscaled. Its expectation is
    zero for equal distributions at any sample sizes (FD's is not), so an estimate near a
    distance of 0 falls below zero about as often as above. `quality` feeds it standardised
    features (`standardised`) and reports it x KID_SCALE."""
    f1, f2 = f1.detach().double().cpu(), f2.detach().double().cpu()
    m, n, d = len(f1), len(f2), f1.shape[1]
    k11, k22, k12 = ((a @ b.T / d + 1) ** 3 for a, b in ((f1, f1), (f2, f2), (f1, f2)))
    return float((k11.sum() - k11.diagonal().sum()) / (m * (m - 1)) + (k22.sum() - k22.diagonal().sum()) / (n * (n - 1))
                 - 2 * k12.mean())


class Classifier(nn.Module):
    """Small CNN whose penultimate features (64) define the Frechet distance for images. Stride-2
    stages halve the map until it is at most 4x4 (at least two: 8 -> 2x2, 28 -> 4x4, 32 -> 4x4), so
    the final average pool sees a whole digit, not a patch of one (two stages on a 32x32 digit
    leave 8x8 maps of 11-pixel receptive fields, each seeing a patch of a stroke)."""

    def __init__(self, channels=1, num_classes=10, size=8):
        super().__init__()
        stages = max(2, math.ceil(math.log2(size / 4)))
        layers = [nn.Conv2d(channels, 32, 3, padding=1), nn.SiLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.SiLU()]
        for _ in range(stages - 1):
            layers += [nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.SiLU()]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())  # (B, 64)
        self.head = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


def feature_net(data, root=None, epochs=30):
    """The data set's feature classifier, trained deterministically once on CPU and cached.
    Returns (net, test accuracy)."""
    path = cache_dir(root) / f"classifier-{data.name}-v2.pt"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = Classifier(data.shape[0], data.num_classes, data.shape[-1])
    if path.exists():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(state["net"])
            return net.eval(), state["acc"]
        except Exception:
            pass  # a broken cache is rebuilt below
    g = torch.Generator().manual_seed(0)  # the only randomness of training: the batch order
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    n, bs = len(data.x_train), 128
    for _ in range(epochs if n < 5000 else 2):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            loss = F.cross_entropy(net(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = float((torch.cat([net(xb).argmax(1) for xb in data.x_test.split(1000)]) == data.y_test).float().mean())
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save({"net": net.state_dict(), "acc": acc}, path)
    return net, acc



# -----------------------------------------------------------------------------
# checkpoints: written atomically, loaded with weights_only=True

def atomic_write(path, write):
    """Write a file through write(f) into a temporary file, then rename it over `path`: a run killed
    mid-write leaves the previous file whole (and no partial file behind)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_save(obj, path):
    atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path, accept):
    """Load a checkpoint written by a model file in `accept` (a tuple of model names)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found: train first, or pass --ckpt PATH to an existing one")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"checkpoint {path} is corrupt or not a checkpoint ({type(e).__name__}): "
                        "use an earlier checkpoint or train again")
    if not isinstance(ckpt, dict) or "model" not in ckpt or "net" not in ckpt:
        raise UserError(f"{path} is not a checkpoint of this project: pass one written by {accept[0]}.py")
    if ckpt["model"] not in accept:
        raise UserError(f"{path} is a {ckpt['model']} checkpoint; this needs one of: {', '.join(accept)}")
    return ckpt



def load_weights(ckpt, net, ema=None):
    """Load a checkpoint's network (and EMA) weights; one line naming the mismatch if they do not fit."""
    try:
        net.load_state_dict(ckpt["net"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
    except RuntimeError as e:
        raise UserError(f"the checkpoint does not fit this network ({str(e).splitlines()[0]}); "
                        "it was written with other --arch/--width/--data flags")


def load_ema(ckpt, net):
    """The checkpoint's EMA weights (the ones that sample) in a network shaped like `net`, eval mode."""
    ema = make_ema(net, 0.0)
    load_weights({"net": ckpt["ema"]}, ema)
    return ema.module.eval()


def ema_net(ckpt, data, two_times=False, time_scale=1.0):
    """The sampling (EMA) network of a loaded checkpoint, rebuilt from the flags it was trained
    with (a teacher, or a benchmark's model)."""
    a = ckpt["args"]
    net = make_net(a["arch"], data.shape, a["width"], 0 if a["uncond"] else data.num_classes, two_times, time_scale)
    return load_ema(ckpt, net)


# -----------------------------------------------------------------------------
# command line shared by every model file
#
# A flag that a checkpoint may supply defaults to None in argparse: parse_args fills it, in this
# order, from what was typed, the checkpoint (--resume: every flag; --ckpt / --sample-only: the
# flags that define the model), the model file's budget for the data set, DATA_DEFAULTS, the
# model file's defaults, and DEFAULTS.

# per data set: the network and a training budget that finishes on a 2-core CPU in minutes
DATA_DEFAULTS = {
    "digits": dict(arch="unet", width=16, iters=2000, batch_size=128, lr=2e-3, n_eval=500),
    "digits32": dict(arch="unet", width=16, iters=2000, batch_size=128, lr=2e-3, n_eval=500),
    "mnist": dict(arch="unet", width=32, iters=20000, batch_size=128, lr=1e-3, n_eval=2000),
    "cifar10": dict(arch="unet", width=64, iters=50000, batch_size=128, lr=2e-4, n_eval=2000),
    "toy": dict(arch="mlp", width=256, iters=3000, batch_size=512, lr=1e-3, n_eval=1000),
}
# the rest of the shared flags
DEFAULTS = dict(data="digits", warmup=200, grad_clip=1.0, ema_decay=0.999, uncond=False, p_uncond=0.1,
                cfg_scale=1.0, log_every=100, ckpt_every=500, device="auto", amp="none", compile=False,
                seed=0, download=False, sample_only=False)
# flags that define the model and its data: --ckpt / --sample-only take them from the checkpoint
MODEL_FLAGS = ("data", "arch", "width", "uncond")


def finite(text):
    """argparse type: a float that is neither nan nor inf."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return v


def count(text):
    """argparse type: a whole number >= 0 (e.g. --trajectory N; 0: off)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative: give 0 (off) or more")
    return v


def add_trajectory_flag(group):
    """--trajectory N, for the files whose sampler records its path (draw_trajectory); default 0: off."""
    group.add_argument("--trajectory", type=count, metavar="N", help="also draw N sampling paths: 2-D data: "
                       "OUT/trajectory.png (paths over held-out points); images: OUT/strip.png (N rows of x_t "
                       "at 8 steps) (default 0: off)")


def add_args(parser):
    """The flags every model file shares (defaults in DATA_DEFAULTS and DEFAULTS)."""
    g = parser.add_argument_group("data and network")
    g.add_argument("--data", help="digits (bundled 8x8, the default), digits32 (the same resized to 32x32), "
                   "checkerboard, moons, 8gaussians, mnist or cifar10 (these two download with --download)")
    g.add_argument("--arch", choices=["mlp", "unet", "dit"], help="network: mlp for 2-D points, unet (default for images) or dit")
    g.add_argument("--width", type=int, help="network width (channels of the UNet's first level, hidden size otherwise)")
    g.add_argument("--uncond", action="store_true", default=None, help="ignore labels: train an unconditional model")
    g.add_argument("--data-root", help="cache folder for downloads (default ~/.cache/genmodels or $GENMODELS_CACHE)")
    g.add_argument("--download", action="store_true", default=None, help="allow downloading mnist / cifar10 (never done silently)")
    g = parser.add_argument_group("training (budget defaults per data set: common.DATA_DEFAULTS)")
    g.add_argument("--iters", type=int, help="training iterations")
    g.add_argument("--batch-size", type=int, help="batch size (global, across all processes)")
    g.add_argument("--lr", type=finite, help="peak AdamW learning rate")
    g.add_argument("--warmup", type=int, help="linear learning-rate warmup iterations (default 200)")
    g.add_argument("--grad-clip", type=finite, help="clip the gradient norm to this value (0: off; default 1)")
    g.add_argument("--ema-decay", type=finite, help="EMA decay of the weights used for sampling (default 0.999)")
    g.add_argument("--p-uncond", type=finite, help="probability of dropping a label to the null class (default 0.1)")
    g.add_argument("--seed", type=int, help="random seed (default 0)")
    g = parser.add_argument_group("sampling and evaluation")
    g.add_argument("--cfg-scale", type=finite, help="classifier-free guidance scale w (default 1: plain conditional)")
    g.add_argument("--n-eval", type=int, help="samples for the final quality figure (0: skip it)")
    g = parser.add_argument_group("runs, checkpoints and machine")
    g.add_argument("--out", help="output folder (default runs/<model>-<data>)")
    g.add_argument("--resume", nargs="?", const="yes", choices=["yes", "auto"],
                   help="continue training from --ckpt or OUT/ckpt.pt; '--resume auto' starts fresh when "
                   "there is no checkpoint yet (one command for a preemptible job's first start and restarts)")
    g.add_argument("--ckpt", help="checkpoint to sample from (implies --sample-only unless --resume)")
    g.add_argument("--sample-only", action="store_true", default=None, help="only sample and evaluate the checkpoint (--ckpt or OUT/ckpt.pt)")
    g.add_argument("--log-every", type=int, help="iterations between progress lines (default 100)")
    g.add_argument("--ckpt-every", type=int, help="iterations between checkpoints (default 500)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="auto (default): cuda, then mps, then cpu")
    g.add_argument("--amp", choices=["none", "bf16"], help="bf16 autocast for the network (default none)")
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile the network for training")
    parser.error = lambda message: fail(parser.prog, f"{message} (see --help)")  # one line, exit 2, no usage dump
    return parser


def parse_args(parser, argv, name, defaults=None, budgets=None, model_flags=(), accept=None, teacher=None,
               data_sets=None):
    """Parse the command line of model file `name` and return (args, ckpt): ckpt is the loaded
    checkpoint for --resume / --ckpt / --sample-only, else None. defaults: the file's own flags'
    defaults; budgets: per data set ("digits", "mnist", "cifar10", "toy"), the file's own
    departures from DATA_DEFAULTS; model_flags: its flags that define the model (a checkpoint
    supplies them); accept: the models whose checkpoints it loads (default: itself); teacher:
    (flags, models), flags whose value is a checkpoint of one of models that a new run copies
    (rectified flow's --reflow-from): it supplies MODEL_FLAGS not typed; data_sets: a file that makes
    its own data (physctrl's simulations) names them here, each with its DATA_DEFAULTS-like budget,
    and takes no other. Checks the shared flags;
    a file's own hyperparameters are checked by its method's constructor."""
    args = parser.parse_args(argv)
    args.model = name
    if args.ckpt and not args.resume:
        args.sample_only = True
    if args.resume and args.sample_only:
        parser.error("--resume and --sample-only exclude each other: pick one")
    ckpt = None
    default_data = (defaults or {}).get("data", DEFAULTS["data"])  # the file's own default data set, if it has one
    path = Path(args.ckpt) if args.ckpt else Path(args.out or f"runs/{name}-{args.data or default_data}") / "ckpt.pt"
    if args.resume == "auto" and not path.exists():
        log(f"--resume auto: no checkpoint at {path} yet, starting fresh")
        args.resume = None
    if args.resume or args.sample_only:
        try:
            ckpt = load_checkpoint(path, accept or (name,))
        except UserError as e:
            fail(parser.prog, e)
        take = set(ckpt["args"]) & (set(vars(args)) if args.resume else set(MODEL_FLAGS) | set(model_flags))
        for k in take - {"resume", "sample_only", "ckpt", "out", "model"}:
            if getattr(args, k) is None:
                setattr(args, k, ckpt["args"][k])
        args.out = args.out or str(path.parent)
    given = [f for f in (teacher or ((), ()))[0] if getattr(args, f)]
    if len(given) > 1:
        parser.error(f"{' and '.join('--' + f.replace('_', '-') for f in given)} exclude each other: one teacher per run")
    for flag in given:
        if not (args.resume or args.sample_only):
            try:
                saved = load_checkpoint(getattr(args, flag), teacher[1])["args"]
            except UserError as e:
                fail(parser.prog, e)
            for k in MODEL_FLAGS:
                if getattr(args, k) is None:
                    setattr(args, k, saved[k])
    data = args.data or default_data
    known = data_sets or DATASETS
    if data not in known:
        parser.error(f"unknown data set {data!r}: choose from {', '.join(known)}")
    kind = "toy" if data in TOY_SETS else data
    for layer in ((budgets or {}).get(kind, {}), (data_sets or DATA_DEFAULTS)[kind], defaults or {}, DEFAULTS):
        for k, v in layer.items():
            if getattr(args, k, None) is None:
                setattr(args, k, v)
    args.resume = bool(args.resume)
    for k in ("iters", "batch_size", "width", "log_every", "ckpt_every"):
        if getattr(args, k) <= 0:
            parser.error(f"--{k.replace('_', '-')} must be positive, got {getattr(args, k)}")
    if args.warmup < 0 or args.grad_clip < 0:
        parser.error(f"--warmup and --grad-clip must be >= 0, got {args.warmup} and {args.grad_clip}")
    if args.n_eval < 0:
        parser.error(f"--n-eval must be 0 (no evaluation) or positive, got {args.n_eval}")
    if args.lr <= 0:
        parser.error(f"--lr must be a positive number, got {args.lr}")
    if not 0 <= args.ema_decay < 1:
        parser.error(f"--ema-decay must be in [0, 1), got {args.ema_decay}")
    if not 0 <= args.p_uncond < 1:
        parser.error(f"--p-uncond must be in [0, 1), got {args.p_uncond}")
    if args.data in TOY_SETS and args.arch != "mlp":
        parser.error(f"--arch {args.arch} is for images; 2-D data sets take --arch mlp")
    if args.data not in TOY_SETS and args.arch == "mlp" and not data_sets:
        parser.error(f"--arch mlp is for 2-D points; {args.data} is images: use --arch unet or dit")
    args.out = args.out or f"runs/{name}-{args.data}"
    return args, ckpt
