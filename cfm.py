"""CFM: (conditional) flow matching (Lipman et al., 2023; arXiv 2210.02747) with exact minibatch
optimal-transport coupling (Tong et al., 2023; arXiv 2302.00482), Euler / midpoint / RK4 sampling
and exact likelihoods.

The math, in the notation of "Generative Modeling" (T.-W. Ke, 2026): t = 0 is the prior N(0, I),
t = 1 the data q(x_1); u is the target field, v_theta the network.

  flow              d/dt phi_t(x) = u_t(phi_t(x));  the density path obeys the continuity equation
                    d/dt p_t + div(p_t u_t) = 0
  conditional path  p_t(x | x_1) = N(x; t x_1, sigma_t^2 I),  sigma_t = 1 - (1 - sigma_min) t, made by
                    x_t = psi_t(x_0) = (1 - (1 - sigma_min) t) x_0 + t x_1,   x_0 ~ N(0, I)
  conditional field u_t(x | x_1) = (x_1 - (1 - sigma_min) x) / sigma_t,  so along the path
                    u_t(x_t | x_1) = d/dt psi_t(x_0) = x_1 - (1 - sigma_min) x_0
                    (sigma_min = 0: x_t = (1 - t) x_0 + t x_1 and the target x_1 - x_0 of both lectures)
  marginal field    u_t(x) = E_{q(x_1)}[u_t(x | x_1) p_t(x | x_1) / p_t(x)]
  losses            L_FM(theta)  = E_{t, p_t(x)} || v_theta(x, t) - u_t(x) ||^2          (intractable)
                    L_CFM(theta) = E_{t, q(x_1), p(x_0)} || v_theta(x_t, t) - u_t(x_t | x_1) ||^2
                    L_FM - L_CFM does not depend on theta, hence grad L_FM = grad L_CFM. Key step:
                    expand both squares; the ||v_theta||^2 terms are equal (x_t ~ p_t either way), and
                    E_{p_t(x)}[v_theta . u_t(x)] = E_{q(x_1) p_t(x | x_1)}[v_theta . u_t(x | x_1)] by the
                    marginal field's definition, so only theta-free ||u||^2 terms differ.
                    (tests/test_cfm.py checks it on data whose u_t(x) has a closed form.)
  coupling          independent: (x_0, x_1) ~ p(x_0) q(x_1).  "ot": within each minibatch, pair noise
                    and data by the permutation s minimising sum_i || x_0[s(i)] - x_1[i] ||^2
                    (exact assignment). With labels, the assignment is solved within each label,
                    so the noise paired with label y stays a sample of N(0, I) and x_1, y stay aligned.
                    Under torchrun (several processes) common.train gives each process its slice of
                    B / N rows of the global batch of B, and the assignment is solved on that slice:
                    exact per slice, but a run with N processes uses N assignments of size B / N, not
                    one of size B, so its coupling (a little less straight) depends on N.
  sampling          x_0 ~ N(0, I), integrate dx/dt = v_theta(x, t) from t = 0 to 1 in N steps of
                    h = 1/N: Euler (1 network call per step), midpoint (2), classic RK4 (4).
                    The command line's default is midpoint x 10 steps (20 calls); benchmarks/cfm.py
                    measures quality against calls for each solver.
  guidance          v = v_theta(x, t, None) + w (v_theta(x, t, y) - v_theta(x, t, None))  (2 calls;
                    classifier-free guidance, Ho & Salimans, 2022; arXiv 2207.12598)
  likelihood        d/dt log p_t(x_t) = -div v_theta(x_t, t)   (instantaneous change of variables,
                    Chen et al., 2018; arXiv 1806.07366), so
                    log p_1(x_1) = log N(x_0; 0, I) - int_0^1 div v_theta(x_t, t) dt,
                    with x_t solved backwards from the data x_1 at t = 1 to x_0 at t = 0.
                    div v is exact (one vector-Jacobian product per dimension) for small dimensions,
                    else Hutchinson's estimate div v = E_eps[eps^T (dv/dx) eps], eps Rademacher (one
                    probe per example held fixed along the path, as in FFJORD, Grathwohl et al., 2019;
                    arXiv 1810.01367; unbiased for log p).
  bits/dim          images sit on `levels` grey values; x~ = x + Delta (u - 1/2), u ~ U[0, 1)^D,
                    Delta = 2 / (levels - 1) the bin width, gives -log P(x) <= E_u[-log p(x~)] - D log Delta
                    for any density p (Jensen on P(x) = Delta^D E_u[p(x~)]). --bpd reports it on held-out
                    images with its own solver, RK4, at S and 2S steps (--bpd-steps S) with the same points,
                    dequantization and probes, and prints both: the 2S figure is the one reported, and a
                    change of 0.01 bits/dim or more is printed as NOT converged (a coarse solver
                    misstates the integral of div v, and can land below the model's own bound).
  dequantization    with --dequantize (on by default when --bpd asks for a likelihood) the model trains
                    on x~ instead of the grid values, fresh u every batch (Uria et al., 2013, arXiv
                    1306.0186; Theis et al., 2016, arXiv 1511.01844; the usual practice for flows): see
                    CFM.loss for why.

The lectures: "Generative Modeling" (Ke) gives the marginal field, the gradient identity and the
straight conditional path, which its slide writes u_t(x) = x_1 - x_0: that is the conditional
field u_t(x | x_0, x_1); the marginal u_t(x) is its average above. "Advanced Generative Models:
From VAE to Diffusion and Flow Matching" (NICE Lab, Zhejiang University, 2026) gives the two
algorithms; its Algorithm 2 loops "for t = 0 to 1 step Delta t", which read inclusively takes
N + 1 Euler steps and ends past the data at t = 1 + Delta t. Corrected here: the N steps start at
t = 0, h, .., 1 - h and end at t = 1.

Run:
  python cfm.py                              # digits 8x8; grid + Frechet distance
  python cfm.py --coupling ot                # exact minibatch OT coupling
  python cfm.py --data 8gaussians --uncond --coupling ot --solver euler --steps 1
  python cfm.py --ckpt runs/cfm-digits/ckpt.pt --solver rk4 --steps 25 --cfg-scale 2
  python cfm.py --uncond --bpd 500           # trains on dequantized data; held-out bits/dim, RK4 at S and 2S
  python cfm.py --device cuda --data mnist --download
"""
import argparse
import math
import time

import torch
from scipy.optimize import linear_sum_assignment

import common


# -----------------------------------------------------------------------------
# explicit Runge-Kutta steps on a tuple of tensors: d state / dt = f(state, t)

STAGES = {"euler": 1, "midpoint": 2, "rk4": 4}  # network evaluations per step


def ode_step(f, state, t, h, method):
    """One step of size h (negative: backwards in time) from time t (a float)."""
    def axpy(s, k, c):
        return tuple(a + c * b for a, b in zip(s, k))
    k1 = f(state, t)
    if method == "euler":  # x + h f(x, t)
        return axpy(state, k1, h)
    k2 = f(axpy(state, k1, h / 2), t + h / 2)
    if method == "midpoint":  # x + h f(x + h/2 f(x, t), t + h/2)
        return axpy(state, k2, h)
    k3 = f(axpy(state, k2, h / 2), t + h / 2)
    k4 = f(axpy(state, k3, h), t + h)
    # x + h/6 (k1 + 2 k2 + 2 k3 + k4)
    return tuple(s + h / 6 * (a + 2 * b + 2 * c + d) for s, a, b, c, d in zip(state, k1, k2, k3, k4))


def _check_solver(steps, method):
    if method not in STAGES:
        raise ValueError(f"unknown ODE method {method!r}: use one of {', '.join(STAGES)}")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")


# -----------------------------------------------------------------------------
# the method: path, coupling, loss, sampler, likelihood

class CFM:
    def __init__(self, sigma_min=0.0, coupling="independent", *, dequantize_levels=0):
        """dequantize_levels: 0 trains on the data as given; L >= 2 (images on L grey levels) trains
        on x + Delta (u - 1/2), Delta = 2 / (L - 1), u ~ U[0, 1)^D fresh every batch (see loss)."""
        if not 0.0 <= sigma_min < 1.0:
            raise ValueError(f"--sigma-min must be in [0, 1) (the path's width at t = 1; 0 is the straight path), "
                             f"got {sigma_min}")
        if coupling not in ("independent", "ot"):
            raise ValueError(f"unknown --coupling {coupling!r}: use 'independent' or 'ot'")
        if dequantize_levels != int(dequantize_levels) or dequantize_levels == 1 or dequantize_levels < 0:
            raise ValueError(f"--dequantize needs images on 2 or more grey levels, got {dequantize_levels} levels")
        self.sigma_min, self.coupling, self.dequantize_levels = float(sigma_min), coupling, int(dequantize_levels)

    def psi(self, x0, x1, t):
        tt = common.bcast(t, x0)
        return (1 - (1 - self.sigma_min) * tt) * x0 + tt * x1  # x_t = (1 - (1 - sigma_min) t) x_0 + t x_1

    def velocity(self, x0, x1, t):
        return x1 - (1 - self.sigma_min) * x0  # u_t(x_t | x_1) = d/dt psi_t(x_0), the same for every t

    def couple(self, x0, x1, y=None):
        """(x0', x1): x0' the rows of x0 permuted so that row i goes with x1[i]. Independent
        coupling keeps the order; "ot" solves the assignment with cost ||x0[j] - x1[i]||^2,
        within each label when y is given (x1 and y are never moved)."""
        if self.coupling == "independent":
            return x0, x1
        perm = torch.arange(len(x0))
        groups = [perm] if y is None else [(y.cpu() == c).nonzero()[:, 0] for c in y.cpu().unique()]
        a, b = x0.detach().flatten(1).double().cpu(), x1.detach().flatten(1).double().cpu()
        for idx in groups:
            cost = torch.cdist(b[idx], a[idx]).pow(2).numpy()  # (n, n): data i, noise j
            rows, cols = linear_sum_assignment(cost)  # rows = 0..n-1 in order
            perm[idx[rows]] = idx[cols]
        return x0[perm.to(x0.device)], x1

    def loss(self, net, x1, y=None, x0=None, t=None, generator=None):
        """L_CFM on a minibatch; x0 (noise) and t may be given, else drawn with generator.

        With dequantize_levels = L > 0 the data are first dequantized, x1 <- x1 + Delta (u - 1/2),
        u ~ U[0, 1)^D drawn with generator. Why: E_u[-log p(x + Delta (u - 1/2))] - D log Delta
        bounds the discrete NLL -log P(x) for any density p (bits_per_dim), but a flow trained on
        the grid values themselves learns a density that piles up at the bin centres, so p varies
        strongly inside a bin and the bound (which averages log p over the whole bin) grows looser
        the longer it trains. Training on x~ gives L_CFM the dequantized density as its target,
        and the bound is that density's cross-entropy E_u[-log p(x~)] - D log Delta: the model is
        fitted to what --bpd reports (flow matching regresses the field rather than maximising
        likelihood, but its target no longer has spikes at the bin centres)."""
        if self.dequantize_levels:
            x1 = dequantize(x1, self.dequantize_levels, generator)  # x~ = x + Delta (u - 1/2)
        if x0 is None:
            x0 = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        if t is None:
            t = torch.rand(x1.shape[0], generator=generator, device=x1.device, dtype=x1.dtype)  # t ~ U(0, 1)
        x0, x1 = self.couple(x0, x1, y)
        x_t = self.psi(x0, x1, t)
        return (net(x_t, t, y) - self.velocity(x0, x1, t)).pow(2).mean()  # || v_theta - u_t(x_t | x_1) ||^2

    def guided(self, net, x, t, y=None, cfg_scale=1.0):
        """v_theta, with classifier-free guidance when w != 1 (two network calls)."""
        if y is None or cfg_scale == 1.0:
            return net(x, t, y)
        v_uncond = net(x, t, None)
        return v_uncond + cfg_scale * (net(x, t, y) - v_uncond)

    @torch.no_grad()
    def sample(self, net, shape, steps=100, method="euler", y=None, cfg_scale=1.0, generator=None, noise=None):
        """Solve dx/dt = v_theta(x, t) from x_0 ~ N(0, I) at t = 0 to t = 1: steps * STAGES[method]
        network calls (twice that with guidance)."""
        _check_solver(steps, method)
        x = common.start_noise(shape, generator, noise)  # x_0 ~ N(0, I)
        dtype, h = x.dtype, 1.0 / steps

        def field(state, t):
            tt = torch.full((x.shape[0],), t, device=x.device, dtype=dtype)
            return (self.guided(net, state[0], tt, y, cfg_scale).to(dtype),)

        for i in range(steps):
            (x,) = ode_step(field, (x,), i * h, h, method)
        return x

    @torch.no_grad()
    def log_likelihood(self, net, x1, steps=100, y=None, method="rk4", divergence="auto", generator=None):
        """log p_1(x1) per example (nats), integrating (x, int div v) from t = 1 back to t = 0.
        divergence: "exact" (one vector-Jacobian product per dimension), "hutchinson" (one
        Rademacher probe per example, drawn with generator), or "auto" (exact up to 16 dimensions)."""
        _check_solver(steps, method)
        dim = x1[0].numel()
        if divergence == "auto":
            divergence = "exact" if dim <= 16 else "hutchinson"
        if divergence not in ("exact", "hutchinson"):
            raise ValueError(f"unknown divergence {divergence!r}: use 'exact', 'hutchinson' or 'auto'")
        probe = None
        if divergence == "hutchinson":  # eps in {-1, +1}^D, E[eps eps^T] = I
            bits = torch.randint(0, 2, x1.shape, generator=generator, device=generator.device if generator else "cpu")
            probe = (2 * bits - 1).to(device=x1.device, dtype=x1.dtype)

        def field(state, t):  # (dx/dt, d/dt int div v) = (v, div v)
            with torch.enable_grad():
                x = state[0].detach().requires_grad_(True)
                v = net(x, torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype), y).to(x.dtype)
                if probe is not None:  # eps^T (dv/dx) eps from one vector-Jacobian product
                    (eps_jac,) = torch.autograd.grad(v, x, probe)
                    div = (eps_jac * probe).flatten(1).sum(1)
                else:  # sum_i d v_i / d x_i, one vector-Jacobian product per dimension
                    flat = v.flatten(1)
                    div = sum(torch.autograd.grad(flat[:, i].sum(), x, retain_graph=i < dim - 1)[0].flatten(1)[:, i]
                              for i in range(dim))
            return v.detach(), div.detach()

        state, h = (x1, torch.zeros(x1.shape[0], device=x1.device, dtype=x1.dtype)), -1.0 / steps
        for i in range(steps):
            state = ode_step(field, state, 1.0 + i * h, h, method)
        x0, int_div_backwards = state  # int_1^0 div v dt = -int_0^1 div v dt
        log_p0 = -0.5 * x0.flatten(1).pow(2).sum(1) - 0.5 * dim * math.log(2 * math.pi)  # log N(x_0; 0, I)
        return log_p0 + int_div_backwards  # log p_1(x_1) = log p_0(x_0) - int_0^1 div v dt


# -----------------------------------------------------------------------------
# bits per dimension of quantised images

def dequantize(x, levels, generator=None):
    """Images in [-1, 1] on `levels` equally spaced values -> x + Delta (u - 1/2), u ~ U[0, 1)^D,
    Delta = 2 / (levels - 1) the bin width: each value's bin [x - Delta/2, x + Delta/2) tiles
    [-1 - Delta/2, 1 + Delta/2), and rounding maps a dequantized point back to its value."""
    width = 2.0 / (levels - 1)
    u = torch.rand(x.shape, generator=generator, device=generator.device if generator else x.device)
    return x + width * (u.to(device=x.device, dtype=x.dtype) - 0.5)


def bits_per_dim(log_px, dim, levels):
    """Bits/dim of the discrete data from log p(x~) (nats) of dequantized points x~ = x + Delta (u - 1/2).

    The probability of an image is its bin's mass, P(x) = int_bin p(x~) dx~ = Delta^D E_u[p(x~)],
    so by Jensen -log P(x) <= -E_u[log p(x~)] - D log Delta. On the 0..levels-1 integer scale
    (x~ = Delta k~ - 1, bins of width 1) the same bound reads -log p_k(k~) with
    p_k(k~) = p(x~) Delta^D. Per dimension in bits:
        bits/dim = (-log p(x~) / D - log Delta) / ln 2,   Delta = 2 / (levels - 1),
    an upper bound (in expectation over u) on the discrete negative log-likelihood; for digits
    (17 levels) -log Delta = ln 8, i.e. 3 bits, and the uniform model scores log2(17) = 4.09.
    The bound is tight only for a density that is flat within each bin: train on x~ as well
    (CFM(dequantize_levels=levels), --dequantize)."""
    width = 2.0 / (levels - 1)
    return (-log_px / dim - math.log(width)) / math.log(2)


def held_out_bits_per_dim(flow, net, data, n, conditional, seed, steps, dequantized=None, batch=256):
    """Bits/dim of the first n held-out images (of p(x~) or p(x~ | y)), uniformly dequantized, with
    RK4 at `steps` and 2 * `steps` steps: the same points, the same dequantization u and the same
    divergence probes for both (all drawn from generators seeded with `seed`), so that their
    difference is the solver's error alone. The 2 * steps figure is the one reported; a change of
    0.01 bits/dim or more is printed as NOT converged. The divergence is exact up to 16 dimensions,
    else Hutchinson's estimate with one Rademacher probe per image: unbiased, and its noise is part
    of the spread over images, so the printed +- (the standard error over images) covers it.
    dequantized: whether the model trained on dequantized data (printed; None: not known).
    Prints one line and returns the figures."""
    device = next(net.parameters()).device
    x, y = data.x_test[:n].to(device), data.y_test[:n].to(device) if conditional else None
    x = dequantize(x, data.levels, torch.Generator(device).manual_seed(seed))  # x~ = x + Delta (u - 1/2)
    dim = x[0].numel()

    def bpd(s):  # per image, RK4 x s; the probe generator restarts for every step count
        g = torch.Generator(device).manual_seed(seed + 1)
        ll = torch.cat([flow.log_likelihood(net, x[i:i + batch], s, None if y is None else y[i:i + batch], "rk4",
                                            generator=g).cpu() for i in range(0, len(x), batch)])
        return bits_per_dim(ll, dim, data.levels)

    half, full = bpd(steps), bpd(2 * steps)
    change = float(full.mean() - half.mean())
    converged = abs(change) < 0.01
    stderr = float(full.std() / math.sqrt(len(full))) if len(full) > 1 else float("nan")
    probe = "exact divergence" if dim <= 16 else "Hutchinson divergence, 1 Rademacher probe per image"
    trained = {True: "trained on dequantized data", False: "trained on the grid values", None: "training unknown"}
    common.log(f"cfm on {data.name}: held-out {'-log p(x | y)' if conditional else '-log p(x)'} <= "
               f"{float(full.mean()):.4f} +- {stderr:.2g} bits/dim (rk4 x {2 * steps}; x {steps}: "
               f"{float(half.mean()):.4f}, change {change:+.4f}, "
               f"{'converged: < 0.01' if converged else 'NOT converged: >= 0.01'}); {probe}, +- over images; "
               f"uniform dequantization of {data.levels} levels, {trained[dequantized]}; n={len(x)}")
    return {"bits_per_dim": float(full.mean()), "bits_per_dim_stderr": stderr,
            "bits_per_dim_half_steps": float(half.mean()), "bpd_step_change": change, "bpd_converged": converged,
            "bpd_solver": "rk4", "bpd_steps": 2 * steps, "bpd_half_steps": steps,
            "bpd_divergence": "exact" if dim <= 16 else "hutchinson", "bpd_probes": 0 if dim <= 16 else 1,
            "bpd_dequantized_training": dequantized, "bpd_n": len(x)}


# -----------------------------------------------------------------------------
# the training script

def main(argv=None):
    # flags: the shared ones (common.add_args; per-data budgets in common.DATA_DEFAULTS), then CFM's
    parser = common.add_args(argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                                     epilog="see the module docstring for the math"))
    own = parser.add_argument_group("cfm")
    own.add_argument("--sigma-min", type=common.finite, help="conditional path width at t = 1, in [0, 1) (default 0)")
    own.add_argument("--coupling", choices=["independent", "ot"], help="minibatch pairing: independent (default) or OT")
    own.add_argument("--dequantize", action=argparse.BooleanOptionalAction,
                     help="images: train on x + Delta (u - 1/2), the data spread over its bins (default: with --bpd)")
    own.add_argument("--steps", type=int, help="ODE solver steps for sampling (default 10)")
    own.add_argument("--solver", choices=list(STAGES), help="ODE solver for sampling (default midpoint)")
    own.add_argument("--bpd", type=int, metavar="N", help="images: also bits/dim of N held-out examples (default 0)")
    own.add_argument("--bpd-steps", type=int, metavar="S", help="--bpd's RK4 steps: 2S reported, S beside (default 40)")
    args, ckpt = common.parse_args(parser, argv, "cfm", model_flags=("sigma_min", "coupling"), defaults=dict(
        sigma_min=0.0, coupling="independent", steps=10, solver="midpoint", bpd=0, bpd_steps=40))
    if args.dequantize is None:  # a model flag: the checkpoint's (none before the flag: off), else on with --bpd
        args.dequantize = ckpt["args"].get("dequantize", False) if ckpt else args.bpd > 0
    if args.steps < 1 or args.bpd_steps < 1:  # sampler and evaluation flags, checked here once
        parser.error(f"--steps and --bpd-steps must be at least 1, got {args.steps} and {args.bpd_steps}")
    if args.bpd < 0 or (args.bpd or args.dequantize) and args.data in common.TOY_SETS:
        parser.error(f"--bpd N takes N >= 0 held-out images, got {args.bpd}; --bpd and --dequantize are for images "
                     f"({args.data} has no bins)")
    with common.session(args) as device:
        data = common.load_data(args.data, args.data_root, args.download)
        num_classes = 0 if args.uncond else data.num_classes
        v_theta = common.make_net(args.arch, data.shape, args.width, num_classes, time_scale=1000.0).to(device)
        flow = common.construct(parser, CFM, args.sigma_min, args.coupling,  # path, coupling, loss, sampler, likelihood
                                dequantize_levels=data.levels if args.dequantize else 0)
        if args.sample_only:
            v_theta = common.load_ema(ckpt, v_theta)
        else:
            v_theta = common.train(v_theta, flow.loss, data, args, ckpt)  # L_CFM; returns the EMA network
        if not common.is_main():
            return None
        q = {}
        if args.n_eval:
            y = common.class_labels(args.n_eval, num_classes, device)
            g = torch.Generator(device).manual_seed(args.seed + 1)
            t0 = time.time()
            with common.autocast(device, args.amp):  # dx/dt = v_theta(x, t) from noise at t = 0 to data at t = 1
                x1 = flow.sample(v_theta, (args.n_eval, *data.shape), args.steps, args.solver, y, args.cfg_scale,
                                 generator=g)
            q = common.report(x1, data, args, sample_seconds=time.time() - t0)
        if args.bpd:  # the likelihood of the same EMA network (instantaneous change of variables), RK4 at S and 2S
            q.update(held_out_bits_per_dim(flow, v_theta, data, args.bpd, num_classes > 0, args.seed + 2,
                                           args.bpd_steps, args.dequantize))
        return q or None


if __name__ == "__main__":
    main()
