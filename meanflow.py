"""MeanFlow: one-step generation from the average velocity (Geng, Deng, Bai, Kolter & He, 2025,
arXiv:2505.13447).

The math, in the notation of the lecture "Advanced Generative Models: From VAE to Diffusion and Flow
Matching" (NICE Lab, Zhejiang University, 2026), which states the definition, the identity, the JVP
and the loss, and in the time convention of its flow-matching slides (t = 0 noise, t = 1 data):

  path               z_t = (1 - t) x0 + t x1,  x0 ~ N(0, I) noise, x1 data;   v(z_t, t) = dz_t/dt = x1 - x0
  average velocity   u(z_t, r, t) = 1/(t - r) int_r^t v(z_s, s) ds,  so  z_r = z_t - (t - r) u(z_t, r, t)
                     (defined for r > t too: r is where the step lands, t where it starts; u(z_t, t, t) = v)
  MeanFlow identity  d/dt [(t - r) u] = v  gives  u(z_t, r, t) = v(z_t, t) - (t - r) du/dt,
                     du/dt = v d_z u + 0 d_r u + d_t u   (total derivative along the path, r fixed)
  target             u_tgt = v - (t - r) (v d_z u_theta + d_t u_theta): one Jacobian-vector product
                     jvp(u_theta, (z, r, t), (v, 0, 1)) gives u_theta and du/dt together
  loss               L = E sg(lam) ||u_theta(z_t, r, t) - sg(u_tgt)||^2,  lam = 1 / (||.||^2 + c)^p  (adaptive weight)
  times              two logit-normal draws, t = the smaller, r = the larger; then r = t for a fraction
                     1 - ratio of the pairs (those are plain flow matching: u_tgt = v when r = t)
  sampling           1 step:  x1 = z0 - (0 - 1) u(z0, 1, 0) = z0 + u(z0, 1, 0)
                     2 steps: z_1/2 = z0 + 1/2 u(z0, 1/2, 0),  x1 = z_1/2 + 1/2 u(z_1/2, 1, 1/2)
  guidance           u = u(z, r, t | null) + w (u(z, r, t | y) - u(z, r, t | null))   (two calls per step)
  guidance, folded   train on v~ = omega v + kappa u_theta(z_t, t, t | c) + (1 - omega - kappa) u_theta(z_t, t, t | null)
  into the target    (no-grad network calls) in place of v, both in u_tgt and as the JVP tangent; examples whose
                     label was dropped keep v~ = v. The fixed point at r = t is
                     u(z, t, t | c) = v_null + omega / (1 - kappa) (v_c - v_null): guidance of scale omega/(1 - kappa)
                     that costs one network call when sampling (with the default --cfg-scale 1).
  iMF tangent        (--tangent model, the default; "Improved Mean Flows", arXiv 2512.02012) the JVP's tangent is the
                     network's own instantaneous velocity sg(u_theta(z_t, t, t)) in place of the sample's
                     v = x1 - x0: u_tgt = v - (t - r) du/dt with du/dt taken along the learnt field. At the
                     exact u (whose u(z, t, t) is the marginal velocity E[v | z_t]) the target's mean given
                     z_t is still u, and its noise is v - E[v | z_t] itself instead of that noise passed
                     through (I - (t - r) d_z u). It is iMF's loss ||u + (t - r) sg(du/dt) - v||^2 on the
                     velocity V = u + (t - r) sg(du/dt), at one more forward pass (no gradient) a step.
  guidance as an     (--cfg-max W > 1; iMF) the network takes the scale w as an input, u(z, r, t | y, w), each
  input              labelled example draws w log-uniform on [1, W] (W^U, U ~ U(0, 1); iMF's W = 8) and folds
                     it with omega = 1, kappa = 1 - 1/w:  v~ = v + (1 - 1/w) (u(z, t, t | c, w) - u(z, t, t | null, 1))
                     (dropped labels: w = 1, v~ = v). At r = t the fixed point u = E[v~ | z_t, c] =
                     v_c + (1 - 1/w) (u - v_null), with v_c = E[v | z_t, c], solves for every w to
                     u(z, t, t | c, w) = v_null + w (v_c - v_null): one network, any scale in [1, W] chosen when
                     sampling (--cfg-scale), one call per step. The iMF tangent is u(z, t, t | c, w). (iMF also
                     gives the network a guidance interval and a second, v, head: not here.)

The paper's convention is the mirror image: its time tau_p = 1 - tau is 1 at the noise, its velocity is
eps - x = -v, its pairs have t_p > r_p, and it samples x = eps - u_p(eps, 0, 1). Substituting tau_p = 1 - tau
in the integral gives u(z, r, t) = -u_p(z, 1 - r, 1 - t); the identity and the target keep their form, the
paper's t_p > r_p becomes our t < r, and its logit-normal(-0.4, 1) time sampler is logit-normal(+0.4, 1) here.

Time features: the network embeds r and t with sinusoids of frequencies up to --time-scale (rad per unit
time), and the target contains d_t u, which through those features grows with that scale (d/dt sin(s t) =
s cos(s t)). At the flows' usual 1000 those features, and with them d_t u, vary fast over [0, 1]: a hard
target at the rarely sampled corner (t, r) = (0, 1) that a 1-step sample needs. The default 10 gives
features that are smooth over [0, 1] (benchmarks/README.md measures 1- and 2-step samples at both scales).

Cost: where r = t the target is v itself (the (t - r) factor is 0), so `loss` runs the JVP only on the
pairs with r != t (a fraction `ratio`, 25% by default) and takes the gradient-carrying u from one plain
forward over the whole batch: a step costs a flow-matching step plus a JVP on a quarter of the batch (a
JVP costs a few forward passes; benchmarks/README.md measures a step), and --ratio 0 is plain flow
matching at its price.
--cfg-max adds two forward passes without gradient, u(z, t, t | c, w) and u(z, t, t | null, 1).

Flow matching first: MeanFlow's loss mixes a flow-matching term (r = t) with a consistency term whose
gradients conflict early in training (AlphaFlow, arXiv 2510.20771; arXiv 2511.19065), and a trained flow
model converts into a MeanFlow model faster than one trains from scratch (Decoupled MeanFlow, arXiv
2510.24474). Here: train with --ratio 0 (flow matching, at its price), then --resume with the MeanFlow
ratio (the commands below); benchmarks/README.md measures it at equal training compute.

Forward-mode AD: the fused attention kernel has no JVP; common.attention falls back to plain matmuls under
torch.func.jvp, so the UNet and DiT of common.py work. torch.func.jvp cannot run a DDP wrapper's forward:
`target` unwraps `getattr(net, "module", net)` for the JVP (under no_grad: the target is detached), and
the gradient-carrying u comes from the wrapper's own forward, so that DDP all-reduces the gradients.

Run:
  python meanflow.py                          # digits 8x8 (900 iters), 1-step samples
  python meanflow.py --data 8gaussians        # 2-D points; W2 against held-out points
  python meanflow.py --device cuda --data mnist --download --arch dit
  python meanflow.py --ckpt runs/meanflow-digits/ckpt.pt --steps 2      # 2-step samples of a trained model
  python meanflow.py --cfg-omega 2 --out runs/meanflow-digits-cfg        # guidance folded into training
  python meanflow.py --cfg-max 2 --out runs/mf-w && python meanflow.py --ckpt runs/mf-w/ckpt.pt --cfg-scale 1.5
                                              # the guidance scale as an input: train once, pick w when sampling
  python meanflow.py --resume                 # continue runs/meanflow-digits/ckpt.pt up to --iters
  python meanflow.py --ratio 0 --iters 1000 --out runs/mf-fm && python meanflow.py --resume --ratio 0.25 \
      --iters 1600 --out runs/mf-fm         # flow matching first, then MeanFlow
  python meanflow.py --tangent sample         # the paper's tangent, v = x1 - x0
"""
import argparse
import time

import torch

import common


# -----------------------------------------------------------------------------
# the method: time pairs, JVP target, folded guidance, loss, guided sampler

def scale_input(w):
    """The keyword that gives a network its guidance scale w (--cfg-max), or none when w is None."""
    return {} if w is None else {"w": w}


class MeanFlow:
    """Defaults are the paper's ablation winners: 25% of pairs with r != t, logit-normal(-0.4, 1) times
    (mirrored to +0.4 here), adaptive weight p = 1 with c = 1e-3; except the tangent: iMF's "model",
    where the paper's is "sample" (benchmarks/README.md compares the two tangents at equal compute, and
    measures the time sampler's mean and the weight's power). cfg_omega = 1, cfg_kappa = 0: nothing
    folded; cfg_max = 1: no guidance input (else the network takes w, trained on [1, cfg_max]: an option,
    since its gain is guided sampling and every default samples unguided; benchmarks/README.md measures
    it on conditional digits); null_class: the label index of dropped labels (num_classes), needed only
    when folding."""

    def __init__(self, ratio=0.25, time_mu=0.4, time_sigma=1.0, adaptive_p=1.0, adaptive_c=1e-3,
                 cfg_omega=1.0, cfg_kappa=0.0, null_class=None, tangent="model", cfg_max=1.0):
        if not 0 <= ratio <= 1:
            raise ValueError(f"--ratio (the fraction of pairs with r != t) must be in [0, 1], got {ratio}")
        if time_sigma <= 0:
            raise ValueError(f"--time-sigma (the logit-normal standard deviation) must be positive, got {time_sigma}")
        if not 0 <= cfg_kappa < 1 or cfg_omega <= 0:
            raise ValueError(f"folded guidance needs --cfg-omega > 0 and 0 <= --cfg-kappa < 1 "
                             f"(1 and 0: none), got {cfg_omega} and {cfg_kappa}")
        if cfg_max < 1 or (cfg_max > 1 and (cfg_omega != 1 or cfg_kappa != 0)):
            raise ValueError(f"--cfg-max (the largest guidance scale trained as an input) must be at least 1 and "
                             f"replaces --cfg-omega/--cfg-kappa (one fixed scale), got {cfg_max} with "
                             f"{cfg_omega} and {cfg_kappa}")
        if tangent not in ("sample", "model"):
            raise ValueError(f"--tangent must be 'sample' (the paper's v = x1 - x0) or 'model' (iMF's u(z, t, t)), "
                             f"got {tangent!r}")
        self.ratio, self.time_mu, self.time_sigma, self.tangent = ratio, time_mu, time_sigma, tangent
        self.adaptive_p, self.adaptive_c = adaptive_p, adaptive_c
        self.cfg_omega, self.cfg_kappa, self.cfg_max, self.null_class = cfg_omega, cfg_kappa, cfg_max, null_class

    @property
    def folds_guidance(self):
        return self.cfg_omega != 1.0 or self.cfg_kappa != 0.0 or self.cfg_max > 1.0

    def sample_scales(self, n, generator=None):
        """w, (n,): log-uniform on [1, cfg_max], the guidance scales trained as the network's input."""
        return self.cfg_max ** torch.rand(n, generator=generator)

    def sample_times(self, n, device="cpu", generator=None):
        """(r, t), each (n,): logit-normal pairs with t <= r, and r = t for a fraction 1 - ratio."""
        s = torch.sigmoid(self.time_mu + self.time_sigma * torch.randn(n, 2, generator=generator))
        t, r = s.min(1).values, s.max(1).values  # t: where z_t lies (noisier), r: where the step lands
        same = torch.rand(n, generator=generator) >= self.ratio
        r = torch.where(same, t, r)
        return r.to(device, non_blocking=True), t.to(device, non_blocking=True)

    @staticmethod
    def u_and_dudt(net, z, r, t, v, y=None, w=None):
        """u_theta(z, r, t) and its total derivative du/dt = v d_z u + d_t u, from one forward-mode JVP
        with tangents (v, 0, 1) on (z, r, t). The primal u keeps its autograd graph. The JVP runs in
        float32 with autocast off, as the official MeanFlow code does: under bf16 autocast torch.func.jvp
        fails on CPU (mixed dtypes in the tangent convolution), and d_t u, scaled by (t - r), is the
        term of the target that bf16 would round most. w: the guidance scale input, if the network has one."""
        module = getattr(net, "module", net)  # a DDP wrapper's forward cannot run under torch.func.jvp
        with torch.autocast(z.device.type, enabled=False):
            dtype = torch.promote_types(z.dtype, torch.float32)  # at least float32 (float64 stays)
            z, r, t, v = z.to(dtype), r.to(dtype), t.to(dtype), v.to(dtype)
            return torch.func.jvp(lambda z_, r_, t_: module(z_, r_, t_, y, **scale_input(w)), (z, r, t),
                                  (v, torch.zeros_like(r), torch.ones_like(t)))

    def target(self, net, z, r, t, v, y=None, w=None):
        """u_tgt = v - (t - r) (v' d_z u + d_t u), detached (the stop-gradient); the tangent v' is v
        itself (tangent "sample", the paper) or the network's own sg(u(z, t, t)) (tangent "model", iMF).
        Both of its network calls, the tangent's forward and the JVP, run in float32 with autocast off,
        so under --amp bf16 the target is float32's, bit for bit, given the same v (tests/test_meanflow.py);
        a tangent computed under autocast would carry bf16's rounding into du/dt through d_z u."""
        if self.tangent == "model":  # iMF: du/dt along the learnt field, v' = sg(u_theta(z, t, t)), in float32
            dtype = torch.promote_types(z.dtype, torch.float32)
            with torch.no_grad(), torch.autocast(z.device.type, enabled=False):
                v_tangent = getattr(net, "module", net)(z.to(dtype), t.to(dtype), t.to(dtype), y,
                                                        **scale_input(w)).to(v.dtype)
        else:
            v_tangent = v
        _, dudt = self.u_and_dudt(net, z, r, t, v_tangent, y, w)
        return (v - common.bcast(t - r, z) * dudt).detach()  # MeanFlow identity

    def dropped(self, y):
        """(B,) bool: the labels already dropped to the null class (for guidance)."""
        if self.null_class is None:
            raise ValueError("folding guidance into the target needs null_class (the dropped-label index)")
        return y == self.null_class

    @torch.no_grad()
    def folded_velocity(self, net, z, t, v, y, w=None):
        """v~ = omega v + kappa u(z, t, t | y) + (1 - omega - kappa) u(z, t, t | null), with v~ = v
        where the label is already the null class (dropped for guidance) or when nothing is folded.
        w: per-example scales given to the network as its input; then omega = 1, kappa = 1 - 1/w.
        These calls run in the training's precision (under --amp bf16, autocast's): v~ carries its
        rounding into the target, which `target` then computes in float32."""
        if not self.folds_guidance or y is None:
            return v
        module = getattr(net, "module", net)
        if w is None:  # one scale, omega / (1 - kappa), for every example
            omega, kappa = self.cfg_omega, self.cfg_kappa
            u_null, u_y = module(z, t, t, None), module(z, t, t, y) if kappa else 0.0
        else:  # iMF: each example's own scale, also the network's input
            omega, kappa = 1.0, common.bcast(1 - 1 / w, z)
            u_null, u_y = module(z, t, t, None, w=torch.ones_like(w)), module(z, t, t, y, w=w)
        v_folded = omega * v + kappa * u_y + (1 - omega - kappa) * u_null
        return torch.where(common.bcast(self.dropped(y), z).bool(), v, v_folded)  # dropped labels keep v

    def loss(self, net, x1, y=None):
        B = x1.shape[0]
        r, t = self.sample_times(B)  # on the CPU
        jump = (r != t).nonzero().squeeze(1)  # the pairs whose target needs du/dt, (J,): found without a sync
        r, t = r.to(x1.device, non_blocking=True), t.to(x1.device, non_blocking=True)
        x0 = torch.randn_like(x1)
        z = (1 - common.bcast(t, x1)) * x0 + common.bcast(t, x1) * x1  # z_t = (1 - t) x0 + t x1
        w = None
        if self.cfg_max > 1 and y is not None:  # iMF: a guidance scale per example, 1 for the dropped labels
            w = torch.where(self.dropped(y), 1.0, self.sample_scales(B).to(x1.device, non_blocking=True))
        v = self.folded_velocity(net, z, t, x1 - x0, y, w)  # v = x1 - x0, or the folded v~
        u = net(z, r, t, y, **scale_input(w))  # u_theta(z_t, r, t): the gradient-carrying forward (through a DDP wrapper too)
        u_tgt = v  # where r = t the target is v - 0 * du/dt = v: plain flow matching, no JVP
        if len(jump):  # the JVP only for the pairs with r != t (a fraction `ratio` of them)
            j = jump.to(x1.device, non_blocking=True)
            yj, wj = (None, None) if y is None else (y[j], None if w is None else w[j])
            with torch.no_grad():
                u_tgt = v.index_copy(0, j, self.target(net, z[j], r[j], t[j], v[j], yj, wj))
        err = (u - u_tgt).pow(2).flatten(1).sum(1)  # ||u_theta - sg(u_tgt)||^2 per example, (B,)
        lam = (err.detach() + self.adaptive_c).pow(-self.adaptive_p)  # adaptive weight, sg
        return (lam * err).mean()

    def guided(self, net, z, r, t, y=None, cfg_scale=1.0):
        """The network's average velocity u(z, r, t), with classifier-free guidance when w != 1 (two
        network calls, or one when the network takes w as its input)."""
        if self.cfg_max > 1:  # iMF: the scale is an input (w = 1 for the null class)
            return net(z, r, t, y, w=torch.full_like(t, 1.0 if y is None else cfg_scale))
        if y is None or cfg_scale == 1.0:
            return net(z, r, t, y)
        u_uncond = net(z, r, t, None)
        return u_uncond + cfg_scale * (net(z, r, t, y) - u_uncond)

    @torch.no_grad()
    def sample(self, net, shape, steps=1, y=None, cfg_scale=1.0, generator=None, noise=None, trajectory=None):
        """`steps` jumps z_r = z_t - (t - r) u(z_t, r, t) over t = 0, 1/steps, ..., 1: `steps` network calls.
        trajectory: a list that receives z_0 and the state after each jump, the samples last (common.record)."""
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        z = common.start_noise(shape, generator, noise)  # z_0 ~ N(0, I)
        common.record(trajectory, z)
        times = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
        for i in range(steps):
            t, r = float(times[i]), float(times[i + 1])
            tt = torch.full((z.shape[0],), t, dtype=z.dtype, device=z.device)
            rr = torch.full((z.shape[0],), r, dtype=z.dtype, device=z.device)
            z = z - (t - r) * self.guided(net, z, rr, tt, y, cfg_scale).to(z.dtype)
            common.record(trajectory, z)
        return z


# -----------------------------------------------------------------------------
# the training script

def main(argv=None):
    parser = common.add_args(argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                                     epilog="see the module docstring for the math"))
    g = parser.add_argument_group("meanflow")
    g.add_argument("--steps", type=int, help="network calls per sample: 1 or 2 as in the paper (default 1)")
    g.add_argument("--ratio", type=common.finite, help="fraction of training pairs with r != t (default 0.25)")
    g.add_argument("--time-mu", type=common.finite, help="logit-normal mean (default 0.4: the paper's -0.4, mirrored)")
    g.add_argument("--time-sigma", type=common.finite, help="logit-normal standard deviation of the times (default 1)")
    g.add_argument("--adaptive-p", type=common.finite, help="power p of the weight 1/(||e||^2 + c)^p (default 1; 0: L2)")
    g.add_argument("--cfg-omega", type=common.finite, help="guidance omega folded into the target (default 1: none)")
    g.add_argument("--cfg-kappa", type=common.finite, help="the conditional u's share of the folded target (default 0)")
    g.add_argument("--cfg-max", type=common.finite, help="train the guidance scale as the network's input, w in "
                   "[1, this] (iMF; default 1: off); sample at any --cfg-scale in that range with one call per step")
    g.add_argument("--tangent", choices=["sample", "model"], help="the JVP's tangent: model, the network's own "
                   "u(z, t, t) (iMF; default), or sample, v = x1 - x0 (the paper)")
    g.add_argument("--time-scale", type=common.finite, help="r and t are scaled by this before the sinusoidal features "
                   "(default 10; not the flows' usual 1000: see the docstring)")
    common.add_trajectory_flag(g)
    args, ckpt = common.parse_args(
        parser, argv, "meanflow", defaults=dict(steps=1, ratio=0.25, time_mu=0.4, time_sigma=1.0, adaptive_p=1.0,
                                                cfg_omega=1.0, cfg_kappa=0.0, cfg_max=1.0, time_scale=10.0,
                                                tangent="model", trajectory=0),
        budgets={"digits": dict(iters=900)},  # a step costs more than cfm.py's (the JVP): fewer steps, about cfm.py's
        # compute for its 2000 (benchmarks/README.md measures the cost of a step)
        model_flags=("ratio", "time_mu", "time_sigma", "adaptive_p", "cfg_omega", "cfg_kappa", "cfg_max", "time_scale",
                     "tangent"))
    if args.steps < 1 or args.time_scale <= 0:
        parser.error(f"--steps must be at least 1 and --time-scale positive, got {args.steps} and {args.time_scale}")
    meanflow = common.construct(parser, MeanFlow, args.ratio, args.time_mu, args.time_sigma, args.adaptive_p,
                                cfg_omega=args.cfg_omega, cfg_kappa=args.cfg_kappa, tangent=args.tangent,
                                cfg_max=args.cfg_max)
    if meanflow.folds_guidance and (args.uncond or args.p_uncond <= 0):
        parser.error("--cfg-omega/--cfg-kappa/--cfg-max fold guidance into training: they need labels and a trained "
                     "null class, so drop --uncond and keep --p-uncond > 0")
    if args.cfg_max > 1 and not 1 <= args.cfg_scale <= args.cfg_max:
        parser.error(f"--cfg-scale {args.cfg_scale} is outside the scales the network was trained on, [1, --cfg-max "
                     f"{args.cfg_max}]: choose one inside, or retrain with a larger --cfg-max")
    with common.session(args) as device:
        data = common.load_data(args.data, args.data_root, args.download)
        meanflow.null_class = data.num_classes  # the label common.train gives a dropped label
        num_classes = 0 if args.uncond else data.num_classes
        u_theta = common.make_net(args.arch, data.shape, args.width, num_classes, two_times=True, time_scale=args.time_scale,
                                  guidance_input=args.cfg_max > 1).to(device)  # u_theta(z, r, t, y), and w=w
        q = {}  # what main returns: the training's wall and CPU seconds when it trains, the quality figures
        if args.sample_only:
            u_theta = common.load_ema(ckpt, u_theta)
        else:
            t0, c0 = time.time(), time.process_time()
            u_theta = common.train(u_theta, meanflow.loss, data, args, ckpt)  # returns the EMA network
            q.update(train_seconds=time.time() - t0, train_cpu_seconds=time.process_time() - c0)
        if not common.is_main():
            return None
        if args.trajectory:  # the jumps: OUT/trajectory.png (2-D data) or OUT/strip.png (images)
            common.draw_trajectory(lambda **kw: meanflow.sample(u_theta, steps=args.steps, cfg_scale=args.cfg_scale, **kw),
                                   data, args, device, num_classes, f"MeanFlow, {args.steps} step(s)")
        if args.n_eval:
            y = common.class_labels(args.n_eval, num_classes, device)
            g = torch.Generator(device).manual_seed(args.seed + 1)
            t0 = time.time()
            with common.autocast(device, args.amp):
                x1 = meanflow.sample(u_theta, (args.n_eval, *data.shape), args.steps, y, args.cfg_scale, generator=g)
            q.update(common.report(x1, data, args, sample_seconds=time.time() - t0))
        return q or None


if __name__ == "__main__":
    main()
