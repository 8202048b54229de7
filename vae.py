"""VAE: Variational Autoencoder (Kingma & Welling, arXiv 1312.6114), with likelihoods that are probabilities.

The math, in the notation of the lectures "Generative Modeling" (T.-W. Ke, 2026) and "Advanced
Generative Models: From VAE to Diffusion and Flow Matching" (NICE Lab, Zhejiang University, 2026)
(x the data with D dimensions, z the latent with d):

  prior            p(z) = N(0, I_d)
  encoder          q_phi(z|x) = N(z; mu_phi(x), diag sigma_phi^2(x)); the network returns (mu, log sigma^2)
  reparameterize   z = mu_phi(x) + sigma_phi(x) * eps,  eps ~ N(0, I_d), so a gradient reaches mu and sigma
  decoder, images  p_theta(x|z) = prod_i softmax(l_theta(z)_i)[k_i],  k_i = (x_i + 1) / 2 * (L - 1),
                   a categorical over the L grey levels of pixel i (L = 17 for digits, 256 for MNIST):
                   a probability, so -log p(x) is a code length (nats; bits/dim = nats / (D ln 2))
  decoder, points  p_theta(x|z) = N(x; m_theta(z), diag s_theta^2(z)) with learned variance: a density
  ELBO             log p(x) = ELBO(x) + KL(q_phi(z|x) || p(z|x)) >= ELBO(x),
                   ELBO(x) = E_q[log p_theta(x|z)] - KL(q_phi(z|x) || p(z))
                   (p(x) = p(x, z) / p(z|x) for every z, so log p(x) = E_q[log p(x, z) / q(z|x)]
                   + E_q[log q(z|x) / p(z|x)]; then split p(x, z) = p(x|z) p(z))
  analytic KL      KL(N(mu, diag sigma^2) || N(0, I)) = 1/2 sum_j (sigma_j^2 + mu_j^2 - 1 - log sigma_j^2)
                   (E_q[log q - log p] per coordinate: -1/2 log sigma^2 - 1/2 + 1/2 (sigma^2 + mu^2))
  loss             L(x) = -ELBO(x) with one z per x, summed over the D dimensions (never averaged), nats
  IWAE             L_k(x) = E log (1/k sum_i w_i),  w_i = p_theta(x|z_i) p(z_i) / q_phi(z_i|x),  z_i ~ q_phi(z|x):
                   ELBO = L_1 <= L_k <= L_k' <= log p(x) for k <= k', computed as logsumexp_i log w_i - log k
                   (Burda, Grosse & Salakhutdinov, arXiv 1509.00519; E w_i = p(x), and Jensen)

Two slips of the NICE Lab lecture, corrected here: its reconstruction term -||x - f(z)||^2 / (2 sigma_dec^2)
drops the Gaussian's normaliser -D/2 log(2 pi sigma_dec^2), so it is a loss that looks like a
log-likelihood but is none (and 17-level pixels have no density at all); its isotropic KL reads
"- 2 log sigma" where "- 2 d log sigma" is meant. tests/test_vae.py checks the KL against
torch.distributions and a Monte Carlo estimate, and the bound ladder against the exact log p(x) of
probabilistic PCA.

The categorical head is factorised, l(z)_i = U h_i(z) + c_i: a bias c_i (L logits) per pixel and
features h_i of size --head-dim mapped to logits by one matrix U shared by all pixels. How each
pixel's level distribution moves with z is thus low-rank; with the 1297 training digits a full head
(16 free logits per pixel) overfits (benchmarks/README.md measures both), and for MNIST's 256 levels
it keeps the output layer small. Samples for the quality figure draw z ~ N(0, I) and then every
pixel's level from p_theta(x|z) (the model's own samples); --pixels mean shows the decoder's mean
image sum_k softmax(l)_k v_k instead (v_k the value of level k), smoother but blurrier
(benchmarks/README.md measures both in Frechet distance).

The model is unconditional: its loss ignores labels, and main() trains it with --uncond on. After
training, OUT holds samples.png, recon.png (rows of test digits, each followed by its
reconstruction: the decoder mean at z = mu_phi(x)) and interp.png (decoder means along straight
lines between the encodings mu_phi of two test digits), and the held-out -ELBO and IWAE NLL are
printed and appended to OUT/metrics.jsonl.

Run:
  python vae.py                          # digits 8x8 on a CPU: samples, recon, interp, NLL
  python vae.py --data moons             # 2-D points, Gaussian decoder (NLL is a continuous density there)
  python vae.py --data mnist --download --hidden 512 --latent-dim 32   # 28x28, 256-level categorical
  python vae.py --ckpt runs/vae-digits/ckpt.pt --iwae-k 5000   # re-evaluate a trained model
  python vae.py --resume --iters 5000    # continue runs/vae-digits/ckpt.pt
"""
import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import common


# -----------------------------------------------------------------------------
# Gaussian pieces: KL, log-density, reparameterization

def gaussian_kl(mu, logvar):
    """KL(N(mu, diag exp(logvar)) || N(0, I)) summed over the last dimension."""
    return 0.5 * (logvar.exp() + mu.pow(2) - 1 - logvar).sum(-1)  # 1/2 sum (sigma^2 + mu^2 - 1 - log sigma^2)


def gaussian_log_prob(x, mean, logvar):
    """log N(x; mean, diag exp(logvar)) summed over the last dimension, normaliser included."""
    return -0.5 * ((x - mean).pow(2) / logvar.exp() + logvar + math.log(2 * math.pi)).sum(-1)


def reparameterize(mu, logvar, eps):
    return mu + (0.5 * logvar).exp() * eps  # z = mu + sigma * eps


def full_precision(t):
    """bf16/fp16 (autocast) -> float32 before log-probabilities; float32/float64 unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


# -----------------------------------------------------------------------------
# networks: small MLPs on flattened data

def mlp(d_in, hidden, d_out, depth=2):
    layers, d = [], d_in
    for _ in range(depth):
        layers += [nn.Linear(d, hidden), nn.SiLU()]
        d = hidden
    return nn.Sequential(*layers, nn.Linear(d, d_out))


class LevelLogits(nn.Module):
    """Per-pixel logits over L levels from features (B, hidden): l_i = U h_i + c_i -> (B, D, L)."""

    def __init__(self, hidden, n_pixels, levels, head_dim=4):
        super().__init__()
        self.n_pixels, self.head_dim = n_pixels, head_dim
        self.features = nn.Linear(hidden, n_pixels * head_dim)  # h_i for every pixel
        self.levels = nn.Linear(head_dim, levels, bias=False)  # U, shared by the pixels
        self.bias = nn.Parameter(torch.zeros(n_pixels, levels))  # c_i

    def forward(self, h):
        h = self.features(F.silu(h)).view(-1, self.n_pixels, self.head_dim)  # (B, D, head_dim)
        return self.levels(h) + self.bias  # (B, D, L)


# -----------------------------------------------------------------------------
# the model

class VAE(nn.Module):
    """A VAE for data of `shape`: (C, H, W) images on `levels` grey levels in [-1, 1] get the
    categorical decoder; (D,) points get a Gaussian decoder with learned variance (log-variance
    softly floored at min_logvar so a density cannot collapse onto a point, and starting near
    init_logvar: a decoder that starts wide explains the data by its noise alone and the
    posterior collapses onto the prior; starting narrow, z is put to use first). `encoder` maps
    x (B, D) -> (B, 2 d) = (mu, logvar); `decoder` maps z (B, d) -> (B, D, L) logits or (B, 2 D)
    = (mean, raw logvar); both default to MLPs of width `hidden`."""

    def __init__(self, shape, latent_dim=16, hidden=128, levels=None, head_dim=4, min_logvar=-9.0,
                 init_logvar=-5.0, encoder=None, decoder=None):
        super().__init__()
        for name, value in (("latent_dim", latent_dim), ("hidden", hidden), ("head_dim", head_dim)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer ({name}), got {value}")
        self.shape, self.latent_dim, self.min_logvar = tuple(shape), latent_dim, min_logvar
        self.is_image = len(self.shape) == 3
        self.levels = (256 if self.is_image else 0) if levels is None else levels
        if self.is_image and self.levels < 2:
            raise ValueError(f"images need levels >= 2 for the categorical decoder, got {levels}")
        if not self.is_image and self.levels:
            raise ValueError(f"points of shape {shape} take the Gaussian decoder: pass levels=0")
        D = math.prod(self.shape)
        self.encoder = encoder if encoder is not None else mlp(D, hidden, 2 * latent_dim)
        if decoder is None:
            if self.is_image:
                head = LevelLogits(hidden, D, self.levels, head_dim)
            else:  # (mean, raw logvar); the variance starts small (e^init_logvar): see the class docstring
                head = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * D))
                nn.init.constant_(head[1].bias[D:], init_logvar)
            decoder = nn.Sequential(mlp(latent_dim, hidden, hidden, depth=1), head)
        self.decoder = decoder

    def encode(self, x):
        """x (B, *shape) -> (mu, logvar), each (B, d)."""
        return full_precision(self.encoder(x.flatten(1))).chunk(2, dim=-1)

    def decode(self, z):
        """z (B, d) -> images: logits (B, C, H, W, L); points: (mean, logvar), each (B, D)."""
        out = full_precision(self.decoder(z))
        if self.is_image:
            return out.view(-1, *self.shape, self.levels)
        mean, raw = out.chunk(2, dim=-1)
        return mean, self.min_logvar + F.softplus(raw - self.min_logvar)  # logvar >= min_logvar

    def level_index(self, x):
        """Pixel values in [-1, 1] -> level k = (x + 1) / 2 (L - 1), as LongTensor."""
        return ((x + 1) / 2 * (self.levels - 1)).round().long().clamp(0, self.levels - 1)

    def log_px_given_z(self, x, out):
        """log p_theta(x|z) (B,), summed over the D dimensions, from the decoder's output."""
        if self.is_image:  # log softmax(l_i)[k_i], summed over pixels
            logp = F.log_softmax(out, dim=-1).gather(-1, self.level_index(x).unsqueeze(-1))
            return logp.flatten(1).sum(1)
        return gaussian_log_prob(x.flatten(1), *out)

    def neg_elbo(self, x, generator=None):
        """-ELBO(x) per example (B,), one reparameterized z each, analytic KL."""
        mu, logvar = self.encode(x)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = reparameterize(mu, logvar, eps)
        return -self.log_px_given_z(x, self.decode(z)) + gaussian_kl(mu, logvar)

    def loss(self, x, y=None):
        """Negative ELBO per example, averaged over the batch (nats). The model is unconditional:
        y is accepted (the shared training loop's loss(net, x, y)) and ignored."""
        return self.neg_elbo(x).mean()

    @torch.no_grad()
    def log_likelihood(self, x, k=100, generator=None, chunk=None):
        """Importance-weighted estimate L_k of log p(x) per example (B,), nats. k samples of
        q(z|x) per example, decoded `chunk` at a time; the log-weights meet in one logsumexp."""
        mu, logvar = self.encode(x)
        B, d = mu.shape
        chunk = chunk or max(1, min(k, 2 ** 22 // max(1, B * math.prod(self.shape) * max(1, self.levels))))
        log_w = []
        for start in range(0, k, chunk):
            m = min(chunk, k - start)
            eps = torch.randn((m, B, d), generator=generator, device=mu.device, dtype=mu.dtype)
            z = reparameterize(mu, logvar, eps)  # (m, B, d)
            x_rep = x.unsqueeze(0).expand(m, *x.shape).reshape(m * B, *x.shape[1:])
            log_px = self.log_px_given_z(x_rep, self.decode(z.view(m * B, d))).view(m, B)
            log_pz = gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z))
            log_qz = gaussian_log_prob(z, mu, logvar)
            log_w.append(log_px + log_pz - log_qz)  # log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x)
        return torch.logsumexp(torch.cat(log_w), dim=0) - math.log(k)  # log 1/k sum_i w_i

    def level_values(self, like):
        """v_k = 2 k / (L - 1) - 1, the pixel value of level k; float64, cast to `like`."""
        return torch.linspace(-1, 1, self.levels, dtype=torch.float64).to(like)

    def mean_image(self, logits):
        """E[x|z] = sum_k softmax(l)_k v_k for images (B, C, H, W)."""
        return (F.softmax(logits, dim=-1) * self.level_values(logits)).sum(-1)

    def decode_x(self, z, pixels="sample", generator=None):
        """z (B, d) -> x: the decoder's mean, or a draw of x ~ p_theta(x|z) with pixels="sample"."""
        if pixels not in ("sample", "mean"):
            raise ValueError(f"pixels must be 'sample' or 'mean', got {pixels!r}")
        out = self.decode(z)
        if pixels == "mean":
            return self.mean_image(out) if self.is_image else out[0]
        if self.is_image:
            probs = F.softmax(out, dim=-1).view(-1, self.levels)
            k = torch.multinomial(probs, 1, generator=generator).view(out.shape[:-1])
            return self.level_values(out)[k]
        mean, logvar = out
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return reparameterize(mean, logvar, eps)  # x = m(z) + s(z) * eps

    @torch.no_grad()
    def sample(self, n, generator=None, noise=None, pixels="sample"):
        """n samples (n, *shape): z ~ N(0, I) (or z = noise, whose device and dtype the samples
        take; else the model's), then decode_x(z, pixels)."""
        p = next(self.parameters())
        if noise is None:
            noise = torch.randn((n, self.latent_dim), generator=generator, device=p.device, dtype=p.dtype)
        z = noise  # (n, d)
        return self.decode_x(z.to(p.dtype), pixels, generator).view(-1, *self.shape).to(z.dtype)


# -----------------------------------------------------------------------------
# pictures and held-out likelihoods

@torch.no_grad()
def reconstruction_grid(model, x, path):
    """Rows of originals, each followed by a row of their reconstructions E[x | z = mu(x)]."""
    recon = model.decode_x(model.encode(x)[0], "mean").view_as(x)
    rows = [t for i in range(0, len(x), 10) for t in (x[i:i + 10], recon[i:i + 10])]
    common.save_grid(torch.cat(rows), path)


@torch.no_grad()
def interpolation_grid(model, x_a, x_b, path, steps=10):
    """Row j: E[x|z] along z = (1 - a) mu(x_a[j]) + a mu(x_b[j]), a from 0 to 1."""
    za, zb = model.encode(x_a)[0], model.encode(x_b)[0]  # (P, d)
    a = torch.linspace(0, 1, steps, dtype=torch.float64).to(za)[None, :, None]
    z = ((1 - a) * za[:, None] + a * zb[:, None]).reshape(-1, za.shape[1])  # (P * steps, d)
    common.save_grid(model.decode_x(z, "mean").view(-1, *model.shape), path, nrow=steps)


@torch.no_grad()
def held_out_nll(model, x, k=1000, seed=0, batch=100):
    """-ELBO and -L_k on x, nats per example (and bits/dim for images), seeded."""
    g = torch.Generator(x.device).manual_seed(seed)
    nelbo = torch.cat([model.neg_elbo(b, generator=g) for b in x.split(batch)]).mean().item()
    nll = -torch.cat([model.log_likelihood(b, k=k, generator=g) for b in x.split(batch)]).mean().item()
    out = {"neg_elbo_nats": nelbo, f"iwae{k}_nll_nats": nll, "k": k, "n": len(x)}
    if model.is_image:
        bpd = math.prod(model.shape) * math.log(2)
        out.update(neg_elbo_bpd=nelbo / bpd, **{f"iwae{k}_nll_bpd": nll / bpd})
    return out


def report_likelihood(nll, data, args):
    """Print the held-out figures of held_out_nll in one line and append them to OUT/metrics.jsonl."""
    k = nll["k"]
    unit = "nats/image" if data.is_image else "nats/point (a continuous density)"
    bpd = f" = {nll['neg_elbo_bpd']:.4f} / {nll[f'iwae{k}_nll_bpd']:.4f} bits/dim" if data.is_image else ""
    common.log(f"held-out {data.name} (n={nll['n']}): -ELBO {nll['neg_elbo_nats']:.3f}, "
               f"IWAE k={k} NLL {nll[f'iwae{k}_nll_nats']:.3f} {unit}{bpd}")
    with open(Path(args.out) / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"likelihood": nll}) + "\n")


# -----------------------------------------------------------------------------
# command line

def main(argv=None):
    # flags: the shared ones (common.add_args), then the VAE's; uncond: the model ignores labels
    parser = common.add_args(argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                                     epilog="see the module docstring for the math"))
    own = parser.add_argument_group("vae (its own MLPs: --arch and --width do not apply)")
    own.add_argument("--latent-dim", type=int, help="latent size d (default 16 for images, 2 for points)")
    own.add_argument("--hidden", type=int, help="width of the encoder and decoder MLPs (default 128; 256 for points)")
    own.add_argument("--head-dim", type=int, help="rank of the categorical head's z-dependence, images (default 4)")
    own.add_argument("--pixels", choices=["sample", "mean"],
                     help="samples: a draw of every pixel's level (default), or the decoder's mean image")
    own.add_argument("--iwae-k", type=int, help="importance samples for the held-out log p(x) (default 1000; 0: skip)")
    own.add_argument("--n-nll", type=int, help="held-out examples for the NLL figures (default 500)")
    defaults = dict(latent_dim=16, hidden=128, head_dim=4, pixels="sample", iwae_k=1000, n_nll=500, uncond=True)
    budgets = {"toy": dict(latent_dim=2, hidden=256)}  # points: a 2-D latent, a wider MLP (against collapse: VAE)
    args, ckpt = common.parse_args(parser, argv, "vae", defaults=defaults, budgets=budgets,
                                   model_flags=("latent_dim", "hidden", "head_dim"))
    if args.cfg_scale != 1.0:
        parser.error("vae.py trains an unconditional model: --cfg-scale does not apply")
    if args.iwae_k < 0 or args.n_nll < 1:
        parser.error(f"--iwae-k must be >= 0 and --n-nll positive, got {args.iwae_k} and {args.n_nll}")
    with common.session(args) as device:
        data = common.load_data(args.data, args.data_root, args.download)
        vae = common.construct(parser, VAE, data.shape, args.latent_dim, args.hidden, data.levels,
                               args.head_dim).to(device)  # encoder q_phi(z|x), decoder p_theta(x|z)
        q = {}  # what main returns: the training's wall and CPU seconds when it trains, the quality figures
        if args.sample_only:
            vae = common.load_ema(ckpt, vae)
        else:
            t0, c0 = time.time(), time.process_time()
            vae = common.train(vae, VAE.loss, data, args, ckpt)  # maximises the ELBO; returns the EMA model
            q.update(train_seconds=time.time() - t0, train_cpu_seconds=time.process_time() - c0)
        if not common.is_main():
            return None
        if args.n_eval == 0:
            return q or None
        g = torch.Generator(device).manual_seed(args.seed + 1)
        t0 = time.time()
        with common.autocast(device, args.amp):
            x = vae.sample(args.n_eval, generator=g, pixels=args.pixels)  # z ~ N(0, I), then x ~ p_theta(x|z)
        q.update(common.report(x, data, args, sample_seconds=time.time() - t0))
        x_test, out = data.x_test.to(device), Path(args.out)
        if data.is_image:  # reconstructions of 50 test digits; interpolations between 8 pairs
            reconstruction_grid(vae, x_test[:50], out / "recon.png")
            interpolation_grid(vae, x_test[50:58], x_test[58:66], out / "interp.png")
        if args.iwae_k:  # held-out -ELBO and IWAE bound
            q["likelihood"] = held_out_nll(vae, x_test[:args.n_nll], k=args.iwae_k, seed=args.seed)
            report_likelihood(q["likelihood"], data, args)
        return q


if __name__ == "__main__":
    main()
