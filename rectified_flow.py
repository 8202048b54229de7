"""Rectified Flow: reflow and one-step distillation (Liu, Gong & Liu, 2022).

The math, in the lecture's notation (t = 0 is the Gaussian prior, t = 1 the data):

  coupling           x_0 ~ N(0, I) and x_1 ~ q, independent for the 1-rectified flow
  straight path      z_t = (1 - t) x_0 + t x_1,   d/dt z_t = x_1 - x_0
  objective          min_v E_{t, (x_0, x_1)} || v(z_t, t) - (x_1 - x_0) ||^2
  time sampling      t ~ U[0, 1], or logit-normal: t = sigmoid(m + s n), n ~ N(0, 1)
  ODE, Euler         Z_0 ~ N(0, I);  Z_{t + 1/N} = Z_t + v(Z_t, t) / N,  t = 0, 1/N, ..., 1 - 1/N
  guidance           v = v(z, t, None) + w (v(z, t, y) - v(z, t, None))
  reflow             (Z_0, Z_1) = the flow's ODE from noise to its end; training the objective on
                     these fixed pairs gives the (k+1)-rectified flow of the k-rectified one
  transport cost     E ||Z_1 - Z_0||^2 <= E ||x_1 - x_0||^2 for the rectified coupling (the
                     paper's theorem, for any convex cost), so reflow never raises it
  straightness       S(Z) = int_0^1 E || (Z_1 - Z_0) - v(Z_t, t) ||^2 dt,  0 iff every path is
                     a straight line; since Z_1 - Z_0 = int_0^1 v dt it is the variance of the
                     velocity along each path, measured here along the Euler paths
  distillation       min E || Z_0 + v(Z_0, 0) - Z_1 ||^2 on the pairs: one Euler step lands on Z_1

The lecture shows the objective and Algorithm 2 (Euler); reflow, the cost theorem, straightness
and distillation are from the paper. The paper distils images with LPIPS; this file uses the
squared error above for every data set.

Run (each stage's --out folder holds ckpt.pt, samples.png, metrics.jsonl and, for the last two,
pairs.pt: the fixed pairs, made once by the teacher's ODE and reused by --resume):
  python rectified_flow.py --out runs/rf1                                   # 1-RF on digits
  python rectified_flow.py --reflow-from runs/rf1/ckpt.pt --out runs/rf2    # 2-RF (from 1-RF)
  python rectified_flow.py --distill-from runs/rf2/ckpt.pt --out runs/rf2d  # 2-RF + distill
  python rectified_flow.py --ckpt runs/rf2/ckpt.pt --steps 1                # 2-RF with one step
  python rectified_flow.py --data 8gaussians --uncond --out runs/rf1-8g     # 2-D points, W2
  python rectified_flow.py --time-sampling logit_normal --device cuda       # SD3's time sampler
The student copies the teacher's network and starts from its EMA weights; a distilled
checkpoint samples with --steps 1 unless told otherwise.
"""
import argparse
import time
from pathlib import Path

import torch

import common


# -----------------------------------------------------------------------------
# the method: time sampling, loss, Euler sampler, reflow pairs, distillation, straightness

class RectifiedFlow:
    def __init__(self, time_sampling="uniform", logit_mean=0.0, logit_std=1.0):
        if time_sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"unknown time_sampling {time_sampling!r}: use 'uniform' or 'logit_normal'")
        self.time_sampling, self.logit_mean, self.logit_std = time_sampling, logit_mean, logit_std

    def sample_time(self, n, device=None):
        """t (n,) in (0, 1), drawn on the CPU in float64 (torch's global RNG), then moved."""
        if self.time_sampling == "uniform":
            t = torch.rand(n, dtype=torch.float64)  # t ~ U[0, 1]
        else:
            t = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(n, dtype=torch.float64))
        return t.to(device)

    @staticmethod
    def _bc(t, x):
        """t (B,) -> (B, 1, ..., 1) in x's dtype and device, to broadcast against x."""
        return t.to(device=x.device, dtype=x.dtype).view(-1, *[1] * (x.dim() - 1))

    def loss(self, net, x1, x0=None, y=None):
        """E || v(z_t, t) - (x_1 - x_0) ||^2 (mean over elements); x0=None draws fresh noise
        (1-rectified flow), a given x0 trains on fixed pairs (reflow)."""
        x0 = torch.randn_like(x1) if x0 is None else x0
        t = self.sample_time(x1.shape[0], x1.device).to(x1.dtype)
        z_t = (1 - self._bc(t, x1)) * x0 + self._bc(t, x1) * x1  # z_t = (1 - t) x_0 + t x_1
        return (net(z_t, t, y) - (x1 - x0)).pow(2).mean()

    def velocity(self, net, x, t, y=None, cfg_scale=1.0):
        """v(x, t), with classifier-free guidance when w != 1 (two network calls)."""
        if y is None or cfg_scale == 1.0:
            return net(x, t, y)
        v_uncond = net(x, t, None)
        return v_uncond + cfg_scale * (net(x, t, y) - v_uncond)

    @torch.no_grad()
    def sample(self, net, shape, steps=100, y=None, cfg_scale=1.0, generator=None, noise=None):
        """Euler on dZ/dt = v(Z, t) from Z_0 = noise ~ N(0, I) to Z_1: `steps` network calls."""
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        device = noise.device if noise is not None else (generator.device if generator is not None else "cpu")
        x = noise if noise is not None else torch.randn(shape, generator=generator, device=device)
        for k in range(steps):
            t = torch.full((x.shape[0],), k / steps, dtype=torch.float64).to(device=x.device, dtype=x.dtype)
            x = x + self.velocity(net, x, t, y, cfg_scale).to(x.dtype) / steps  # Z += v(Z, t) / N
        return x

    @torch.no_grad()
    def reflow_pairs(self, net, noise, steps=100, y=None, cfg_scale=1.0):
        """(Z_0, Z_1): the coupling made by this flow's ODE, the training pairs of the next flow."""
        return noise, self.sample(net, noise.shape, steps, y=y, cfg_scale=cfg_scale, noise=noise)

    def distill_loss(self, net, x0, x1, y=None):
        """E || x_0 + v(x_0, 0) - x_1 ||^2 (mean over elements): one Euler step should land on x_1."""
        t = torch.zeros(x0.shape[0], device=x0.device, dtype=x0.dtype)
        return (x0 + net(x0, t, y) - x1).pow(2).mean()

    @torch.no_grad()
    def straightness(self, net, noise, steps=100, y=None, cfg_scale=1.0):
        """S = E int_0^1 ||(Z_1 - Z_0) - v(Z_t, t)||^2 dt along the Euler paths from `noise`.
        With v_k the N velocities of a path, Z_1 - Z_0 = mean_k v_k, so S = E mean_k ||v_k||^2
        - ||mean_k v_k||^2, accumulated in float64. Returns a float."""
        x = noise
        acc = "cpu" if noise.device.type == "mps" else noise.device  # where float64 exists
        v_sum = torch.zeros(noise.shape, dtype=torch.float64, device=acc)  # sum_k v_k, (B, ...)
        v_sq = torch.zeros(noise.shape[0], dtype=torch.float64, device=acc)  # sum_k ||v_k||^2, (B,)
        for k in range(steps):
            t = torch.full((x.shape[0],), k / steps, device=x.device, dtype=x.dtype)
            v = self.velocity(net, x, t, y, cfg_scale).to(x.dtype)
            v64 = v.to(acc).double()
            v_sum += v64
            v_sq += v64.flatten(1).pow(2).sum(1)
            x = x + v / steps
        per_path = v_sq / steps - (v_sum / steps).flatten(1).pow(2).sum(1)  # (B,), time-variance of v
        return float(per_path.clamp(min=0).mean())


def transport_cost(x0, x1):
    """E ||x_1 - x_0||^2 of a coupling given as paired rows."""
    return float((x1.double() - x0.double()).flatten(1).pow(2).sum(1).mean())


# -----------------------------------------------------------------------------
# teachers and their pairs: reflow and distillation train on couplings made once by a checkpoint

TEACHERS = ("rectified_flow", "cfm")  # same time convention and network: either one's ODE makes pairs


def teacher_net(ckpt, data):
    """The teacher's EMA network (the weights it samples with), rebuilt from its checkpoint."""
    return common.ema_net(ckpt, data, two_times=False, time_scale=1000.0)


def make_pairs(method, load_teacher, source, data, n, steps, device, seed, path):
    """n pairs (Z_0, Z_1, y) from the ODE of the teacher (load_teacher() -> its network; source:
    its checkpoint's path) with `steps` Euler steps, written atomically to path and reused when a
    file made with the same teacher, n and steps is already there."""
    meta = {"teacher": str(source), "n": n, "steps": steps}
    if path.exists():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved["meta"] == meta:
                common.log(f"reusing {n} pairs from {path}")
                return saved["x0"], saved["x1"], saved["y"]
            common.log(f"{path} was made with {saved['meta']}, not {meta}: making new pairs")
        except Exception as e:
            common.log(f"{path} is unreadable ({type(e).__name__}): making new pairs")
    teacher = load_teacher().to(device)
    num_classes = teacher.cond.num_classes
    g = torch.Generator(device).manual_seed(seed)
    y_all = common.class_labels(n, num_classes, device)  # balanced labels, or None
    x0s, x1s, t_start = [], [], time.time()
    for i in range(0, n, 1000):
        m = min(1000, n - i)
        noise = torch.randn((m,) + data.shape, generator=g, device=device)
        z0, z1 = method.reflow_pairs(teacher, noise, steps, y=None if y_all is None else y_all[i:i + m])
        x0s.append(z0.cpu())
        x1s.append(z1.cpu())
        done = i + m
        rate = done / (time.time() - t_start)
        common.log(f"pairs {done:7d}/{n} from {source} ({steps} Euler steps) | {rate:.0f}/s | "
                   f"eta {int((n - done) / rate)}s")
    pairs = {"x0": torch.cat(x0s), "x1": torch.cat(x1s), "y": None if y_all is None else y_all.cpu(), "meta": meta}
    common.atomic_save(pairs, path)
    common.log(f"wrote {n} pairs to {path}; transport cost E||Z1 - Z0||^2 = {transport_cost(pairs['x0'], pairs['x1']):.4f}")
    return pairs["x0"], pairs["x1"], pairs["y"]


def pairs_loss(loss_on_pairs, x0, x1, y, p_uncond, num_classes):
    """A loss_fn for common.run that ignores the data batch it receives: each step draws a random
    minibatch of the same size from the fixed pairs with torch's global RNG (saved in the
    checkpoint, so --resume continues exactly). p_uncond > 0 drops labels to the null class."""
    def loss_fn(net, x, _y):
        idx = torch.randint(0, len(x0), (x.shape[0],)).to(x0.device)
        yb = None if y is None else y[idx]
        if yb is not None and p_uncond > 0:  # classifier-free guidance, as common.train does for data
            drop = (torch.rand(len(yb)) < p_uncond).to(yb.device)
            yb = torch.where(drop, torch.full_like(yb, num_classes), yb)
        return loss_on_pairs(net, x0[idx], x1[idx], yb)
    return loss_fn


# -----------------------------------------------------------------------------
# command line

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog="see the module docstring for the math",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_args(parser)
    parser.add_argument("--steps", type=int, default=None, help="Euler steps of the sampler (default 100; 1 for a distilled model)")
    parser.add_argument("--time-sampling", default="uniform", choices=["uniform", "logit_normal"], help="training times t")
    parser.add_argument("--reflow-from", metavar="CKPT", default=None, help="train the next rectified flow on pairs from this flow's ODE")
    parser.add_argument("--distill-from", metavar="CKPT", default=None, help="distil this flow into one Euler step")
    parser.add_argument("--n-pairs", type=int, default=None, help="pairs made by the teacher (default 20000 for 2-D points, 4000 for images)")
    parser.add_argument("--pair-steps", type=int, default=100, help="Euler steps of the teacher's ODE when making pairs")
    pre, _ = parser.parse_known_args(argv)  # a teacher given now sets the model's flags' defaults
    if pre.reflow_from and pre.distill_from:
        parser.error("--reflow-from and --distill-from exclude each other: distil a reflowed model in a second run")
    typed_teacher = pre.reflow_from or pre.distill_from
    if typed_teacher:
        try:
            ckpt = common.load_checkpoint(typed_teacher, TEACHERS)
        except common.UserError as e:
            common.fail(parser.prog, e)
        parser.set_defaults(**{k: ckpt["args"][k] for k in common.MODEL_FLAGS})
    args = common.parse_args(parser, argv, "rectified_flow")
    if typed_teacher and args.sample_only:
        parser.error("--reflow-from/--distill-from train a new model: drop --ckpt/--sample-only")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if args.pair_steps < 1 or (args.n_pairs is not None and args.n_pairs < 1):
        parser.error("--pair-steps and --n-pairs must be positive")
    distilled = bool(args.distill_from or (args._ckpt and args._ckpt["args"].get("distill_from")))
    steps = args.steps or (1 if distilled else 100)
    method = RectifiedFlow(args.time_sampling)

    def sample_fn(net, shape, y, generator):
        return method.sample(net, shape, steps, y=y, cfg_scale=args.cfg_scale, generator=generator)

    teacher_path = args.reflow_from or args.distill_from
    if not teacher_path or args.sample_only:
        return common.run(args, "rectified_flow", lambda net, x, y: method.loss(net, x, y=y), sample_fn, time_scale=1000.0)
    try:  # reflow / distillation: pairs once, then common.run on a loss that draws from them
        if typed_teacher and not args.resume:
            wanted = [f"--{k} {ckpt['args'][k]}" for k in common.MODEL_FLAGS if getattr(args, k) != ckpt["args"][k]]
            if wanted:
                raise common.UserError(f"the student copies the teacher's network: drop the flags that differ "
                                       f"from the teacher's ({', '.join(wanted)})")
        data = common.load_data(args.data, args.data_root, args.download)
        device = common.get_device(args.device)
        out = Path(args.out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise common.UserError(f"cannot create output folder {out} ({e.strerror}): pass --out to a writable folder")
        n_pairs = args.n_pairs or (4000 if data.is_image else 20000)
        def load_teacher():  # only when needed: a resumed run with its pairs.pt does without
            return teacher_net(common.load_checkpoint(teacher_path, TEACHERS), data)
        x0, x1, y = make_pairs(method, load_teacher, teacher_path, data, n_pairs, args.pair_steps, device,
                               args.seed + 2, out / "pairs.pt")
        student = None if args.resume else load_teacher().train()  # starts from the teacher's EMA weights
    except common.UserError as e:
        common.fail("rectified_flow.py", e)
    num_classes = 0 if args.uncond else data.num_classes
    x0, x1, y = x0.to(device), x1.to(device), (None if args.uncond or y is None else y.to(device))
    if args.distill_from:  # no label dropout: a null-class one-step map would regress to a blur
        loss_fn = pairs_loss(method.distill_loss, x0, x1, y, 0.0, num_classes)
    else:
        loss_fn = pairs_loss(lambda net, a, b, yb: method.loss(net, b, x0=a, y=yb), x0, x1, y, args.p_uncond, num_classes)
    make_model = None if student is None else (lambda d: student)
    return common.run(args, "rectified_flow", loss_fn, sample_fn, time_scale=1000.0, make_model=make_model)


if __name__ == "__main__":
    main()
