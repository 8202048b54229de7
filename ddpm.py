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
  classifier         eps = -sqrt(1 - alpha_bar_t) grad log p(x_t) and grad log p(x_t | y) = grad log p(x_t)
  guidance           + grad log p(y | x_t), so a noisy classifier p_phi(y | x_t, t) turns an unconditional model
                     into a conditional one (Dhariwal & Nichol, arXiv 2105.05233):
                     eps~ = eps_theta(x_t, t) - s sqrt(1 - alpha_bar_t) grad_{x_t} log p_phi(y | x_t, t)
                     s = 1 samples p(x | y) when eps_theta and p_phi are exact; s > 1 sharpens towards the class,
                     p(x_t) p(y | x_t)^s. In the mean this adds s beta_t / sqrt(alpha_t) grad log p_phi: their
                     Algorithm 1's shift s Sigma grad log p_phi with Sigma = beta_t / sqrt(alpha_t), not sigma_t^2
                     (the two agree as beta_t -> 0; the score form is the one that is exact at s = 1).
                     p_phi is trained by cross-entropy on x_t ~ q(x_t | x_0), t ~ U{1..T}.
  classification     Bayes' rule, p(y | x_0) = p(x_0 | y) p(y) / sum_y' p(x_0 | y') p(y'), with the bound below
  (zero-shot)        as log p(x_0 | y) (Li et al., "Your Diffusion Model is Secretly a Zero-Shot Classifier",
                     arXiv 2303.16203): with sigma_t^2 = beta_t every term is
                     L_{t-1} = lambda_t || eps - eps_theta(x_t, t, y) ||^2 + (terms free of y),
                     lambda_t = beta_t^2 / (2 sigma_t^2 alpha_t (1 - alpha_bar_t))
                              = beta_t / (2 alpha_t (1 - alpha_bar_t))
                     (mu_tilde - mu_theta = beta_t / (sqrt(alpha_t) sqrt(1 - alpha_bar_t)) (eps_theta - eps); L_0
                     is the same expression at t = 1), so log p(y | x_0) = log p(y) - sum_t lambda_t
                     E_eps || eps - eps_theta(x_t, t, y) ||^2 + (terms free of y), normalised over y. Li et al.'s
                     "simple" weighting, lambda_t = 1/T, ranks the classes but is not calibrated. Estimated from
                     n_samples draws (t stratified over 1..T, eps ~ N(0, I)), the same draws for every class:
                     the class differences then do not carry the noise of || eps ||^2 (a paired comparison).
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
  python ddpm.py                          # digits, 8x8, on a CPU; grid + Frechet distance
  python ddpm.py --device cuda            # the same on a GPU
  python ddpm.py --data checkerboard      # 2-D points; W2 against held-out points
  python ddpm.py --data mnist --download  # 28x28 MNIST (downloads once, verified by SHA-256)
  python ddpm.py --ckpt runs/ddpm-digits/ckpt.pt --cfg-scale 2   # sample a trained model, guided
  python ddpm.py --resume                 # continue runs/ddpm-digits/ckpt.pt up to --iters
  python ddpm.py --uncond --bpd 500       # an unconditional model and its held-out bits/dim (variational bound)
  python ddpm.py --ckpt runs/ddpm-digits/ckpt.pt --n-eval 0 --classify 500   # zero-shot accuracy, confusion matrix
  python ddpm.py --uncond --classifier-scale 2 --out runs/ddpm-uncond   # + a noisy classifier; samples guided
  python ddpm.py --ckpt runs/ddpm-uncond/ckpt.pt --classifier-scale 4   # its classifier: OUT/classifier/ckpt.pt
"""
import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

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
        return (eps - net(x_t, t.to(x0.device, non_blocking=True), y)).pow(2).mean()  # Algorithm 1

    def guided(self, net, x_t, t, y=None, cfg_scale=1.0):
        """eps_theta, with classifier-free guidance when w != 1 (two network calls)."""
        if y is None or cfg_scale == 1.0:
            return net(x_t, t, y)
        e_uncond = net(x_t, t, None)
        return e_uncond + cfg_scale * (net(x_t, t, y) - e_uncond)

    def classifier_loss(self, classifier, x0, y):
        """Cross-entropy of the noisy classifier p_phi(y | x_t, t) on x_t ~ q(x_t | x_0), t ~ U{1..T}."""
        t = torch.randint(1, self.T + 1, (x0.shape[0],))
        x_t = self.q_sample(x0, t, torch.randn_like(x0))
        return F.cross_entropy(classifier(x_t, t.to(x0.device)).float(), y)

    @torch.no_grad()
    def sample(self, net, shape, y=None, cfg_scale=1.0, generator=None, noise=None, classifier=None,
               classifier_scale=0.0, trajectory=None):
        """Ancestral sampling, Algorithm 2: T network calls from x_T ~ N(0, I) to x_0. With a noisy
        classifier (classifier(x_t, t) -> logits (B, num_classes)) and labels y, classifier guidance:
        eps~ = eps - s sqrt(1 - alpha_bar_t) grad_{x_t} log p_phi(y | x_t, t), s = classifier_scale.
        trajectory: a list that receives x_T, x_{T-1}, ..., x_0 (common.record)."""
        guide = classifier is not None and classifier_scale != 0  # s = 0: not one operation more
        if guide and y is None:
            raise ValueError("classifier guidance needs the labels y to guide towards")
        x = common.start_noise(shape, generator, noise)  # x_T ~ N(0, I)
        common.record(trajectory, x)
        dtype = x.dtype
        for t in range(self.T, 0, -1):
            tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
            e = self.guided(net, x, tt, y, cfg_scale).to(dtype)
            beta, alpha, alpha_bar = float(self.beta[t]), float(self.alpha[t]), float(self.alpha_bar[t])
            if guide:
                e = e - classifier_scale * math.sqrt(1 - alpha_bar) * classifier_score(classifier, x, tt, y).to(dtype)
            # x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) + sigma_t z
            mean = (x - beta / math.sqrt(1 - alpha_bar) * e) / math.sqrt(alpha)
            if t > 1:
                z = torch.randn(x.shape, generator=generator, device=x.device, dtype=dtype)
                x = mean + math.sqrt(float(self.beta_tilde[t])) * z
            else:
                x = mean
            common.record(trajectory, x)
        return x

    @torch.no_grad()
    def classify(self, net, x0, num_classes, n_samples=100, generator=None, log_prior=None, weighting="simple",
                 paired=True):
        """Zero-shot classification by Bayes' rule: log p(y | x_0) (B, num_classes), float64, from the
        conditional noise network net(x_t, t, y) alone, with log p(x_0 | y) estimated as
        -sum_t lambda_t E_eps || eps - eps_theta(x_t, t, y) ||^2 (module docstring) from n_samples draws
        of (t, eps) per example, t stratified (draw k uniform in the k-th of n_samples equal slices of
        1..T), the same draws for every class unless paired=False. weighting: "simple" (lambda_t = 1/T,
        Li et al.) or "elbo" (the bound's lambda_t = beta_t / (2 alpha_t (1 - alpha_bar_t)): calibrated as
        far as the bound is tight). log_prior: log p(y) (num_classes,); None: uniform. num_classes x
        n_samples network calls per example, in batches of num_classes x B."""
        if not (isinstance(n_samples, int) and n_samples >= 1):
            raise ValueError(f"n_samples must be a positive number of (t, eps) draws, got {n_samples}")
        if weighting not in ("simple", "elbo"):
            raise ValueError(f"unknown weighting {weighting!r}: use 'simple' or 'elbo'")
        B, C, dev = x0.shape[0], num_classes, x0.device
        draw_on = generator.device if generator is not None else dev
        lam = self.beta / (2 * self.alpha * (1 - self.alpha_bar).clamp(min=1e-300))  # lambda_t, t = 1..T
        x = x0.repeat(C, *[1] * (x0.dim() - 1))  # (C B, ...): class-major copies of the batch
        y = torch.arange(C, device=dev).repeat_interleave(B)
        n = B if paired else C * B  # one draw per example (shared by the classes) or per (class, example)
        score = torch.zeros(C, B, dtype=torch.float64, device=dev)
        for k in range(n_samples):
            u = torch.rand(n, generator=generator, device=draw_on, dtype=torch.float64).cpu()
            t = (1 + ((k + u) / n_samples * self.T).floor().long()).clamp(max=self.T)  # stratum k of 1..T
            eps = torch.randn((n, *x0.shape[1:]), generator=generator, device=draw_on).to(dev, x0.dtype)
            if paired:
                t, eps = t.repeat(C), eps.repeat(C, *[1] * (x0.dim() - 1))
            err = (eps - net(self.q_sample(x, t, eps), t.to(dev), y)).double().pow(2).flatten(1).sum(1)
            w = lam[t] * self.T if weighting == "elbo" else torch.ones(C * B, dtype=torch.float64)
            score -= (w.to(dev) * err).view(C, B) / n_samples
        if log_prior is None:
            log_prior = torch.zeros(C, dtype=torch.float64)
        return torch.log_softmax(score.T + log_prior.to(dev, torch.float64), dim=1)

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


def classifier_score(classifier, x_t, t, y):
    """grad_{x_t} log p_phi(y | x_t, t) (the shape of x_t), with respect to x_t only: x_t is detached
    and taken as the one input of autograd.grad, so nothing accumulates in the classifier's .grad,
    and it works inside the sampler's no_grad."""
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        logits = classifier(x, t)  # log-softmax in at least float32 (bf16 logits under autocast)
        log_p = torch.log_softmax(logits, 1, dtype=torch.promote_types(logits.dtype, torch.float32))
        log_p = log_p.gather(1, y[:, None]).sum()
        return torch.autograd.grad(log_p, x)[0]  # examples are independent: the sum's gradient is per example


class NoisyClassifier(nn.Module):
    """p_phi(y | x_t, t): logits (B, num_classes) from a time-conditioned network of common.make_net
    (unconditional, output shaped like x_t) and a linear head on its flattened output."""

    def __init__(self, trunk, dim, num_classes):
        super().__init__()
        self.trunk, self.head = trunk, nn.Linear(dim, num_classes)

    def forward(self, x_t, t):
        return self.head(self.trunk(x_t, t, None).flatten(1))


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
    per_image = {v: sum(tm.values()) / per_dim for v, tm in terms.items()}  # (B,) bits/dim each
    bpd = {v: float(b.mean()) for v, b in per_image.items()}
    best = min(bpd, key=bpd.get)
    stderr = float(per_image[best].std() / math.sqrt(len(x0)))  # over images and the x_t draws
    what = "-log p(x | y)" if conditional else "-log p(x)"
    common.log(f"ddpm on {data.name}: held-out {what} <= {bpd[best]:.4f} +- {stderr:.4f} bits/dim (variational bound, all {ddpm.T} "
                f"terms, reverse variance {best}; {' '.join(f'{v}: {b:.4f}' for v, b in bpd.items())}; "
                f"{data.levels} levels, edge bins open; n={len(x0)})")
    return {"bits_per_dim": bpd[best], "bits_per_dim_stderr": stderr, "bits_per_dim_by_variance": bpd,
            "bpd_variance": best, "bpd_n": len(x0)}


def zero_shot(ddpm, eps_theta, data, args, device):
    """--classify N: log p(y | x_0) by Bayes' rule (DDPM.classify, p(y) the training labels' frequencies)
    for the first N held-out examples, once per entry of --classify-samples; prints each accuracy and
    its seconds beside the feature classifier's test accuracy (images), and writes OUT/confusion.png
    for the largest n_samples (rows: true class, columns: predicted; darker = a larger share of the row)."""
    if args.classify > len(data.x_test):
        raise common.UserError(f"--classify {args.classify} exceeds the {len(data.x_test)} held-out examples "
                               f"of {data.name}")
    x, y, C = data.x_test[:args.classify].to(device), data.y_test[:args.classify], data.num_classes
    counts = torch.bincount(data.y_train, minlength=C).double()
    log_prior = (counts / counts.sum()).log()  # p(y): the training labels' frequencies
    accuracy, seconds = {}, {}
    for n in sorted(args.classify_samples):
        g = torch.Generator(device).manual_seed(args.seed + 3)
        t0 = time.time()
        with common.autocast(device, args.amp):
            pred = torch.cat([ddpm.classify(eps_theta, xb, C, n, g, log_prior).argmax(1)
                              for xb in x.split(100)]).cpu()  # 100 examples x C classes per network call
        accuracy[n], seconds[n] = float((pred == y).double().mean()), time.time() - t0
    confusion = torch.zeros(C, C).index_put_((y, pred), torch.ones(len(y)), accumulate=True)  # (true, predicted)
    share = confusion / confusion.sum(1, keepdim=True).clamp(min=1)
    picture = Path(args.out) / "confusion.png"
    cells = (255 * (1 - share)).round().byte().repeat_interleave(16, 0).repeat_interleave(16, 1)  # 16 px a cell
    common.write_png(picture, cells.numpy())
    beside = ""
    if data.is_image:
        beside = f"; feature classifier's test accuracy {common.feature_net(data, args.data_root)[1]:.3f}"
    common.log(f"ddpm on {data.name}: zero-shot accuracy on {len(y)} held-out examples (Bayes' rule, {C} x n_samples "
               f"network calls each): " + ", ".join(f"n_samples {n}: {a:.3f} ({seconds[n]:.1f}s)" for n, a in
                                                   accuracy.items()) + f"{beside}; confusion matrix {picture}")
    return {"zero_shot_accuracy": accuracy, "zero_shot_seconds": seconds, "zero_shot_n": len(y),
            "zero_shot_confusion": confusion.long().tolist()}


def noisy_classifier(ddpm, data, args, device):
    """(p_phi(y | x_t, t) for classifier guidance, the wall and CPU seconds of its training or {}). Loaded
    from --classifier (default OUT/classifier/ckpt.pt when sampling a checkpoint); else trained by
    common.train (DDPM.classifier_loss) with the model's network flags and budget into OUT/classifier, on
    the true labels: no label dropout (p_uncond 0); with --resume it continues from
    OUT/classifier/ckpt.pt (exactly, as the model does) when there is one."""
    own_ckpt = Path(args.out) / "classifier" / "ckpt.pt"
    path = args.classifier or (own_ckpt if args.sample_only else None)
    if path is None:
        own = dict(model="ddpm-classifier", uncond=False, p_uncond=0.0, resume=False, out=str(own_ckpt.parent))
        own_ckpt.parent.mkdir(parents=True, exist_ok=True)
        trunk = common.make_net(args.arch, data.shape, args.width)  # unconditional, shaped like x_t
        classifier = NoisyClassifier(trunk, math.prod(data.shape), data.num_classes).to(device)
        done = common.load_checkpoint(own_ckpt, ("ddpm-classifier",)) if args.resume and own_ckpt.exists() else None
        t0, c0 = time.time(), time.process_time()
        classifier = common.train(classifier, ddpm.classifier_loss, data, argparse.Namespace(**{**vars(args), **own}),
                                  done)
        return classifier, {"classifier_train_seconds": time.time() - t0,
                            "classifier_train_cpu_seconds": time.process_time() - c0}
    ckpt = common.load_checkpoint(path, ("ddpm-classifier",))
    a = ckpt["args"]
    if (a["data"], a["T"], a["schedule"]) != (data.name, ddpm.T, args.schedule):
        raise common.UserError(f"classifier {path} was trained for --data {a['data']} --T {a['T']} --schedule "
                               f"{a['schedule']}, the model is {data.name}, {ddpm.T}, {args.schedule}: pass one "
                               "trained with the model (ddpm.py --uncond --classifier-scale S trains both)")
    trunk = common.make_net(a["arch"], data.shape, a["width"])
    return common.load_ema(ckpt, NoisyClassifier(trunk, math.prod(data.shape), data.num_classes).to(device)), {}


def check_flags(parser, args):
    """DDPM's evaluation and guidance flags, checked once (the shared ones: common.parse_args)."""
    if args.bpd < 0 or (args.bpd and args.data in common.TOY_SETS):
        parser.error(f"--bpd takes a number of held-out images (>= 0; 2-D points have no bins), got {args.bpd}")
    if args.classify < 0:
        parser.error(f"--classify takes a number of held-out examples (>= 0; 0: skip), got {args.classify}")
    if args.classify and args.uncond:
        parser.error("--classify needs a conditional model (Bayes' rule over its labels); this one is --uncond")
    if args.classifier_scale < 0:
        parser.error(f"--classifier-scale must be >= 0 (0: no guidance), got {args.classifier_scale}")
    if args.classifier_scale and not args.uncond:
        parser.error("--classifier-scale guides an unconditional model: add --uncond (a conditional model is "
                     "guided by --cfg-scale)")
    if args.classifier and not args.classifier_scale:
        parser.error("--classifier is for classifier guidance: add --classifier-scale S (S > 0)")


def draws(text):
    """argparse type: comma-separated positive integers, e.g. --classify-samples 10,30,100."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of whole numbers")
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: n_samples, the (t, eps) draws per example, must be >= 1")
    return values


# -----------------------------------------------------------------------------
# the training script

def main(argv=None):
    # flags: the shared ones (common.add_args; per-data budgets in common.DATA_DEFAULTS), then DDPM's
    parser = common.add_args(argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                                     epilog="see the module docstring for the math"))
    own = parser.add_argument_group("ddpm")
    own.add_argument("--T", type=int, help="number of diffusion steps (default 1000)")
    own.add_argument("--schedule", choices=["linear", "cosine"], help="beta schedule (default linear)")
    own.add_argument("--bpd", type=int, metavar="N", help="images: also report the variational bound on N "
                     "held-out examples in bits/dim (T network calls; default 0: skip)")
    own.add_argument("--classify", type=int, metavar="N", help="also classify N held-out examples zero-shot by "
                     "Bayes' rule with the conditional model (default 0: skip)")
    own.add_argument("--classify-samples", type=draws, metavar="K,K,...", help="(t, eps) draws per example for "
                     "--classify, one accuracy each (default 10,30,100)")
    own.add_argument("--classifier-scale", type=common.finite, metavar="S", help="classifier guidance scale s of "
                     "an --uncond model (default 0: off); trains a noisy classifier beside it unless --classifier")
    own.add_argument("--classifier", metavar="CKPT", help="the noisy classifier to guide with (default, when "
                     "sampling a checkpoint: OUT/classifier/ckpt.pt)")
    common.add_trajectory_flag(own)
    args, ckpt = common.parse_args(parser, argv, "ddpm", defaults=dict(T=1000, schedule="linear", bpd=0, classify=0,
                                   classify_samples=[10, 30, 100], classifier_scale=0.0, trajectory=0),
                                   model_flags=("T", "schedule"))
    check_flags(parser, args)
    ddpm = common.construct(parser, DDPM, args.T, args.schedule)  # the method: schedule, loss, sampler
    with common.session(args) as device:
        data = common.load_data(args.data, args.data_root, args.download)
        num_classes = 0 if args.uncond else data.num_classes
        eps_theta = common.make_net(args.arch, data.shape, args.width, num_classes).to(device)  # eps_theta(x_t, t, y)
        q = {}  # what main returns: the trainings' wall and CPU seconds when it trains, the quality figures
        if args.sample_only:
            eps_theta = common.load_ema(ckpt, eps_theta)
        else:
            t0, c0 = time.time(), time.process_time()
            eps_theta = common.train(eps_theta, ddpm.loss, data, args, ckpt)  # Algorithm 1; returns the EMA network
            q.update(train_seconds=time.time() - t0, train_cpu_seconds=time.process_time() - c0)
        # p_phi(y | x_t, t), and the seconds of its training when it trains here
        classifier, seconds = noisy_classifier(ddpm, data, args, device) if args.classifier_scale else (None, {})
        q.update(seconds)
        if not common.is_main():
            return None
        labelled = num_classes if classifier is None else data.num_classes  # classes to sample
        if args.n_eval:
            y = common.class_labels(args.n_eval, labelled, device)
            g = torch.Generator(device).manual_seed(args.seed + 1)
            t0 = time.time()
            with common.autocast(device, args.amp):  # Algorithm 2, guided by p_phi when there is one
                x0 = ddpm.sample(eps_theta, (args.n_eval, *data.shape), y, args.cfg_scale, generator=g,
                                 classifier=classifier, classifier_scale=args.classifier_scale)
            q.update(common.report(x0, data, args, sample_seconds=time.time() - t0,
                                   classifier_scale=args.classifier_scale))
        if args.trajectory:  # Algorithm 2's path: OUT/trajectory.png (2-D data) or OUT/strip.png (images)
            common.draw_trajectory(lambda **kw: ddpm.sample(eps_theta, cfg_scale=args.cfg_scale, classifier=classifier,
                                                            classifier_scale=args.classifier_scale, **kw),
                                   data, args, device, labelled, f"DDPM ancestral, {args.T} steps")
        if args.bpd:
            q.update(held_out_bound(ddpm, eps_theta, data, args.bpd, num_classes > 0, args.seed + 2))
        if args.classify:
            q.update(zero_shot(ddpm, eps_theta, data, args, device))
        return q or None


if __name__ == "__main__":
    main()
