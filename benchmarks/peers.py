"""Peers on the same work: diffusers' DDPM and DDIM schedulers and torchcfm's flow matchers,
driving the same network as ours, compared on quality at equal NFE.

  pip install -r benchmarks/requirements.txt     # diffusers, torchcfm (+ pot, torchdyn); the model files never import them
  OMP_NUM_THREADS=2 python benchmarks/peers.py   # ~5 min on a 2-core CPU; writes benchmarks/results/peers.json

What is compared (2-D checkerboard, the default MLP, fixed budget; W2 on 2000 held-out points):
- one DDPM eps network trained by ddpm.py, sampled by ddpm.DDPM.sample and diffusers'
  DDPMScheduler (1000 ancestral steps), and by ddim.DDIM.sample and diffusers' DDIMScheduler
  (50 steps, eta = 0). diffusers counts time 0..T-1 where we count 1..T: its t is our t + 1.
- flow matching trained by cfm.py's loss and by torchcfm's ConditionalFlowMatcher /
  ExactOptimalTransportConditionalFlowMatcher inside the same training loop (same network,
  optimiser, EMA, batches), all sampled with cfm.CFM's Euler solver at the same NFE.
"""
import argparse
import time
from pathlib import Path

import bench
import torch

import cfm  # the model files: bench puts the repository's root on sys.path
import common
import ddim
import ddpm

COMMAND = "pip install -r benchmarks/requirements.txt && OMP_NUM_THREADS=2 python benchmarks/peers.py"

DATA, N_EVAL, SEED = "checkerboard", 2000, 0
TRAIN = ["--data", DATA, "--iters", "3000", "--n-eval", "0", "--log-every", "1000", "--uncond"]


def w2(data, x):
    q = common.quality(data, x.float().cpu())
    return q["value"], q["floor"]


def timed(fn):
    t0 = time.time()
    out = fn()
    return out, time.time() - t0


@torch.no_grad()
def diffusers_ddpm(net, sched_cls, steps, noise, generator, **step_kw):
    from diffusers import DDPMScheduler, DDIMScheduler  # noqa: F401  (optional peer)
    s = sched_cls(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", clip_sample=False)
    s.set_timesteps(steps)
    x = noise.clone()
    for t in s.timesteps:
        eps = net(x, torch.full((len(x),), int(t) + 1), None)  # their t = our t - 1
        x = s.step(eps, t, x, generator=generator, **step_kw).prev_sample
    return x


def torchcfm_loss(matcher):
    def loss_fn(net, x1, y):
        t, x_t, u_t = matcher.sample_location_and_conditional_flow(torch.randn_like(x1), x1)
        return (net(x_t, t, y) - u_t).pow(2).mean()
    return loss_fn


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(bench.ROOT / "benchmarks" / "work" / "peers"))
    p.add_argument("--iters", type=int, default=3000, help="training iterations of every model")
    args = p.parse_args(argv)
    from diffusers import DDIMScheduler, DDPMScheduler
    from torchcfm.conditional_flow_matching import (ConditionalFlowMatcher,
                                                    ExactOptimalTransportConditionalFlowMatcher)
    out = Path(args.out)
    train = TRAIN[:TRAIN.index("--iters") + 1] + [str(args.iters)] + TRAIN[TRAIN.index("--iters") + 2:]
    data = common.load_data(DATA)
    noise = torch.randn(N_EVAL, 2, generator=torch.Generator().manual_seed(SEED))
    gen = lambda: torch.Generator().manual_seed(SEED + 1)
    rows = []

    # --- diffusion: one network, four samplers
    t_train = bench.run(ddpm.main, train + ["--out", str(out / "ddpm")])["train_seconds"]
    net = common.ema_net(common.load_checkpoint(out / "ddpm" / "ckpt.pt", ("ddpm",)), data)
    d, dd = ddpm.DDPM(), ddim.DDIM()
    for impl, sampler, nfe, fn in [
        ("ours", "DDPM ancestral", 1000, lambda: d.sample(net, noise.shape, generator=gen(), noise=noise)),
        ("diffusers", "DDPMScheduler", 1000, lambda: diffusers_ddpm(net, DDPMScheduler, 1000, noise, gen())),
        ("ours", "DDIM eta=0", 50, lambda: dd.sample(net, noise.shape, steps=50, eta=0.0, noise=noise)),
        ("diffusers", "DDIMScheduler eta=0", 50, lambda: diffusers_ddpm(net, DDIMScheduler, 50, noise, gen(), eta=0.0)),
    ]:
        x, t_sample = timed(fn)
        rows.append(dict(method="DDPM eps-net", impl=impl, sampler=sampler, nfe=nfe, train_s=t_train,
                         sample_s=t_sample, **dict(zip(("w2", "floor"), w2(data, x)))))
        print(rows[-1], flush=True)

    # --- flow matching: three losses, one training loop, one sampler
    parser = common.add_args(argparse.ArgumentParser())
    flows = [("ours (cfm.py, independent)", None, "cfm"), ("ours (cfm.py, OT)", None, "cfm-ot"),
             ("torchcfm ConditionalFlowMatcher", ConditionalFlowMatcher(sigma=0.0), "torchcfm"),
             ("torchcfm ExactOptimalTransportCFM", ExactOptimalTransportConditionalFlowMatcher(sigma=0.0), "torchcfm-ot")]
    for impl, matcher, tag in flows:
        folder = out / tag
        if matcher is None:
            flags = train + ["--out", str(folder)] + (["--coupling", "ot"] if tag.endswith("ot") else [])
            t_train = bench.run(cfm.main, flags)["train_seconds"]
            ckpt = common.load_checkpoint(folder / "ckpt.pt", ("cfm",))
        else:
            a = common.parse_args(parser, train + ["--out", str(folder)], tag)
            _, t_train = timed(lambda: common.run(a, tag, torchcfm_loss(matcher), None, time_scale=1000.0))
            ckpt = common.load_checkpoint(folder / "ckpt.pt", (tag,))
        net = common.ema_net(ckpt, data, time_scale=1000.0)
        for nfe in (1, 10, 100):
            x, t_sample = timed(lambda: cfm.CFM().sample(net, noise.shape, steps=nfe, method="euler", noise=noise))
            rows.append(dict(method="flow matching", impl=impl, sampler="Euler", nfe=nfe, train_s=t_train,
                             sample_s=t_sample, **dict(zip(("w2", "floor"), w2(data, x)))))
            print(rows[-1], flush=True)

    result = {"machine": bench.machine(), "data": DATA, "iters": args.iters, "rows": rows}
    bench.write_json(bench.RESULTS / "peers.json", result)
    print(markdown(result))


def markdown(res):
    """The diffusion samplers one per row; the flow matchers one per row, their NFE side by side."""
    diffusion = [[r["impl"], r["sampler"], r["nfe"], f"{r['w2']:.3f}", f"{r['sample_s']:.2f}"]
                 for r in res["rows"] if r["method"] != "flow matching"]
    flows = [r for r in res["rows"] if r["method"] == "flow matching"]
    nfes = sorted({r["nfe"] for r in flows})
    matching = [[impl] + [next(f"{r['w2']:.3f}" for r in flows if r["impl"] == impl and r["nfe"] == n) for n in nfes]
                + [f"{next(r['train_s'] for r in flows if r['impl'] == impl):.0f}"]
                for impl in dict.fromkeys(r["impl"] for r in flows)]
    what = (f"{res['data']}, {res['iters']} training iterations of every model, W2 of {N_EVAL} points (floor, real vs "
            f"real: {res['rows'][0]['floor']:.3f}); diffusion: one network trained by ddpm.py "
            f"({res['rows'][0]['train_s']:.0f} s)")
    return "\n".join([bench.caption(res["machine"], COMMAND, what), "",
                      bench.table(["implementation", "sampler", "NFE", "W2", "sample s"], diffusion, ["l", "l", "r", "r", "r"]),
                      "", bench.table(["flow matching loss, Euler sampler"] + [f"W2 at NFE {n}" for n in nfes] + ["train s"],
                                      matching)]) + "\n"


if __name__ == "__main__":
    main()
