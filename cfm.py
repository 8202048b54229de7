"""CFM: (conditional) flow matching (Lipman et al., 2023; arXiv 2210.02747) on the straight (OT),
variance-preserving (VP) or variance-exploding (VE) path, with exact minibatch optimal-transport
coupling (Tong et al., 2023; arXiv 2302.00482), Euler / midpoint / RK4 sampling and exact likelihoods.

The math, in the notation of "Generative Modeling" (T.-W. Ke, 2026): t = 0 is the prior N(0, I) (VE: N(0, sigma_max^2 I)),
t = 1 the data q(x_1); u is the target field, v_theta the network.

  flow              d/dt phi_t(x) = u_t(phi_t(x));  the density path obeys the continuity equation
                    d/dt p_t + div(p_t u_t) = 0
  conditional path  p_t(x | x_1) = N(x; t x_1, sigma_t^2 I),  sigma_t = 1 - (1 - sigma_min) t, made by
                    x_t = psi_t(x_0) = (1 - (1 - sigma_min) t) x_0 + t x_1,   x_0 ~ N(0, I)
  conditional field u_t(x | x_1) = (x_1 - (1 - sigma_min) x) / sigma_t,  so along the path
                    u_t(x_t | x_1) = d/dt psi_t(x_0) = x_1 - (1 - sigma_min) x_0
                    (sigma_min = 0: x_t = (1 - t) x_0 + t x_1 and the target x_1 - x_0 of both lectures)
  diffusion paths   (--path vp | ve; Lipman et al., Example I, Eqs. 16-19, in this time convention.) Every
                    path here is x_t = psi_t(x_0) = a_t x_1 + b_t x_0, x_0 ~ N(0, I), so p_t(x | x_1) =
                    N(a_t x_1, b_t^2 I), d/dt psi_t = a'_t x_1 + b'_t x_0, and substituting
                    x_0 = (x - a_t x_1) / b_t gives the conditional field (Lipman et al.'s Theorem 3)
                    u_t(x | x_1) = b'_t / b_t (x - a_t x_1) + a'_t x_1.
    vp              a_t = alpha_s, b_t = sqrt(1 - alpha_s^2), s = 1 - t, alpha_s = exp(-T(s) / 2),
                    T(s) = int_0^s beta(r) dr = b0 s + (b1 - b0) s^2 / 2, beta linear from b0 = 0.1 to
                    b1 = 20: the continuous limit of ddpm.py's schedule (beta_k from 1e-4 to 0.02 over
                    K = 1000 steps, beta(k / K) = K beta_k), so alpha_s^2 = exp(-T(s)) ~ alpha_bar_{sK}
                    and p_t(x | x_1) is ddpm.py's kernel q(x_k | x_0) at alpha_bar_k = alpha_s^2.
                    Key step: d/dt b_t = -alpha_s (d/dt alpha_s) / b_t, hence
                    u_t(x | x_1) = alpha'_s / (1 - alpha_s^2) (alpha_s x - x_1)      (with s = 1 - t)
                                 = -T'(s) / 2 (e^{-T(s)} x - e^{-T(s)/2} x_1) / (1 - e^{-T(s)}),
                    alpha'_s = dalpha/ds = -beta(s) alpha_s / 2 (d/dt alpha_{1-t} = -alpha'_s: the chain
                    rule's minus sign turns b'/b (x - a x_1) + a' x_1 into the form above).
                    Singularity: 1 - alpha_s^2 -> 0 as s -> 0 (t -> 1, the data end), where u ~ 1/(2 s)
                    and E||d/dt psi||^2 ~ int ds / (4 s) diverges. So s runs over [s_min, 1] instead:
                    s = 1 - (1 - s_min) t, T(s_min) = -log(1 - sigma_min^2), i.e. the path keeps noise
                    of std sigma_min at t = 1 (default 0.01, s_min ~ 1e-3), and every formula above
                    takes the factor -ds/dt = 1 - s_min. At t = 0, alpha_1 = exp(-T(1) / 2) = 0.0066:
                    p_0(x | x_1) = N(0.0066 x_1, (1 - 0.0066^2) I), close to but not exactly the prior.
    ve              a_t = 1, b_t = sigma_{1-t}, sigma_s = sigma_min (sigma_max / sigma_min)^s (geometric,
                    Song et al., 2021; arXiv 2011.13456), so d/dt sigma_{1-t} = -sigma'_{1-t} and
                    u_t(x | x_1) = -sigma'_{1-t} / sigma_{1-t} (x - x_1) = -log(sigma_max / sigma_min) (x - x_1).
                    sigma_0 = sigma_min > 0 (default 0.01) is the floor that the lecture's sigma_0 = 0
                    lacks (with sigma_0 = 0 the geometric sigma is not defined and the field's
                    sigma'/sigma is infinite at t = 1). sigma_max (--sigma-max, default 10; 50 for mnist
                    and cifar10, 40 for digits32) follows Song et al.'s rule sigma_max ~ the largest
                    distance between training points (tests/test_cfm.py checks that each default is at
                    least that distance for the bundled data sets): the prior at t = 0 is
                    N(0, sigma_max^2 I), whereas p_0 = N(x_1, sigma_max^2 I).
                    The VE field is large near t = 0 (|d/dt psi| = log(sigma_max / sigma_min) sigma_{1-t}
                    |x_0|, 69 |x_0| at t = 0 with the defaults).
    the lecture     "Generative Modeling" (T.-W. Ke, 2026) reproduces Example I: Eq. 17 (VE) and both
                    forms of Eq. 19 (VP) agree with the derivation above, reading alpha'_{1-t} and
                    sigma'_{1-t} as the derivative with respect to the argument evaluated at 1 - t (not
                    d/dt of alpha_{1-t}, which has the opposite sign). What it leaves out: Eq. 16 writes
                    p_t(x) where it means p_t(x | x_1); sigma_0 = 0 makes the VE field singular at the data
                    end and the VP field has 1 / (1 - alpha_{1-t}^2) -> infinity there (floors above); and
                    neither path starts exactly at its prior (VP: mean alpha_1 x_1; VE: mean x_1), so a
                    sampler started at the prior carries a small mismatch (tests/test_cfm.py measures it).
  time change       any two such paths are related by x^B_t = k_t x^A_{tau(t)}, where tau matches the
                    signal-to-noise ratio a^A_tau / b^A_tau = a^B_t / b^B_t and k_t = b^B_t / b^A_tau; the
                    marginal fields then obey u^B_t(x) = (k'_t / k_t) x + k_t tau'_t u^A_tau(x / k_t)
                    (CFM.reparameterized): e.g. VP is OT run on tau_t = a_t / (a_t + b_t), scaled by a_t + b_t.
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
  sampling          x_0 ~ the path's prior (N(0, I); VE: N(0, sigma_max^2 I)), integrate
                    dx/dt = v_theta(x, t) from t = 0 to 1 in N steps of h = 1/N: Euler (1 network call
                    per step), midpoint (2), classic RK4 (4).
                    The command line's default is midpoint x 10 steps (20 calls); benchmarks/README.md
                    measures quality against calls for each solver.
  guidance          v = v_theta(x, t, None) + w (v_theta(x, t, y) - v_theta(x, t, None))  (2 calls;
                    classifier-free guidance, Ho & Salimans, 2022; arXiv 2207.12598)
  likelihood        d/dt log p_t(x_t) = -div v_theta(x_t, t)   (instantaneous change of variables,
                    Chen et al., 2018; arXiv 1806.07366), so
                    log p_1(x_1) = log p_0(x_0) - int_0^1 div v_theta(x_t, t) dt, p_0 the path's prior,
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
  python cfm.py --path vp                    # the variance-preserving diffusion path (--path ve: exploding)
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

PATHS = ("ot", "vp", "ve")
SIGMA_MIN = {"ot": 0.0, "vp": 0.01, "ve": 0.01}  # each path's default noise std at t = 1
BETA_0, BETA_1 = 0.1, 20.0  # VP: beta(s) linear from BETA_0 to BETA_1 (ddpm.py's 1e-4..0.02 times K = 1000)


def vp_T(s):
    """T(s) = int_0^s beta(r) dr for the linear beta(r) = BETA_0 + (BETA_1 - BETA_0) r."""
    return BETA_0 * s + (BETA_1 - BETA_0) * s ** 2 / 2


def vp_T_inverse(T):
    """The s >= 0 with vp_T(s) = T (the positive root of the quadratic)."""
    return 2 * T / (BETA_0 + (BETA_0 ** 2 + 2 * (BETA_1 - BETA_0) * T) ** 0.5)  # the stable form of the root


class CFM:
    def __init__(self, sigma_min=None, coupling="independent", path="ot", *, sigma_max=10.0, dequantize_levels=0):
        """path: "ot" (straight), "vp" or "ve" (module docstring). sigma_min: the conditional path's noise
        std at t = 1 (None: 0 for ot, 0.01 for vp and ve; ot takes [0, 1), vp and ve need > 0). sigma_max:
        VE's noise std at t = 0 (its prior N(0, sigma_max^2 I)); unused by the other paths.
        dequantize_levels: 0 trains on the data as given; L >= 2 (images on L grey levels) trains
        on x + Delta (u - 1/2), Delta = 2 / (L - 1), u ~ U[0, 1)^D fresh every batch (see loss)."""
        if path not in PATHS:
            raise ValueError(f"unknown --path {path!r}: use one of {', '.join(PATHS)}")
        sigma_min = SIGMA_MIN[path] if sigma_min is None else float(sigma_min)
        if path == "ot" and not 0.0 <= sigma_min < 1.0:
            raise ValueError(f"--sigma-min must be in [0, 1) (the path's width at t = 1; 0 is the straight path), "
                             f"got {sigma_min}")
        top = math.sqrt(-math.expm1(-vp_T(1.0)))  # VP's noise std at t = 0
        if path == "vp" and not 0.0 < sigma_min < top:
            raise ValueError(f"--sigma-min must be in (0, {top:.6f}) for --path vp (the noise std left at t = 1; "
                             f"0 makes the field infinite there), got {sigma_min}")
        if path == "ve" and not (0.0 < sigma_min < sigma_max and math.isfinite(sigma_max)):
            raise ValueError(f"--path ve needs 0 < --sigma-min < --sigma-max (its noise std at t = 1 and at t = 0; "
                             f"e.g. 0.01 and 10), got {sigma_min} and {sigma_max}")
        if coupling not in ("independent", "ot"):
            raise ValueError(f"unknown --coupling {coupling!r}: use 'independent' or 'ot'")
        if dequantize_levels != int(dequantize_levels) or dequantize_levels == 1 or dequantize_levels < 0:
            raise ValueError(f"--dequantize needs images on 2 or more grey levels, got {dequantize_levels} levels")
        self.sigma_min, self.coupling, self.dequantize_levels = sigma_min, coupling, int(dequantize_levels)
        self.path, self.sigma_max = path, float(sigma_max)
        self.s_min = vp_T_inverse(-math.log1p(-sigma_min ** 2)) if path == "vp" else 0.0  # T(s_min) = -log(1 - sigma^2)
        self.prior_std = self.sigma_max if path == "ve" else 1.0  # p_0 = N(0, prior_std^2 I)

    def schedule(self, t):
        """(a, b, da/dt, db/dt) at times t (a tensor) for x_t = a x_1 + b x_0 (module docstring)."""
        if self.path == "ot":  # a = t, b = 1 - (1 - sigma_min) t
            one = torch.ones_like(t)
            return t, 1 - (1 - self.sigma_min) * t, one, -(1 - self.sigma_min) * one
        if self.path == "vp":  # s = 1 - (1 - s_min) t;  a = alpha_s = exp(-T(s) / 2),  b = sqrt(1 - alpha_s^2)
            ds = 1 - self.s_min  # -ds/dt
            s = 1 - ds * t
            T = vp_T(s)
            a, b = torch.exp(-T / 2), torch.sqrt(-torch.expm1(-T))
            da = ds * (BETA_0 + (BETA_1 - BETA_0) * s) / 2 * a  # d/dt alpha_s = -alpha'_s ds, alpha'_s = -beta(s) alpha_s / 2
            return a, b, da, -a * da / b  # d/dt sqrt(1 - a^2) = -a a' / b
        log_ratio = math.log(self.sigma_max / self.sigma_min)  # ve: a = 1, b = sigma_{1-t} = sigma_min e^{(1-t) log_ratio}
        b = self.sigma_min * torch.exp((1 - t) * log_ratio)
        return torch.ones_like(t), b, torch.zeros_like(t), -log_ratio * b  # d/dt sigma_{1-t} = -sigma'_{1-t}

    def snr_time(self, r):
        """The time t at which a_t / b_t = r (> 0), the inverse of the signal-to-noise ratio; it may lie
        outside [0, 1] where r is outside the path's range."""
        if self.path == "ot":  # r = t / (1 - (1 - sigma_min) t)
            return r / (1 + (1 - self.sigma_min) * r)
        if self.path == "vp":  # alpha^2 / (1 - alpha^2) = r^2  ->  T(s) = log(1 + 1 / r^2)
            return (1 - vp_T_inverse(torch.log1p(r ** -2))) / (1 - self.s_min)
        return 1 - torch.log(1 / (r * self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)  # ve: r = 1 / sigma

    def psi(self, x0, x1, t):
        a, b, _, _ = self.schedule(t)
        return common.bcast(a, x0) * x1 + common.bcast(b, x0) * x0  # x_t = a_t x_1 + b_t x_0

    def velocity(self, x0, x1, t):
        _, _, da, db = self.schedule(t)
        return common.bcast(da, x0) * x1 + common.bcast(db, x0) * x0  # u_t(x_t | x_1) = d/dt psi_t(x_0)

    def field(self, x, x1, t):
        """The conditional field u_t(x | x_1) at any x, in the lecture's forms (Eqs. 17 and 19 of Lipman et al.;
        OT: their Eq. 21): tests check that along the path it equals velocity, i.e. d/dt psi."""
        if self.path == "ot":  # (x_1 - (1 - sigma_min) x) / (1 - (1 - sigma_min) t)
            return (x1 - (1 - self.sigma_min) * x) / common.bcast(1 - (1 - self.sigma_min) * t, x)
        if self.path == "vp":  # alpha'_s / (1 - alpha_s^2) (alpha_s x - x_1), times -ds/dt = 1 - s_min
            s = 1 - (1 - self.s_min) * t
            T = vp_T(s)
            alpha = torch.exp(-T / 2)
            d_alpha = -(BETA_0 + (BETA_1 - BETA_0) * s) / 2 * alpha  # alpha'_s
            coef = (1 - self.s_min) * d_alpha / -torch.expm1(-T)  # 1 - alpha_s^2 = -expm1(-T(s)), accurate at small s
            return common.bcast(coef, x) * (common.bcast(alpha, x) * x - x1)
        log_ratio = math.log(self.sigma_max / self.sigma_min)  # ve: -sigma'_{1-t} / sigma_{1-t} (x - x_1)
        return -log_ratio * (x - x1)

    def reparameterized(self, net, source):
        """This path's marginal field from `net`, a field v(x, t, y) of the CFM `source` (e.g. a network
        trained on another path): u_t(x) = (k'/k) x + k tau' v(x / k, tau, y), tau = source.snr_time(a_t / b_t),
        k = b_t / b^source_tau (module docstring, "time change"). Raises ValueError where tau leaves [0, 1]."""
        def v(x, t, y=None):
            tt = t.double()
            a, b, da, db = self.schedule(tt)
            r = a / b
            tau = source.snr_time(r)
            if not (torch.isfinite(tau).all() and float(tau.min()) >= -1e-9 and float(tau.max()) <= 1 + 1e-9):
                raise ValueError(f"the {self.path} path's signal-to-noise ratio leaves the {source.path} path's "
                                 f"range at t in [{float(tt.min()):.3g}, {float(tt.max()):.3g}]")
            tau = tau.clamp(0, 1)
            A, B, dA, dB = source.schedule(tau)
            k = b / B
            d_tau = ((da * b - a * db) / b ** 2) / ((dA * B - A * dB) / B ** 2)  # dr/dt / (dr/dtau)
            dk = (db - k * dB * d_tau) / B
            u = net(x / common.bcast(k, x).to(x.dtype), tau.to(t.dtype), y)
            return common.bcast(dk / k, x).to(x.dtype) * x + common.bcast(k * d_tau, x).to(x.dtype) * u
        return v

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
    def sample(self, net, shape, steps=100, method="euler", y=None, cfg_scale=1.0, generator=None, noise=None,
               trajectory=None):
        """Solve dx/dt = v_theta(x, t) from x_0 ~ the prior N(0, prior_std^2 I) at t = 0 to t = 1:
        steps * STAGES[method] network calls (twice that with guidance). noise: the standard normal
        draw eps, x_0 = prior_std eps. trajectory: a list that receives x_0 and the state after each
        step, x_1 last (common.record)."""
        _check_solver(steps, method)
        x = common.start_noise(shape, generator, noise)  # eps ~ N(0, I)
        if self.prior_std != 1.0:
            x = self.prior_std * x  # x_0 = prior_std eps
        common.record(trajectory, x)
        dtype, h = x.dtype, 1.0 / steps

        def field(state, t):
            tt = torch.full((x.shape[0],), t, device=x.device, dtype=dtype)
            return (self.guided(net, state[0], tt, y, cfg_scale).to(dtype),)

        for i in range(steps):
            (x,) = ode_step(field, (x,), i * h, h, method)
            common.record(trajectory, x)
        return x

    @torch.no_grad()
    def log_likelihood(self, net, x1, steps=100, y=None, method="rk4", divergence="auto", generator=None):
        """log p_1(x1) per example (nats), integrating (x, int div v) from t = 1 back to t = 0, where
        the path's prior N(0, prior_std^2 I) gives log p_0.
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
        p2 = self.prior_std ** 2  # log N(x_0; 0, p^2 I)
        log_p0 = -0.5 * x0.flatten(1).pow(2).sum(1) / p2 - 0.5 * dim * math.log(2 * math.pi * p2)
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
    own.add_argument("--path", choices=list(PATHS), help="conditional path: ot (straight, default), vp or ve (diffusion)")
    own.add_argument("--sigma-min", type=common.finite,
                     help="the path's noise std at t = 1: ot in [0, 1), vp and ve > 0 (default 0 for ot, 0.01 else)")
    own.add_argument("--sigma-max", type=common.finite, help="--path ve: noise std at t = 0, the prior's "
                     "(default 10; 50 for mnist and cifar10, 40 for digits32)")
    own.add_argument("--coupling", choices=["independent", "ot"], help="minibatch pairing: independent (default) or OT")
    own.add_argument("--dequantize", action=argparse.BooleanOptionalAction,
                     help="images: train on x + Delta (u - 1/2), the data spread over its bins (default: with --bpd)")
    own.add_argument("--steps", type=int, help="ODE solver steps for sampling (default 10)")
    own.add_argument("--solver", choices=list(STAGES), help="ODE solver for sampling (default midpoint)")
    own.add_argument("--bpd", type=int, metavar="N", help="images: also bits/dim of N held-out examples (default 0)")
    own.add_argument("--bpd-steps", type=int, metavar="S", help="--bpd's RK4 steps: 2S reported, S beside (default 40)")
    common.add_trajectory_flag(own)
    args, ckpt = common.parse_args(parser, argv, "cfm", model_flags=("sigma_min", "coupling", "path", "sigma_max"),
                                   defaults=dict(path="ot", sigma_max=10.0, coupling="independent", steps=10,
                                                 solver="midpoint", bpd=0, bpd_steps=40, trajectory=0),
                                   budgets={k: dict(sigma_max=v) for k, v in (("mnist", 50.0), ("cifar10", 50.0),
                                                                              ("digits32", 40.0))})
    sigma_min = SIGMA_MIN[args.path] if args.sigma_min is None else args.sigma_min  # unset: the path's own
    if args.dequantize is not None:
        dequantize = args.dequantize
    else:  # a model flag: the checkpoint's (none before the flag: off), else on with --bpd
        dequantize = ckpt["args"].get("dequantize", False) if ckpt else args.bpd > 0
    if args.steps < 1 or args.bpd_steps < 1:  # sampler and evaluation flags, checked here once
        parser.error(f"--steps and --bpd-steps must be at least 1, got {args.steps} and {args.bpd_steps}")
    if args.bpd < 0:
        parser.error(f"--bpd N takes N >= 0 held-out images, got {args.bpd}")
    if (args.bpd or dequantize) and args.data in common.TOY_SETS:
        parser.error(f"--bpd and --dequantize are for images: {args.data} is 2-D points, with no bins")
    with common.session(args) as device:
        data = common.load_data(args.data, args.data_root, args.download)
        num_classes = 0 if args.uncond else data.num_classes
        v_theta = common.make_net(args.arch, data.shape, args.width, num_classes, time_scale=1000.0).to(device)
        flow = common.construct(parser, CFM, sigma_min, args.coupling, args.path, sigma_max=args.sigma_max,
                                dequantize_levels=data.levels if dequantize else 0)  # path, loss, sampler, ...
        q = {}  # what main returns: the training's wall and CPU seconds when it trains, the quality figures
        if args.sample_only:
            v_theta = common.load_ema(ckpt, v_theta)
        else:  # the checkpoint records the flags with sigma_min and dequantize as used, to rebuild the model
            saved = argparse.Namespace(**{**vars(args), "sigma_min": sigma_min, "dequantize": dequantize})
            t0, c0 = time.time(), time.process_time()
            v_theta = common.train(v_theta, flow.loss, data, saved, ckpt)  # L_CFM; returns the EMA network
            q.update(train_seconds=time.time() - t0, train_cpu_seconds=time.process_time() - c0)
        if not common.is_main():
            return None
        if args.n_eval:
            y = common.class_labels(args.n_eval, num_classes, device)
            g = torch.Generator(device).manual_seed(args.seed + 1)
            t0 = time.time()
            with common.autocast(device, args.amp):  # dx/dt = v_theta(x, t) from noise at t = 0 to data at t = 1
                x1 = flow.sample(v_theta, (args.n_eval, *data.shape), args.steps, args.solver, y, args.cfg_scale,
                                 generator=g)
            q.update(common.report(x1, data, args, sample_seconds=time.time() - t0))
        if args.trajectory:  # the ODE's path: OUT/trajectory.png (2-D data) or OUT/strip.png (images)
            common.draw_trajectory(lambda **kw: flow.sample(v_theta, steps=args.steps, method=args.solver,
                                                            cfg_scale=args.cfg_scale, **kw), data, args, device,
                                   num_classes, f"CFM {args.path} path, {args.coupling} coupling, {args.solver} x {args.steps}")
        if args.bpd:  # the likelihood of the same EMA network (instantaneous change of variables), RK4 at S and 2S
            q.update(held_out_bits_per_dim(flow, v_theta, data, args.bpd, num_classes > 0, args.seed + 2,
                                           args.bpd_steps, dequantize))
        return q or None


if __name__ == "__main__":
    main()
