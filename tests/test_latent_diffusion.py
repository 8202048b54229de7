"""Tests of latent_diffusion.py: with an identity autoencoder it is cfm.py exactly; the scale gives
unit standard deviation and is divided out before decoding; the KL term against torch.distributions;
a short run learns; the command line (tiny runs, exact --resume, bad input -> one line, exit 2)."""
import hashlib
import json
from pathlib import Path

import pytest
import torch
from test_cli import tensors  # flat view of a checkpoint's tensors
import torch.nn as nn

import cfm
import common
import latent_diffusion as ld
from latent_diffusion import Autoencoder, LatentFlow


class IdentityAE(nn.Module):
    """encode and decode the identity: the latent space is the pixel space."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))  # a device for encode_all

    def encode(self, x):
        return x

    def decode(self, z):
        return z


@pytest.fixture(scope="module")
def digits():
    return common.load_data("digits")


@pytest.fixture(scope="module")
def digits32():
    return common.load_data("digits32")


def velocity_net(shape, seed=0):
    """A small conditional UNet with non-zero output weights (zero-initialised outputs would make
    every velocity 0 and the comparisons vacuous)."""
    torch.manual_seed(seed)
    net = common.make_net("unet", shape, 8, 10, time_scale=1000.0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


# -----------------------------------------------------------------------------
# an identity autoencoder with scale 1 is cfm.py

def test_identity_autoencoder_loss_equals_cfm(digits):
    latents, scale = ld.latent_data(IdentityAE(), digits, scale=1.0)
    assert scale == 1.0 and torch.equal(latents.x_train, digits.x_train)
    net, x, y = velocity_net(digits.shape), latents.x_train[:64], latents.y_train[:64]
    ours = LatentFlow().loss(net, x, y, generator=torch.Generator().manual_seed(3))
    theirs = cfm.CFM().loss(net, digits.x_train[:64], y, generator=torch.Generator().manual_seed(3))
    assert torch.equal(ours, theirs)
    torch.manual_seed(5)  # the global RNG too (common.train's case)
    ours = LatentFlow().loss(net, x, None)
    torch.manual_seed(5)
    assert torch.equal(ours, cfm.CFM().loss(net, digits.x_train[:64], None))


@pytest.mark.parametrize("method,cfg_scale", [("euler", 1.0), ("midpoint", 1.0), ("midpoint", 2.0)])
def test_identity_autoencoder_samples_equal_cfm(digits, method, cfg_scale):
    net, y, shape = velocity_net(digits.shape), torch.arange(20) % 10, (20, *digits.shape)
    z = LatentFlow().sample(net, shape, 3, method, y, cfg_scale, generator=torch.Generator().manual_seed(7))
    ours = ld.decode_latents(IdentityAE(), z, 1.0)
    theirs = cfm.CFM().sample(net, shape, 3, method, y, cfg_scale, generator=torch.Generator().manual_seed(7))
    assert torch.equal(ours, theirs)


def test_guidance_at_w2_is_uncond_plus_w_times_difference():
    def net(x, t, y):  # conditional output 3 + x, unconditional 1 + x
        return x + (1.0 if y is None else 3.0)
    x, t, y = torch.randn(4, 2), torch.rand(4), torch.arange(4)
    uncond, cond = x + 1.0, x + 3.0
    torch.testing.assert_close(LatentFlow().guided(net, x, t, y, 2.0), uncond + 2.0 * (cond - uncond))
    torch.testing.assert_close(LatentFlow().guided(net, x, t, y, 1.0), cond)
    torch.testing.assert_close(LatentFlow().guided(net, x, t, None, 2.0), uncond)


# -----------------------------------------------------------------------------
# the scale, and decoding

@pytest.fixture(scope="module")
def random_ae(digits32):
    torch.manual_seed(0)
    return Autoencoder(digits32.shape, 4, 4, 8).eval()


def test_scale_gives_unit_std_on_training_latents(random_ae, digits32):
    z = ld.encode_all(random_ae, digits32.x_train)
    assert abs(z.std().item() - 1) > 0.5  # the raw latents are far from unit std: the test can tell
    latents, scale = ld.latent_data(random_ae, digits32)
    assert abs(latents.x_train.double().std().item() - 1) < 1e-5
    assert scale == pytest.approx(1 / z.double().std().item(), rel=1e-12)
    assert latents.shape == random_ae.latent_shape == (4, 8, 8)
    again, s = ld.latent_data(random_ae, digits32, scale=2.5)  # a saved scale is used as it is
    assert s == 2.5 and torch.allclose(again.x_train, 2.5 * z)


def test_decoding_divides_by_the_scale(random_ae, digits32):
    latents, scale = ld.latent_data(random_ae, digits32)
    assert abs(scale - 1) > 0.5
    x = ld.decode_latents(random_ae, latents.x_test[:16], scale)
    with torch.no_grad():
        torch.testing.assert_close(x, random_ae.decode(random_ae.encode(digits32.x_test[:16])), rtol=1e-4, atol=1e-5)
    assert x.shape == (16, *digits32.shape)


@pytest.mark.parametrize("shape,f,latent", [((1, 32, 32), 4, (3, 8, 8)), ((1, 28, 28), 4, (3, 8, 8)),
                                            ((1, 28, 28), 8, (3, 4, 4)), ((3, 8, 8), 1, (3, 8, 8)),
                                            ((1, 8, 8), 8, (3, 2, 2)), ((1, 28, 28), 2, (3, 14, 14))])
def test_shapes_and_padding(shape, f, latent):
    """Even latent sides (the image padded to a multiple of 2f), decoded back to the image's shape;
    both networks take every such grid."""
    ae = Autoencoder(shape, 3, f, 4)
    x = torch.rand(2, *shape) * 2 - 1
    mu, logvar = ae.posterior(x)
    assert mu.shape == logvar.shape == (2, *latent) and ae.latent_shape == latent
    assert ae.decode(mu).shape == x.shape
    for arch in ("dit", "unet"):
        assert ld.latent_net(arch, latent, 8, 10)(mu, torch.rand(2), None).shape == mu.shape


@pytest.mark.parametrize("arch", ["dit", "unet"])
@pytest.mark.parametrize("shape", [(4, 7, 7), (4, 1, 1)])
def test_a_grid_the_network_cannot_take_is_a_user_error(arch, shape):
    with pytest.raises(common.UserError, match=f"--arch {arch} cannot take the latent grid"):
        ld.latent_net(arch, shape, 8, 10)


@pytest.mark.parametrize("kw,words", [(dict(downsample=3), "power of 2"), (dict(latent_channels=0), "--latent-channels"),
                                      (dict(kl_weight=-1.0), "--kl-weight"), (dict(width=0), "--ae-width")])
def test_bad_hyperparameters(kw, words):
    with pytest.raises(ValueError, match=words):
        Autoencoder((1, 32, 32), **kw)


# -----------------------------------------------------------------------------
# the autoencoder's loss

def test_kl_against_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 4, 3, 3, generator=g, dtype=torch.float64), torch.randn(5, 4, 3, 3, generator=g,
                                                                                         dtype=torch.float64)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    torch.testing.assert_close(ld.gaussian_kl(mu, logvar), expected)


def test_loss_is_squared_error_plus_weighted_kl(digits32):
    torch.manual_seed(0)
    ae, x = Autoencoder(digits32.shape, 4, 4, 8, kl_weight=0.25), digits32.x_train[:8]
    torch.manual_seed(1)
    loss = ae.loss(x)
    mu, logvar = ae.posterior(x)
    torch.manual_seed(1)
    z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape)
    rec = (x - ae.decode(z)).pow(2).sum((1, 2, 3))
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(mu, (0.5 * logvar).exp()),
                                           torch.distributions.Normal(0.0, 1.0)).sum((1, 2, 3))
    torch.testing.assert_close(loss, (rec + 0.25 * kl).mean())


# -----------------------------------------------------------------------------
# a short run learns

def namespace(out, **kw):
    flags = dict(model="test", iters=150, batch_size=32, lr=2e-3, warmup=20, grad_clip=1.0, ema_decay=0.99,
                 uncond=False, p_uncond=0.1, log_every=50, ckpt_every=1000, amp="none", compile=False, seed=0,
                 out=str(out))
    flags.update(kw)
    Path(out).mkdir(parents=True, exist_ok=True)
    return type("Args", (), flags)()


def test_short_training_reconstructs_and_the_latent_flow_learns(digits32, tmp_path):
    torch.manual_seed(0)
    ae = common.train(Autoencoder(digits32.shape, 4, 4, 8), Autoencoder.loss, digits32,
                      namespace(tmp_path / "ae", uncond=True, iters=100))
    q = ld.reconstruction_report(ae, digits32, tmp_path / "recon.png")
    assert q["recon_mse"] < 0.1 * q["recon_mse_mean_image"]  # well below the mean image's error
    assert (tmp_path / "recon.png").exists()
    latents, _ = ld.latent_data(ae, digits32)
    flow = LatentFlow()
    untrained = common.make_net("dit", latents.shape, 8, 10, time_scale=1000.0)  # zero output: loss = E||z1 - z0||^2
    trained = common.train(common.make_net("dit", latents.shape, 8, 10, time_scale=1000.0), flow.loss, latents,
                           namespace(tmp_path / "flow", iters=120))
    x, y = latents.x_test[:256], latents.y_test[:256]
    before = flow.loss(untrained, x, y, generator=torch.Generator().manual_seed(0)).item()
    after = flow.loss(trained, x, y, generator=torch.Generator().manual_seed(0)).item()
    assert before == pytest.approx(2.0, abs=0.15)  # unit-variance latents and noise
    assert after < 0.8 * before, (before, after)


# -----------------------------------------------------------------------------
# the command line

def tiny(out, iters=8):
    return ["--width", "8", "--ae-width", "4", "--batch-size", "16", "--log-every", "2", "--ckpt-every", "4",
            "--n-eval", "0", "--iters", str(iters), "--ae-iters", "4", "--steps", "2", "--out", str(out)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    ld.main(tiny(out))
    return out


def test_tiny_run_writes_both_stages(trained):
    assert (trained / "ckpt.pt").exists() and (trained / "ae" / "ckpt.pt").exists()
    args = torch.load(trained / "ckpt.pt", weights_only=True)["args"]
    assert args["ae"] == str(trained / "ae" / "ckpt.pt") and args["scale"] > 0 and args["arch"] == "dit"
    assert args["data"] == "digits32"


def test_resume_is_bit_identical(trained, tmp_path):
    ld.main(tiny(tmp_path, iters=4) + ["--resume", "auto"])
    ld.main(["--resume", "auto", "--iters", "8", "--out", str(tmp_path)])
    (s1, a), (s2, b) = tensors(trained / "ckpt.pt"), tensors(tmp_path / "ckpt.pt")
    args1, args2 = (torch.load(p, weights_only=True)["args"] for p in (trained / "ckpt.pt", tmp_path / "ckpt.pt"))
    assert s1 == s2 == 8 and a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert args1["scale"] == args2["scale"]


def test_sampling_a_checkpoint_decodes_scaled_latents(trained, tmp_path, monkeypatch):
    """--ckpt: the samples main reports are D(z_1 / scale) of the ODE's z_1, from the checkpoint's
    autoencoder and scale (quality is stubbed: the feature classifier is not the point here)."""
    seen = {}

    def quality(data, samples, root=None):
        seen["x"] = samples
        return {"metric": "FD", "value": 0.0, "floor": 0.0, "floor_sd": 0.0, "n": len(samples)}
    monkeypatch.setattr(common, "quality", quality)
    q = ld.main(["--ckpt", str(trained / "ckpt.pt"), "--n-eval", "20", "--out", str(tmp_path)])
    assert q["n"] == 20 and (tmp_path / "samples.png").exists() and (tmp_path / "recon.png").exists()
    assert q["recon_mse"] > 0 and q["recon_mse_mean_image"] > 0
    ck = torch.load(trained / "ckpt.pt", weights_only=True)
    a = ck["args"]
    ae_ck = common.load_checkpoint(a["ae"], (ld.AE_MODEL,))
    ae = common.load_ema(ae_ck, Autoencoder((1, 32, 32), a["latent_channels"], a["downsample"], a["ae_width"]))
    net = common.load_ema(ck, common.make_net("dit", ae.latent_shape, a["width"], 10, time_scale=1000.0))
    z = LatentFlow().sample(net, (20, *ae.latent_shape), 2, a["solver"], torch.arange(20) % 10, 1.0,
                            generator=torch.Generator().manual_seed(a["seed"] + 1))
    torch.testing.assert_close(seen["x"], ae.decode(z / a["scale"]))


def test_an_autoencoder_checkpoint_supplies_its_flags_and_the_run_s_stay_as_parsed(trained, tmp_path, parsed_flags):
    """--ae: the autoencoder is built from its checkpoint's flags, and the stage-2 checkpoint records
    them with --ae and the scale, while the flags common.parse_args returned keep what was typed: main
    passes what it derives on explicitly, never writing it into them. Nothing trains in stage 1."""
    parsed = parsed_flags
    ae = str(trained / "ae" / "ckpt.pt")
    q = ld.main(tiny(tmp_path, iters=2) + ["--ae", ae, "--ae-width", "8"])  # the checkpoint's 4 wins
    [(args, before)] = parsed
    assert vars(args) == before and args.ae_width == 8 and args.scale is None
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)["args"]
    assert saved["ae"] == ae and saved["ae_width"] == 4 and saved["scale"] > 0
    assert q["train_seconds"] > 0 and "ae_train_seconds" not in q and not (tmp_path / "ae").exists()


def expect_exit_2(capsys, argv, words):
    with pytest.raises(SystemExit) as e:
        ld.main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2, err
    assert words in err and "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir()) if p.is_file()}


def test_bad_input_is_one_line_and_exit_2(trained, capsys, tmp_path):
    before = digest(trained), digest(trained / "ae")
    ae = str(trained / "ae" / "ckpt.pt")
    expect_exit_2(capsys, tiny(tmp_path) + ["--data", "digits", "--ae", ae], "is an autoencoder of digits32")
    expect_exit_2(capsys, tiny(tmp_path) + ["--ae", str(tmp_path / "missing.pt")], "not found")
    expect_exit_2(capsys, tiny(tmp_path) + ["--ae", str(trained / "ckpt.pt")], "is a latent_diffusion checkpoint")
    expect_exit_2(capsys, tiny(tmp_path) + ["--downsample", "3"], "power of 2")
    expect_exit_2(capsys, tiny(tmp_path) + ["--kl-weight", "nan"], "not a finite number")
    expect_exit_2(capsys, tiny(tmp_path) + ["--data", "moons"], "images")
    expect_exit_2(capsys, tiny(tmp_path) + ["--steps", "0"], "--steps")
    expect_exit_2(capsys, ["--ckpt", str(trained / "ckpt.pt"), "--data", "digits"], "the checkpoint is of --data digits32")
    expect_exit_2(capsys, ["--ckpt", str(trained / "ae" / "ckpt.pt")], "is a latent_diffusion-ae checkpoint")
    expect_exit_2(capsys, ["--resume", "--out", str(trained), "--width", "16"], "does not fit")
    assert (digest(trained), digest(trained / "ae")) == before
    assert not (tmp_path / "ckpt.pt").exists()
