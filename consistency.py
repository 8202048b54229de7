"""Consistency models: one- and few-step generation by the flow map to the data end (Song, Dhariwal, Chen &
Sutskever, 2023, arXiv 2303.01469), trained by distillation from a flow model (CD), from scratch with the
improvements of iCT (Song & Dhariwal, 2023, arXiv 2310.14189), or by tuning a flow model (ECT: Geng, Pokle,
Luo, Lin & Kolter, 2024, arXiv 2406.14548).

The math, on cfm.py's straight path and in the time convention of the lectures' flow-matching slides
("Generative Modeling", T.-W. Ke, 2026; "Advanced Generative Models", NICE Lab, Zhejiang University, 2026):
t = 0 is the prior N(0, I), t = 1 the data. The first lecture lists consistency models among the ways to
make diffusion fast; the second ranks MeanFlow against iCT.

  path               x_t = t x1 + b_t x0,  b_t = 1 - (1 - sigma_min) t,  x0 ~ N(0, I), x1 ~ q (cfm.py's OT path)
  ODE                dx/dt = v(x, t) = E[x1 - (1 - sigma_min) x0 | x_t = x], the marginal field: it carries
                     N(0, I) at t = 0 to p_1 = q * N(0, sigma_min^2 I) at t = 1 (cfm.py)
  flow map           Phi_{t->r}(x): the ODE's solution at time r started from x at time t
  consistency        f(x, t) = Phi_{t->1}(x), the data end of the trajectory through x at t. It is constant along
  function           each trajectory, f(x_t, t) = f(x_r, r) for x_r = Phi_{t->r}(x_t) (the semigroup property
                     Phi_{r->1} Phi_{t->r} = Phi_{t->1}), and f(x, 1) = x (the boundary condition)
  parameterisation   f_theta(x, t) = x + (1 - t) F_theta(x, t): f_theta(x, 1) = x exactly, whatever the network
                     F_theta outputs (CM's c_skip, c_out with c_skip(1) = 1, c_out(1) = 0, in the path's time)
  MeanFlow's u       meanflow.py's average velocity u(z_t, r, t) = 1/(t - r) int_r^t v(z_s, s) ds jumps
  at r = 1           z_r = z_t - (t - r) u(z_t, r, t). At r = 1 the jump lands on the data end:
                     z_1 = z_t + (1 - t) u(z_t, 1, t) = f(z_t, t),   so   F = u(., 1, .):
                     a consistency model is a MeanFlow model with the landing time fixed at the data end (one
                     time input instead of two). MeanFlow's identity u = v - (t - r) du/dt at r = 1 reads
                     F = v + (1 - t) dF/dt; and along the ODE d/dt f(x_t, t) = v - F + (1 - t) dF/dt (product
                     rule on x_t + (1 - t) F), so the identity at r = 1 is the continuous consistency condition
                     d/dt f(x_t, t) = 0. At t = 1, F(x, 1) = u(x, 1, 1) = v(x, 1): the instantaneous velocity.
  a flow model       a flow-matching network v_phi in F's place gives f = x + (1 - t) v_phi(x, t): one Euler step to
  as F               t = 1. For sigma_min = 0, E[x1 | x_t] = x_t + (1 - t) E[x1 - x0 | x_t] = x_t + (1 - t) v(x_t, t):
                     the exact field gives the denoiser, the posterior mean (the best one-step guess in squared
                     error, blurred where the posterior is spread; the flow map is sharp). ECT starts there.

Training: every option minimises, over pairs of times t < r on one trajectory,

  loss               L = E w(t, r) d(f_theta(x_t, t), sg f_theta(x_r, r)),   w(t, r) = t r / (r - t) (below)
                     d(a, b) = sqrt(||a - b||^2 + c^2) - c, c = 0.00054 sqrt(D), D the data's dimension (iCT's
                     pseudo-Huber distance: squared error / (2c) for small errors, the norm for large ones).
                     sg: the stop-gradient; the target is the network being trained, not an EMA copy of it
                     (iCT: with an EMA target the expected gradient is that of no objective as the gaps shrink,
                     and EMA decay 0 trains better). The weights that sample are common.train's EMA, as in every file.
  the target's x_r   cd: a step of the teacher's ODE from x_t, x_r = x_t + int_t^r v_phi(x_s, s) ds (Heun, CM's
                     choice, or Euler; --teacher-solver), v_phi a cfm.py model (the consistency distillation of CM).
                     ict, ect: the same (x0, x1) at time r, x_r = r x1 + b_r x0 (consistency training, no teacher).
                     Why this is allowed: x_r - x_t = (r - t)(x1 - (1 - sigma_min) x0), and the conditional mean of
                     x1 - (1 - sigma_min) x0 given x_t is v(x_t, t), so E[x_r | x_t] = x_t + (r - t) v(x_t, t): the
                     exact field's Euler step. In expectation the training pair is the distillation pair of an
                     exact teacher, to first order in r - t (CM's Theorem 2: L_CT = L_CD + o(r - t)).
  at r = 1           f(x_1, 1) = x_1 = x1 + sigma_min x0: the target is the (noised) data, and since
                     (x1 + sigma_min x0 - x_t) / (1 - t) = x1 - (1 - sigma_min) x0, f_theta(x_t, t) - x_1 =
                     (1 - t)(F_theta(x_t, t) - (x1 - (1 - sigma_min) x0)): flow matching's regression, on F.
                     A flow model is a consistency model trained at the widest gap.
  noise level        sigma = (1 - t) / t, t = 1 / (1 + sigma): then x_t / t = x1 + (sigma + sigma_min) x0, which is
                     EDM's noise level (Karras et al., 2022, arXiv 2206.00364) for sigma_min = 0. The flow map does
                     not change under this change of time and scale (cfm.py, "time change"), so the papers'
                     noise-level recipes carry over through t = 1 / (1 + sigma).
  ict                (consistency training, iCT's improvements) a pair of neighbours t < r of the grid
                     sigma_i = (s_lo^(1/rho) + (i - 1)/(N - 1) (s_hi^(1/rho) - s_lo^(1/rho)))^rho, i = 1..N,
                     s_lo = 0.002, s_hi = 80, rho = 7 (Karras's), with sigma = 0 (t = 1, the boundary) and
                     sigma = inf (t = 0, where sampling starts) added at the ends. The interval [sigma_i, sigma_{i+1}]
                     is drawn with the lognormal's mass on it,
                     p(i) ~ erf((ln sigma_{i+1} - P_mean) / (sqrt(2) P_std)) - erf((ln sigma_i - P_mean) / (sqrt(2) P_std)),
                     P_mean = -1.1, P_std = 2 (the end intervals take the lognormal's tails), and
                     t = 1 / (1 + sigma_{i+1}), r = 1 / (1 + sigma_i). The grid doubles during training:
                     N(k) = min(s0 2^floor(k / K), s1) + 1 at iteration k, s0 = 10, s1 = 1280, K = --stage-iters
                     (iCT takes K = total iterations / (log2(s1 / s0) + 1); here K is fixed, so that --resume and
                     a longer --iters continue the same schedule).
  weight             iCT's lambda = 1 / (sigma_t - sigma_r), in the path's time (sigma_t - sigma_r = (1 - t)/t -
                     (1 - r)/r = (r - t) / (t r)): w(t, r) = t r / (r - t). For small gaps w d ~ t^2 ||d/dt f||:
                     the noisy end (small t) counts little. The weight 1 / (r - t) of the path's own time
                     (--weight path) is larger by 1 / (t r), so the noisy end, where the targets are least
                     settled early in training, dominates the gradient: ect with it fails at this scale
                     (benchmarks/README.md, the weight ablation); --weight one is CM's lambda = 1.
                     On the interval that reaches t = 0 (sigma = inf) iCT's weight is 0: the network meets t = 0,
                     where sampling starts, only through its smoothness in t (ect's and cd's student start from a
                     flow model trained at every t; iCT itself starts sampling at sigma = 80, t = 1/81).
  ect                (consistency tuning) the student starts from a cfm.py model's weights (so f_theta starts as
                     that model's one Euler step, above) and trains the same loss with continuous times:
                     sigma_t ~ lognormal(P_mean, P_std), sigma_r = sigma_t max(0, 1 - n(sigma_t) / 2^a),
                     n(sigma) = 1 + 8 sigmoid(-sigma), a = min(floor(k / K) + 1, 7),
                     t = 1 / (1 + sigma_t), r = 1 / (1 + sigma_r): the published mapping
                     (locuslab/ect, training/loss.py, t_to_r_sigmoid:
                     r = t (1 - n(t) / q^(stage + 1)), q = 2, its t the noise level,
                     stage = floor(k / K) with k and K counted in its ticks), in this file's times.
                     The first stage already halves the gap: where n(sigma_t) >= 2 (sigma_t <= ln 7,
                     about 4 draws in 5 of the lognormal) r is still 1, flow matching's target
                     (above), elsewhere r < 1; each stage halves the gap again, down to n/128 (the
                     finest grid of ict, s1 / s0 = 2^7; the published code has no cap). Corrected:
                     the gap here started at a = floor(k / K) = 0, where every r is 1, so that the
                     first stage re-trained the teacher's own objective and the last stage reached
                     was one short of the published code's. No JVP: two forward passes a step. The
                     flow model's training is part of the run (or given by --teacher).
  cd                 (consistency distillation) ict's grid with N fixed (--cd-grid, CM's 18 for CIFAR-10) and the
                     same lognormal choice of the interval (CM drew it uniformly); the student starts from the
                     teacher's weights, as in ect; the teacher is --teacher's, else trained first in the run.
  sCM                (continuous time, Lu & Song, 2024, arXiv 2410.11081: the limit r -> t of the loss, d/dt f by
                     a JVP along the teacher's field, tangent normalisation and warm-up) is not implemented. Its
                     condition d/dt f = 0 is MeanFlow's identity at r = 1 (above), which meanflow.py trains.
  time features      the network embeds t with sinusoids of frequencies up to --time-scale (rad per unit time).
                     The loss compares f at neighbouring times, so f must vary smoothly in t; at the flows' usual
                     1000 the features vary fast over [0, 1], and ict from scratch defaults to 10 (as meanflow.py
                     does for its d_t u). ect and cd copy a cfm.py network, and with it its 1000.
  not here           CM's EMA target (iCT's stop-gradient instead), LPIPS (the pseudo-Huber
                     distance), ECT's dropout, iCT's larger networks, and ECT's published losses;
                     ect here trains ict's loss (pseudo-Huber with iCT's c, the weight
                     t r / (r - t) = 1 / (sigma_t - sigma_r)). locuslab/ect's CIFAR-10 code
                     (training/loss.py) divides the plain L2 norm ||f_t - f_r|| (its c = 0:
                     "adaptive weighting" with p = 1/2) by sigma_t - sigma_r: iCT's weight, and
                     iCT's distance with c = 0. Its ImageNet code (branch imgnet) takes pseudo-Huber
                     with c = 0.06, q = 4 and the weight SNR + 1 / sigma_data^2
                     = 1 / sigma_t^2 + 1 / sigma_data^2, here t^2 / (1 - t)^2 + 1 / sigma_data^2
                     (sigma_data = 0.5, EDM's data std): a weight of t alone, with no 1 / (r - t),
                     growing without bound at the data end (t -> 1) and 1 / sigma_data^2 at the
                     noise end (t = 0).

Sampling:
  1 step             x = f_theta(x_0, 0), x_0 ~ N(0, I): one network call
  k steps            (CM's multistep sampler) at tau_i = i / k, i = 1..k-1: re-noise the estimate x onto the path,
                     x_tau = tau x + sqrt(b_tau^2 - tau^2 sigma_min^2) z, z ~ N(0, I) fresh, then x = f_theta(x_tau, tau).
                     Why that noise: an exact estimate is a draw of x_1 = x1 + sigma_min x0, so
                     x_tau = tau x1 + [tau sigma_min x0 + sqrt(b_tau^2 - tau^2 sigma_min^2) z], and the bracket is
                     N(0, b_tau^2 I) independent of x1: the path's marginal p_tau exactly (b_tau >= tau sigma_min
                     on [0, 1]); for sigma_min = 0 it is tau x + b_tau z. k network calls.
  guidance           F = F_theta(x, t, None) + w (F_theta(x, t, y) - F_theta(x, t, None)) (Ho & Salimans, 2022,
                     arXiv 2207.12598); f is affine in F, so f is guided the same way (two calls per step).

The default: cd, with its cfm.py teacher trained first in the same run (into OUT/teacher, unless
--teacher gives one; ect trains its own the same way). Which option is best at equal compute is
measured, not assumed (benchmarks/README.md, every option given the same CPU seconds, the teacher's
counted). On digits the distillation's one step is ahead of MeanFlow's on every seed, and of ECT's
and iCT's on average, within noise against both once the seeds' spread is counted: the default
follows the default data, not a settled ranking. On the checkerboard its one step trails ECT's
and iCT's on every seed. A likely reason for its lead on digits: the teacher's ODE step is a
target without noise of its own, where ict's and ect's same-noise x_r is the exact field's Euler
step only in expectation (above), a single pair carrying noise of order r - t; a few hundred
iterations of a small batch do not average it away. Its price: the student learns the teacher's
ODE, so the teacher's quality bounds it. A second step helps it little on digits (on
class-conditional digits not at all), but on the checkerboard, where its one step is the weakest of
the three recipes', more than it helps any other recipe. The teacher's iterations count in the
run's time (teacher_train_seconds beside train_seconds in main's dict).

Run:
  python consistency.py                              # digits: a cfm.py teacher, then CD; 1-step samples
  python consistency.py --ckpt runs/consistency-digits/ckpt.pt --steps 2     # 2-step samples of that model
  python consistency.py --teacher runs/cfm-digits/ckpt.pt --out runs/cd      # CD of a trained cfm.py model
  python consistency.py --training ect --teacher runs/cfm-digits/ckpt.pt --out runs/ect   # tuning (ECT)
  python consistency.py --training ict --data checkerboard --uncond          # iCT from scratch, 2-D points
  python consistency.py --resume --iters 2000        # continue runs/consistency-digits/ckpt.pt, exactly
  python consistency.py --data 8gaussians --steps 2 --trajectory 300         # the jumps, drawn
"""
import argparse
import copy
import math
import time
from pathlib import Path

import torch

import common


# -----------------------------------------------------------------------------
# the method: the consistency function, time pairs, the loss, the multistep sampler

OPTIONS = ("cd", "ect", "ict")
TEACHER_SOLVERS = ("heun", "euler")
P_MEAN, P_STD = -1.1, 2.0  # iCT's lognormal noise levels (EDM's)
SIGMA_LO, SIGMA_HI, RHO = 0.002, 80.0, 7.0  # iCT's Karras grid
S0, S1 = 10, 1280  # iCT's discretisation: N from s0 + 1 to s1 + 1 points
DOUBLINGS = 7  # log2(S1 / S0): the stages of iCT's grid, and ECT's finest gap 2^-7
ECT_K, ECT_B = 8.0, 1.0  # ECT's n(sigma) = 1 + k sigmoid(-b sigma)
WEIGHTS = ("ict", "path", "one")
HUBER = 0.00054  # iCT's pseudo-Huber c = 0.00054 sqrt(D)


class Consistency:
    """training: "cd" (default), "ect" or "ict" (module docstring). teacher: for "cd", the teacher's velocity
    network v(x, t, y) (a cfm.py model on the same path); the others take none. sigma_min: the path's noise
    std at t = 1 (a teacher's own). stage_iters: iterations per stage (iCT's grid doubles, ECT's gap halves).
    cd_grid: cd's N. teacher_solver, teacher_substeps: cd's ODE step from t to r, in that many substeps.
    p_mean, p_std: the lognormal of the noise levels sigma = (1 - t) / t. weight: w(t, r), "ict" (default),
    "path" or "one" (pair_weight).
    The loss counts its calls in `step` (one per training iteration): main sets it when resuming."""

    def __init__(self, training="cd", teacher=None, sigma_min=0.0, *, stage_iters=200, cd_grid=18,
                 teacher_solver="heun", teacher_substeps=1, p_mean=P_MEAN, p_std=P_STD, weight="ict"):
        if training not in OPTIONS:
            raise ValueError(f"unknown --training {training!r}: use one of {', '.join(OPTIONS)}")
        if not 0.0 <= sigma_min < 1.0:
            raise ValueError(f"--sigma-min must be in [0, 1) (the path's noise std at t = 1), got {sigma_min}")
        if int(stage_iters) != stage_iters or stage_iters < 1 or int(cd_grid) != cd_grid or cd_grid < 2:
            raise ValueError(f"--stage-iters must be at least 1 and --cd-grid at least 2, got {stage_iters} and {cd_grid}")
        if teacher_solver not in TEACHER_SOLVERS or int(teacher_substeps) != teacher_substeps or teacher_substeps < 1:
            raise ValueError(f"--teacher-solver must be one of {', '.join(TEACHER_SOLVERS)} with at least 1 substep, "
                             f"got {teacher_solver!r} and {teacher_substeps}")
        if not p_std > 0:
            raise ValueError(f"--p-std (the lognormal's standard deviation) must be positive, got {p_std}")
        self.training, self.teacher, self.sigma_min = training, teacher, float(sigma_min)
        self.stage_iters, self.cd_grid = int(stage_iters), int(cd_grid)
        self.teacher_solver, self.teacher_substeps = teacher_solver, int(teacher_substeps)
        self.p_mean, self.p_std = float(p_mean), float(p_std)
        if weight not in WEIGHTS:
            raise ValueError(f"unknown --weight {weight!r}: use one of {', '.join(WEIGHTS)}")
        self.weight = weight
        self.step = 0

    # the path -----------------------------------------------------------------

    def schedule(self, t):
        """(a_t, b_t) = (t, 1 - (1 - sigma_min) t) for x_t = a_t x1 + b_t x0, in t's dtype (float64 where it matters)."""
        return t, 1 - (1 - self.sigma_min) * t

    def psi(self, x0, x1, t):
        a, b = self.schedule(t)
        return common.bcast(a, x0) * x1 + common.bcast(b, x0) * x0  # x_t = t x1 + b_t x0

    @staticmethod
    def time_of(sigma):
        """t = 1 / (1 + sigma): the time of noise level sigma = (1 - t) / t (sigma = inf: t = 0)."""
        return 1 / (1 + sigma)

    # the consistency function -------------------------------------------------

    def guided(self, net, x, t, y=None, cfg_scale=1.0):
        """F_theta(x, t), with classifier-free guidance when w != 1 (two network calls)."""
        if y is None or cfg_scale == 1.0:
            return net(x, t, y)
        F_uncond = net(x, t, None)
        return F_uncond + cfg_scale * (net(x, t, y) - F_uncond)

    def f(self, net, x, t, y=None, cfg_scale=1.0):
        """f_theta(x, t) = x + (1 - t) F_theta(x, t): the data end of the trajectory through x at time t
        (a float tensor (B,) or a number); f(net, x, 1) = x exactly for any network with finite output."""
        if not torch.is_tensor(t):
            t = torch.full((x.shape[0],), float(t), dtype=torch.float64)
        t = t.to(device=x.device, dtype=x.dtype)
        return x + common.bcast(1 - t, x) * self.guided(net, x, t, y, cfg_scale).to(x.dtype)

    # time pairs ---------------------------------------------------------------

    def grid_size(self, step):
        """N, the Karras grid's points at iteration `step`: iCT's min(s0 2^floor(k / K), s1) + 1; cd's fixed N."""
        if self.training == "cd":
            return self.cd_grid
        return min(S0 * 2 ** (step // self.stage_iters), S1) + 1

    @staticmethod
    def grid(n):
        """Noise levels (n + 2,), float64, increasing: 0, the Karras grid of n points on [s_lo, s_hi], inf."""
        i = torch.arange(n, dtype=torch.float64) / (n - 1)
        karras = (SIGMA_LO ** (1 / RHO) + i * (SIGMA_HI ** (1 / RHO) - SIGMA_LO ** (1 / RHO))) ** RHO
        return torch.cat([torch.zeros(1, dtype=torch.float64), karras, torch.full((1,), math.inf, dtype=torch.float64)])

    def interval_probs(self, sigmas):
        """The lognormal's mass on each interval [sigma_i, sigma_{i+1}] of the grid, (len - 1,), float64."""
        cdf = torch.erf((torch.log(sigmas) - self.p_mean) / (math.sqrt(2) * self.p_std))  # ln 0 = -inf: erf = -1
        p = cdf[1:] - cdf[:-1]
        return p / p.sum()

    def ect_gap(self, sigma_t, step):
        """ECT's sigma_r = sigma_t max(0, 1 - n(sigma_t) / 2^a), a = min(floor(k / K) + 1, 7): the
        published stages, the first already halving the gap (corrected from a = floor(k / K), whose
        stage 0 was flow matching)."""
        a = min(step // self.stage_iters + 1, DOUBLINGS)
        n = 1 + ECT_K * torch.sigmoid(-ECT_B * sigma_t)
        return sigma_t * (1 - n / 2 ** a).clamp(min=0)

    def sample_times(self, n, step, generator=None):
        """(t, r), each (n,) float64 on the CPU, t < r: the noisier time and the target's (module docstring)."""
        if self.training == "ect":
            sigma_t = torch.exp(self.p_mean + self.p_std * torch.randn(n, generator=generator, dtype=torch.float64))
            sigma_r = self.ect_gap(sigma_t, step)
        else:  # ict, cd: neighbours on the grid, the interval drawn with the lognormal's mass
            sigmas = self.grid(self.grid_size(step))
            i = torch.multinomial(self.interval_probs(sigmas), n, replacement=True, generator=generator)
            sigma_r, sigma_t = sigmas[i], sigmas[i + 1]
        return self.time_of(sigma_t), self.time_of(sigma_r)

    # the pair and the loss ----------------------------------------------------

    @torch.no_grad()
    def teacher_step(self, x, t, r, y=None):
        """The teacher's ODE dx/dt = v_phi(x, t) from x at t to r (each (B,)), in teacher_substeps Heun or Euler steps."""
        if self.teacher is None:
            raise ValueError("--training cd distils a teacher: pass --teacher CKPT (a cfm.py checkpoint)")
        h = (r - t) / self.teacher_substeps  # (B,), float64
        for k in range(self.teacher_substeps):
            s = t + k * h
            v1 = self.teacher(x, s.to(device=x.device, dtype=x.dtype), y).to(x.dtype)
            x_euler = x + common.bcast(h, x) * v1
            if self.teacher_solver == "euler":  # x + h v(x, s)
                x = x_euler
            else:  # Heun: x + h/2 (v(x, s) + v(x + h v(x, s), s + h))
                v2 = self.teacher(x_euler, (s + h).to(device=x.device, dtype=x.dtype), y).to(x.dtype)
                x = x + common.bcast(h / 2, x) * (v1 + v2)
        return x

    def pair(self, net, x0, x1, t, r, y=None):
        """(f_theta(x_t, t), sg f_theta(x_r, r)): the online estimate and the detached target."""
        x_t = self.psi(x0, x1, t)
        with torch.no_grad():
            if self.training == "cd":  # the teacher's ODE from x_t
                x_r = self.teacher_step(x_t, t, r, y)
            else:  # the same (x0, x1) at r
                x_r = self.psi(x0, x1, r)
            target = self.f(net, x_r, r, y)
        return self.f(net, x_t, t, y), target.detach()

    def pair_weight(self, t, r):
        """w(t, r), float64 (B,) (module docstring): "ict" t r / (r - t), "path" 1 / (r - t), "one" 1."""
        if self.weight == "ict":  # 1 / (sigma_t - sigma_r), sigma = (1 - t) / t
            return t * r / (r - t)
        if self.weight == "path":
            return 1 / (r - t)
        return torch.ones_like(t)

    @staticmethod
    def distance(a, b):
        """iCT's pseudo-Huber sqrt(||a - b||^2 + c^2) - c per example, c = 0.00054 sqrt(D); (B,)."""
        c = HUBER * math.sqrt(a[0].numel())
        return ((a - b).flatten(1).pow(2).sum(1) + c * c).sqrt() - c

    def loss(self, net, x1, y=None, x0=None, t=None, r=None, step=None):
        """E w(t, r) d(f_theta(x_t, t), sg f_theta(x_r, r)) on a minibatch (pair_weight, distance). x0 (noise) and the
        times t < r may be given (float64 (B,), on the CPU), else drawn. step: the training iteration (the schedule's
        stage); None uses and advances the loss's own count (one call per iteration)."""
        if step is None:
            step, self.step = self.step, self.step + 1
        if x0 is None:
            x0 = torch.randn_like(x1)
        if t is None:
            t, r = self.sample_times(x1.shape[0], step)
        w = self.pair_weight(t, r).to(device=x1.device, dtype=x1.dtype, non_blocking=True)  # from float64 times
        f_t, f_r = self.pair(net, x0, x1, t, r, y)
        return (w * self.distance(f_t, f_r)).mean()

    def flow_matching_loss(self, net, x1, y=None):
        """cfm.py's L_CFM on this path, ||v(x_t, t) - (x1 - (1 - sigma_min) x0)||^2 with t ~ U(0, 1): the
        teacher's objective when cd or ect trains its own (the same draws and arithmetic as cfm.py's loss)."""
        x0 = torch.randn(x1.shape, device=x1.device, dtype=x1.dtype)
        t = torch.rand(x1.shape[0], device=x1.device, dtype=x1.dtype)
        a, b = t, 1 - (1 - self.sigma_min) * t
        x_t = common.bcast(a, x0) * x1 + common.bcast(b, x0) * x0
        one = torch.ones_like(t)
        u = common.bcast(one, x0) * x1 + common.bcast(-(1 - self.sigma_min) * one, x0) * x0
        return (net(x_t, t, y) - u).pow(2).mean()

    # the sampler --------------------------------------------------------------

    @torch.no_grad()
    def sample(self, net, shape, steps=1, y=None, cfg_scale=1.0, generator=None, noise=None, trajectory=None):
        """x = f_theta(x_0, 0) from x_0 ~ N(0, I); with k steps, re-noised onto the path at tau = i / k and mapped
        again (module docstring): k calls of self.f. trajectory: a list that receives x_0, then each estimate
        and each re-noised point, the samples last (common.record)."""
        if int(steps) != steps or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps}")
        x = common.start_noise(shape, generator, noise)  # x_0 = eps ~ N(0, I), t = 0
        common.record(trajectory, x)
        taus = torch.arange(steps, dtype=torch.float64) / steps  # 0, 1/k, ..., (k - 1)/k
        for i, tau in enumerate(taus.tolist()):
            if i > 0:  # back onto the path at tau: tau x + sqrt(b_tau^2 - tau^2 sigma_min^2) z
                z = torch.randn(x.shape, generator=generator, dtype=x.dtype,
                                device=generator.device if generator is not None else "cpu").to(x.device)
                _, b = self.schedule(tau)
                x = tau * x + math.sqrt(b * b - (tau * self.sigma_min) ** 2) * z
                common.record(trajectory, x)
            x = self.f(net, x, torch.full((x.shape[0],), tau, dtype=torch.float64), y, cfg_scale)
            common.record(trajectory, x)
        return x


# -----------------------------------------------------------------------------
# the teacher: a cfm.py model on the straight path, given (--teacher) or trained first into OUT/teacher

TEACHERS = ("cfm",)
TEACHER_TIME_SCALE = 1000.0  # cfm.py's network scales t by 1000 before its sinusoidal features


def load_teacher(path, args):
    """The teacher's checkpoint, once checked: a cfm.py model of the straight path whose network the student
    copies (the same --data, --arch, --width, --uncond)."""
    ckpt = common.load_checkpoint(path, TEACHERS)
    a = ckpt["args"]
    if a.get("path", "ot") != "ot":
        raise common.UserError(f"{path} is a cfm.py model of the {a['path']} path; consistency.py runs on the straight "
                               "path: train the teacher with --path ot")
    differ = [k for k in common.MODEL_FLAGS if getattr(args, k) != a[k]]
    if differ:
        want = " ".join(f"--{k} {a[k]}" if k != "uncond" else "--uncond" if a[k] else "no --uncond" for k in differ)
        raise common.UserError(f"the student copies the teacher's network: run with the teacher's flags ({want})")
    if args.sigma_min is not None and args.sigma_min != a.get("sigma_min", 0.0):
        raise common.UserError(f"the teacher's path has --sigma-min {a.get('sigma_min', 0.0)}, not {args.sigma_min}: "
                               "leave --sigma-min out (the teacher's is used)")
    return ckpt


def flow_teacher(v_phi, method, data, args, teacher_ckpt):
    """(the teacher's EMA network, in v_phi (a copy of the fresh student: cfm.py's initial weights); the wall
    and CPU seconds of its training or {}): --teacher's checkpoint, else cfm.py's loss trained first into
    OUT/teacher (a cfm.py checkpoint, usable as --teacher and by cfm.py --ckpt), which --resume continues (or
    takes as it is when finished)."""
    if teacher_ckpt is not None:
        return common.load_ema(teacher_ckpt, v_phi), {}
    out = Path(args.out) / "teacher"
    out.mkdir(exist_ok=True)
    ckpt = common.load_checkpoint(out / "ckpt.pt", TEACHERS) if args.resume and (out / "ckpt.pt").exists() else None
    teacher_args = argparse.Namespace(**{**vars(args), "model": "cfm", "out": str(out), "iters": args.teacher_iters,
                                         "sigma_min": method.sigma_min, "coupling": "independent", "path": "ot",
                                         "sigma_max": 10.0, "dequantize": False})
    t0, c0 = time.time(), time.process_time()
    v_phi = common.train(v_phi, method.flow_matching_loss, data, teacher_args, ckpt)  # L_CFM; the EMA network
    return v_phi, {"teacher_train_seconds": time.time() - t0, "teacher_train_cpu_seconds": time.process_time() - c0}


# -----------------------------------------------------------------------------
# the training script

def main(argv=None):
    parser = common.add_args(argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                                     epilog="see the module docstring for the math"))
    g = parser.add_argument_group("consistency")
    g.add_argument("--training", choices=list(OPTIONS), help="cd: distil a flow model's ODE (default); ect: tune a "
                   "flow model; ict: from scratch (equal compute on digits: --iters 2000)")
    g.add_argument("--teacher", metavar="CKPT", help="a cfm.py checkpoint (straight path): cd distils it, ect starts from "
                   "it (default: train one into OUT/teacher)")
    g.add_argument("--teacher-iters", type=int, help="iterations of cd's and ect's own teacher when there is no --teacher "
                   "(default 1000 on digits, else 1500)")
    g.add_argument("--sigma-min", type=common.finite, help="the path's noise std at t = 1 (default: the teacher's, else 0)")
    g.add_argument("--stage-iters", type=int, help="iterations per stage: ict's grid doubles, ect's gap halves "
                   "(default 200 on digits, else 300)")
    g.add_argument("--cd-grid", type=int, help="cd: points N of the teacher's time grid (default 18)")
    g.add_argument("--teacher-solver", choices=list(TEACHER_SOLVERS), help="cd: the teacher's ODE step (default heun)")
    g.add_argument("--p-mean", type=common.finite, help="mean of the lognormal noise levels (default -1.1)")
    g.add_argument("--p-std", type=common.finite, help="standard deviation of the lognormal noise levels (default 2)")
    g.add_argument("--weight", choices=list(WEIGHTS), help="the loss weight: ict, iCT's 1/(sigma_t - sigma_r) = "
                   "t r/(r - t) (default); path, 1/(r - t); one, CM's 1")
    g.add_argument("--time-scale", type=common.finite, help="t is scaled by this before the network's sinusoidal "
                   "features (default: cfm.py's 1000 for ect and cd, which copy its network; 10 for ict)")
    g.add_argument("--steps", type=int, help="network calls per sample: 1, or k for the multistep sampler (default 1)")
    common.add_trajectory_flag(g)
    args, ckpt = common.parse_args(
        parser, argv, "consistency", model_flags=("sigma_min", "training", "time_scale"),
        teacher=(("teacher",), TEACHERS),
        defaults=dict(training="cd", teacher_iters=1500, stage_iters=300, cd_grid=18, teacher_solver="heun",
                      p_mean=P_MEAN, p_std=P_STD, weight="ict", steps=1, trajectory=0),
        budgets={"digits": dict(iters=800, teacher_iters=1000, stage_iters=200)})  # cd's 800 cost about ect's 1000
    if args.steps < 1 or args.teacher_iters < 1:
        parser.error(f"--steps and --teacher-iters must be at least 1, got {args.steps} and {args.teacher_iters}")
    if args.time_scale is not None:
        time_scale = args.time_scale
    else:  # unset (and no checkpoint's): ict's smooth features, else the teacher's
        time_scale = 10.0 if args.training == "ict" else TEACHER_TIME_SCALE
    if time_scale <= 0 or args.training != "ict" and time_scale != TEACHER_TIME_SCALE:
        parser.error(f"--time-scale must be positive, and {TEACHER_TIME_SCALE:g} for ect and cd (the student copies "
                     f"a cfm.py network), got {time_scale:g} with --training {args.training}")
    if args.teacher and args.sample_only:
        parser.error("--teacher and --ckpt/--sample-only exclude each other: a teacher is for training")
    if not args.sample_only and args.training == "ict" and args.teacher:
        parser.error("--training ict trains from scratch: drop --teacher (or use --training ect or cd)")
    teacher_ckpt = None
    if args.teacher and not args.sample_only:
        try:
            teacher_ckpt = load_teacher(args.teacher, args)
        except common.UserError as e:
            parser.error(str(e))
    if teacher_ckpt is not None:  # the teacher's path
        sigma_min = teacher_ckpt["args"].get("sigma_min", 0.0)
    else:
        sigma_min = 0.0 if args.sigma_min is None else args.sigma_min
    cm = common.construct(parser, Consistency, args.training, None, sigma_min, stage_iters=args.stage_iters,
                          cd_grid=args.cd_grid, teacher_solver=args.teacher_solver, p_mean=args.p_mean,
                          p_std=args.p_std, weight=args.weight)  # f, the loss, the sampler; the teacher comes with the data
    with common.session(args) as device:
        data = common.load_data(args.data, args.data_root, args.download)
        num_classes = 0 if args.uncond else data.num_classes
        F_theta = common.make_net(args.arch, data.shape, args.width, num_classes, time_scale=time_scale).to(device)
        q = {}  # what main returns: the teacher's and the training's wall and CPU seconds, the quality figures
        if args.sample_only:
            F_theta = common.load_ema(ckpt, F_theta)
        else:
            if args.training != "ict":  # ect, cd: a flow model v_phi; the student starts as its Euler step to t = 1
                v_phi, q = flow_teacher(copy.deepcopy(F_theta), cm, data, args, teacher_ckpt)  # cfm.py's init
                if ckpt is None:
                    F_theta.load_state_dict(v_phi.state_dict())
                cm.teacher = v_phi if args.training == "cd" else None
            cm.step = ckpt["step"] if ckpt else 0  # the schedule's iteration, where --resume continues
            saved = argparse.Namespace(**{**vars(args), "sigma_min": sigma_min, "time_scale": time_scale})  # to rebuild it
            t0, c0 = time.time(), time.process_time()
            F_theta = common.train(F_theta, cm.loss, data, saved, ckpt)  # returns the EMA network
            q.update(train_seconds=time.time() - t0, train_cpu_seconds=time.process_time() - c0)
        if not common.is_main():
            return None
        if args.trajectory:  # the jumps: OUT/trajectory.png (2-D data) or OUT/strip.png (images)
            common.draw_trajectory(lambda **kw: cm.sample(F_theta, steps=args.steps, cfg_scale=args.cfg_scale, **kw),
                                   data, args, device, num_classes, f"consistency ({args.training}), {args.steps} step(s)")
        if args.n_eval:
            y = common.class_labels(args.n_eval, num_classes, device)
            g = torch.Generator(device).manual_seed(args.seed + 1)
            t0 = time.time()
            with common.autocast(device, args.amp):  # f from noise at t = 0; with k steps, re-noise and map again
                x1 = cm.sample(F_theta, (args.n_eval, *data.shape), args.steps, y, args.cfg_scale, generator=g)
            q.update(common.report(x1, data, args, sample_seconds=time.time() - t0))
        return q or None


if __name__ == "__main__":
    main()
