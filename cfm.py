"""CFM: (conditional) flow matching (Lipman et al., 2023) with exact minibatch optimal-transport
coupling (Tong et al., 2023), Euler / midpoint / RK4 sampling and exact likelihoods.

The math, in the lecture's notation (t = 0 is the prior N(0, I), t = 1 the data q(x_1)):

  flow              d/dt phi_t(x) = u_t(phi_t(x));  the density path obeys the continuity equation
                    d/dt p_t + div(p_t u_t) = 0
  conditional path  p_t(x | x_1) = N(x; t x_1, sigma_t^2 I),  sigma_t = 1 - (1 - sigma_min) t, made by
                    x_t = psi_t(x_0) = (1 - (1 - sigma_min) t) x_0 + t x_1,   x_0 ~ N(0, I)
  conditional field u_t(x | x_1) = (x_1 - (1 - sigma_min) x) / sigma_t,  so along the path
                    u_t(x_t | x_1) = d/dt psi_t(x_0) = x_1 - (1 - sigma_min) x_0
                    (sigma_min = 0: x_t = (1 - t) x_0 + t x_1 and the target x_1 - x_0 of the seeds)
  marginal field    u_t(x) = E_{q(x_1)}[u_t(x | x_1) p_t(x | x_1) / p_t(x)]
  losses            L_FM(theta)  = E_{t, p_t(x)} || v_theta(x, t) - u_t(x) ||^2          (intractable)
                    L_CFM(theta) = E_{t, q(x_1), p(x_0)} || v_theta(x_t, t) - u_t(x_t | x_1) ||^2
                    L_FM - L_CFM does not depend on theta, hence grad L_FM = grad L_CFM (the seeds'
                    identity; tests/test_cfm.py checks it on data whose u_t(x) has a closed form)
  coupling          independent: (x_0, x_1) ~ p(x_0) q(x_1).  "ot": within each minibatch, pair noise
                    and data by the permutation s minimising sum_i || x_0[s(i)] - x_1[i] ||^2
                    (exact assignment). With labels, the assignment is solved within each label,
                    so the noise paired with label y stays a sample of N(0, I) and x_1, y stay aligned.
  sampling          x_0 ~ N(0, I), integrate dx/dt = v_theta(x, t) from t = 0 to 1 in N steps of
                    h = 1/N: Euler (1 network call per step), midpoint (2), classic RK4 (4).
                    The command line's default, midpoint x 10 steps (20 calls), is on digits as good
                    as 100 calls (benchmarks/results/cfm.md)
  guidance          v = v_theta(x, t, None) + w (v_theta(x, t, y) - v_theta(x, t, None))  (2 calls)
  likelihood        d/dt log p_t(x_t) = -div v_theta(x_t, t)   (instantaneous change of variables), so
                    log p_1(x_1) = log N(x_0; 0, I) - int_0^1 div v_theta(x_t, t) dt,
                    with x_t solved backwards from the data x_1 at t = 1 to x_0 at t = 0.
                    div v is exact (one vector-Jacobian product per dimension) for small dimensions,
                    else Hutchinson's estimate div v = E_eps[eps^T (dv/dx) eps], eps Rademacher (one
                    probe per example held fixed along the path; unbiased for log p).

Seed typos: the seeds write x_0 = x_1 - int_0^1 v dt and let Algorithm 2's loop run t = 0..1
inclusive; with t = 0 noise, x_1 = x_0 + int_0^1 v dt and N steps visit t = 0, h, .., 1 - h.

Run:
  python cfm.py                              # digits 8x8, ~4 min on a 2-core CPU; grid + Frechet distance
  python cfm.py --coupling ot                # exact minibatch OT coupling
  python cfm.py --data 8gaussians --uncond --coupling ot --solver euler --steps 1
  python cfm.py --ckpt runs/cfm-digits/ckpt.pt --solver rk4 --steps 25 --cfg-scale 2
  python cfm.py --uncond --bpd 500           # also held-out bits/dim (see bits_per_dim)
  python cfm.py --device cuda --data mnist --download
"""
import argparse
import math

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
    def __init__(self, sigma_min=0.0, coupling="independent"):
        if not 0.0 <= sigma_min < 1.0:
            raise ValueError(f"sigma_min must be in [0, 1), got {sigma_min}")
        if coupling not in ("independent", "ot"):
            raise ValueError(f"unknown coupling {coupling!r}: use 'independent' or 'ot'")
        self.sigma_min, self.coupling = float(sigma_min), coupling

    @staticmethod
    def _time(t, x):
        """t (B,) -> (B, 1, ..., 1) in x's dtype."""
        return t.to(x.dtype).view(-1, *[1] * (x.dim() - 1))

    def psi(self, x0, x1, t):
        tt = self._time(t, x0)
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
        """L_CFM on a minibatch; x0 (noise) and t may be given, else drawn with generator."""
        if x0 is None:
            x0 = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        if t is None:
            t = torch.rand(x1.shape[0], generator=generator, device=x1.device, dtype=x1.dtype)  # t ~ U(0, 1)
        x0, x1 = self.couple(x0, x1, y)
        x_t = self.psi(x0, x1, t)
        return (net(x_t, t, y) - self.velocity(x0, x1, t)).pow(2).mean()  # || v_theta - u_t(x_t | x_1) ||^2

    @staticmethod
    def guided(net, x, t, y, cfg_scale):
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
        device = noise.device if noise is not None else (generator.device if generator is not None else "cpu")
        x = noise if noise is not None else torch.randn(shape, generator=generator, device=device)
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
    u = torch.rand(x.shape, generator=generator, device=generator.device if generator else "cpu")
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
    (The models train on the grid values themselves; only this evaluation adds u.)"""
    width = 2.0 / (levels - 1)
    return (-log_px / dim - math.log(width)) / math.log(2)


# -----------------------------------------------------------------------------
# command line

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog="see the module docstring for the math")
    common.add_args(parser)
    parser.add_argument("--steps", type=int, default=10, help="ODE solver steps for sampling (and --bpd)")
    parser.add_argument("--solver", default="midpoint", choices=list(STAGES), help="ODE solver")
    parser.add_argument("--sigma-min", type=float, default=0.0, help="width of the conditional path at t = 1")
    parser.add_argument("--coupling", default="independent", choices=["independent", "ot"],
                        help="noise-data pairing in a minibatch: independent or exact OT")
    parser.add_argument("--bpd", type=int, default=0, metavar="N",
                        help="images: also report the log-likelihood of N held-out examples in bits/dim")
    args = common.parse_args(parser, argv, "cfm", model_flags=("sigma_min", "coupling"))
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if not 0.0 <= args.sigma_min < 1.0:
        parser.error(f"--sigma-min must be in [0, 1), got {args.sigma_min}")
    if args.bpd < 0:
        parser.error(f"--bpd must be 0 or positive, got {args.bpd}")
    if args.bpd and args.data in common.TOY_SETS:
        parser.error("--bpd is for images (quantised pixels); 2-D points have no bins")
    cfm = CFM(args.sigma_min, args.coupling)

    def sample_fn(net, shape, y, generator):
        return cfm.sample(net, shape, args.steps, args.solver, y=y, cfg_scale=args.cfg_scale, generator=generator)

    q = common.run(args, "cfm", cfm.loss, sample_fn, two_times=False, time_scale=1000.0)
    if q is not None and args.bpd:
        net, data = args._net.eval(), args._data  # the EMA network that run() trained or loaded
        device = next(net.parameters()).device
        x, y = data.x_test[:args.bpd].to(device), None if args.uncond else data.y_test[:args.bpd].to(device)
        g = torch.Generator(device).manual_seed(args.seed + 2)
        x_deq = dequantize(x, data.levels, g)
        ll = torch.cat([cfm.log_likelihood(net, xb, args.steps, None if y is None else y[i:i + 256], args.solver,
                                           generator=g).cpu() for i, xb in zip(range(0, len(x), 256), x_deq.split(256))])
        q["bits_per_dim"] = float(bits_per_dim(ll, x[0].numel(), data.levels).mean())
        what = "log p(x)" if y is None else "log p(x | y)"
        common.log(f"cfm on {args.data}: held-out {what} {q['bits_per_dim']:.3f} bits/dim (n={len(x)}, "
                   f"uniform dequantization, {args.solver} x {args.steps} steps, Hutchinson probes)")
    return q


if __name__ == "__main__":
    main()
