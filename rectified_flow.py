"""Rectified Flow: reflow and one-step distillation (Liu, Gong & Liu, 2022, arXiv:2209.03003).

The math, in the notation of the lecture "Advanced Generative Models: From VAE to Diffusion and Flow
Matching" (NICE Lab, Zhejiang University, 2026); t = 0 is the Gaussian prior, t = 1 the data:

  coupling           x_0 ~ N(0, I) and x_1 ~ q, independent for the 1-rectified flow
  straight path      z_t = (1 - t) x_0 + t x_1,   d/dt z_t = x_1 - x_0
  objective          min_v E_{t, (x_0, x_1)} || v(z_t, t) - (x_1 - x_0) ||^2
  time sampling      t ~ U[0, 1], or logit-normal: t = sigmoid(m + s n), n ~ N(0, 1) (Esser et al.,
                     2024, arXiv:2403.03206)
  ODE, Euler         Z_0 ~ N(0, I);  Z_{t + 1/N} = Z_t + v(Z_t, t) / N,  t = 0, 1/N, ..., 1 - 1/N
  guidance           v = v(z, t, None) + w (v(z, t, y) - v(z, t, None))   (Ho & Salimans, arXiv:2207.12598)
  reflow             (Z_0, Z_1) = the flow's ODE from noise to its end; training the objective on
                     these fixed pairs gives the (k+1)-rectified flow of the k-rectified one
  transport cost     E ||Z_1 - Z_0||^2 <= E ||x_1 - x_0||^2 for the rectified coupling (the
                     paper's theorem, for any convex cost), so reflow never raises it
  straightness       S(Z) = int_0^1 E || (Z_1 - Z_0) - v(Z_t, t) ||^2 dt,  0 iff every path is
                     a straight line; since Z_1 - Z_0 = int_0^1 v dt it is the variance of the
                     velocity along each path, measured here along the Euler paths
  distillation       min E || Z_0 + v(Z_0, 0) - Z_1 ||^2 on the pairs: one Euler step lands on Z_1.
                     Since Z_0 + v - Z_1 = v - (Z_1 - Z_0), this is the objective with t = 0 only
                     (z_0 = Z_0): training uses the loss with time_sampling "zero"

Why reflow is needed: the objective's minimiser is the conditional mean v(z, t) = E[x_1 - x_0 | z_t = z].
Where straight lines between independent pairs cross, that mean averages their directions, so the
1-rectified flow's paths are curved and its one Euler step lands near the data mean, not on the data.
The lecture's key insights ("learns constant velocity v_t(z_t) ~ x_1 - x_0", "enables few-step
sampling") hold once the paths no longer cross, i.e. after reflow (its "curved -> straight paths via
rectification" figure), not for the objective on independent pairs, which is flow matching's; the
lecture's own table (from the paper) gives one-step 1-RF a far worse FID than one-step 2-RF. The
lecture shows the objective and the Euler sampler (its Algorithm 2); reflow, the cost theorem,
straightness and distillation are from the paper. The paper distils images with LPIPS; this file
uses the squared error above for every data set.

Run (each stage's --out folder holds ckpt.pt, samples.png, metrics.jsonl and, for the last two,
pairs.pt: the fixed pairs, made once by the teacher's ODE and reused by --resume):
  python rectified_flow.py --out runs/rf1                                   # 1-RF on digits
  python rectified_flow.py --reflow-from runs/rf1/ckpt.pt --out runs/rf2    # 2-RF (from 1-RF)
  python rectified_flow.py --distill-from runs/rf2/ckpt.pt --out runs/rf2d  # 2-RF + distill
  python rectified_flow.py --ckpt runs/rf2/ckpt.pt --steps 1                # 2-RF with one step
  python rectified_flow.py --data 8gaussians --uncond --out runs/rf1-8g     # 2-D points, W2
  python rectified_flow.py --data 8gaussians --uncond --reflow-from runs/rf1-8g/ckpt.pt --out runs/rf2-8g
  python rectified_flow.py --time-sampling logit_normal --device cuda       # SD3's time sampler
The student copies the teacher's network (give it the teacher's --data, --arch, --width, --uncond)
and starts from its EMA weights; a distilled checkpoint samples with --steps 1 unless told otherwise.
"""
import argparse
import time
from pathlib import Path

import torch

import common


# -----------------------------------------------------------------------------
# the method: time sampling, loss, Euler sampler, reflow pairs, distillation, straightness

class RectifiedFlow:
    """time_sampling: "uniform", "logit_normal" (logit_mean, logit_std), or "zero": t = 0 only, the
    one-step distillation objective."""

    def __init__(self, time_sampling="uniform", logit_mean=0.0, logit_std=1.0):
        if time_sampling not in ("uniform", "logit_normal", "zero"):
            raise ValueError(f"unknown --time-sampling {time_sampling!r}: use 'uniform' or 'logit_normal' "
                             "(or, for distillation, 'zero')")
        self.time_sampling, self.logit_mean, self.logit_std = time_sampling, logit_mean, logit_std

    def sample_time(self, n, device=None):
        """t (n,), drawn on the CPU in float64 (torch's global RNG), then moved: in (0, 1), or 0 for "zero"."""
        if self.time_sampling == "uniform":
            t = torch.rand(n, dtype=torch.float64)  # t ~ U[0, 1]
        elif self.time_sampling == "logit_normal":
            t = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(n, dtype=torch.float64))
        else:
            t = torch.zeros(n, dtype=torch.float64)
        return t.to(device, non_blocking=True)

    def loss(self, net, x1, y=None, x0=None):
        """E || v(z_t, t) - (x_1 - x_0) ||^2 (mean over elements); x0=None draws fresh noise
        (1-rectified flow), a given x0 trains on fixed pairs (reflow, distillation)."""
        x0 = torch.randn_like(x1) if x0 is None else x0
        t = self.sample_time(x1.shape[0], x1.device).to(x1.dtype)
        z_t = (1 - common.bcast(t, x1)) * x0 + common.bcast(t, x1) * x1  # z_t = (1 - t) x_0 + t x_1
        return (net(z_t, t, y) - (x1 - x0)).pow(2).mean()

    def guided(self, net, x, t, y=None, cfg_scale=1.0):
        """v(x, t), with classifier-free guidance when w != 1 (two network calls)."""
        if y is None or cfg_scale == 1.0:
            return net(x, t, y)
        v_uncond = net(x, t, None)
        return v_uncond + cfg_scale * (net(x, t, y) - v_uncond)

    @torch.no_grad()
    def sample(self, net, shape, steps=100, y=None, cfg_scale=1.0, generator=None, noise=None, trajectory=None):
        """Euler on dZ/dt = v(Z, t) from Z_0 = noise ~ N(0, I) to Z_1: `steps` network calls.
        trajectory: a list that receives Z_0 and the state after each step, Z_1 last (common.record)."""
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        x = common.start_noise(shape, generator, noise)  # Z_0 ~ N(0, I)
        common.record(trajectory, x)
        for k in range(steps):
            t = torch.full((x.shape[0],), k / steps, dtype=torch.float64).to(device=x.device, dtype=x.dtype)
            x = x + self.guided(net, x, t, y, cfg_scale).to(x.dtype) / steps  # Z += v(Z, t) / N
            common.record(trajectory, x)
        return x

    @torch.no_grad()
    def reflow_pairs(self, net, noise, steps=100, y=None, cfg_scale=1.0):
        """(Z_0, Z_1): the coupling made by this flow's ODE, the training pairs of the next flow."""
        return noise, self.sample(net, noise.shape, steps, y=y, cfg_scale=cfg_scale, noise=noise)

    def distill_loss(self, net, x0, x1, y=None):
        """E || x_0 + v(x_0, 0) - x_1 ||^2 (mean over elements): one Euler step should land on x_1.
        The same as loss(net, x1, y, x0) with t = 0 only."""
        return RectifiedFlow("zero").loss(net, x1, y, x0)

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
            v = self.guided(net, x, t, y, cfg_scale).to(x.dtype)
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


def load_teacher(path, args):
    """The teacher's checkpoint, once the student's flags are checked to build the teacher's network."""
    ckpt = common.load_checkpoint(path, TEACHERS)
    a = ckpt["args"]
    if a.get("path", "ot") != "ot":  # the pairs come from this file's Euler sampler on the straight path
        raise common.UserError(f"{path} is a cfm.py model of the {a['path']} path; reflow and distillation "
                               "need the straight path: train the teacher with --path ot")
    differ = [k for k in common.MODEL_FLAGS if getattr(args, k) != a[k]]
    if differ:
        want = " ".join(f"--{k} {a[k]}" if k != "uncond" else "--uncond" if a[k] else "no --uncond" for k in differ)
        raise common.UserError(f"the student copies the teacher's network: run with the teacher's flags ({want})")
    return ckpt


def make_pairs(method, teacher, data, n, steps, device, seed, path):
    """n pairs (Z_0, Z_1, y) from the ODE of the checkpoint at `teacher` with `steps` Euler steps,
    written atomically to path and reused when a file made with the same teacher, n and steps is
    already there (then the teacher is not loaded)."""
    meta = {"teacher": str(teacher), "n": n, "steps": steps}
    if path.exists():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved["meta"] == meta:
                common.log(f"reusing {n} pairs from {path}")
                return saved["x0"], saved["x1"], saved["y"]
            common.log(f"{path} was made with {saved['meta']}, not {meta}: making new pairs")
        except Exception as e:
            common.log(f"{path} is unreadable ({type(e).__name__}): making new pairs")
    net = teacher_net(common.load_checkpoint(teacher, TEACHERS), data).to(device)
    g = torch.Generator(device).manual_seed(seed)
    y_all = common.class_labels(n, net.cond.num_classes, device)  # balanced labels, or None
    x0s, x1s, t_start = [], [], time.time()
    for i in range(0, n, 1000):
        m = min(1000, n - i)
        noise = torch.randn((m,) + data.shape, generator=g, device=device)
        z0, z1 = method.reflow_pairs(net, noise, steps, y=None if y_all is None else y_all[i:i + m])
        x0s.append(z0.cpu())
        x1s.append(z1.cpu())
        done = i + m
        rate = done / (time.time() - t_start)
        common.log(f"pairs {done:7d}/{n} from {teacher} ({steps} Euler steps) | {rate:.0f}/s | "
                   f"eta {int((n - done) / rate)}s")
    pairs = {"x0": torch.cat(x0s), "x1": torch.cat(x1s), "y": None if y_all is None else y_all.cpu(), "meta": meta}
    common.atomic_save(pairs, path)
    common.log(f"wrote {n} pairs to {path}; transport cost E||Z1 - Z0||^2 = "
               f"{transport_cost(pairs['x0'], pairs['x1']):.4f}")
    return pairs["x0"], pairs["x1"], pairs["y"]


def stage(args, ckpt):
    """The run's stage, for pictures: 1-RF (independent pairs), reflow (pairs of a teacher's ODE) or distilled."""
    made = ckpt["args"] if args.sample_only else vars(args)
    return "distilled RF" if made.get("distill_from") else "reflow RF" if made.get("reflow_from") else "1-RF"


# -----------------------------------------------------------------------------
# the training script

def main(argv=None):
    parser = common.add_args(argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                                     epilog="see the module docstring for the math"))
    g = parser.add_argument_group("rectified flow")
    g.add_argument("--steps", type=int, help="Euler steps of the sampler (default 100; 1 for a distilled model)")
    g.add_argument("--time-sampling", choices=["uniform", "logit_normal"], help="training times t (default uniform)")
    g.add_argument("--reflow-from", metavar="CKPT", help="train the next rectified flow on pairs from this flow's ODE")
    g.add_argument("--distill-from", metavar="CKPT", help="distil this flow into one Euler step (no label dropout)")
    g.add_argument("--n-pairs", type=int, help="pairs made by the teacher (default 20000 for 2-D points, 4000 for images)")
    g.add_argument("--pair-steps", type=int, help="Euler steps of the teacher's ODE when making pairs (default 100)")
    common.add_trajectory_flag(g)
    args, ckpt = common.parse_args(parser, argv, "rectified_flow", budgets={"toy": dict(n_pairs=20000)},
                                   defaults=dict(time_sampling="uniform", n_pairs=4000, pair_steps=100, trajectory=0),
                                   teacher=(("reflow_from", "distill_from"), TEACHERS))  # its network flags
    teacher = args.reflow_from or args.distill_from
    if args.reflow_from and args.distill_from or teacher and args.sample_only:
        parser.error("--reflow-from, --distill-from and --ckpt/--sample-only exclude each other: one stage per run")
    if any(n is not None and n < 1 for n in (args.steps, args.n_pairs, args.pair_steps)):
        parser.error(f"--steps, --n-pairs and --pair-steps must be positive, got {args.steps}, {args.n_pairs}, "
                     f"{args.pair_steps}")
    steps = args.steps or (1 if args.distill_from or args.sample_only and ckpt["args"]["distill_from"] else 100)
    flow = common.construct(parser, RectifiedFlow, "zero" if args.distill_from else args.time_sampling)
    # distillation: the objective at t = 0 only and no label dropout (a null-class map blurs), which the
    # checkpoint records as p_uncond 0
    train_flags = argparse.Namespace(**{**vars(args), "p_uncond": 0.0}) if args.distill_from else args
    with common.session(args) as device:
        data = common.load_data(args.data, args.data_root, args.download)
        num_classes = 0 if args.uncond else data.num_classes
        v = common.make_net(args.arch, data.shape, args.width, num_classes, time_scale=1000.0).to(device)  # v(z, t, y)
        q = {}  # what main returns: the pairs' and the training's wall and CPU seconds, the quality figures
        if args.sample_only:
            v = common.load_ema(ckpt, v)
        else:
            train_set = data  # 1-rectified flow: noise and data drawn independently
            if teacher:  # reflow / distillation: the fixed pairs (Z_0, Z_1) of the teacher's ODE
                if ckpt is None:  # a new student starts from the teacher's EMA weights
                    v = common.load_ema(load_teacher(teacher, args), v).train()
                t0, c0 = time.time(), time.process_time()
                z0, z1, y = make_pairs(flow, teacher, data, args.n_pairs, args.pair_steps, device, args.seed + 2,
                                       Path(args.out) / "pairs.pt")
                q.update(pairs_seconds=time.time() - t0, pairs_cpu_seconds=time.process_time() - c0)
                train_set = common.Dataset(f"{data.name} pairs", z1, y, data.x_test, data.y_test, data.num_classes,
                                           x0_train=z0)
            t0, c0 = time.time(), time.process_time()
            v = common.train(v, flow.loss, train_set, train_flags, ckpt)  # pairs: loss(v, Z_1, y, x0=Z_0)
            q.update(train_seconds=time.time() - t0, train_cpu_seconds=time.process_time() - c0)
        if not common.is_main():
            return None
        if args.trajectory:  # Euler's path: OUT/trajectory.png (2-D data) or OUT/strip.png
            common.draw_trajectory(lambda **kw: flow.sample(v, steps=steps, cfg_scale=args.cfg_scale, **kw), data, args,
                                   device, num_classes, f"{stage(args, ckpt)}, {steps} Euler steps")
        if args.n_eval:
            y = common.class_labels(args.n_eval, num_classes, device)
            g = torch.Generator(device).manual_seed(args.seed + 1)
            t0 = time.time()
            with common.autocast(device, args.amp):
                x1 = flow.sample(v, (args.n_eval, *data.shape), steps, y, args.cfg_scale, generator=g)
            q.update(common.report(x1, data, args, sample_seconds=time.time() - t0))
        return q or None


if __name__ == "__main__":
    main()
