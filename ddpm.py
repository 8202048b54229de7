"""DDPM: Denoising Diffusion Probabilistic Models (Ho, Jain & Abbeel, arXiv 2006.11239).

The math, in the notation of the lectures "Generative Modeling" (T.-W. Ke, 2026) and "Advanced
Generative Models: From VAE to Diffusion and Flow Matching" (NICE Lab, Zhejiang University, 2026):
integer t in 1..T, x_0 is the data.

  forward step       q(x_t | x_{t-1}) = N(x_t; sqrt(alpha_t) x_{t-1}, beta_t I),  alpha_t = 1 - beta_t
  diffusion kernel   q(x_t | x_0)     = N(x_t; sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I),
                     alpha_bar_t = prod_{s<=t} alpha_s,  so  x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps
                     (compose two steps: sqrt(alpha_t) (sqrt(alpha_{t-1}) x + sqrt(beta_{t-1}) e1) + sqrt(beta_t) e2
                     has variance alpha_t beta_{t-1} + beta_t = 1 - alpha_t alpha_{t-1}; induct on t)
  posterior          q(x_{t-1} | x_t, x_0) = N(mu_tilde_t, beta_tilde_t I),
                     mu_tilde_t = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0
                                + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t
                     beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t
                     (Bayes' rule: q(x_{t-1} | x_t, x_0) ~ q(x_t | x_{t-1}) q(x_{t-1} | x_0), a product of two
                     Gaussians in x_{t-1} with precisions alpha_t / beta_t and 1 / (1 - alpha_bar_{t-1}); their
                     sum is (1 - alpha_bar_t) / (beta_t (1 - alpha_bar_{t-1})) = 1 / beta_tilde_t)
  training (Alg. 1)  minimise E_{x_0, t ~ U{1..T}, eps} || eps - eps_theta(x_t, t) ||^2   (lambda_t = 1)
  sampling (Alg. 2)  x_T ~ N(0, I);  for t = T..1:
                     x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta(x_t, t)) + sigma_t z,
                     z ~ N(0, I) for t > 1, z = 0 at t = 1;  sigma_t^2 = beta_tilde_t
                     (mu_tilde with x_0 replaced by its estimate (x_t - sqrt(1 - alpha_bar_t) eps_theta) / sqrt(alpha_bar_t))
  guidance           eps~ = eps_theta(x_t, t, None) + w (eps_theta(x_t, t, y) - eps_theta(x_t, t, None))
                     (classifier-free guidance, Ho & Salimans, arXiv 2207.12598; w = 1 conditional, w = 0 not)
  bound (in nats)    -log p(x_0) <= L_T + sum_{t=2..T} L_{t-1} + L_0, with
                     L_T     = KL(q(x_T | x_0) || N(0, I))                     (no parameters: ~0)
                     L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || N(mu_theta(x_t, t), sigma_t^2 I)),  x_t ~ q(x_t | x_0)
                     L_0     = -log p_theta(x_0 | x_1), N(mu_theta(x_1, 1), sigma_1^2) discretized over the
                               data's levels: bins of width 2 / (levels - 1), the two edge bins open
                     (from log p(x_0) = log E_q[p(x_{0:T}) / q(x_{1:T} | x_0)] by Jensen, then regrouping
                     q(x_t | x_{t-1}) = q(x_{t-1} | x_t, x_0) q(x_t | x_0) / q(x_{t-1} | x_0)). sigma_t^2 is the
                     sampler's beta_tilde_t (beta_tilde_2 at t = 1, where beta_tilde_1 = 0) or beta_t; both are
                     reported and the smaller bound is the figure. Ho et al. write L_0 with bins of 2/255:
                     that is the 256-level case of the same decoder.
  schedules          linear beta from 1e-4 to 0.02 (Ho et al.); cosine alpha_bar_t = f(t) / f(0),
                     f(t) = cos^2(((t/T + s) / (1 + s)) pi/2), s = 0.008 (Nichol & Dhariwal, arXiv 2102.09672)

(One of the decks writes the mean as 1/sqrt(1 - beta_t)(x_t - beta_t/sqrt(1 - alpha_bar_t) eps): the
same thing, since alpha_t = 1 - beta_t. tests/test_ddpm.py checks the kernel and posterior against
independent computations.)

Run:
  python ddpm.py                          # digits, 8x8, within 5 minutes on a 2-core CPU; grid + Frechet distance
  python ddpm.py --device cuda            # the same on a GPU
  python ddpm.py --data checkerboard      # 2-D points; W2 against held-out points
  python ddpm.py --data mnist --download  # 28x28 MNIST (downloads once, verified by SHA-256)
  python ddpm.py --ckpt runs/ddpm-digits/ckpt.pt --cfg-scale 2   # sample a trained model, guided
  python ddpm.py --resume                 # continue runs/ddpm-digits/ckpt.pt up to --iters
  python ddpm.py --uncond --bpd 500       # an unconditional model and its held-out bits/dim (variational bound)
"""
import argparse
import math
import time

import torch

import common


# -----------------------------------------------------------------------------
# the method: schedule, forward process, posterior, loss, sampler

class DDPM:
    def __init__(self, T=1000, schedule="linear"):
        if not (isinstance(T, int) and T >= 1):
            raise ValueError(f"--T must be at least 1 (the number of diffusion steps T), got {T}")
        if schedule == "linear":  # beta from 1e-4 to 0.02 (Ho et al.)
            beta = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
        elif schedule == "cosine":  # alpha_bar_t = f(t) / f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2) (Nichol & Dhariwal)
            s = 0.008
            f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + s) / (1 + s) * math.pi / 2) ** 2
            beta = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        else:
            raise ValueError(f"unknown schedule {schedule!r}: use 'linear' or 'cosine'")
        self.T = T
        self.beta = torch.cat([torch.zeros(1, dtype=torch.float64), beta])  # (T + 1,), beta[0] = 0
        self.alpha = 1 - self.beta
        self.alpha_bar = torch.cumprod(self.alpha, 0)  # alpha_bar[0] = 1
        # posterior variance beta_tilde_t, with beta_tilde_0 := 0 (never used as a variance)
        ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar[:-1]])
        self.beta_tilde = (1 - ab_prev) / (1 - self.alpha_bar).clamp(min=1e-300) * self.beta

    def q_sample(self, x0, t, eps):
        # x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps
        t = t.cpu()  # the schedule lives on the CPU in float64; bcast casts to x0's device and dtype
        return common.bcast(self.alpha_bar[t].sqrt(), x0) * x0 + common.bcast((1 - self.alpha_bar[t]).sqrt(), x0) * eps

    def q_posterior(self, x0, x_t, t):
        # mu_tilde = sqrt(ab_{t-1}) beta_t / (1 - ab_t) x_0 + sqrt(alpha_t) (1 - ab_{t-1}) / (1 - ab_t) x_t
        ab, ab_prev = self.alpha_bar[1:], self.alpha_bar[:-1]  # indexed by t - 1
        c0 = ab_prev.sqrt() * self.beta[1:] / (1 - ab)
        ct = self.alpha[1:].sqrt() * (1 - ab_prev) / (1 - ab)
        t = t.cpu()
        mean = common.bcast(c0[t - 1], x0) * x0 + common.bcast(ct[t - 1], x0) * x_t
        return mean, common.bcast(self.beta_tilde[t], x0)

    def loss(self, net, x0, y=None):
        t = torch.randint(1, self.T + 1, (x0.shape[0],))  # t ~ U{1..T}, drawn on the CPU: no device sync
        eps = torch.randn_like(x0)
        x_t = self.q_sample(x0, t, eps)
        return (eps - net(x_t, t.to(x0.device), y)).pow(2).mean()  # Algorithm 1

    def guided(self, net, x_t, t, y=None, cfg_scale=1.0):
        """eps_theta, with classifier-free guidance when w != 1 (two network calls)."""
        if y is None or cfg_scale == 1.0:
            return net(x_t, t, y)
        e_uncond = net(x_t, t, None)
        return e_uncond + cfg_scale * (net(x_t, t, y) - e_uncond)

    @torch.no_grad()
    def sample(self, net, shape, y=None, cfg_scale=1.0, generator=None, noise=None):
        """Ancestral sampling, Algorithm 2: T network calls from x_T ~ N(0, I) to x_0."""
        x = common.start_noise(shape, generator, noise)  # x_T ~ N(0, I)
        dtype = x.dtype
        for t in range(self.T, 0, -1):
            tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
            e = self.guided(net, x, tt, y, cfg_scale).to(dtype)
            beta, alpha, alpha_bar = float(self.beta[t]), float(self.alpha[t]), float(self.alpha_bar[t])
            # x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) + sigma_t z
            mean = (x - beta / math.sqrt(1 - alpha_bar) * e) / math.sqrt(alpha)
            if t > 1:
                z = torch.randn(x.shape, generator=generator, device=x.device, dtype=dtype)
                x = mean + math.sqrt(float(self.beta_tilde[t])) * z
            else:
                x = mean
        return x

    # -------------------------------------------------------------------------
    # the variational bound: -log p(x_0) <= L_T + sum_{t=2..T} L_{t-1} + L_0

    def reverse_variance(self, variance):
        """sigma_t^2 of p_theta(x_{t-1} | x_t), (T + 1,) float64: "beta_tilde" (the sampler's; at t = 1,
        where beta_tilde_1 = 0, the next value beta_tilde_2, as Ho et al.'s code clips it) or "beta"."""
        if variance == "beta_tilde":
            return torch.cat([self.beta_tilde[:1], self.beta_tilde[2:3], self.beta_tilde[2:]])
        if variance == "beta":
            return self.beta.clone()
        raise ValueError(f"unknown reverse variance {variance!r}: use 'beta_tilde' or 'beta'")

    @torch.no_grad()
    def bound_terms(self, net, x0, levels, y=None, generator=None, variances=("beta_tilde", "beta"), n_t=None):
        """The terms of the negative ELBO per example, in nats, for each reverse variance in `variances`:
        {variance: {"L_T": (B,), "L_mid": (B,), "L_0": (B,)}} (float64). One x_t ~ q(x_t | x_0) per t and
        per example, shared by the variances (the network is called T times). n_t: estimate sum_{t>=2}
        L_{t-1} from n_t stratified times (one uniform draw in each of n_t equal strata of 2..T, weighted
        by its stratum's size): unbiased, not exact."""
        x = x0.double()
        g = generator
        def randn():
            return torch.randn(x0.shape, generator=g, device=g.device if g is not None else "cpu").to(x0.device)
        sigma2 = {v: self.reverse_variance(v) for v in variances}
        dims = tuple(range(1, x0.dim()))
        # L_T = KL(q(x_T | x_0) || N(0, I)) = sum_i KL(N(sqrt(ab_T) x_0i, 1 - ab_T) || N(0, 1)); no network
        ab_T = self.alpha_bar[self.T]
        L_T = gaussian_kl(ab_T.sqrt() * x, (1 - ab_T).expand_as(x), torch.zeros_like(x), torch.ones_like(x)).sum(dims)
        if n_t is None or n_t >= self.T - 1:
            times, weights = list(range(2, self.T + 1)), [1.0] * (self.T - 1)
        else:
            edges = torch.linspace(2, self.T + 1, n_t + 1, dtype=torch.float64).round().long().tolist()
            u = torch.rand(n_t, generator=g, device=g.device if g is not None else "cpu").cpu()
            times = [lo + int(ui * (hi - lo)) for lo, hi, ui in zip(edges[:-1], edges[1:], u.tolist())]
            weights = [float(hi - lo) for lo, hi in zip(edges[:-1], edges[1:])]
        out = {v: {"L_T": L_T, "L_mid": torch.zeros_like(L_T)} for v in variances}
        for t, w in zip([1] + times, [1.0] + weights):
            tt = torch.full((x0.shape[0],), t, dtype=torch.long, device=x0.device)
            x_t = self.q_sample(x, tt, randn().double())
            e = net(x_t.to(x0.dtype), tt, y).double()
            a, ab = self.alpha[t], self.alpha_bar[t]
            mu = (x_t - self.beta[t] / (1 - ab).sqrt() * e) / a.sqrt()  # mu_theta(x_t, t)
            if t == 1:  # L_0 = -log p_theta(x_0 | x_1): a Gaussian discretized over the data's levels
                for v in variances:
                    out[v]["L_0"] = -discretized_gaussian_log_prob(x, mu, sigma2[v][1], levels).sum(dims)
                continue
            mean_q, var_q = self.q_posterior(x, x_t, tt)  # q(x_{t-1} | x_t, x_0)
            for v in variances:  # L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || N(mu_theta, sigma_t^2 I))
                s2 = sigma2[v][t].expand_as(x)
                out[v]["L_mid"] = out[v]["L_mid"] + w * gaussian_kl(mean_q, var_q.expand_as(x), mu, s2).sum(dims)
        return out

    def nll_bound(self, net, x0, levels, y=None, generator=None, variance="beta_tilde", n_t=None):
        """-ELBO = L_T + sum_{t=2..T} L_{t-1} + L_0 per example (B,) in nats, float64: an upper bound on
        -log P(x_0) of data on `levels` equally spaced values in [-1, 1] (-log P(x_0 | y) with labels)."""
        terms = self.bound_terms(net, x0, levels, y, generator, (variance,), n_t)[variance]
        return terms["L_T"] + terms["L_mid"] + terms["L_0"]


def gaussian_kl(mean1, var1, mean2, var2):
    """KL(N(mean1, var1) || N(mean2, var2)) per element, the term of the variational bound L_{t-1}."""
    return 0.5 * (torch.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1)


def discretized_gaussian_log_prob(x, mean, var, levels):
    """log P(x) per element for x on `levels` equally spaced values in [-1, 1] under N(mean, var)
    discretized to bins of width Delta = 2 / (levels - 1) centred on the levels, the two edge bins
    open to -inf and +inf (Ho et al. use Delta = 2/255 for 256 levels). float64; the difference of two
    normal CDFs is taken in log space on the side of the mean where it does not cancel."""
    x, mean = x.double(), mean.double()
    half = 1.0 / (levels - 1)  # Delta / 2
    std = torch.as_tensor(var, dtype=torch.float64, device=x.device).sqrt()
    lo, hi = (x - half - mean) / std, (x + half - mean) / std  # the bin [x - Delta/2, x + Delta/2], standardised
    lo = torch.where(x <= -1 + 1e-6, torch.full_like(lo, -math.inf), lo)  # the lowest bin is open below
    hi = torch.where(x >= 1 - 1e-6, torch.full_like(hi, math.inf), hi)  # the highest bin is open above
    # log(Phi(hi) - Phi(lo)); for lo > 0 use the mirror image Phi(-lo) - Phi(-hi), which does not cancel
    flip = lo > 0
    a, b = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)  # log(Phi(b) - Phi(a)), a < b, a <= 0
    log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    return log_b + torch.log1p(-torch.exp(log_a - log_b))


def held_out_bound(ddpm, net, data, n, conditional, seed):
    """The variational bound on n held-out images in bits/dim, for both reverse variances (one pass
    of T network calls); prints one line and returns the figures."""
    device = next(net.parameters()).device
    x0 = data.x_test[:n].to(device)
    y = data.y_test[:n].to(device) if conditional else None
    terms = ddpm.bound_terms(net, x0, data.levels, y, torch.Generator(device).manual_seed(seed))
    per_dim = math.log(2) * x0[0].numel()  # nats per image -> bits per dimension
    bpd = {v: float(sum(part.mean() for part in tm.values())) / per_dim for v, tm in terms.items()}
    best = min(bpd, key=bpd.get)
    what = "-log p(x | y)" if conditional else "-log p(x)"
    common.log(f"ddpm on {data.name}: held-out {what} <= {bpd[best]:.4f} bits/dim (variational bound, all {ddpm.T} "
                f"terms, reverse variance {best}; {' '.join(f'{v}: {b:.4f}' for v, b in bpd.items())}; "
                f"{data.levels} levels, edge bins open; n={len(x0)})")
    return {"bits_per_dim": bpd[best], "bits_per_dim_by_variance": bpd, "bpd_n": len(x0)}


# -----------------------------------------------------------------------------
# the training script

def main(argv=None):
    # flags: the shared ones (common.add_args; per-data budgets in common.DATA_DEFAULTS), then DDPM's
    parser = common.add_args(argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                                     epilog="see the module docstring for the math"))
    parser.add_argument("--T", type=int, help="number of diffusion steps (default 1000)")
    parser.add_argument("--schedule", choices=["linear", "cosine"], help="beta schedule (default linear)")
    parser.add_argument("--bpd", type=int, metavar="N", help="images: also report the variational bound on N "
                        "held-out examples in bits/dim (T network calls; default 0: skip)")
    args, ckpt = common.parse_args(parser, argv, "ddpm", defaults=dict(T=1000, schedule="linear", bpd=0),
                                   model_flags=("T", "schedule"))
    if args.bpd < 0 or (args.bpd and args.data in common.TOY_SETS):
        parser.error(f"--bpd takes a number of held-out images (>= 0; 2-D points have no bins), got {args.bpd}")
    ddpm = common.construct(parser, DDPM, args.T, args.schedule)  # the method: schedule, loss, sampler
    with common.session(args) as device:
        data = common.load_data(args.data, args.data_root, args.download)
        num_classes = 0 if args.uncond else data.num_classes
        eps_theta = common.make_net(args.arch, data.shape, args.width, num_classes).to(device)  # eps_theta(x_t, t, y)
        if args.sample_only:
            eps_theta = common.load_ema(ckpt, eps_theta)
        else:
            eps_theta = common.train(eps_theta, ddpm.loss, data, args, ckpt)  # Algorithm 1; returns the EMA network
        if not common.is_main():
            return None
        q = {}
        if args.n_eval:
            y = common.class_labels(args.n_eval, num_classes, device)
            g = torch.Generator(device).manual_seed(args.seed + 1)
            t0 = time.time()
            with common.autocast(device, args.amp):
                x0 = ddpm.sample(eps_theta, (args.n_eval, *data.shape), y, args.cfg_scale, generator=g)  # Algorithm 2
            q = common.report(x0, data, args, sample_seconds=time.time() - t0)
        if args.bpd:
            q.update(held_out_bound(ddpm, eps_theta, data, args.bpd, num_classes > 0, args.seed + 2))
        return q or None


if __name__ == "__main__":
    main()
