"""MAR: masked autoregression over any partition of continuous tokens, with a flow-matching head in place of
a codebook (Li, Tian, Li, Deng & He, 2024, "Autoregressive Image Generation without Vector Quantization",
arXiv 2406.11838), with the exact likelihood of a decoding schedule.

The math, in the notation of "Generative Modeling" (T.-W. Ke, 2026): autoregression conditions on data
partitions, by the chain rule "in any order" (ar.py) and "in any partition". An image is a sequence of N
continuous tokens x_1..x_N, the p x p patches (--patch; 8x8 digits, p = 2: N = 16 tokens of d = p^2 = 4 values).

  partition chain   for an order sigma and groups G_1, ..., G_K cutting sigma into consecutive runs,
  rule              p(x) = prod_{k=1..K} p(x_{G_k} | x_{G_<k}),   G_<k = G_1 u ... u G_{k-1}
                    (p(A, B) = p(A) p(B | A) applied K - 1 times; the lecture's p(A, B, C, D) = p(A, B) p(C, D | A, B))
  the model         p_theta(x_{G_k} | x_{G_<k}) = prod_{i in G_k} p_theta(x_i | z_i),   z = f_theta(x_{G_<k}, y)
                    f_theta: a bidirectional transformer over all N positions, the unknown ones replaced by a learned
                    mask embedding (+ learned positions; the class y through adaLN, common.DiTBlock, null class for
                    y = None); p_theta(x_i | z_i): a small flow head per token (an MLP with adaLN on z_i and the time,
                    the paper's SimpleMLPAdaLN). Tokens of one group are independent given what is known: K = N is
                    exact random-order autoregression (no independence assumed); K = 1 is the product of the
                    marginals p(x_i | y); in between, decoding several tokens at once drops their dependence.
  head: flow        cfm.py's straight path per token, t = 0 noise, t = 1 data: x_t = (1 - t) x_0 + t x_1,
  matching          x_0 ~ N(0, I_d), target velocity x_1 - x_0; the head v_theta(x_t, t, z_i) carries N(0, I_d) at
                    t = 0 to p_theta(. | z_i) at t = 1 (Lipman et al., arXiv 2210.02747).
  diffusion loss    (the paper's, here with the velocity loss in place of noise prediction) on the masked tokens only:
                    L = mean over (i in M, j = 1..r) of || v_theta(x_{t_j}, t_j, z_i) - (x_1 - x_{0,j}) ||^2 / d,
                    x_1 = x_i, x_{t_j} = (1 - t_j) x_{0,j} + t_j x_1, t_j ~ U(0, 1), x_{0,j} ~ N(0, I_d); M the m last
                    tokens of a random order sigma (a fresh order per example), z = f_theta(x_{not M}, y); the mean runs
                    over the masked tokens of the whole batch (the paper's mask-weighted mean) and r (t, x_0) draws per
                    token (--draws, the paper's 4: the transformer runs once for r head terms). Each term trains
                    p_theta(x_i | x_{not M}), the conditional of a masked token given a visible set; the visible tokens
                    are never targets, and their values reach the loss only through z.
  mask ratio        uniform (default): m ~ U{1, ..., N}: every count of known tokens, 0..N - 1, is trained equally often,
                    and the sampler meets all of them (K = N: N, N - 1, ..., 1 masked). paper: the ratio
                    r ~ N(1, 0.25^2) truncated to [0.7, 1], m = ceil(r N) (always >= 70% masked). At N = 16 the
                    paper's choice never trains a context of more than 4 known tokens, which the last 11 of K = N's
                    16 steps need; with 256 tokens and 64 steps the paper's sampler stays closer to its training.
                    Either way m is drawn per example, each example of a batch masking its own count; the official
                    code draws one ratio per batch (models/mar.py, random_masking: mask_ratio_generator.rvs(1)),
                    every example of a batch masking as many tokens, each in its own random order.
  schedule          --steps K in 1..N: masked after step k, m_k = min(floor(N cos(pi/2 k / K)), m_{k-1} - 1), m_0 = N,
                    m_K = 0 (cos(pi/2) = 0); group k is the next m_{k-1} - m_k tokens of a random order. The min makes every
                    step decode at least one token (without it K = N would stall: floor(16 cos(pi/32)) = 15 = m_0 - 1,
                    but floor(16 cos(2 pi/32)) = 15 too). The official code (LTH14/mar, models/mar.py, sample_tokens)
                    clamps from below at max(1, .): at least one token left masked for the next step, the last step
                    decoding all that remain. Here the lower clamp is m_k >= K - k (a token left for each step to
                    come), which for k < K implies the official one (corrected: this sentence used to credit the
                    official code with m_k >= K - k). Neither clamp is ever active: cos(pi/2 x) >= 1 - x on [0, 1] (a
                    concave function above its chord), so floor(N cos(pi/2 k/K)) >= floor(N (1 - k/K)) >= K - k for
                    N >= K, and m_k >= K - k by induction. It stays in the code as a guard against rounding only
                    (pi/2 k / K evaluated as (pi/2 k) / K lands past pi/2 at k = K = 13, and floor(13 cos) = -1).
                    K = N: one token per step; K = 1: all N at once. For
                    K' = 2K, m_{2k} of K' equals m_k of K where the min is idle, so 1, 2, 4, 8, 16 steps on digits are
                    nested partitions (each refines the one before).
  sampling          for k = 1..K: z = f_theta(x_{G_<k}, y); each token i of G_k solves dx/dt = v_theta(x, t, z_i) from
                    x_0 = tau eps (tau: --temperature) at t = 0 to t = 1, midpoint steps (--head-steps).
  guidance          v = v_theta(x, t, z_i(null)) + w (v_theta(x, t, z_i(y)) - v_theta(x, t, z_i(null)))  (classifier-free,
                    Ho & Salimans, arXiv 2207.12598, on the head's velocity, z from the transformer run with y and with
                    the null class; the paper also ramps w over the steps, here w is constant)
  likelihood        d/dt log p_t(x_t) = -div v_theta(x_t, t, z_i) (instantaneous change of variables, Chen et al.,
                    arXiv 1806.07366): log p_theta(x_i | z_i) = log N(x_0; 0, I_d) - int_0^1 div v_theta dt, x_t solved
                    backwards from the token at t = 1; div v = tr(d v / d x), the d x d = p^2 x p^2 Jacobian's trace
                    computed exactly (one vector-Jacobian product per token value), float64, classic RK4 at S and 2S
                    steps (--bpd-steps S: the 2S figure is reported, a change of 0.01 bits/dim or more is flagged). Then
                    log p_{sigma,K}(x) = sum_k sum_{i in G_k} log p_theta(x_i | z_i(x_{G_<k})), K transformer passes.
                    It is exact for that order sigma and that K-step schedule: every conditional is a normalised
                    density (a flow from N(0, I_d)), so each p_{sigma,K} is one. The sampler draws a fresh sigma per
                    image, i.e. from the mixture E_sigma p_{sigma,K}; the figure reported (one sigma per image) bounds its
                    NLL from above (Jensen), as ar.py's random order does.
  bits/dim          on tokens dequantized within their grey level, x~ = x + Delta (u - 1/2), Delta = 2 / (levels - 1)
                    (17 levels on digits: Delta = 1/8), -log P(x) <= E_u[-log p(x~)] - D log Delta (Jensen on
                    P(x) = Delta^D E_u[p(x~)]), D = N d pixels; bits/dim = (-log p(x~) / D - log Delta) / ln 2. The model
                    trains on x~ (fresh u per batch), the density the bound scores (cfm.py, "dequantization").

The lecture's two slides are the two ends of --steps: "in any order" is the partition into single tokens (K = N),
"in any partition" groups them, p(A, B, C, D) = p(A, B) p(C, D | A, B) being K = 2 with groups of two; no typo to
correct there. What the slides leave implicit, and the model adds: the groups' conditionals are factorised over
their tokens (above), exact only at K = N. Departures from the paper: its diffusion head predicts noise on a cosine
DDPM schedule (100 sampling steps); here the head is a flow on the straight path, so that its likelihood is exact;
its [0.7, 1] mask ratio is an option (above); its encoder-decoder (the encoder sees the visible tokens only, with 64
class "buffer" tokens) is one transformer over all positions here, the class through adaLN.

Run:
  python mar.py                                  # digits 8x8: 16 tokens of 2x2 pixels, K = 8 steps; grid + FD
  python mar.py --ckpt runs/mar-digits/ckpt.pt --steps 16   # one token per step: random-order autoregression
  python mar.py --ckpt runs/mar-digits/ckpt.pt --steps 1    # every token at once, given only the class
  python mar.py --ckpt runs/mar-digits/ckpt.pt --n-eval 0 --bpd 500   # bits/dim at K = 1, 8 and 16, exact
  python mar.py --ckpt runs/mar-digits/ckpt.pt --trajectory 8  # OUT/strip.png: samples decoded group by group
  python mar.py --mask-ratio paper --out runs/mar-digits-paper    # the paper's mask ratio in [0.7, 1]
  python mar.py --data mnist --download --device cuda --patch 4   # 49 tokens of 16 values
"""
import argparse
import copy
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import common


# -----------------------------------------------------------------------------
# tokens: p x p patches, raster order of patches; within a patch, channel, row, column

def patchify(x, p):
    """Images (B, C, H, W) -> tokens (B, N, d), N = (H / p)(W / p), d = C p^2."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)  # (B, H/p, W/p, C, p, p)
    return x.reshape(B, (H // p) * (W // p), C * p * p)


def unpatchify(tokens, shape, p):
    """Tokens (B, N, d) -> images (B, C, H, W), the inverse of patchify."""
    C, H, W = shape
    x = tokens.reshape(len(tokens), H // p, W // p, C, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, H/p, p, W/p, p)
    return x.reshape(len(tokens), C, H, W)


def dequantize(x, levels, generator=None):
    """x + Delta (u - 1/2), u ~ U[0, 1), Delta = 2 / (levels - 1): each grey level spread over its bin."""
    u = torch.rand(x.shape, generator=generator, device=generator.device if generator else x.device)
    return x + 2.0 / (levels - 1) * (u.to(device=x.device, dtype=x.dtype) - 0.5)


def masked_counts(N, K):
    """[m_0, ..., m_K]: tokens still masked after step k, m_k = min(floor(N cos(pi/2 k / K)), m_{k-1} - 1), in
    float64 (Python floats); m_0 = N, m_K = 0; the clamp m_k >= K - k is idle in exact arithmetic (module
    docstring) and guards against rounding, as does the floor's slack of 1e-9: N cos(pi/3) = N/2 exactly, which
    rounding may put just below the integer."""
    if not 1 <= K <= N:
        raise ValueError(f"--steps must be in 1..{N} (the number of tokens), got {K}")
    m = [N]
    for k in range(1, K + 1):
        m.append(max(K - k, min(m[-1] - 1, math.floor(N * math.cos(math.pi / 2 * (k / K)) + 1e-9))))
    return m


# -----------------------------------------------------------------------------
# the network: a bidirectional transformer giving z_i, and the flow head v(x_t, t, z_i)

class HeadBlock(nn.Module):
    """x + gate * MLP(LN(x) (1 + scale) + shift), (shift, scale, gate) from the condition; the gate starts at 0."""

    def __init__(self, width):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.ada = nn.Linear(width, 3 * width)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x, c):  # x (M, width), c (M, width) already SiLU'd
        shift, scale, gate = self.ada(c).chunk(3, dim=1)
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)


class FlowHead(nn.Module):
    """v_theta(x_t, t, z): the velocity (M, d) of one token's flow, given its condition z (M, dim); the paper's
    SimpleMLPAdaLN. The output layer starts at zero."""

    def __init__(self, d, dim, width, depth, time_scale=1000.0):
        super().__init__()
        self.time_scale = time_scale
        self.time = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.cond, self.inp = nn.Linear(dim, width), nn.Linear(d, width)
        self.blocks = nn.ModuleList(HeadBlock(width) for _ in range(depth))
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada, self.out = nn.Linear(width, 2 * width), nn.Linear(width, d)
        for m in (self.ada, self.out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x, t, z):  # x (M, d), t (M,), z (M, dim)
        c = self.time(common.timestep_embedding(t * self.time_scale, self.inp.out_features).to(x.dtype))
        c = F.silu(c + self.cond(z))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.ada(c).chunk(2, dim=1)
        return self.out(self.norm(h) * (1 + scale) + shift)


class MAR(nn.Module):
    """z = net(tokens, mask, y): (B, N, dim) conditions, where mask (B, N) is True at the unknown tokens, whose
    values are never read; net.head(x_t, t, z_i) is the flow head."""

    def __init__(self, d, num_tokens, num_classes=0, dim=64, depth=3, heads=4, head_width=64, head_depth=3):
        super().__init__()
        if depth < 1 or heads < 1 or dim % heads or head_depth < 1 or head_width < 2:
            raise ValueError(f"need --depth >= 1, --heads dividing the width dim = {dim} (4 x --width), "
                             f"--head-depth >= 1 and --head-width >= 2; got {depth}, {heads}, {head_depth}, {head_width}")
        self.num_classes = num_classes
        self.embed = nn.Linear(d, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(1, num_tokens, dim))  # learned positions
        self.mask_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))  # learned mask embedding
        self.label = nn.Embedding(num_classes + 1, dim)  # index num_classes: the null class
        self.blocks = nn.ModuleList(common.DiTBlock(dim, heads) for _ in range(depth))  # full (bidirectional) attention
        self.norm = nn.LayerNorm(dim)
        self.head = FlowHead(d, dim, head_width, head_depth)

    def forward(self, tokens, mask, y=None):  # tokens (B, N, d), mask (B, N) bool
        if y is None:
            y = torch.full((len(tokens),), self.num_classes, dtype=torch.long, device=tokens.device)
        h = torch.where(mask[..., None], self.mask_token.to(tokens.dtype), self.embed(tokens)) + self.pos  # (B, N, dim)
        c = F.silu(self.label(y))  # (B, dim)
        for block in self.blocks:
            h = block(h, c)
        return self.norm(h)  # z (B, N, dim)


# -----------------------------------------------------------------------------
# the method: masks, loss, sampler over partitions, likelihood of a schedule

MASK_RATIOS = ("uniform", "paper")


class MaskedAR:
    def __init__(self, shape, patch=2, mask_ratio="uniform", draws=4, levels=0):
        """shape: the images' (C, H, W); patch p must divide H and W. mask_ratio: "uniform" or "paper" (module
        docstring). draws: (t, x_0) draws per masked token per step. levels: L >= 2 trains on dequantized
        images (fresh u per batch); 0 trains on the values as given."""
        C, H, W = shape
        if patch < 1 or H % patch or W % patch:
            raise ValueError(f"--patch {patch} must divide the image size {H}x{W}")
        if mask_ratio not in MASK_RATIOS:
            raise ValueError(f"unknown --mask-ratio {mask_ratio!r}: use {' or '.join(MASK_RATIOS)}")
        if draws < 1:
            raise ValueError(f"--draws must be at least 1, got {draws}")
        self.shape, self.patch, self.mask_ratio, self.draws, self.levels = tuple(shape), patch, mask_ratio, draws, levels
        self.N, self.d = (H // patch) * (W // patch), C * patch * patch

    def masked_count(self, B, generator=None, device="cpu"):
        """m (B,) in 1..N: uniform, or ceil(N r) with r ~ N(1, 0.25^2) truncated to [0.7, 1] (inverse CDF, float64)."""
        u = torch.rand(B, generator=generator, device=generator.device if generator else device, dtype=torch.float64)
        if self.mask_ratio == "uniform":
            return (1 + (u * self.N).floor().long().clamp(max=self.N - 1)).to(device)
        lo, hi = torch.special.ndtr(torch.tensor([(0.7 - 1) / 0.25, 0.0], dtype=torch.float64))
        r = 1 + 0.25 * torch.special.ndtri(lo + u.cpu() * (hi - lo))
        return (r.clamp(0.7, 1) * self.N).ceil().long().clamp(1, self.N).to(device)

    def random_mask(self, B, generator=None, device="cpu"):
        """(B, N) bool: the m last tokens of a random order per example (the m of lowest random rank)."""
        gdev = generator.device if generator else device
        rank = torch.rand(B, self.N, generator=generator, device=gdev).argsort(1).argsort(1).to(device)
        return rank < self.masked_count(B, generator, device)[:, None]

    def loss(self, net, x, y=None, mask=None, generator=None):
        """The flow-matching loss of the head on the masked tokens only; mask (B, N) may be given."""
        if self.levels:
            x = dequantize(x, self.levels, generator)  # x~ = x + Delta (u - 1/2)
        tokens = patchify(x, self.patch)  # (B, N, d)
        if mask is None:
            mask = self.random_mask(len(x), generator, x.device)
        z = net(tokens, mask, y)  # (B, N, dim)
        x1, z = tokens[mask].repeat(self.draws, 1), z[mask].repeat(self.draws, 1)  # (M r, d), (M r, dim)
        gdev = generator.device if generator else x.device
        x0 = torch.randn(x1.shape, generator=generator, device=gdev).to(x1)
        t = torch.rand(len(x1), generator=generator, device=gdev).to(x1)
        x_t = (1 - t[:, None]) * x0 + t[:, None] * x1
        return (net.head(x_t, t, z) - (x1 - x0)).pow(2).mean()  # || v_theta - (x_1 - x_0) ||^2

    def orders(self, B, generator=None, device="cpu"):
        """sigma (B, N): a uniform random order of the positions per example."""
        return torch.rand(B, self.N, generator=generator, device=generator.device if generator else device).argsort(1).to(device)

    def conditions(self, net, tokens, sigma, K, y=None):
        """z_i (B, N, dim) of each token from the transformer pass of the step that decodes it (schedule K,
        order sigma): K passes, pass k seeing the tokens of the groups before k."""
        m, done = masked_counts(self.N, K), 0
        rank = sigma.argsort(1)  # the step of the order at which each position comes
        z = None
        for k in range(1, K + 1):
            zk = net(tokens, rank >= done, y)
            group = ((rank >= done) & (rank < self.N - m[k]))[..., None]  # (B, N, 1): G_k
            z = torch.where(group, zk, zk.new_zeros(()) if z is None else z)
            done = self.N - m[k]
        return z

    @torch.no_grad()
    def sample(self, net, shape, steps=8, y=None, cfg_scale=1.0, generator=None, noise=None, temperature=1.0,
               head_steps=16, order=None, trajectory=None):
        """Images (B, C, H, W) decoded in `steps` = K groups. noise: eps (B, N, d), each token's head start x_0 = tau eps;
        order: sigma (B, N) (default: random per example, from generator). trajectory: receives the image
        before the first step (all unknown, shown 0) and after each step."""
        B, K, dev = shape[0], steps, next(net.parameters()).device
        m = masked_counts(self.N, K)
        if not temperature > 0 or head_steps < 1:
            raise ValueError(f"need temperature > 0 and head_steps >= 1, got {temperature} and {head_steps}")
        eps = common.start_noise((B, self.N, self.d), generator, noise).to(dev)
        sigma = (self.orders(B, generator, dev) if order is None else order).to(dev)
        guide = y is not None and cfg_scale != 1.0
        tokens = torch.zeros(B, self.N, self.d, device=dev, dtype=eps.dtype)
        known = torch.zeros(B, self.N, dtype=torch.bool, device=dev)
        common.record(trajectory, unpatchify(tokens, shape[1:], self.patch))
        for k in range(1, K + 1):
            idx = sigma[:, self.N - m[k - 1]:self.N - m[k]]  # (B, n_k): G_k
            z = net(tokens, ~known, y)
            if guide:  # the unconditional z of the same known tokens, below the conditional one
                z = torch.cat([z, net(tokens, ~known, None)])
                idx2 = idx.repeat(2, 1)
            else:
                idx2 = idx
            zg = z.gather(1, idx2[..., None].expand(-1, -1, z.shape[-1])).flatten(0, 1)  # (B n_k [x2], dim)
            x = temperature * eps.gather(1, idx[..., None].expand(-1, -1, self.d)).flatten(0, 1)  # x_0 = tau eps

            def v(x, t):  # the head's velocity, guided
                tt = torch.full((len(zg),), t, device=dev, dtype=x.dtype)
                out = net.head(x.repeat(2, 1) if guide else x, tt, zg).to(x.dtype)
                if guide:
                    cond, uncond = out.chunk(2)
                    out = uncond + cfg_scale * (cond - uncond)
                return out

            h = 1.0 / head_steps
            for j in range(head_steps):  # midpoint: x + h v(x + h/2 v(x, t), t + h/2)
                t = j * h
                x = x + h * v(x + h / 2 * v(x, t), t + h / 2)
            tokens = tokens.scatter(1, idx[..., None].expand(-1, -1, self.d), x.view(B, -1, self.d))
            known = known.scatter(1, idx, True)
            common.record(trajectory, unpatchify(tokens, shape[1:], self.patch))
        return unpatchify(tokens, shape[1:], self.patch)

    @torch.no_grad()
    def log_likelihood(self, net, x, steps=8, y=None, order=None, ode_steps=40, generator=None):
        """log p_{sigma,K}(x) per image in nats, K = steps, of images x (B, C, H, W) as given (dequantize them first):
        the K transformer passes, then every token's log p_theta(x_i | z_i) by the instantaneous change of
        variables, the exact trace, classic RK4 with ode_steps steps from t = 1 back to t = 0, in x's dtype."""
        tokens = patchify(x, self.patch)  # (B, N, d)
        sigma = (self.orders(len(x), generator, x.device) if order is None else order).to(x.device)
        z = self.conditions(net, tokens, sigma, steps, y).flatten(0, 1).to(x.dtype)  # (B N, dim)
        x1 = tokens.flatten(0, 1)  # (B N, d)

        def f(state, t):  # (dx/dt, d/dt int div v) = (v, tr dv/dx)
            with torch.enable_grad():
                xt = state[0].detach().requires_grad_(True)
                v = net.head(xt, torch.full((len(xt),), t, device=xt.device, dtype=xt.dtype), z).to(xt.dtype)
                div = sum(torch.autograd.grad(v[:, i].sum(), xt, retain_graph=i < self.d - 1)[0][:, i]
                          for i in range(self.d))  # one vector-Jacobian product per value of the token
            return v.detach(), div.detach()

        state, h = (x1, torch.zeros(len(x1), device=x.device, dtype=x.dtype)), -1.0 / ode_steps
        for j in range(ode_steps):  # RK4 backwards: t = 1, 1 - 1/S, ..., 1/S
            t = 1.0 + j * h
            k1 = f(state, t)
            k2 = f(tuple(s + h / 2 * k for s, k in zip(state, k1)), t + h / 2)
            k3 = f(tuple(s + h / 2 * k for s, k in zip(state, k2)), t + h / 2)
            k4 = f(tuple(s + h * k for s, k in zip(state, k3)), t + h)
            state = tuple(s + h / 6 * (a + 2 * b + 2 * c + e) for s, a, b, c, e in zip(state, k1, k2, k3, k4))
        x0, int_div_backwards = state  # int_1^0 div v dt = -int_0^1 div v dt
        log_p0 = -0.5 * x0.pow(2).sum(1) - 0.5 * self.d * math.log(2 * math.pi)  # log N(x_0; 0, I_d)
        return (log_p0 + int_div_backwards).view(len(x), self.N).sum(1)  # sum over the tokens


# -----------------------------------------------------------------------------
# bits per dimension of held-out images, exact for the order and the schedule

def held_out_bits_per_dim(mar, net, data, n, schedules, conditional, seed, ode_steps, batch=250):
    """Bits/dim of the first n held-out images (-log p(x~ | y) with the true label, or -log p(x~)) for each K in
    schedules: one order per image (drawn from seed, the same for every K) and one dequantization, the network in
    float64 (float32 on MPS), RK4 at ode_steps and 2 ode_steps. Prints one line per K and returns the figures."""
    dev = next(net.parameters()).device
    dtype = torch.float32 if dev.type == "mps" else torch.float64
    net = copy.deepcopy(net).to(dtype)
    g = torch.Generator(dev).manual_seed(seed)
    x = dequantize(data.x_test[:n].to(dev, dtype), data.levels, g)  # x~ = x + Delta (u - 1/2)
    y = data.y_test[:n].to(dev) if conditional else None
    sigma = mar.orders(len(x), g, dev)
    D, log_delta = x[0].numel(), math.log(2.0 / (data.levels - 1))
    q = {}
    for K in schedules:
        def bpd(s):  # (n,) bits/dim per image at s RK4 steps
            ll = torch.cat([mar.log_likelihood(net, x[i:i + batch], K, None if y is None else y[i:i + batch],
                                               sigma[i:i + batch], s).cpu() for i in range(0, len(x), batch)])
            return (-ll / D - log_delta) / math.log(2)
        half, full = bpd(ode_steps), bpd(2 * ode_steps)
        change = float(full.mean() - half.mean())
        stderr = float(full.std() / math.sqrt(len(full))) if len(full) > 1 else float("nan")
        q[f"bits_per_dim_K{K}"], q[f"bpd_step_change_K{K}"] = float(full.mean()), change
        common.log(f"mar on {data.name}: held-out {'-log p(x | y)' if conditional else '-log p(x)'} <= "
                   f"{float(full.mean()):.4f} +- {stderr:.2g} bits/dim at K = {K} of {mar.N} tokens (exact for each "
                   f"image's order and this schedule; rk4 x {2 * ode_steps}, x {ode_steps}: {float(half.mean()):.4f}, "
                   f"change {change:+.4f}, {'converged: < 0.01' if abs(change) < 0.01 else 'NOT converged: >= 0.01'}); "
                   f"exact trace, uniform dequantization of {data.levels} levels; n={len(x)}")
    q.update(bpd_n=len(x), bpd_steps=2 * ode_steps, bpd_order=f"random, one per image (seed {seed})")
    return q


# -----------------------------------------------------------------------------
# the training script

DEFAULT_STEPS = 8  # --steps unset: K = min(8, N)


def main(argv=None):
    parser = common.add_args(argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                                     epilog="see the module docstring for the math"))
    own = parser.add_argument_group("mar (a transformer of width 4 x --width; --arch does not apply)")
    own.add_argument("--patch", type=int, help="tokens are p x p patches; p must divide the image (default 2)")
    own.add_argument("--depth", type=int, help="transformer blocks (default 3)")
    own.add_argument("--heads", type=int, help="attention heads (default 4)")
    own.add_argument("--head-width", type=int, help="width of the flow head's MLP (default 64)")
    own.add_argument("--head-depth", type=int, help="residual blocks of the flow head (default 3)")
    own.add_argument("--mask-ratio", choices=list(MASK_RATIOS), help="masked tokens per example: uniform over 1..N "
                     "(default) or paper, ceil(N r), r ~ N(1, 0.25^2) truncated to [0.7, 1]")
    own.add_argument("--draws", type=int, help="(t, noise) draws per masked token per step (default 4, the paper's)")
    own.add_argument("--steps", type=int, help="K, the groups decoded one after another, 1..number of tokens "
                     f"(default {DEFAULT_STEPS}, or the number of tokens if fewer)")
    own.add_argument("--head-steps", type=int, help="midpoint steps of each token's flow (default 16)")
    own.add_argument("--temperature", type=common.finite, help="the head's starting noise x_0 = tau eps (default 1)")
    own.add_argument("--bpd", type=int, metavar="N", help="exact bits/dim of the first N held-out images at K = 1, "
                     "--steps and the number of tokens (default 0: skip)")
    own.add_argument("--bpd-steps", type=int, metavar="S", help="--bpd's RK4 steps: 2S reported, S beside (default 20)")
    common.add_trajectory_flag(own)
    defaults = dict(patch=2, depth=3, heads=4, head_width=64, head_depth=3, mask_ratio="uniform", draws=4,
                    head_steps=16, temperature=1.0, bpd=0, bpd_steps=20, trajectory=0)
    args, ckpt = common.parse_args(parser, argv, "mar", defaults=defaults, budgets={"digits": dict(iters=1500)},
                                   model_flags=("patch", "depth", "heads", "head_width", "head_depth"))
    if args.data in common.TOY_SETS:
        parser.error(f"mar.py models images as sequences of patches; {args.data} is 2-D points: use --data digits")
    if args.head_steps < 1 or args.bpd_steps < 1 or args.bpd < 0 or not args.temperature > 0:
        parser.error(f"need --head-steps >= 1, --bpd-steps >= 1, --bpd >= 0 and --temperature > 0, got "
                     f"{args.head_steps}, {args.bpd_steps}, {args.bpd} and {args.temperature}")
    with common.session(args) as device:
        data = common.load_data(args.data, args.data_root, args.download)
        mar = common.construct(parser, MaskedAR, data.shape, args.patch, args.mask_ratio, args.draws,
                               data.levels)  # tokens, masks, loss, sampler, likelihood
        K = min(DEFAULT_STEPS, mar.N) if args.steps is None else args.steps
        if not 1 <= K <= mar.N:
            parser.error(f"--steps must be in 1..{mar.N} (the number of {args.patch}x{args.patch} tokens), got {K}")
        num_classes = 0 if args.uncond else data.num_classes
        net = common.construct(parser, MAR, mar.d, mar.N, num_classes, 4 * args.width, args.depth, args.heads,
                               args.head_width, args.head_depth).to(device)  # f_theta and the head v_theta
        q = {}  # what main returns: the training's wall and CPU seconds when it trains, the quality figures
        if args.sample_only:
            net = common.load_ema(ckpt, net)
        else:
            t0, c0 = time.time(), time.process_time()
            net = common.train(net, mar.loss, data, args, ckpt)  # the head's loss on masked tokens; the EMA network
            q.update(train_seconds=time.time() - t0, train_cpu_seconds=time.process_time() - c0)
        if not common.is_main():
            return None
        sampler = dict(steps=K, cfg_scale=args.cfg_scale, temperature=args.temperature, head_steps=args.head_steps)
        if args.n_eval:
            y = common.class_labels(args.n_eval, num_classes, device)
            g = torch.Generator(device).manual_seed(args.seed + 1)
            t0 = time.time()
            with common.autocast(device, args.amp):  # K groups, each decoded by its tokens' flows given z
                x = mar.sample(net, (args.n_eval, *data.shape), y=y, generator=g, **sampler)
            q.update(common.report(x, data, args, sample_seconds=time.time() - t0, steps=K))
        if args.trajectory:  # OUT/strip.png: the images after each group (unknown tokens grey)
            common.draw_trajectory(lambda **kw: mar.sample(net, **sampler, **kw), data, args, device, num_classes)
        if args.bpd:  # exact for each image's order and the schedule, at K = 1, the sampler's K and N
            q.update(held_out_bits_per_dim(mar, net, data, args.bpd, sorted({1, K, mar.N}), num_classes > 0,
                                           args.seed + 2, args.bpd_steps))
        return q or None


if __name__ == "__main__":
    main()
