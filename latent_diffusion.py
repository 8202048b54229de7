"""Latent diffusion: generation in an autoencoder's latent space (Rombach et al., arXiv 2112.10752),
with flow matching and a DiT (Peebles & Xie, arXiv 2212.09748) on the latent grid.

The lecture "Advanced Generative Models: From VAE to Diffusion and Flow Matching" (NICE Lab, Zhejiang
University, 2026), slide "Stable Diffusion (Latent Diffusion Models)": pixel-space diffusion is
costly, so step 1 compresses images into a lower-dimensional latent space that keeps their detail,
and step 2 runs the generative process in that space; the next slide pairs it with DiT. The slide
says "a VAE": LDM's first stage is an autoencoder with a KL term so small (weight 1e-6) that it is
no sampler of its own, only a latent space of tame scale; its detail comes from perceptual and
adversarial losses, left out here (a squared error suffices for digits).

Stage 1, the autoencoder (LDM's "KL-reg" first stage). E: image (C, H, W) -> q(z|x) = N(mu, diag
sigma^2) on a grid (c, H/f, W/f) (f = --downsample, c = --latent-channels; for digits32 4x8x8, 256
numbers for 1024 pixels), D: latent -> image, both convolutional. The latent grid's sides are made
even, as the DiT's 2x2 patches and the UNet's halving need: an image whose side is no multiple of 2f
is padded to the next one (edge pixels repeated; MNIST's 28x28 -> 32x32 -> 8x8 at f = 4) and the
decoder's output cropped back. Loss per image, averaged over the batch:
  L_AE(x) = || x - D(z) ||^2 + beta KL(q(z|x) || N(0, I)),   z = mu + sigma * eps, eps ~ N(0, I)
  KL(N(mu, diag sigma^2) || N(0, I)) = 1/2 sum_j (sigma_j^2 + mu_j^2 - 1 - log sigma_j^2)
the squared error summed over the pixels (a Gaussian log-likelihood of fixed variance 1/2, up to a
constant) and the KL summed over the latent grid, beta = --kl-weight = 1e-6 as in LDM. The latent
of an image is the mean, E(x) = mu(x): deterministic, so the latent data set is fixed.

The scale. With beta this small the latents' spread is whatever the encoder chose, so they are
multiplied by one number, scale = 1 / std(E(x_train)) (the standard deviation of every entry of
every training latent), giving them unit standard deviation like the N(0, I) the flow starts from.
LDM computes the same rule on a first batch of posterior samples (Stable Diffusion's 0.18215);
here it is the mean latents of the whole training set, computed once after stage 1 and saved
(--scale, recorded in the stage-2 checkpoint). A sample is x = D(z_1 / scale).

Stage 2, flow matching on the scaled latents z (cfm.py's straight path with sigma_min = 0 and
independent coupling, repeated here in a few lines; t = 0 is the prior, t = 1 the data):
  z_t = (1 - t) z_0 + t z_1,   z_0 ~ N(0, I),  z_1 = scale * E(x),  t ~ U(0, 1)
  L(theta) = E || v_theta(z_t, t, y) - (z_1 - z_0) ||^2
  sampling: dz/dt = v_theta(z, t, y) from z_0 ~ N(0, I) at t = 0 to t = 1 in N steps of h = 1/N,
            Euler (1 network call per step) or midpoint (2): z + h v(z + h/2 v(z, t), t + h/2)
  guidance: v = v_theta(z, t, None) + w (v_theta(z, t, y) - v_theta(z, t, None)) (Ho & Salimans,
            arXiv 2207.12598; labels dropped to the null class during training as everywhere)
The network is common.py's DiT (default: patches of the latent grid, adaLN-Zero blocks) or UNet.
With an identity autoencoder and scale 1 this is cfm.py's model, bit for bit (tests check it).

Run:
  python latent_diffusion.py                    # digits32: both stages, samples.png, recon.png, FD
  python latent_diffusion.py --ae runs/latent_diffusion-digits32/ae/ckpt.pt --iters 4000   # reuse stage 1
  python latent_diffusion.py --ckpt runs/latent_diffusion-digits32/ckpt.pt --steps 20 --cfg-scale 2
  python latent_diffusion.py --resume --iters 4000                   # continue stage 2 exactly
  python latent_diffusion.py --data mnist --download --device cuda   # 28x28 padded to 32x32: 4x8x8 latents
Stage 1 trains into OUT/ae (its checkpoint, reusable with --ae; --resume continues stage 2 only),
stage 2 into OUT. benchmarks/README.md measures the cost against pixel-space cfm.py.
"""
import argparse
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import common

AE_MODEL = "latent_diffusion-ae"  # the model name of stage 1's checkpoints
AE_FLAGS = ("latent_channels", "downsample", "ae_width", "kl_weight", "ae_iters")  # an --ae checkpoint supplies them
STAGES = {"euler": 1, "midpoint": 2}  # network calls per ODE step


# -----------------------------------------------------------------------------
# stage 1: the autoencoder

def gaussian_kl(mu, logvar):
    """KL(N(mu, diag exp(logvar)) || N(0, I)) per example, summed over every dimension but the first."""
    return 0.5 * (logvar.exp() + mu.pow(2) - 1 - logvar).flatten(1).sum(1)


class Autoencoder(nn.Module):
    """E: (C, H, W) -> (mu, logvar), each (latent_channels, h, w), h = H/f rounded up to an even number
    (the image padded to (h f, w f)); D back. f = downsample, a power of 2: log2 f stride-2
    convolutions down, as many nearest-neighbour upsamplings up. `width` channels at full
    resolution, twice that below."""

    def __init__(self, shape, latent_channels=4, downsample=4, width=16, kl_weight=1e-6):
        super().__init__()
        for name, value in (("latent_channels", latent_channels), ("downsample", downsample), ("ae_width", width)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
        if downsample & (downsample - 1):
            raise ValueError(f"--downsample must be a power of 2 (1, 2, 4, 8, ...), got {downsample}")
        if not 0 <= kl_weight < 1:
            raise ValueError(f"--kl-weight must be in [0, 1) (LDM: 1e-6; larger makes a VAE), got {kl_weight}")
        C, H, W = shape
        self.shape, self.kl_weight, self.downsample = tuple(shape), float(kl_weight), downsample
        h, w = 2 * -(-H // (2 * downsample)), 2 * -(-W // (2 * downsample))  # even: the padded image is (h f, w f)
        self.pad = ((w * downsample - W) // 2, (w * downsample - W + 1) // 2,
                    (h * downsample - H) // 2, (h * downsample - H + 1) // 2)  # left, right, top, bottom
        self.latent_shape = (latent_channels, h, w)
        halvings, wide = downsample.bit_length() - 1, 2 * width if downsample > 1 else width
        enc = [nn.Conv2d(C, width, 3, padding=1)]
        for i in range(halvings):
            enc += [nn.SiLU(), nn.Conv2d(width if i == 0 else wide, wide, 3, stride=2, padding=1)]
        enc += [nn.SiLU(), nn.Conv2d(wide, wide, 3, padding=1), nn.SiLU(), nn.Conv2d(wide, 2 * latent_channels, 1)]
        dec = [nn.Conv2d(latent_channels, wide, 3, padding=1), nn.SiLU(), nn.Conv2d(wide, wide, 3, padding=1)]
        for i in range(halvings):
            dec += [nn.SiLU(), nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(wide, width if i == halvings - 1 else wide, 3, padding=1)]
        dec += [nn.SiLU(), nn.Conv2d(width if halvings else wide, C, 3, padding=1)]
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)

    def posterior(self, x):
        """(mu, logvar) of q(z|x), each (B, *latent_shape); logvar clamped to [-30, 20] as in LDM."""
        mu, logvar = self.encoder(F.pad(x, self.pad, mode="replicate")).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def encode(self, x):
        """The latent of x: the posterior mean mu(x) (deterministic)."""
        return self.posterior(x)[0]

    def decode(self, z):
        """z (B, *latent_shape) -> images (B, *shape)."""
        x = self.decoder(z)
        left, right, top, bottom = self.pad
        return x[..., top:x.shape[-2] - bottom, left:x.shape[-1] - right]

    def loss(self, x, y=None):
        """||x - D(z)||^2 (summed over pixels) + kl_weight KL(q(z|x) || N(0, I)), z ~ q(z|x),
        averaged over the batch. y is accepted (common.train's loss(net, x, y)) and ignored."""
        mu, logvar = self.posterior(x)
        z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)  # reparameterised: z = mu + sigma * eps
        return ((x - self.decode(z)).pow(2).flatten(1).sum(1) + self.kl_weight * gaussian_kl(mu, logvar)).mean()


@torch.no_grad()
def encode_all(ae, x, batch=256):
    """E(x) of a whole tensor of images, in batches on the autoencoder's device."""
    device = next(ae.parameters()).device
    return torch.cat([ae.encode(b.to(device)) for b in x.split(batch)])


def latent_scale(z):
    """scale = 1 / std of every entry of the latents z: scale * z has unit standard deviation."""
    return 1.0 / float(z.double().std())


def latent_data(ae, data, scale=None):
    """(the data set of scaled latents scale * E(x), scale): labels as in data, scale computed from the
    training latents when None (else the saved one)."""
    z_train, z_test = encode_all(ae, data.x_train), encode_all(ae, data.x_test)
    scale = latent_scale(z_train) if scale is None else scale
    common.log(f"latents {'x'.join(map(str, z_train.shape[1:]))} for {'x'.join(map(str, data.shape))} pixels, "
               f"scale {scale:.5g} (std of the training latents {1 / latent_scale(z_train):.4g})")
    latents = common.Dataset(f"{data.name}-latents", (scale * z_train).cpu(), data.y_train, (scale * z_test).cpu(),
                             data.y_test, data.num_classes)
    return latents, scale


@torch.no_grad()
def decode_latents(ae, z, scale, batch=256):
    """Images from scaled latents: D(z / scale)."""
    return torch.cat([ae.decode(b / scale) for b in z.split(batch)])


@torch.no_grad()
def reconstruction_report(ae, data, path, n=50):
    """recon.png (rows of n held-out images, each followed by its reconstruction D(E(x))) and the held-out
    mean squared error per pixel beside the mean training image's. Returns both."""
    device = next(ae.parameters()).device
    x, mean_image = data.x_test.to(device), data.x_train.mean(0).to(device)
    recon = torch.cat([ae.decode(ae.encode(b)) for b in x.split(256)])
    mse, baseline = float((recon - x).pow(2).mean()), float((mean_image - x).pow(2).mean())
    rows = [t for i in range(0, n, 10) for t in (x[i:i + 10], recon[i:i + 10])]
    common.save_grid(torch.cat(rows), path)
    common.log(f"autoencoder: held-out reconstruction error {mse:.4g} per pixel (the mean training image: "
               f"{baseline:.4g}); {path}")
    return {"recon_mse": mse, "recon_mse_mean_image": baseline}


# -----------------------------------------------------------------------------
# stage 2: flow matching on the latent grid

class LatentFlow:
    """cfm.py's CFM with sigma_min = 0 and independent coupling, on whatever tensors it is given
    (here the scaled latents): the same random draws in the same order, so equal results."""

    def loss(self, net, x, y=None, generator=None):
        """|| v_theta(z_t, t, y) - (z_1 - z_0) ||^2 on a batch x = z_1 of scaled latents."""
        x0 = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)  # z_0 ~ N(0, I)
        t = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)  # t ~ U(0, 1)
        tt = common.bcast(t, x0)
        x_t = (1 - tt) * x0 + tt * x  # z_t = (1 - t) z_0 + t z_1
        return (net(x_t, t, y) - (x - x0)).pow(2).mean()

    def guided(self, net, x, t, y=None, cfg_scale=1.0):
        """v_theta, with classifier-free guidance when w != 1 (two network calls)."""
        if y is None or cfg_scale == 1.0:
            return net(x, t, y)
        v_uncond = net(x, t, None)
        return v_uncond + cfg_scale * (net(x, t, y) - v_uncond)

    @torch.no_grad()
    def sample(self, net, shape, steps=100, method="euler", y=None, cfg_scale=1.0, generator=None, noise=None):
        """Solve dz/dt = v_theta(z, t) from z_0 ~ N(0, I) at t = 0 to t = 1 in `steps` Euler or
        midpoint steps; returns the latents z_1 (still scaled: decode z_1 / scale)."""
        if method not in STAGES:
            raise ValueError(f"unknown ODE method {method!r}: use one of {', '.join(STAGES)}")
        if int(steps) != steps or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps}")
        x = common.start_noise(shape, generator, noise)  # z_0 ~ N(0, I)
        h = 1.0 / steps

        def v(z, t):
            return self.guided(net, z, torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype), y,
                               cfg_scale).to(x.dtype)

        for i in range(steps):
            t = i * h
            k = v(x, t)
            if method == "midpoint":  # the slope at the midpoint of an Euler half step
                k = v(x + h / 2 * k, t + h / 2)
            x = x + h * k
        return x


def latent_net(arch, shape, width, num_classes):
    """The velocity network v_theta on the latent grid `shape` (common.make_net); a grid it cannot
    take (a DiT patch or a UNet halving that does not divide it; Autoencoder's even sides prevent it
    for the data sets here) is a one-line error."""
    try:
        net = common.make_net(arch, shape, width, num_classes, time_scale=1000.0)
        with torch.no_grad():
            net(torch.zeros(2, *shape), torch.zeros(2), None)  # a batch of 2: GroupNorm refuses one value
    except (common.UserError, RuntimeError, ValueError) as e:
        raise common.UserError(f"--arch {arch} cannot take the latent grid {'x'.join(map(str, shape))} "
                               f"({str(e).splitlines()[0]}): use a smaller --downsample") from None
    return net


# -----------------------------------------------------------------------------
# the two stages' plumbing

def autoencoder(parser, args, data):
    """(the autoencoder, untrained; the stage-1 checkpoint to load into it or None; its flags AE_FLAGS as
    a dict). The checkpoint is the one --ae names (typed, or recorded in a stage-2 checkpoint), checked
    against the data; its autoencoder flags replace the run's. None: stage 1 trains one, built from the
    flags."""
    ckpt, flags = None, {k: getattr(args, k) for k in AE_FLAGS}
    if args.ae:
        if not Path(args.ae).is_file():
            raise common.UserError(f"autoencoder checkpoint {args.ae} not found: pass --ae PATH to a stage-1 "
                                   "checkpoint (OUT/ae/ckpt.pt of a run), or drop --ae to train one")
        ckpt = common.load_checkpoint(args.ae, (AE_MODEL,))
        if ckpt["args"]["data"] != data.name:
            raise common.UserError(f"--ae {args.ae} is an autoencoder of {ckpt['args']['data']}, this run's data is "
                                   f"{data.name}: pass --data {ckpt['args']['data']}, or drop --ae to train one")
        flags = {k: ckpt["args"][k] for k in AE_FLAGS}
    ae = common.construct(parser, Autoencoder, data.shape, flags["latent_channels"], flags["downsample"],
                          flags["ae_width"], flags["kl_weight"])
    return ae, ckpt, flags


def stage1(ae, ckpt, data, args, flags):
    """(the autoencoder's EMA weights, the path of its checkpoint, the wall and CPU seconds of its training
    or {}): those of ckpt (--ae), else trained here by common.train with its flags into OUT/ae, whose
    checkpoint the stage-2 checkpoint then records as its --ae."""
    if ckpt is not None:
        return common.load_ema(ckpt, ae), args.ae, {}
    own = dict(flags, model=AE_MODEL, iters=flags["ae_iters"], uncond=True, resume=False,
               out=str(Path(args.out) / "ae"))
    Path(own["out"]).mkdir(parents=True, exist_ok=True)
    t0, c0 = time.time(), time.process_time()
    ae = common.train(ae, Autoencoder.loss, data, argparse.Namespace(**{**vars(args), **own}))
    seconds = {"ae_train_seconds": time.time() - t0, "ae_train_cpu_seconds": time.process_time() - c0}
    return ae, str(Path(own["out"]) / "ckpt.pt"), seconds


# -----------------------------------------------------------------------------
# the training script

def check_flags(parser, args, ckpt):
    """The sampler's and the data's flags, checked once (the autoencoder's: its constructor)."""
    if args.steps < 1 or args.scale is not None and not args.scale > 0:
        parser.error(f"--steps must be >= 1 and --scale > 0, got {args.steps} and {args.scale}")
    if args.data in common.TOY_SETS:
        parser.error(f"latent diffusion is for images; {args.data} is 2-D points: use cfm.py")
    if ckpt and ckpt["args"]["data"] != args.data:
        parser.error(f"the checkpoint is of --data {ckpt['args']['data']}, not {args.data}: add --data "
                     f"{ckpt['args']['data']}")


def main(argv=None):
    parser = common.add_args(argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                                     epilog="see the module docstring for the math"))
    own = parser.add_argument_group("latent diffusion")
    own.add_argument("--ae", metavar="CKPT", help="reuse this stage-1 autoencoder (OUT/ae/ckpt.pt) and its flags")
    own.add_argument("--ae-iters", type=int, help="stage 1: autoencoder training iterations (default 400)")
    own.add_argument("--ae-width", type=int, help="stage 1: autoencoder channels at full resolution (default 16)")
    own.add_argument("--latent-channels", type=int, help="channels c of the latent grid (default 4)")
    own.add_argument("--downsample", type=int, help="f, a power of 2: latent grid H/f x W/f (default 4)")
    own.add_argument("--kl-weight", type=common.finite, help="beta of the KL term, in [0, 1) (default 1e-6, LDM's)")
    own.add_argument("--scale", type=common.finite, help="latent scale (default: 1 / std of the training latents)")
    own.add_argument("--steps", type=int, help="ODE solver steps for sampling (default 10)")
    own.add_argument("--solver", choices=list(STAGES), help="ODE solver for sampling (default midpoint)")
    defaults = dict(data="digits32", ae_iters=400, ae_width=16, latent_channels=4, downsample=4, kl_weight=1e-6,
                    steps=10, solver="midpoint")
    budgets = {"digits32": dict(arch="dit", iters=1500), "digits": dict(arch="dit"), "mnist": dict(arch="dit"),
               "cifar10": dict(arch="dit")}  # the DiT on the latents, as the lecture pairs them
    args, ckpt = common.parse_args(parser, argv, "latent_diffusion", defaults=defaults, budgets=budgets,
                                   model_flags=AE_FLAGS + ("ae", "scale"))
    check_flags(parser, args, ckpt)
    with common.session(args) as device:
        data = common.load_data(args.data, args.data_root, args.download)
        ae, ae_ckpt, ae_flags = autoencoder(parser, args, data)  # E: x -> q(z|x), D: z -> x; from --ae or the flags
        num_classes = 0 if args.uncond else data.num_classes
        v_theta = latent_net(args.arch, ae.latent_shape, args.width, num_classes).to(device)  # v_theta(z_t, t, y)
        # stage 1: trained into OUT/ae, or loaded; q: what main returns, first the trainings' wall and CPU seconds
        ae, ae_path, q = stage1(ae.to(device), ae_ckpt, data, args, ae_flags)
        latents, scale = latent_data(ae, data, args.scale)  # z = scale * E(x), scale = 1 / std(E(x_train))
        flow = LatentFlow()  # stage 2: flow matching on z
        if args.sample_only:
            v_theta = common.load_ema(ckpt, v_theta)
        else:  # the checkpoint records the autoencoder (path and flags) and the scale, for --ckpt and --resume
            saved = argparse.Namespace(**{**vars(args), **ae_flags, "ae": ae_path, "scale": scale})
            t0, c0 = time.time(), time.process_time()
            v_theta = common.train(v_theta, flow.loss, latents, saved, ckpt)  # returns the EMA network
            q.update(train_seconds=time.time() - t0, train_cpu_seconds=time.process_time() - c0)
        if not common.is_main():
            return None
        if args.n_eval == 0:
            return q or None
        y = common.class_labels(args.n_eval, num_classes, device)
        g = torch.Generator(device).manual_seed(args.seed + 1)
        t0 = time.time()
        with common.autocast(device, args.amp):  # latent noise -> ODE -> divide by the scale -> decode
            z = flow.sample(v_theta, (args.n_eval, *latents.shape), args.steps, args.solver, y, args.cfg_scale,
                            generator=g)
            x = decode_latents(ae, z, scale)
        q.update(common.report(x, data, args, sample_seconds=time.time() - t0))
        q.update(reconstruction_report(ae, data, Path(args.out) / "recon.png"))  # held-out x over D(E(x))
        return q


if __name__ == "__main__":
    main()
