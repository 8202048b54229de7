"""ControlNet: spatial control of a frozen flow model through zero convolutions (Zhang, Rao &
Agrawala, 2023; arXiv 2302.05543), on a cfm.py base.

The math. The base is a trained flow v_theta(x, t, y) on cfm.py's straight path (t = 0 the prior
N(0, I), t = 1 the data): x_t = (1 - t) x_0 + t x_1, target field x_1 - x_0. Its UNet splits as
v_theta = Dec_theta(Enc_theta(x, t, y)), the encoder giving the skips h_1..h_K and the middle
output m.

  locked base       theta is frozen (requires_grad False, eval mode): gradients pass through the
                    base's decoder to reach the residuals below, but never into its weights
  trainable copy    Enc_phi: a copy of the base's conditioning embedding (time and label), input
                    convolution, down path and middle block, phi initialised to theta's values
                    (its own embedding, as in the paper's code, rather than sharing the frozen one)
  zero convolutions Z_in (3x3, control channels -> the first level's width) and Z_1..Z_K, Z_mid
                    (1x1, on each of the copy's skips and its middle output), weights and biases 0
  controlled field  the copy reads x with the control c added to its first features,
                    inp_phi(x) + Z_in(c), and gives skips h'_k and middle m'; then
                    v(x, t, y, c) = Dec_theta(h_k + Z_k(h'_k), m + Z_mid(m'))
  safe injection    at initialisation every Z is 0, so every residual Z(h') is exactly 0 and
                    v(x, t, y, c) = v_theta(x, t, y) bit for bit, for any x and any c: training
                    starts at the base's own loss, and a condition the copy cannot use yet
                    cannot make it worse.
  first gradients   Z(h) = W h + b with W = 0, b = 0 has dL/dW = sum dL/dZ h^T and dL/db = sum dL/dZ,
                    non-zero as soon as the copy's features h and the gradient arriving from the
                    base's decoder are; but dL/dh = W^T dL/dZ = 0. So after the first backward pass
                    the output zero convolutions have gradients and everything behind them (the
                    copy and Z_in) has exactly zero. The first step makes W non-zero; from the
                    second the copy learns. The zeros are in the weights, not in the signals,
                    so they do not block learning (the paper's argument).
  loss              the base's flow-matching loss with the control computed from the target:
                    L(phi, Z) = E || v(x_t, t, y, c(x_1)) - (x_1 - x_0) ||^2, over phi and Z only
  guidance          v_theta + w (v(., c) - v_theta): the locked base is exactly the model without
                    the condition (trained on the same data, never changed), so no condition
                    dropout is needed to learn an unconditional branch; w = 1 is the plain
                    ControlNet, w = 0 the base (--cfg-scale sets w; the class label is given
                    to both as it is)
  conditions        computed from each digit in code: lowres, the 4x4 image of block averages
                    upsampled back (nearest), i.e. super-resolution; edges, Sobel gradient
                    magnitude of the grey image above a threshold (1 = edge, -1 = not)
  control fidelity  lowres: the mean squared error between the 4x4 poolings of a sample and of
                    the digit its condition came from (0 for the real digits by construction);
                    edges: the intersection over union of their edge maps (1 for the real
                    digits). The base sampled with the same labels and noise but no control is
                    the reference: what the class alone gives.
  evaluation        the conditions and labels come from n held-out digits (x_test[n:2n]) and the
                    Frechet distance (common.report) compares the samples with n other held-out
                    digits (x_test[:n]): samples that obey their conditions are coupled to the
                    digits those came from, so measured against the same digits the distance could
                    fall below its floor (two independent sets of real digits) by copying alone.

The adapter changes the network, not the sampler: it works the same on a flow's velocity as on
the noise prediction of the latent diffusion model of the paper. The lecture "Advanced Generative
Models: From VAE to Diffusion and Flow Matching" (NICE Lab, Zhejiang University, 2026) presents it
on its ControlNet slide (locked copy, trainable copy, 1x1 zero convolutions, "safe injection");
its Motion Prompting slide (Geng et al., CVPR 2025; arXiv 2412.02700) is the same adapter fed with
point tracks instead of an image. Here the condition enters the copy through one 3x3 zero
convolution at full resolution, where the paper first encodes it with a small convolutional
network down to the latent's size.

Run:
  python controlnet.py                          # digits: trains a base (OUT/base), then the ControlNet
  python controlnet.py --control edges          # edge map -> digit
  python controlnet.py --base runs/cfm-digits/ckpt.pt --control lowres
  python controlnet.py --ckpt runs/controlnet-digits/ckpt.pt --cfg-scale 2
  python controlnet.py --resume                 # continues the base, then the ControlNet, exactly
"""
import argparse
import copy
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import common


# -----------------------------------------------------------------------------
# conditions computed from the images themselves, and how well a sample obeys them

def pool4(x):
    """(B, C, H, W) -> (B, C, 4, 4): the averages of 4 x 4 equal blocks (H and W divisible by 4)."""
    return F.avg_pool2d(x, (x.shape[-2] // 4, x.shape[-1] // 4))


def lowres(x):
    """The 4x4 block-average image, upsampled back to H x W (nearest): super-resolution's input."""
    return F.interpolate(pool4(x), size=x.shape[-2:], mode="nearest")


SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8  # d/dx in value per pixel


def edges(x, threshold=0.5):
    """(B, 1, H, W) in {-1, 1}: 1 where the grey image's Sobel gradient magnitude exceeds threshold
    (a step from -1 to 1 across one pixel has magnitude about 1)."""
    k = torch.stack([SOBEL, SOBEL.T])[:, None].to(x)
    g = F.conv2d(F.pad(x.mean(1, keepdim=True), (1, 1, 1, 1), mode="replicate"), k)  # (B, 2, H, W)
    return torch.where(g.pow(2).sum(1, keepdim=True) > threshold ** 2, 1.0, -1.0).to(x.dtype)


CONDITIONS = {"lowres": lowres, "edges": edges}


def fidelity(kind, samples, real):
    """Per image, how well samples obey the condition of real: lowres, the MSE between the 4x4
    poolings (0 for real itself); edges, the IoU of the edge maps (1 for real itself)."""
    samples = samples.clamp(-1, 1)
    if kind == "lowres":
        return (pool4(samples) - pool4(real)).pow(2).flatten(1).mean(1)
    a, b = (edges(samples) > 0).flatten(1), (edges(real) > 0).flatten(1)
    inter, union = (a & b).sum(1).double(), (a | b).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), 1.0)


# -----------------------------------------------------------------------------
# the network: a locked base, a trainable copy of its encoder, zero convolutions

def zero_conv(c_in, c_out, k):
    conv = nn.Conv2d(c_in, c_out, k, padding=k // 2)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ControlNet(nn.Module):
    """net(x, t, y, control) -> the base's output with the copy's residuals added to its skips and
    middle; control=None is the locked base itself. base: a common.UNet, frozen here."""

    COPY = ("cond", "inp", "down", "mid1", "mid_attn", "mid2")  # the trainable copy of the encoder

    def __init__(self, base, control_channels):
        if not isinstance(base, common.UNet):
            raise ValueError(f"ControlNet copies a UNet's encoder, got {type(base).__name__}: use --arch unet")
        super().__init__()
        self.base = base.requires_grad_(False).eval()
        for name in self.COPY:
            setattr(self, name, copy.deepcopy(getattr(base, name)).requires_grad_(True))
        chans = [base.inp.out_channels] + [m.conv2.out_channels if isinstance(m, common.ResBlock) else m.out_channels
                                           for m in base.down] + [base.mid2.conv2.out_channels]
        self.control_in = zero_conv(control_channels, base.inp.out_channels, 3)  # Z_in
        self.zero_convs = nn.ModuleList(zero_conv(c, c, 1) for c in chans)  # Z_1..Z_K, Z_mid

    def train(self, mode=True):  # the base stays in eval mode
        super().train(mode)
        self.base.eval()
        return self

    def forward(self, x, t, y=None, control=None):
        if control is None:
            return self.base(x, t, y)
        t = t.expand(x.shape[0]) if t.dim() == 1 and t.shape[0] == 1 else t
        c = F.silu(self.cond([t], y))
        h = self.inp(x) + self.control_in(control)  # the condition joins the copy's first features
        hs = [h]
        for m in self.down:  # common.UNet.encode's loop
            h = m(h, c) if isinstance(m, common.ResBlock) else m(h)
            hs.append(h)
        hs.append(self.mid2(self.mid_attn(self.mid1(h, c)), c))
        return self.base(x, t, y, residuals=[z(h) for z, h in zip(self.zero_convs, hs)])


# -----------------------------------------------------------------------------
# the method: cfm.py's straight path (sigma_min = 0), with the control computed from the data

class FlowMatching:
    def __init__(self, control=None):
        """control: None (the base's loss) or the name of a condition in CONDITIONS."""
        if control is not None and control not in CONDITIONS:
            raise ValueError(f"unknown --control {control!r}: use one of {', '.join(CONDITIONS)}")
        self.control = control
        self.condition = CONDITIONS[control] if control else None

    def loss(self, net, x1, y=None):
        """|| net(x_t, t, y[, c(x1)]) - (x1 - x0) ||^2, x_t = (1 - t) x0 + t x1, t ~ U(0, 1)."""
        x0, t = torch.randn_like(x1), torch.rand(x1.shape[0], device=x1.device, dtype=x1.dtype)
        x_t = (1 - common.bcast(t, x1)) * x0 + common.bcast(t, x1) * x1
        extra = {} if self.condition is None else {"control": self.condition(x1)}
        return (net(x_t, t, y, **extra) - (x1 - x0)).pow(2).mean()

    def guided(self, net, x, t, y=None, cfg_scale=1.0, control=None):
        """The field; with a control and w != 1, v_base + w (v(control) - v_base), the base being
        net(x, t, y) without control (two network calls)."""
        if control is None:
            return net(x, t, y)
        if cfg_scale == 1.0:
            return net(x, t, y, control=control)
        v_base = net(x, t, y)
        return v_base + cfg_scale * (net(x, t, y, control=control) - v_base)

    @torch.no_grad()
    def sample(self, net, shape, steps=10, method="midpoint", y=None, cfg_scale=1.0, generator=None, noise=None,
               control=None):
        """dx/dt = field(x, t) from x_0 ~ N(0, I) at t = 0 to t = 1 in `steps` Euler or midpoint steps."""
        if method not in ("euler", "midpoint") or int(steps) != steps or steps < 1:
            raise ValueError(f"sampling takes steps >= 1 and method euler or midpoint, got {steps}, {method!r}")
        x = common.start_noise(shape, generator, noise)
        h = 1.0 / steps

        def v(x, t):
            return self.guided(net, x, torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype), y, cfg_scale,
                               control).to(x.dtype)
        for i in range(steps):
            x = x + h * (v(x, i * h) if method == "euler" else v(x + h / 2 * v(x, i * h), i * h + h / 2))
        return x


# -----------------------------------------------------------------------------
# the training script

def locked_base(base, data, args):
    """(the model to control, in `base` (a fresh network); the wall and CPU seconds of its training or {}):
    --base CKPT (a cfm.py checkpoint), else trained first with the flow-matching loss into OUT/base (a
    cfm.py checkpoint too), which --resume continues (or takes as it is when finished)."""
    if args.base:
        ckpt = common.load_checkpoint(args.base, ("cfm",))
        if ckpt["args"].get("sigma_min", 0.0) != 0.0:
            raise common.UserError(f"--base {args.base} was trained with --sigma-min {ckpt['args']['sigma_min']}: "
                                   "this file's path is the straight one, use a base trained with --sigma-min 0")
        return common.load_ema(ckpt, base), {}
    out = Path(args.out) / "base"
    out.mkdir(exist_ok=True)
    ckpt = common.load_checkpoint(out / "ckpt.pt", ("cfm",)) if args.resume and (out / "ckpt.pt").exists() else None
    base_args = argparse.Namespace(**{**vars(args), "model": "cfm", "out": str(out), "iters": args.base_iters,
                                      "sigma_min": 0.0, "coupling": "independent", "dequantize": False})
    t0, c0 = time.time(), time.process_time()
    base = common.train(base, FlowMatching().loss, data, base_args, ckpt)  # L_CFM; the EMA network
    return base, {"base_train_seconds": time.time() - t0, "base_train_cpu_seconds": time.process_time() - c0}


def evaluate(flow, net, samples, x, y, noise, data, args):
    """After common.report: control fidelity of the ControlNet's samples (given the conditions of x)
    and of the base's (the same labels and noise, no control), the base's quality, and the picture
    of rows (condition, 8 samples given it, the digit it came from). Prints one line; returns the
    figures."""
    n, device = len(samples), samples.device
    k, g = min(10, n), torch.Generator().manual_seed(args.seed + 2)
    cond = flow.condition(x[:k])  # the picture's k rows: condition, 8 samples given it, the real digit
    with common.autocast(device, args.amp):
        base = flow.sample(net.base, samples.shape, args.steps, args.solver, y, noise=noise)
        rows = flow.sample(net, (8 * k, *data.shape), args.steps, args.solver,
                           None if y is None else y[:k].repeat_interleave(8), args.cfg_scale,
                           noise=torch.randn((8 * k, *data.shape), generator=g).to(device),
                           control=cond.repeat_interleave(8, 0)).view(k, 8, *data.shape)
    path = Path(args.out) / f"control-{flow.control}.png"
    grid = torch.cat([cond.expand(-1, data.shape[0], -1, -1)[:, None], rows, x[:k, None]], 1)
    common.save_grid(grid.flatten(0, 1), path, nrow=10)
    fid, fid_base = fidelity(flow.control, samples, x), fidelity(flow.control, base, x)
    q_base = common.quality(data, base, args.data_root)
    stat = {"lowres": "MSE of the 4x4 poolings, real digits 0", "edges": "IoU of the edge maps, real digits 1"}
    se = lambda f: float(f.std() / len(f) ** 0.5) if len(f) > 1 else float("nan")  # noqa: E731
    common.log(f"control fidelity ({flow.control}: {stat[flow.control]}; n={n} held-out conditions): controlnet "
               f"{float(fid.mean()):.4f} +- {se(fid):.2g}, base without control {float(fid_base.mean()):.4f} +- "
               f"{se(fid_base):.2g} (ratio {float(fid.mean() / fid_base.mean()):.3f}); the base's samples: "
               f"{common.format_quality(q_base)}; picture {path}")
    return {"control": flow.control, "fidelity": float(fid.mean()), "fidelity_se": se(fid),
            "fidelity_base": float(fid_base.mean()), "fidelity_base_se": se(fid_base),
            "base_value": q_base["value"]}


def main(argv=None):
    parser = common.add_args(argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                                     epilog="see the module docstring for the math"))
    own = parser.add_argument_group("controlnet")
    own.add_argument("--base", metavar="CKPT", help="the cfm.py checkpoint to control (default: train one into OUT/base)")
    own.add_argument("--base-iters", type=int, help="iterations of that base when there is no --base "
                     "(default 1500 on digits, 20000 on mnist, 50000 on cifar10, else 2000)")
    own.add_argument("--control", choices=list(CONDITIONS), help="condition computed from each image: "
                     "lowres (4x4 block averages, the default) or edges (thresholded Sobel magnitude)")
    own.add_argument("--steps", type=int, help="ODE steps for sampling (default 10)")
    own.add_argument("--solver", choices=["euler", "midpoint"], help="ODE solver for sampling (default midpoint)")
    args, ckpt = common.parse_args(parser, argv, "controlnet", model_flags=("control",), teacher=(("base",), ("cfm",)),
                                   defaults=dict(control="lowres", steps=10, solver="midpoint", base_iters=2000),
                                   budgets={"digits": dict(iters=600, base_iters=1500, n_eval=250), "mnist": dict(
                                       iters=5000, base_iters=20000), "cifar10": dict(iters=10000, base_iters=50000)})
    if args.arch != "unet" or args.steps < 1 or args.base_iters < 1:
        parser.error(f"ControlNet copies a UNet's encoder: it needs images and --arch unet (got {args.arch}); "
                     f"--steps and --base-iters must be at least 1 (got {args.steps}, {args.base_iters})")
    flow = common.construct(parser, FlowMatching, args.control)  # the loss with c(x1), the guided sampler
    with common.session(args) as device:
        data = common.load_data(args.data, args.data_root, args.download)
        if 2 * args.n_eval > len(data.x_test):  # conditions from n held-out images, quality against n others
            raise common.UserError(f"--n-eval {args.n_eval}: the conditions come from that many held-out images "
                                   f"and quality is measured on as many others; use at most {len(data.x_test) // 2}")
        num_classes = 0 if args.uncond else data.num_classes
        v_theta = common.make_net(args.arch, data.shape, args.width, num_classes, time_scale=1000.0).to(device)
        q = {}  # what main returns: the trainings' wall and CPU seconds when it trains, the quality figures
        if not args.sample_only:
            v_theta, q = locked_base(v_theta, data, args)  # --base CKPT, or trained first into OUT/base
        channels = flow.condition(torch.zeros(1, *data.shape)).shape[1]  # the condition's channels
        controlnet = ControlNet(v_theta, channels).to(device)  # locked base + trainable copy + zero convs
        if args.sample_only:
            controlnet = common.load_ema(ckpt, controlnet)
        else:
            t0, c0 = time.time(), time.process_time()
            controlnet = common.train(controlnet, flow.loss, data, args, ckpt)  # phi and Z only; the EMA network
            q.update(train_seconds=time.time() - t0, train_cpu_seconds=time.process_time() - c0)
        if not common.is_main():
            return None
        if args.n_eval == 0:
            return q or None
        held_out = slice(args.n_eval, 2 * args.n_eval)  # not the images report's quality compares with
        x, y = data.x_test[held_out].to(device), data.y_test[held_out].to(device) if num_classes else None
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(args.seed + 1)).to(device)
        t0 = time.time()
        with common.autocast(device, args.amp):  # given the held-out digits' conditions and labels
            x1 = flow.sample(controlnet, x.shape, args.steps, args.solver, y, args.cfg_scale, noise=noise,
                             control=flow.condition(x))
        q.update(common.report(x1, data, args, sample_seconds=time.time() - t0))
        q.update(evaluate(flow, controlnet, x1, x, y, noise, data, args))  # fidelity beside the base's, the picture
        return q

if __name__ == "__main__":
    main()
