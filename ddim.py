"""DDIM: Denoising Diffusion Implicit Models (Song, Meng & Ermon, 2021; arXiv 2010.02502).

Same training as DDPM (Ho, Jain & Abbeel, 2020; arXiv 2006.11239), so a ddpm.py checkpoint loads;
a new sampler. Notation of "Advanced Generative Models: From VAE to Diffusion and Flow Matching"
(NICE Lab, Zhejiang University, 2026): integer t in 1..T, x_0 the data, a_t := alpha_bar_t, and
t' < t the next time the sampler visits.

  diffusion kernel    q(x_t | x_0) = N(x_t; sqrt(a_t) x_0, (1 - a_t) I)            (all training sees)
  generalized step    q_sigma(x_t' | x_t, x_0) = N(sqrt(a_t') x_0 + sqrt(1 - a_t' - sigma_t^2)
                                                   (x_t - sqrt(a_t) x_0) / sqrt(1 - a_t),  sigma_t^2 I)
                      keeps every marginal q(x_t' | x_0) for any sigma_t, so t' need not be t - 1
  sampler             x0_hat = (x_t - sqrt(1 - a_t) eps_theta(x_t, t)) / sqrt(a_t)
                      x_t' = sqrt(a_t') x0_hat + sqrt(1 - a_t' - sigma_t^2) eps_theta + sigma_t z
  free variance       sigma_t = eta sqrt((1 - a_t') / (1 - a_t)) sqrt(1 - a_t / a_t'),  eta in [0, 1]
                      eta = 1, t' = t - 1: sigma_t^2 = beta_tilde_t, DDPM's ancestral step
                      eta = 0: deterministic, a discretization of the probability-flow ODE
  visited times       uniform   tau_i = round(T i / S),              i = S..1, then t' = 0
                      quadratic tau_i = max(round(T (i / S)^2), i)   (the DDIM paper's tau ~ i^2, denser near
                      the data; here it reaches T, so the start x_T ~ N(0, I) matches the training's last t)
  inversion           the eta = 0 step run upward, x_t' -> x_t, slope eps_theta(x_t', t), optionally refined
                      by fixed-point iterations x_t <- step(x_t', eps_theta(x_t, t)) (exact inverse)
  guidance            eps = eps_theta(x_t, t, None) + w (eps_theta(x_t, t, y) - eps_theta(x_t, t, None))
                      (classifier-free guidance, Ho & Salimans, 2022; arXiv 2207.12598)
  classifier guidance eps~ = eps_theta(x_t, t) - s sqrt(1 - a_t) grad_{x_t} log p_phi(y | x_t, t) at every visited t
                      (Dhariwal & Nichol, arXiv 2105.05233, Algorithm 2): eps = -sqrt(1 - a_t) grad log p(x_t),
                      so at s = 1 with exact eps_theta and p_phi this is the eps of p(x_t | y); see ddpm.py

Why the step keeps the marginals (the key step): with x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps and
eps_theta = eps, x0_hat = x_0 exactly, so x_t' = sqrt(a_t') x_0 + sqrt(1 - a_t' - sigma_t^2) eps
+ sigma_t z with eps, z independent N(0, I): mean sqrt(a_t') x_0, variance (1 - a_t' - sigma_t^2)
+ sigma_t^2 = 1 - a_t', which is q(x_t' | x_0). Nothing in this used t' = t - 1.

The NICE Lab lecture writes the step for t' = t - 1 only; the same formula holds for any t' < t,
which is what makes skipping steps legal. Its table's DDPM variance
sigma_t = sqrt((1 - a_{t-1}) / (1 - a_t) beta_t) is eta = 1 here. tests/test_ddim.py proves the
marginals exactly, and that eta = 1 on consecutive steps is DDPM's posterior.

Run:
  python ddim.py                                        # train the eps model on digits, sample with 50 DDIM steps
  python ddim.py --ckpt runs/ddpm-digits/ckpt.pt --steps 50           # sample a model trained by ddpm.py
  python ddim.py --ckpt runs/ddpm-digits/ckpt.pt --steps 20 --eta 1   # stochastic, DDPM-like
  python ddim.py --ckpt runs/ddpm-digits/ckpt.pt --spacing quadratic --cfg-scale 2
  python ddim.py --data checkerboard --steps 20         # 2-D points; W2 against held-out points
  python ddim.py --device cuda                          # the same on a GPU
"""
import argparse
import math
import time

import torch

import common


# -----------------------------------------------------------------------------
# the method: schedule (as in ddpm.py), loss, guidance, generalized step, visited times, sampler, inversion

class DDIM:
    def __init__(self, T=1000, schedule="linear"):
        if not (isinstance(T, int) and T >= 1):
            raise ValueError(f"--T must be at least 1 (the number of diffusion steps T), got {T}")
        if schedule == "linear":  # beta from 1e-4 to 0.02 (Ho et al.)
            beta = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
        elif schedule == "cosine":  # a_t = f(t) / f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2) (Nichol & Dhariwal)
            s = 0.008
            f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + s) / (1 + s) * math.pi / 2) ** 2
            beta = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        else:
            raise ValueError(f"unknown schedule {schedule!r}: use 'linear' or 'cosine'")
        self.T = T
        self.beta = torch.cat([torch.zeros(1, dtype=torch.float64), beta])  # (T + 1,), beta[0] = 0
        self.alpha = 1 - self.beta
        self.alpha_bar = torch.cumprod(self.alpha, 0)  # alpha_bar[0] = 1: t = 0 is the data

    def loss(self, net, x0, y=None):
        """DDPM's simple loss E || eps - eps_theta(sqrt(a_t) x_0 + sqrt(1 - a_t) eps, t) ||^2."""
        t = torch.randint(1, self.T + 1, (x0.shape[0],))  # t ~ U{1..T}, drawn on the CPU: no device sync
        a_t = common.bcast(self.alpha_bar[t], x0)
        eps = torch.randn_like(x0)
        x_t = a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps  # x_t ~ q(x_t | x_0)
        return (eps - net(x_t, t.to(x0.device), y)).pow(2).mean()

    def guided(self, net, x_t, t, y=None, cfg_scale=1.0):
        """eps_theta, with classifier-free guidance when w != 1 (two network calls)."""
        if y is None or cfg_scale == 1.0:
            return net(x_t, t, y)
        e_uncond = net(x_t, t, None)
        return e_uncond + cfg_scale * (net(x_t, t, y) - e_uncond)

    def step(self, x_t, eps, t, t_prev, eta=0.0, noise=None, generator=None):
        """One generalized update x_t -> x_t' for a batch of times t, t_prev (B,), t_prev < t. With
        eta = 0 it also runs upward (t_prev > t), which is what invert() does."""
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        a_t = self.alpha_bar[t.cpu()]  # (B,) float64, as is every coefficient until bcast
        a_p = self.alpha_bar[t_prev.cpu()]
        if eta > 0:  # sigma_t = eta sqrt((1 - a_t') / (1 - a_t)) sqrt(1 - a_t / a_t')
            sigma = eta * ((1 - a_p) / (1 - a_t)).sqrt() * (1 - a_t / a_p).sqrt()
        else:
            sigma = torch.zeros_like(a_t)
        x0_hat = (x_t - common.bcast((1 - a_t).sqrt(), x_t) * eps) / common.bcast(a_t.sqrt(), x_t)  # predicted x_0
        direction = common.bcast((1 - a_p - sigma ** 2).clamp(min=0).sqrt(), x_t) * eps  # direction pointing to x_t
        x_prev = common.bcast(a_p.sqrt(), x_t) * x0_hat + direction
        if eta > 0:
            if noise is None:
                noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
            x_prev = x_prev + common.bcast(sigma, x_t) * noise  # + sigma_t z
        return x_prev

    def timesteps(self, steps, spacing="uniform"):
        """The `steps` times the sampler visits, decreasing from T, all >= 1 (then it lands on 0)."""
        if not 1 <= steps <= self.T:
            raise ValueError(f"steps must be in 1..T = 1..{self.T}, got {steps}")
        i = torch.arange(steps, 0, -1, dtype=torch.float64)  # S..1
        if spacing == "uniform":  # tau_i = round(T i / S): gaps of T/S >= 1, so no repeats
            return torch.round(self.T * i / steps).long()
        if spacing == "quadratic":  # tau_i = max(round(T (i/S)^2), i): strictly decreasing, tau_S = T
            return torch.maximum(torch.round(self.T * (i / steps) ** 2), i).long()
        raise ValueError(f"unknown spacing {spacing!r}: use 'uniform' or 'quadratic'")

    @torch.no_grad()
    def sample(self, net, shape, steps=50, eta=0.0, y=None, cfg_scale=1.0, generator=None, noise=None,
               spacing="uniform", classifier=None, classifier_scale=0.0, trajectory=None):
        """x_T ~ N(0, I), then `steps` generalized updates through timesteps(steps) down to x_0. With a
        noisy classifier (classifier(x_t, t) -> logits (B, num_classes)) and labels y, classifier
        guidance: eps~ = eps - s sqrt(1 - a_t) grad_{x_t} log p_phi(y | x_t, t), s = classifier_scale.
        trajectory: a list that receives x_T and the state at every visited time, x_0 last (common.record)."""
        guide = classifier is not None and classifier_scale != 0  # s = 0: not one operation more
        if guide and y is None:
            raise ValueError("classifier guidance needs the labels y to guide towards")
        x = common.start_noise(shape, generator, noise)  # x_T ~ N(0, I)
        common.record(trajectory, x)
        times = self.timesteps(steps, spacing).tolist()
        for t, t_prev in zip(times, times[1:] + [0]):
            tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
            e = self.guided(net, x, tt, y, cfg_scale).to(x.dtype)
            if guide:
                a_t = float(self.alpha_bar[t])
                e = e - classifier_scale * math.sqrt(1 - a_t) * classifier_score(classifier, x, tt, y).to(x.dtype)
            z = None
            if eta > 0 and t_prev > 0:  # sigma_t = 0 on the last step (a_0 = 1): no draw
                z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = self.step(x, e, tt, torch.full_like(tt, t_prev), eta if t_prev > 0 else 0.0, noise=z)
            common.record(trajectory, x)
        return x

    @torch.no_grad()
    def invert(self, net, x0, steps=50, y=None, cfg_scale=1.0, spacing="uniform", refine=0):
        """Deterministic encoding x_0 -> x_T: the eta = 0 update run from 0 up through the times the
        sampler visits, with eps_theta(x_t', t) as the slope (the step is explicit, so sampling
        back reconstructs x_0 up to O(1/steps)). refine > 0 fixed-point iterations per step,
        x_t <- step(x_t', eps_theta(x_t, t)), solve the sampler's own step backwards (one more
        network call each), so that sample(noise=invert(...)) reconstructs x_0 to high precision."""
        times = self.timesteps(steps, spacing).flip(0).tolist()  # increasing, last = T
        x = x0
        for t_from, t_to in zip([0] + times[:-1], times):
            tt = torch.full((x.shape[0],), t_to, dtype=torch.long, device=x.device)
            tf = torch.full_like(tt, t_from)
            x_up = self.step(x, self.guided(net, x, tt, y, cfg_scale).to(x.dtype), tf, tt)
            for _ in range(refine):
                x_up = self.step(x, self.guided(net, x_up, tt, y, cfg_scale).to(x.dtype), tf, tt)
            x = x_up
        return x


def classifier_score(classifier, x_t, t, y):
    """grad_{x_t} log p_phi(y | x_t, t), with respect to x_t only (as ddpm.classifier_score): x_t is
    detached and the one input of autograd.grad, so nothing accumulates in the classifier's .grad."""
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        logits = classifier(x, t)  # log-softmax in at least float32 (bf16 logits under autocast)
        log_p = torch.log_softmax(logits, 1, dtype=torch.promote_types(logits.dtype, torch.float32))
        log_p = log_p.gather(1, y[:, None]).sum()
        return torch.autograd.grad(log_p, x)[0]


# -----------------------------------------------------------------------------
# the training script: DDPM's training, DDIM's sampler

def main(argv=None):
    # flags: the shared ones (common.add_args; per-data budgets in common.DATA_DEFAULTS), then DDIM's
    parser = common.add_args(argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                                     epilog="see the module docstring for the math"))
    own = parser.add_argument_group("ddim")
    own.add_argument("--T", type=int, help="number of diffusion steps of training (default 1000; a checkpoint's own)")
    own.add_argument("--schedule", choices=["linear", "cosine"], help="beta schedule (default linear)")
    own.add_argument("--steps", type=int, help="sampler steps = network calls, in 1..T (default 50)")
    own.add_argument("--eta", type=common.finite,
                     help="noise of each step, in [0, 1]: 0 deterministic DDIM (default), 1 DDPM-like")
    own.add_argument("--spacing", choices=["uniform", "quadratic"], help="the visited times (default uniform)")
    common.add_trajectory_flag(own)
    args, ckpt = common.parse_args(parser, argv, "ddim",
                                   defaults=dict(T=1000, schedule="linear", steps=50, eta=0.0, spacing="uniform",
                                                 trajectory=0),
                                   model_flags=("T", "schedule"), accept=("ddim", "ddpm"))
    ddim = common.construct(parser, DDIM, args.T, args.schedule)  # the method: schedule, loss, sampler
    if not 1 <= args.steps <= args.T:  # sampler flags, checked here once (T may come from a checkpoint)
        parser.error(f"--steps must be in 1..T = 1..{args.T}, got {args.steps}")
    if not 0.0 <= args.eta <= 1.0:
        parser.error(f"--eta must be in [0, 1], got {args.eta}")
    with common.session(args) as device:
        data = common.load_data(args.data, args.data_root, args.download)
        num_classes = 0 if args.uncond else data.num_classes
        eps_theta = common.make_net(args.arch, data.shape, args.width, num_classes).to(device)  # eps_theta(x_t, t, y)
        q = {}  # what main returns: the training's wall and CPU seconds when it trains, the quality figures
        if args.sample_only:
            eps_theta = common.load_ema(ckpt, eps_theta)  # a ddim.py or ddpm.py checkpoint
        else:
            t0, c0 = time.time(), time.process_time()
            eps_theta = common.train(eps_theta, ddim.loss, data, args, ckpt)  # DDPM's loss; returns the EMA network
            q.update(train_seconds=time.time() - t0, train_cpu_seconds=time.process_time() - c0)
        if not common.is_main():
            return None
        if args.trajectory:  # the sampler's path: OUT/trajectory.png or OUT/strip.png
            common.draw_trajectory(lambda **kw: ddim.sample(eps_theta, steps=args.steps, eta=args.eta, spacing=args.spacing,
                                                            cfg_scale=args.cfg_scale, **kw),
                                   data, args, device, num_classes, f"DDIM eta={args.eta:g}, {args.steps} steps")
        if args.n_eval:
            y = common.class_labels(args.n_eval, num_classes, device)
            g = torch.Generator(device).manual_seed(args.seed + 1)
            t0 = time.time()
            with common.autocast(device, args.amp):
                x0 = ddim.sample(eps_theta, (args.n_eval, *data.shape), args.steps, args.eta, y, args.cfg_scale,
                                 generator=g, spacing=args.spacing)
            q.update(common.report(x0, data, args, sample_seconds=time.time() - t0))
        return q or None


if __name__ == "__main__":
    main()
