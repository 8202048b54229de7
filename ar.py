"""AR: an autoregressive transformer over pixel tokens, with exact likelihood and any-order generation.

The math, in the notation of the lecture "Generative Modeling" (T.-W. Ke, 2026): autoregressive models
"condition on data partitions" by the chain rule, in any order (any partition). Pixels are tokens
x_1..x_n in {0..V-1}, read in raster order, n = C H W, V grey levels:

  chain rule        p(x_1, ..., x_n) = p_theta(x_1) p_theta(x_2 | x_1) ... p_theta(x_n | x_1, ..., x_{n-1})
                    (p(a, b) = p(a) p(b | a), applied n - 1 times; as in PixelRNN / PixelCNN, van den
                    Oord et al., arXiv 1601.06759, with a transformer, Vaswani et al., arXiv 1706.03762)
  in any order      p_sigma(x) = prod_{i=1..n} p_theta(x_{sigma_i} | x_{sigma_1}, ..., x_{sigma_{i-1}}),
                    sigma a permutation of 1..n (raster: sigma_i = i); each p_sigma sums to 1 on its own
                    (sum out x_{sigma_n}, then x_{sigma_{n-1}}, ...: each conditional sums to 1)
  network input     h_1 = s(y) + q(sigma_1),   h_i = e(x_{sigma_{i-1}}) + r(sigma_{i-1}) + q(sigma_i)
                    s: start token (label table, null class = num_classes for y=None), e: token,
                    r: position just read, q: position to predict next ("two-stream" light, as in
                    XLNet, arXiv 1906.08237, and sigma-GPT, arXiv 2404.09562: without q a random-order
                    model would not know which position it predicts)
  causal attention  A_ij = softmax_j(q_i . k_j / sqrt(d) + M_ij),  M_ij = 0 if j <= i else -inf
  conditional       p_theta(x_{sigma_i} = v | x_{sigma_<i}, y) = softmax(W LN(T(h_1..h_i)_i))_v
  likelihood        log p_sigma(x) in nats (log_softmax, summed); bits/dim = -log p_sigma(x) / (n ln 2)
  training          minimise E_x E_sigma [-log p_sigma(x)] / n; sigma = raster, or uniform per sequence
  sampling          for i = 1..n: x_{sigma_i} ~ softmax(logits_i / tau), restricted to the top k;
                    drawn by inverse CDF from u_i ~ U[0, 1) (noise=), with a key-value cache: step i
                    runs one position and reuses the keys and values of steps < i
  guidance          logits = l(x, None) + w (l(x, y) - l(x, None))   (AR.guided; classifier-free
                    guidance, Ho & Salimans, arXiv 2207.12598, on the logits of every step)
  marginal          a class-conditional model defines p_sigma(x) = sum_y p(y) p_sigma(x | y) over its K classes,
                    p(y) the training label frequencies; exactly (AR.log_prob_marginal, K passes, float64)
                    log p_sigma(x) = logsumexp_y (log p(y) + log p_sigma(x | y)), a normalised model of x
                    alone, the one to set beside unconditional models. Keeping one term and bounding the sum,
                    log p(y) + log p(x | y) <= log p(x) <= max_y log p(x | y): -log p(x) exceeds the
                    conditional -log p(x | y) by at most -log p(y) (log2 K / n bits/dim for balanced classes).
                    The null label's p(x | y = None), learnt through label dropout, is another such model.

A random-order model samples with a fresh sigma per sequence, i.e. from the mixture
p(x) = E_sigma p_sigma(x). Its NLL is at most the average E_sigma[-log p_sigma(x)] (Jensen), so the
random-order number we report (each sequence scored exactly under the one order drawn for it, the
same order for every label y) is an upper bound for the sampled model. Digits have 17 grey levels
natively; MNIST's 256 are quantized to --levels (default 16), so its bits/dim are not comparable
with 256-level figures.

Run:
  python ar.py                                 # digits 8x8, raster order, on a CPU
  python ar.py --order random --out runs/ar-digits-random   # any-order training and sampling
  python ar.py --temperature 0.8 --top-k 8 --ckpt runs/ar-digits/ckpt.pt   # sample a trained model
  python ar.py --no-cache --ckpt runs/ar-digits/ckpt.pt     # the same samples, without the KV cache
  python ar.py --n-eval 0 --ckpt runs/ar-digits/ckpt.pt    # only the held-out bits/dim (--bpd N images)
  python ar.py --data mnist --download --levels 16 --device cuda   # 28x28, 784 tokens of 16 levels
  python ar.py --resume                        # continue runs/ar-digits/ckpt.pt up to --iters
"""
import argparse
import dataclasses
import math
import time

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
# the model: embeddings, likelihood, loss, guidance, sampler

def cfg(cond, uncond, cfg_scale):
    """Classifier-free guidance: uncond + w (cond - uncond); w = 1 is cond, w = 0 uncond."""
    return uncond + cfg_scale * (cond - uncond)


class AR(nn.Module):
    """p_sigma(x | y) over token sequences (B, length) in [0, vocab). order: "raster" or "random",
    the order used for training and, by default, for sampling; log_prob defaults to raster."""

    def __init__(self, vocab, length, num_classes=0, dim=64, depth=2, heads=4, order="raster", dropout=0.0):
        super().__init__()
        if order not in ("raster", "random"):
            raise ValueError(f"unknown --order {order!r}: use 'raster' or 'random'")
        if vocab < 2:
            raise ValueError(f"--levels must be at least 2 (the vocabulary: grey levels per pixel), got {vocab}")
        if length < 1:
            raise ValueError(f"the sequence length must be at least 1, got {length}")
        if depth < 1 or heads < 1 or dim % heads:
            raise ValueError(f"need --depth >= 1 and --heads dividing the width dim = {dim} (4 x --width); "
                             f"got --depth {depth}, --heads {heads}")
        if not 0 <= dropout < 1:
            raise ValueError(f"--dropout must be in [0, 1), got {dropout}")
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

    def log_prob_marginal(self, tokens, log_prior, order=None, generator=None):
        """log p_sigma(tokens) = logsumexp_y (log p(y) + log p_sigma(tokens | y)) per sequence in nats,
        float64, exact: one batch of K B sequences (the tokens repeated for each class y = 0..K-1), the
        same order sigma for every y. log_prior (K,): log p(y), normalised (the training label
        frequencies give the model p(x) = sum_y p(y) p(x | y) of the data's own mixture)."""
        K, B = self.num_classes, len(tokens)
        if K == 0:
            raise ValueError("this AR was built with num_classes=0: it is unconditional, use log_prob")
        log_prior = torch.as_tensor(log_prior, dtype=torch.float64, device=tokens.device)
        if log_prior.shape != (K,) or abs(torch.logsumexp(log_prior, 0).item()) > 1e-6:
            raise ValueError(f"log_prior must be (num_classes,) = ({K},) log-probabilities summing to 1 "
                             f"in probability, got shape {tuple(log_prior.shape)}")
        sigma = self.orders(order, B, tokens.device, generator)  # drawn once: one order per sequence
        y = torch.arange(K, device=tokens.device).repeat_interleave(B)  # class-major: y = 0 (B times), 1, ...
        by_class = self.log_prob(tokens.repeat(K, 1), y, sigma.repeat(K, 1)).double().view(K, B)
        return torch.logsumexp(log_prior[:, None] + by_class, 0)  # (B,)

    def bits_per_dim(self, tokens, y=None, order=None):
        return -self.log_prob(tokens, y, order) / (self.length * math.log(2))  # nats / (n ln 2)

    def loss(self, tokens, y=None):
        """Mean negative log-likelihood in nats per token, in the training order."""
        return -self.log_prob(tokens, y, self.order).mean() / self.length

    def guided(self, tokens, y=None, cfg_scale=1.0, order=None):
        """Classifier-free guidance on the logits (B, length, vocab): l(x, None) + w (l(x, y) - l(x, None)),
        a single call when y is None or w == 1. sample() applies the same combination (cfg) to the
        logits of each step, from one batch holding both branches."""
        if y is None or cfg_scale == 1.0:
            return self(tokens, y, order)
        return cfg(self(tokens, y, order), self(tokens, None, order), cfg_scale)

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
        guide = y is not None and cfg_scale != 1.0
        copies = 2 if guide else 1  # guidance: the batch twice, with y and with the null class
        labels = self.labels(y, n, device)
        labels = torch.cat([labels, self.labels(None, n, device)]) if guide else labels
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
            if guide:  # as self.guided, for this step: the batch holds both branches
                logits = cfg(*logits.chunk(2), cfg_scale)
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
# held-out likelihood, exact

@torch.no_grad()
def held_out_likelihood(ar, tokens, n, seed, name):
    """Exact held-out bits/dim on the first n test sequences of tokens (a Dataset of tokens), in the
    training order (random: one order per sequence drawn from seed, the same for every label).
    Unconditional: -log p(x). Conditional: -log p(x) with p(x) = sum_y p(y) p(x | y), p(y) the
    training label frequencies; -log p(x | y) with the true label; -log p(x | y = None), the null label.
    Prints one line and returns the figures."""
    device, K = ar.head.weight.device, ar.num_classes
    x, y = tokens.x_test[:n].to(device), tokens.y_test[:n].to(device)
    sigma = ar.orders(ar.order, len(x), device, torch.Generator(device).manual_seed(seed))  # (n, length)
    log_prior = torch.bincount(tokens.y_train, minlength=K).double().div(len(tokens.y_train)).log()  # log p(y)
    per = max(1, 2 ** 25 // (ar.length ** 2 * (K + 1)))  # sequences per batch: attention memory ~ K B n^2
    nats = {}
    for i in range(0, len(x), per):
        xs, ys, ss = x[i:i + per], y[i:i + per], sigma[i:i + per]
        if K:
            part = {"bits_per_dim": ar.log_prob_marginal(xs, log_prior, ss),  # logsumexp_y log p(y) p(x | y)
                    "bits_per_dim_conditional": ar.log_prob(xs, ys, ss),
                    "bits_per_dim_null": ar.log_prob(xs, None, ss)}
        else:  # unconditional: the one figure
            part = {"bits_per_dim": ar.log_prob(xs, None, ss)}
        for k, v in part.items():
            nats[k] = nats.get(k, 0.0) + v.double().sum().item()
    q = {k: -v / (len(x) * ar.length * math.log(2)) for k, v in nats.items()}  # nats -> bits per dimension
    order = "raster order" if ar.order == "raster" else f"random order, one per image (seed {seed})"
    q.update(bpd_order=order, bpd_n=len(x))
    text = f"-log p(x) {q['bits_per_dim']:.4f}"
    if K:
        text += (f" with p(x) = sum_y p(y) p(x | y), p(y) the training label frequencies; "
                 f"-log p(x | y) {q['bits_per_dim_conditional']:.4f} (true label); "
                 f"-log p(x | null label) {q['bits_per_dim_null']:.4f}")
    common.log(f"ar on {name}: held-out bits/dim, exact, {order}: {text} ({ar.vocab} levels, n={len(x)})")
    return q


# -----------------------------------------------------------------------------
# command line

def main(argv=None):
    # flags: the shared ones (common.add_args), then the AR's; the network is the AR module itself
    parser = common.add_args(argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                                     epilog="see the module docstring for the math"))
    own = parser.add_argument_group("ar (a transformer of width 4 x --width; --arch does not apply)")
    own.add_argument("--order", choices=["raster", "random"], help="training (and sampling) order (default raster)")
    own.add_argument("--depth", type=int, help="transformer blocks (default 2)")
    own.add_argument("--heads", type=int, help="attention heads (default 4)")
    own.add_argument("--levels", type=int, help="grey levels per pixel, the vocabulary (default 17 for digits, else 16)")
    own.add_argument("--dropout", type=common.finite, help="residual-branch dropout (default 0.1 for digits, else 0)")
    own.add_argument("--temperature", type=common.finite, help="sampling temperature tau (default 1)")
    own.add_argument("--top-k", type=int, help="sample only among the k most likely levels (default 0: off)")
    own.add_argument("--no-cache", action="store_true", default=None,
                     help="sample without the key-value cache (slower, the same samples)")
    own.add_argument("--bpd", type=int, metavar="N", help="report the exact bits/dim of the first N held-out "
                     "images, conditional models also -log p(x) = -log sum_y p(y) p(x | y) (default 500; 0: skip)")
    defaults = dict(order="raster", depth=2, heads=4, levels=16, dropout=0.0, temperature=1.0, top_k=0, no_cache=False,
                    bpd=500)
    budgets = {"digits": dict(iters=1000, levels=17, dropout=0.1)}  # 1297 digits overfit a transformer quickly
    args, ckpt = common.parse_args(parser, argv, "ar", defaults=defaults, budgets=budgets,
                                   model_flags=("order", "depth", "heads", "levels"))
    if args.data in common.TOY_SETS:
        parser.error(f"ar.py models pixels as tokens; {args.data} is a set of 2-D points, not pixels: use --data digits")
    if not args.temperature > 0 or not 0 <= args.top_k <= args.levels or args.bpd < 0:
        parser.error(f"need --temperature > 0, --top-k in [0, {args.levels}] (0: off) and --bpd >= 0, "
                     f"got {args.temperature}, {args.top_k} and {args.bpd}")
    with common.session(args) as device:
        data = common.load_data(args.data, args.data_root, args.download)
        tokens = dataclasses.replace(data, x_train=to_tokens(data.x_train, args.levels),  # pixels -> tokens (B, n)
                                     x_test=to_tokens(data.x_test, args.levels))
        num_classes = 0 if args.uncond else data.num_classes
        ar = common.construct(parser, AR, args.levels, tokens.shape[0], num_classes, 4 * args.width, args.depth,
                              args.heads, args.order, args.dropout).to(device)  # p_theta(x_i | x_<i, y): the network
        q = {}  # what main returns: the training's wall and CPU seconds when it trains, the quality figures
        if args.sample_only:
            ar = common.load_ema(ckpt, ar)
        else:
            t0, c0 = time.time(), time.process_time()
            ar = common.train(ar, AR.loss, tokens, args, ckpt)  # -log p_sigma(x | y) / n; returns the EMA model
            q.update(train_seconds=time.time() - t0, train_cpu_seconds=time.process_time() - c0)
        if not common.is_main():
            return None
        if args.n_eval:
            y = common.class_labels(args.n_eval, num_classes, device)
            g = torch.Generator(device).manual_seed(args.seed + 1)
            t0 = time.time()
            with common.autocast(device, args.amp):  # x_{sigma_i} ~ p_theta(. | x_{sigma_<i}, y) for i = 1..n
                x = to_images(ar.sample(args.n_eval, y, args.temperature, g, top_k=args.top_k,
                                        cfg_scale=args.cfg_scale, cache=not args.no_cache), data.shape, args.levels)
            q.update(common.report(x, data, args, sample_seconds=time.time() - t0))
        if args.bpd:  # exact -log p(x | y) and -log p(x) = -logsumexp_y (log p(y) + log p(x | y)), full precision
            q.update(held_out_likelihood(ar, tokens, args.bpd, args.seed + 2, data.name))
        return q or None


if __name__ == "__main__":
    main()
