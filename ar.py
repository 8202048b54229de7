"""AR: an autoregressive transformer over pixel tokens, with exact likelihood and any-order generation.

The math, in the lecture's notation (the chain rule "condition on data partitions"; pixels are
tokens x_1..x_n in {0..V-1}, read in raster order, n = C H W, V grey levels):

  chain rule        p(x_1, ..., x_n) = p_theta(x_1) p_theta(x_2 | x_1) ... p_theta(x_n | x_1, ..., x_{n-1})
  in any order      p_sigma(x) = prod_{i=1..n} p_theta(x_{sigma_i} | x_{sigma_1}, ..., x_{sigma_{i-1}}),
                    sigma a permutation of 1..n (raster: sigma_i = i); each p_sigma sums to 1 on its own
  network input     h_1 = s(y) + q(sigma_1),   h_i = e(x_{sigma_{i-1}}) + r(sigma_{i-1}) + q(sigma_i)
                    s: start token (label table, null class = num_classes for y=None), e: token,
                    r: position just read, q: position to predict next ("two-stream" light, as in
                    XLNet / sigma-GPT: without q a random-order model would not know what it predicts)
  causal attention  A_ij = softmax_j(q_i . k_j / sqrt(d) + M_ij),  M_ij = 0 if j <= i else -inf
  conditional       p_theta(x_{sigma_i} = v | x_{sigma_<i}, y) = softmax(W LN(T(h_1..h_i)_i))_v
  likelihood        log p_sigma(x) in nats (log_softmax, summed); bits/dim = -log p_sigma(x) / (n ln 2)
  training          minimise E_x E_sigma [-log p_sigma(x)] / n; sigma = raster, or uniform per sequence
  sampling          for i = 1..n: x_{sigma_i} ~ softmax(logits_i / tau), restricted to the top k;
                    drawn by inverse CDF from u_i ~ U[0, 1) (noise=), with a key-value cache: step i
                    runs one position and reuses the keys and values of steps < i
  guidance          logits = l(x, None) + w (l(x, y) - l(x, None))

A random-order model samples with a fresh sigma per sequence, i.e. from the mixture
p(x) = E_sigma p_sigma(x). Its NLL is at most the average E_sigma[-log p_sigma(x)] (Jensen), so the
random-order number we report (each sequence scored exactly under the one order drawn for it) is
an upper bound for the sampled model. Digits have 17 grey levels natively; MNIST's 256 are
quantized to --levels (default 16), so its bits/dim are not comparable with 256-level figures.

Run:
  python ar.py                                 # digits 8x8, raster order, 1000 steps, ~3 min on a 2-core CPU
  python ar.py --order random --out runs/ar-digits-random   # any-order training and sampling
  python ar.py --temperature 0.8 --top-k 8 --ckpt runs/ar-digits/ckpt.pt   # sample a trained model
  python ar.py --no-cache --ckpt runs/ar-digits/ckpt.pt     # the same samples, without the KV cache
  python ar.py --data mnist --download --levels 16 --device cuda   # 28x28, 784 tokens of 16 levels
  python ar.py --resume                        # continue runs/ar-digits/ckpt.pt up to --iters
"""
import argparse
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import common


# -----------------------------------------------------------------------------
# the transformer: causal self-attention with a key-value cache

class CausalSelfAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x, cache=None):
        """x (B, T, D): T new positions. cache: a dict holding the keys and values of the S - T
        earlier positions (B, heads, S - T, d); the new ones are appended to it."""
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, T, d)
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)  # (B, H, S, d)
            cache["k"], cache["v"] = k, v
        S = k.shape[2]
        # new position t sits at S - T + t; it may read key j iff j <= S - T + t: M_ij = 0 else -inf
        allowed = torch.arange(S, device=x.device)[None] <= torch.arange(S - T, S, device=x.device)[:, None]
        mask = torch.zeros(T, S, device=x.device).masked_fill(~allowed, float("-inf"))  # (T, S)
        # A = softmax(q k^T / sqrt(d) + M) (fused kernel; the mask is added to the scores), out = A v
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype))  # (B, H, T, d)
        return self.proj(out.transpose(1, 2).reshape(B, T, D))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(LN x), then x + MLP(LN x)."""

    def __init__(self, dim, heads, dropout=0.0):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), CausalSelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.drop = nn.Dropout(dropout)  # on each residual branch: 1297 digits overfit quickly

    def forward(self, x, cache=None):  # x (B, T, D)
        x = x + self.drop(self.attn(self.norm1(x), cache))
        return x + self.drop(self.mlp(self.norm2(x)))


# -----------------------------------------------------------------------------
# the model: embeddings, likelihood, loss, sampler

class AR(nn.Module):
    """p_sigma(x | y) over token sequences (B, length) in [0, vocab). order: "raster" or "random",
    the order used for training and, by default, for sampling; log_prob defaults to raster."""

    def __init__(self, vocab, length, num_classes=0, dim=64, depth=2, heads=4, order="raster", dropout=0.0):
        super().__init__()
        if order not in ("raster", "random"):
            raise ValueError(f"unknown order {order!r}: use 'raster' or 'random'")
        if vocab < 2 or length < 1 or dim % heads:
            raise ValueError(f"need vocab >= 2, length >= 1 and heads dividing dim; "
                             f"got {vocab}, {length}, {dim}/{heads}")
        self.vocab, self.length, self.num_classes, self.order = vocab, length, num_classes, order
        self.start = nn.Embedding(num_classes + 1, dim)  # s(y); index num_classes: no label
        self.tok = nn.Embedding(vocab, dim)  # e(x)
        self.pos_read, self.pos_next = nn.Embedding(length, dim), nn.Embedding(length, dim)  # r, q
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(depth))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab)
        for emb in (self.start, self.tok, self.pos_read, self.pos_next):
            nn.init.normal_(emb.weight, std=0.02)
        nn.init.zeros_(self.head.weight)  # the model starts uniform: log V nats per token
        nn.init.zeros_(self.head.bias)

    def labels(self, y, n, device):
        if y is None:
            return torch.full((n,), self.num_classes, dtype=torch.long, device=device)
        if self.num_classes == 0:
            raise ValueError("this AR was built with num_classes=0: pass y=None")
        return y

    def orders(self, order, n, device, generator=None):
        """sigma (n, length): row b lists the positions in the order they are generated."""
        if torch.is_tensor(order):
            if order.shape != (n, self.length):
                raise ValueError(f"order must be (n, length) = {(n, self.length)}, got {tuple(order.shape)}")
            return order.to(device)
        if order in (None, "raster"):
            return torch.arange(self.length, device=device).expand(n, -1)
        if order == "random":  # one uniform permutation per sequence
            return torch.rand(n, self.length, generator=generator, device=device).argsort(1)
        raise ValueError(f"unknown order {order!r}: use 'raster', 'random' or a (n, length) tensor")

    def embed(self, tokens, sigma, y):
        """h (B, n, D): h_1 = s(y) + q(sigma_1), h_i = e(x_{sigma_{i-1}}) + r(sigma_{i-1}) + q(sigma_i)."""
        x_ord = tokens.gather(1, sigma)  # x_{sigma_1}, ..., x_{sigma_n}
        start = self.start(self.labels(y, len(tokens), tokens.device))[:, None]  # (B, 1, D)
        read = self.tok(x_ord[:, :-1]) + self.pos_read(sigma[:, :-1])  # (B, n - 1, D)
        return torch.cat([start, read], 1) + self.pos_next(sigma)

    def body(self, h, caches=None):
        """Transformer over h (B, T, D) -> logits (B, T, vocab), step i predicting x_{sigma_i}."""
        for block, cache in zip(self.blocks, caches or [None] * len(self.blocks)):
            h = block(h, cache)
        return self.head(self.norm(h))

    def forward(self, tokens, y=None, order=None):
        """logits (B, length, vocab) at pixel positions: logits[:, j] is the distribution of
        tokens[:, j] given the tokens before j in the order (raster: tokens[:, :j])."""
        if tokens.dim() != 2 or tokens.shape[1] != self.length:
            raise ValueError(f"tokens must be (B, {self.length}), got {tuple(tokens.shape)}")
        sigma = self.orders(order, len(tokens), tokens.device)
        out = self.body(self.embed(tokens, sigma, y))  # (B, n, V) in generation order
        inverse = sigma.argsort(1)  # step at which each position is generated
        return out.gather(1, inverse[..., None].expand_as(out))

    def log_prob(self, tokens, y=None, order=None):
        """log p_sigma(tokens | y) per sequence in nats, exact for the order used."""
        logp = F.log_softmax(self(tokens, y, order).float(), dim=-1)  # (B, n, V)
        return logp.gather(2, tokens[..., None]).squeeze(2).sum(1)

    def bits_per_dim(self, tokens, y=None, order=None):
        return -self.log_prob(tokens, y, order) / (self.length * math.log(2))  # nats / (n ln 2)

    def loss(self, tokens, y=None):
        """Mean negative log-likelihood in nats per token, in the training order."""
        return -self.log_prob(tokens, y, self.order).mean() / self.length

    @staticmethod
    def draw(logits, temperature, top_k, u):
        """One token per row of logits (B, V) from softmax(logits / tau) on the top k, by inverse CDF."""
        logits = logits / temperature
        if top_k:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        cdf = torch.softmax(logits, dim=-1).cumsum(-1)  # (B, V)
        return (cdf <= u[:, None] * cdf[:, -1:]).sum(-1).clamp(max=logits.shape[-1] - 1)

    @torch.no_grad()
    def sample(self, n, y=None, temperature=1.0, generator=None, top_k=0, order=None, cfg_scale=1.0,
               cache=True, noise=None):
        """n sequences (n, length). order: None (the training order), "raster", "random" or a tensor;
        noise: the uniforms u (n, length) of the inverse CDF; cache=False reruns every prefix."""
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if not 0 <= top_k <= self.vocab:
            raise ValueError(f"top_k must be in [0, {self.vocab}] (0: off), got {top_k}")
        device, was_training = self.head.weight.device, self.training
        self.eval()  # no dropout while sampling
        sigma = self.orders(self.order if order is None else order, n, device, generator)  # (n, length)
        acc = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        if noise is None:  # the uniforms u of the inverse CDF, one per token
            noise = torch.rand(n, self.length, generator=generator, device=device, dtype=acc)
        u = noise.to(device, acc)
        guided = y is not None and cfg_scale != 1.0
        copies = 2 if guided else 1  # guidance: the batch twice, with y and with the null class
        labels = self.labels(y, n, device)
        labels = torch.cat([labels, self.labels(None, n, device)]) if guided else labels
        sigma2 = sigma.repeat(copies, 1)
        caches = [dict() for _ in self.blocks] if cache else None
        tokens = torch.zeros(n, self.length, dtype=torch.long, device=device)
        h, seen = self.start(labels), []  # s(y), (copies n, D)
        for i in range(self.length):
            h = h + self.pos_next(sigma2[:, i])  # h_i (copies n, D)
            if cache:
                logits = self.body(h[:, None], caches)[:, 0]  # one position, reusing keys and values
            else:
                seen.append(h)
                logits = self.body(torch.stack(seen, 1))[:, -1]  # the whole prefix again
            logits = logits.to(acc)
            if guided:
                l_cond, l_uncond = logits.chunk(2)
                logits = l_uncond + cfg_scale * (l_cond - l_uncond)
            x_i = self.draw(logits, temperature, top_k, u[:, i])  # x_{sigma_i}, (n,)
            tokens.scatter_(1, sigma[:, i:i + 1], x_i[:, None])
            h = self.tok(x_i.repeat(copies)) + self.pos_read(sigma2[:, i])
        self.train(was_training)
        return tokens


# -----------------------------------------------------------------------------
# pixels <-> tokens: level = round((x + 1) / 2 (L - 1)); channels interleaved per pixel

def to_tokens(x, levels):
    """Images (B, C, H, W) in [-1, 1] -> tokens (B, H W C) in [0, levels)."""
    t = ((x + 1) / 2 * (levels - 1)).round().long().clamp(0, levels - 1)
    return t.permute(0, 2, 3, 1).reshape(len(x), -1)


def to_images(tokens, shape, levels):
    """Tokens (B, H W C) -> images (B, C, H, W) in [-1, 1]."""
    C, H, W = shape
    x = tokens.float() / (levels - 1) * 2 - 1
    return x.view(len(tokens), H, W, C).permute(0, 3, 1, 2)


# -----------------------------------------------------------------------------
# command line

# ar.py's own budget where it differs from common.DATA_DEFAULTS: a transformer over 64 tokens costs
# more per step than the 8x8 UNet, and 1297 training digits overfit after ~1000 steps (dropout helps)
BUDGETS = {"digits": dict(iters=1000, dropout=0.1)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog="see the module docstring for the math")
    common.add_args(parser)
    a = parser.add_argument
    a("--order", default="raster", choices=["raster", "random"], help="training (and sampling) order")
    a("--depth", type=int, default=2, help="transformer blocks (the width is 4 x --width; --arch does not apply)")
    a("--heads", type=int, default=4, help="attention heads")
    a("--levels", type=int, default=0, help="grey levels per pixel (0: digits' own 17, 16 for mnist/cifar10)")
    a("--temperature", type=float, default=1.0, help="sampling temperature tau")
    a("--top-k", type=int, default=0, help="sample only among the k most likely levels (0: off)")
    a("--no-cache", action="store_true", help="sample without the key-value cache (slower, same samples)")
    a("--dropout", type=float, default=0.0, help="dropout on the residual branches while training")
    parser.set_defaults(**BUDGETS.get(parser.parse_known_args(argv)[0].data, {}))
    args = common.parse_args(parser, argv, "ar", model_flags=("order", "depth", "heads", "levels"))
    args.arch = "transformer"  # for the log and the checkpoint: ar.py brings its own network
    if args.data in common.TOY_SETS:
        parser.error(f"ar.py models pixels as tokens; {args.data} is a set of 2-D points, not pixels: "
                     "use --data digits or --data mnist")
    if args.depth < 1 or args.heads < 1 or (4 * args.width) % args.heads:
        parser.error(f"need --depth >= 1 and --heads dividing 4 x --width = {4 * args.width}")
    if args.levels and not 2 <= args.levels <= 256:
        parser.error(f"--levels must be in [2, 256] (0: default), got {args.levels}")
    if not args.temperature > 0:
        parser.error(f"--temperature must be positive, got {args.temperature}")
    if not 0 <= args.dropout < 1:
        parser.error(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.top_k < 0:
        parser.error(f"--top-k must be >= 0 (0: off), got {args.top_k}")
    levels = args.levels or (17 if args.data == "digits" else 16)  # digits: their own 17; else quantized
    if args.top_k > levels:
        parser.error(f"--top-k {args.top_k} exceeds the {levels} levels: use at most {levels}")

    def make_model(data):
        return AR(levels, math.prod(data.shape), 0 if args.uncond else data.num_classes, dim=4 * args.width,
                  depth=args.depth, heads=args.heads, order=args.order, dropout=args.dropout)

    def loss_fn(net, x, y):
        return net.loss(to_tokens(x, levels), y)

    def sample_fn(net, shape, y, generator):
        tokens = net.sample(shape[0], y, args.temperature, generator, top_k=args.top_k,
                            cfg_scale=args.cfg_scale, cache=not args.no_cache)
        return to_images(tokens, shape[1:], levels)

    return common.run(args, "ar", loss_fn, sample_fn, make_model=make_model)


if __name__ == "__main__":
    main()
