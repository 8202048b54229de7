"""MeanFlow: one-step generation from the average velocity (Geng, Deng, Bai, Kolter & He, 2025).

The math, in the lecture's notation and the project's time convention (t = 0 noise, t = 1 data):

  path               z_t = (1 - t) x0 + t x1,  x0 ~ N(0, I) noise, x1 data;   v(z_t, t) = dz_t/dt = x1 - x0
  average velocity   u(z_t, r, t) = 1/(t - r) int_r^t v(z_s, s) ds,  so  z_r = z_t - (t - r) u(z_t, r, t)
                     (defined for r > t too: r is where the step lands, t where it starts; u(z_t, t, t) = v)
  MeanFlow identity  d/dt [(t - r) u] = v  gives  u(z_t, r, t) = v(z_t, t) - (t - r) du/dt,
                     du/dt = v d_z u + 0 d_r u + d_t u   (total derivative along the path, r fixed)
  target             u_tgt = v - (t - r) (v d_z u_theta + d_t u_theta): one Jacobian-vector product
                     jvp(u_theta, (z, r, t), (v, 0, 1)) gives u_theta and du/dt together
  loss               L = E sg(w) ||u_theta(z_t, r, t) - sg(u_tgt)||^2,  w = 1 / (||.||^2 + c)^p  (adaptive weight)
  times              two logit-normal draws, t = the smaller, r = the larger; then r = t for a fraction
                     1 - ratio of the pairs (those are plain flow matching: u_tgt = v when r = t)
  sampling           1 step:  x1 = z0 - (0 - 1) u(z0, 1, 0) = z0 + u(z0, 1, 0)
                     2 steps: z_1/2 = z0 + 1/2 u(z0, 1/2, 0),  x1 = z_1/2 + 1/2 u(z_1/2, 1, 1/2)
  guidance, folded   train on v~ = omega v + kappa u_theta(z_t, t, t | c) + (1 - omega - kappa) u_theta(z_t, t, t | null)
  into the target    (no-grad network calls) in place of v, both in u_tgt and as the JVP tangent; examples whose
                     label was dropped keep v~ = v. The fixed point at r = t is
                     u(z, t, t | c) = v_null + omega / (1 - kappa) (v_c - v_null): guidance of scale omega/(1 - kappa)
                     that costs one network call when sampling (with the default --cfg-scale 1).

The paper's convention is the mirror image: its time tau_p = 1 - tau is 1 at the noise, its velocity is
eps - x = -v, its pairs have t_p > r_p, and it samples x = eps - u_p(eps, 0, 1). Substituting tau_p = 1 - tau
in the integral gives u(z, r, t) = -u_p(z, 1 - r, 1 - t); the identity and the target keep their form, the
paper's t_p > r_p becomes our t < r, and its logit-normal(-0.4, 1) time sampler is logit-normal(+0.4, 1) here.

Time features: the network embeds r and t with sinusoids of frequencies up to --time-scale (rad per unit
time), and the target contains d_t u, which grows with that scale. At the flows' usual 1000 the rarely
sampled corner (t, r) = (0, 1) that a 1-step sample needs is learned badly; the default 10 fixes that at no
cost to 2-step samples. 1-step W2 on 8gaussians 0.97 -> 0.27 (benchmarks/meanflow.py), 1-step FD on digits
45 -> 29 (the benchmark's budget, run once by hand with --time-scale 1000).

Forward-mode AD: the fused attention kernel has no JVP; common.attention falls back to plain matmuls under
torch.func.jvp, so the UNet and DiT of common.py work. torch.func.jvp cannot run a DDP wrapper's forward:
`target` unwraps `getattr(net, "module", net)` for the JVP, and `loss` then takes the gradient-carrying u
from the wrapper itself so that DDP still all-reduces the gradients (common.py's loop wraps the loss, not
the network, so this is a defensive path).

Run:
  python meanflow.py                          # digits 8x8 (800 iters), 1-step samples, ~4 min on a 2-core CPU
  python meanflow.py --data 8gaussians        # 2-D points; W2 against held-out points
  python meanflow.py --device cuda --data mnist --download --arch dit
  python meanflow.py --ckpt runs/meanflow-digits/ckpt.pt --steps 2      # 2-step samples of a trained model
  python meanflow.py --cfg-omega 2 --out runs/meanflow-digits-cfg        # guidance folded into training
  python meanflow.py --resume                 # continue runs/meanflow-digits/ckpt.pt up to --iters
"""
import argparse

import torch

import common


# -----------------------------------------------------------------------------
# the method: time pairs, JVP target, guided velocity, loss, sampler

class MeanFlow:
    """Defaults are the paper's ablation winners: 25% of pairs with r != t, logit-normal(-0.4, 1) times
    (mirrored to +0.4 here), adaptive weight p = 1 with c = 1e-3. cfg_omega = 1, cfg_kappa = 0: nothing
    folded; null_class: the label index of dropped labels (num_classes), needed only when folding."""

    def __init__(self, ratio=0.25, time_mu=0.4, time_sigma=1.0, adaptive_p=1.0, adaptive_c=1e-3,
                 cfg_omega=1.0, cfg_kappa=0.0, null_class=None):
        if not 0 <= ratio <= 1:
            raise ValueError(f"ratio (fraction of pairs with r != t) must be in [0, 1], got {ratio}")
        if time_sigma <= 0:
            raise ValueError(f"time_sigma must be positive, got {time_sigma}")
        if not 0 <= cfg_kappa < 1 or cfg_omega <= 0:
            raise ValueError(f"need cfg_omega > 0 and 0 <= cfg_kappa < 1, got {cfg_omega}, {cfg_kappa}")
        self.ratio, self.time_mu, self.time_sigma = ratio, time_mu, time_sigma
        self.adaptive_p, self.adaptive_c = adaptive_p, adaptive_c
        self.cfg_omega, self.cfg_kappa, self.null_class = cfg_omega, cfg_kappa, null_class

    @property
    def folds_guidance(self):
        return self.cfg_omega != 1.0 or self.cfg_kappa != 0.0

    def sample_times(self, n, device="cpu", generator=None):
        """(r, t), each (n,): logit-normal pairs with t <= r, and r = t for a fraction 1 - ratio."""
        s = torch.sigmoid(self.time_mu + self.time_sigma * torch.randn(n, 2, generator=generator))
        t, r = s.min(1).values, s.max(1).values  # t: where z_t lies (noisier), r: where the step lands
        same = torch.rand(n, generator=generator) >= self.ratio
        r = torch.where(same, t, r)
        return r.to(device), t.to(device)

    @staticmethod
    def u_and_dudt(net, z, r, t, v, y=None):
        """u_theta(z, r, t) and its total derivative du/dt = v d_z u + d_t u, from one forward-mode JVP
        with tangents (v, 0, 1) on (z, r, t). The primal u keeps its autograd graph."""
        module = getattr(net, "module", net)  # a DDP wrapper's forward cannot run under torch.func.jvp
        return torch.func.jvp(lambda z_, r_, t_: module(z_, r_, t_, y), (z, r, t),
                              (v, torch.zeros_like(r), torch.ones_like(t)))

    def target(self, net, z, r, t, v, y=None):
        """u_tgt = v - (t - r) (v d_z u + d_t u), detached (the stop-gradient)."""
        return self._u_and_target(net, z, r, t, v, y)[1]

    def _u_and_target(self, net, z, r, t, v, y):
        u, dudt = self.u_and_dudt(net, z, r, t, v, y)
        gap = (t - r).view(-1, *[1] * (z.dim() - 1))  # (B, 1, ...)
        u_tgt = v - gap * dudt  # MeanFlow identity
        return u, u_tgt.detach()

    @torch.no_grad()
    def guided_velocity(self, net, z, t, v, y):
        """v~ = omega v + kappa u(z, t, t | y) + (1 - omega - kappa) u(z, t, t | null), with v~ = v
        where the label is already the null class (dropped for guidance) or when nothing is folded."""
        if not self.folds_guidance or y is None:
            return v
        if self.null_class is None:
            raise ValueError("folding guidance into the target needs null_class (the dropped-label index)")
        module = getattr(net, "module", net)
        u_null = module(z, t, t, None)
        v_guided = self.cfg_omega * v + (1 - self.cfg_omega - self.cfg_kappa) * u_null
        if self.cfg_kappa:
            v_guided = v_guided + self.cfg_kappa * module(z, t, t, y)
        dropped = (y == self.null_class).view(-1, *[1] * (z.dim() - 1))
        return torch.where(dropped, v, v_guided)

    def loss(self, net, x1, y=None):
        B = x1.shape[0]
        r, t = self.sample_times(B, x1.device)
        x0 = torch.randn_like(x1)
        tb = t.to(x1.dtype).view(-1, *[1] * (x1.dim() - 1))
        z = (1 - tb) * x0 + tb * x1  # z_t = (1 - t) x0 + t x1
        v = self.guided_velocity(net, z, t, x1 - x0, y)  # v = x1 - x0, or the guided v~
        u, u_tgt = self._u_and_target(net, z, r, t, v, y)
        if getattr(net, "module", net) is not net:  # DDP wrapper: the gradient-carrying u comes from its forward
            u = net(z, r, t, y)
        err = (u - u_tgt).pow(2).flatten(1).sum(1)  # ||u_theta - sg(u_tgt)||^2 per example, (B,)
        w = (err.detach() + self.adaptive_c).pow(-self.adaptive_p)  # adaptive weight, sg
        return (w * err).mean()

    def u(self, net, z, r, t, y, cfg_scale):
        """The network's average velocity; plain classifier-free guidance on u when cfg_scale != 1."""
        if y is None or cfg_scale == 1.0:
            return net(z, r, t, y)
        u_null = net(z, r, t, None)
        return u_null + cfg_scale * (net(z, r, t, y) - u_null)

    @torch.no_grad()
    def sample(self, net, shape, steps=1, y=None, cfg_scale=1.0, generator=None, noise=None):
        """`steps` jumps z_r = z_t - (t - r) u(z_t, r, t) over t = 0, 1/steps, ..., 1: `steps` network calls."""
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        device = noise.device if noise is not None else (generator.device if generator is not None else "cpu")
        z = noise if noise is not None else torch.randn(shape, generator=generator, device=device)
        times = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
        for i in range(steps):
            t, r = float(times[i]), float(times[i + 1])
            tt = torch.full((z.shape[0],), t, dtype=z.dtype, device=z.device)
            rr = torch.full((z.shape[0],), r, dtype=z.dtype, device=z.device)
            z = z - (t - r) * self.u(net, z, rr, tt, y, cfg_scale).to(z.dtype)
        return z


# -----------------------------------------------------------------------------
# command line

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog="see the module docstring for the math")
    common.add_args(parser)
    a = parser.add_argument
    a("--steps", type=int, default=1, help="sampler steps (network calls per sample): 1 or 2 as in the paper")
    a("--ratio", type=float, default=0.25, help="fraction of training pairs with r != t")
    a("--time-mu", type=float, default=0.4, help="logit-normal mean of the times (the paper's -0.4, mirrored)")
    a("--time-sigma", type=float, default=1.0, help="logit-normal standard deviation of the times")
    a("--adaptive-p", type=float, default=1.0, help="power p of the adaptive loss weight 1/(||err||^2 + c)^p (0: plain L2)")
    a("--cfg-omega", type=float, default=1.0, help="guidance omega folded into the training target (1: none)")
    a("--cfg-kappa", type=float, default=0.0, help="kappa: mixes the conditional u into the folded target")
    a("--time-scale", type=float, default=10.0, help="r and t are multiplied by this before the network's "
      "sinusoidal features; d_t u grows with it (1000, the flows' usual, spoils 1-step samples: see docstring)")
    pre, _ = parser.parse_known_args(argv)
    if pre.data == "digits" and pre.iters is None:
        parser.set_defaults(iters=800)  # a MeanFlow step costs ~3 flow-matching steps: stay within ~4 min
    args = common.parse_args(parser, argv, "meanflow", model_flags=(
        "ratio", "time_mu", "time_sigma", "adaptive_p", "cfg_omega", "cfg_kappa", "time_scale"))
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if not 0 <= args.ratio <= 1:
        parser.error(f"--ratio must be in [0, 1], got {args.ratio}")
    if args.time_scale <= 0:
        parser.error(f"--time-scale must be positive, got {args.time_scale}")
    if args.time_sigma <= 0:
        parser.error(f"--time-sigma must be positive, got {args.time_sigma}")
    if args.cfg_omega <= 0 or not 0 <= args.cfg_kappa < 1:
        parser.error(f"need --cfg-omega > 0 and 0 <= --cfg-kappa < 1, got {args.cfg_omega}, {args.cfg_kappa}")
    folds = args.cfg_omega != 1 or args.cfg_kappa != 0
    if folds and (args.uncond or args.p_uncond <= 0):
        parser.error("--cfg-omega/--cfg-kappa fold guidance into training: they need labels and a trained null "
                     "class, so drop --uncond and keep --p-uncond > 0")
    null_class = None
    if folds:  # the dropped-label index is the data set's number of classes
        try:
            null_class = common.load_data(args.data, args.data_root, args.download).num_classes
        except common.UserError as e:
            common.fail("meanflow.py", e)
    method = MeanFlow(args.ratio, args.time_mu, args.time_sigma, args.adaptive_p,
                      cfg_omega=args.cfg_omega, cfg_kappa=args.cfg_kappa, null_class=null_class)

    def sample_fn(net, shape, y, generator):
        return method.sample(net, shape, steps=args.steps, y=y, cfg_scale=args.cfg_scale, generator=generator)

    return common.run(args, "meanflow", method.loss, sample_fn, two_times=True, time_scale=args.time_scale)


if __name__ == "__main__":
    main()
