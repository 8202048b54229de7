"""Benchmark of latent_diffusion.py: the lecture's claim that latent diffusion "reduces computational
costs", measured on digits32 (the bundled digits at 32x32) against pixel-space cfm.py.

Both models are the command lines' defaults for digits32 (conditional, labels balanced, w = 1) and
are sampled the same way: the midpoint solver with 10 steps (NFE 20). cfm.py trains its UNet on the
32x32 pixels; latent_diffusion.py first trains its autoencoder (stage 1, counted in its cost), then
its DiT on the 4x8x8 latents. Each model trains in segments (the ITERS lists below; each segment
continues the previous one exactly with --resume) and after each its EMA network is sampled and
scored:
  FD            Frechet distance of n samples to the n held-out digits in the feature classifier's
                space, beside its floor (n random training digits vs the same held-out ones, mean +- sd
                over 20 draws): the model is as good as real data when its FD is within the floor's spread
  train seconds the segment's training wall seconds (the train_seconds of the dict main() returns,
                run with --n-eval 0); cumulative, and for latent_diffusion.py including stage 1, whose
                cost is the wall time of a run with --iters 1 (stage 1, encoding the data set, one step)
  per iteration seconds per training step over the segment's last logged stretch (common.train's
                it/s in OUT/metrics.jsonl; stage 2 alone for latent_diffusion.py)
  time to FD    the cumulative seconds at the first checkpoint whose FD is at most the target: the
                pixel model's FD at its last checkpoint; the target is a latent model that gets
                there in at most a third of the pixel model's time. Both models reach the floor's band
                on digits32, where a single FD moves by the floor's sd, so the time to the band
                (FD <= floor + sd) is given for both as well
  sampling      seconds for the n samples (NFE 20; latent_diffusion.py's include decoding)
  parameters    the sampling network; latent_diffusion.py's autoencoder beside it (its decoder runs
                at sampling time, its encoder at training time)

Run (measured numbers go to benchmarks/results/latent_diffusion_seed<S>.json and the picture beside
them; --seed S seeds both models' training and sampling; markdown() renders every seed's file):
  OMP_NUM_THREADS=1 python benchmarks/bench_latent_diffusion.py                  # the measurement, seed 0
  OMP_NUM_THREADS=1 python benchmarks/bench_latent_diffusion.py --seed 1 --cfm-iters 100 250 500 1000
  python benchmarks/bench_latent_diffusion.py --table                            # print the table
  OMP_NUM_THREADS=1 python benchmarks/bench_latent_diffusion.py --quick --work /tmp/ld   # smoke
      # test in seconds: QUICK's budgets on the 8x8 digits (no digits32 feature classifier to
      # train); WORK/latent_diffusion_seed0.json
  python benchmarks/bench_latent_diffusion.py --device cuda                      # on a GPU
"""
import argparse
import json
import os
import statistics
import time
from pathlib import Path

import bench
import torch

import cfm  # the model files: bench puts the repository's root on sys.path
import common
import latent_diffusion as ld

COMMANDS = ("OMP_NUM_THREADS=1 python benchmarks/bench_latent_diffusion.py --seed 0; "
            "for s in 1 2; do OMP_NUM_THREADS=1 python benchmarks/bench_latent_diffusion.py --seed $s "
            "--cfm-iters 100 250 500 1000; done")
ITERS = {"cfm": (250, 500, 1000, 2000), "latent_diffusion": (250, 500, 1000, 1500, 2000, 3000)}  # cfm.py: its default 2000
QUICK = {"cfm": (2, 4), "latent_diffusion": (2, 4)}
# --quick's data and flags: the 8x8 digits (latents 4x4x4), narrow networks, small batches
QUICK_DATA, QUICK_FLAGS = "digits", ["--batch-size", "32", "--width", "8"]
QUICK_OWN = {"cfm": [],
             "latent_diffusion": ["--ae-iters", "3", "--ae-width", "8", "--downsample", "2"]}
STEPS, SOLVER = 10, "midpoint"  # NFE 20 for both


def seconds(fn):
    t0 = time.time()
    fn()
    return time.time() - t0


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def params(net):
    return sum(p.numel() for p in net.parameters())


def sample_pixels(ckpt, data, n, device, seed=0):
    """cfm.py's EMA network, n samples with the midpoint solver: (samples, seconds, parameters)."""
    net = common.ema_net(ckpt, data, False, 1000.0).to(device)
    y, g = common.class_labels(n, data.num_classes, device), torch.Generator(device).manual_seed(seed + 1)
    t0 = time.time()
    x = cfm.CFM().sample(net, (n, *data.shape), STEPS, SOLVER, y, generator=g)
    sync(device)
    return x, time.time() - t0, {"net": params(net)}


def sample_latents(ckpt, data, n, device, seed=0):
    """latent_diffusion.py's EMA network and autoencoder: noise -> ODE -> / scale -> decode."""
    a = ckpt["args"]
    ae = ld.Autoencoder(data.shape, a["latent_channels"], a["downsample"], a["ae_width"], a["kl_weight"])
    ae = common.load_ema(common.load_checkpoint(a["ae"], (ld.AE_MODEL,)), ae).to(device)
    net = common.make_net(a["arch"], ae.latent_shape, a["width"], data.num_classes, time_scale=1000.0)
    net = common.load_ema(ckpt, net).to(device)
    y, g = common.class_labels(n, data.num_classes, device), torch.Generator(device).manual_seed(seed + 1)
    t0 = time.time()
    z = ld.LatentFlow().sample(net, (n, *ae.latent_shape), STEPS, SOLVER, y, generator=g)
    x = ld.decode_latents(ae, z, a["scale"])
    sync(device)
    return x, time.time() - t0, {"net": params(net), "autoencoder": params(ae)}


def run(model, iters, work, data, n, device, common_flags, seed=0):
    """Train `model` through the segments of `iters`, scoring after each; returns its record."""
    out = work / model
    record = {"model": model, "checkpoints": [], "setup_seconds": 0.0}
    main, accept, sampler = {"cfm": (cfm.main, "cfm", sample_pixels),
                             "latent_diffusion": (ld.main, "latent_diffusion", sample_latents)}[model]
    extra = []
    if model == "latent_diffusion":  # stage 1, counted: a run with one stage-2 step
        stage1 = work / "stage1"
        record["setup_seconds"] = seconds(lambda: ld.main(common_flags + ["--iters", "1", "--out", str(stage1)]))  # the whole run
        extra = ["--ae", str(stage1 / "ae" / "ckpt.pt")]
        print(f"{model}: stage 1 (autoencoder) {record['setup_seconds']:.1f}s", flush=True)
    total, done = record["setup_seconds"], 0
    for k in iters:
        flags = common_flags + extra + ["--iters", str(k), "--out", str(out)] + (["--resume"] if done else [])
        seg = bench.run(main, flags)["train_seconds"]
        total += seg
        ckpt = common.load_checkpoint(out / "ckpt.pt", (accept,))
        x, sample_s, sizes = sampler(ckpt, data, n, device, seed)
        q = common.quality(data, x)
        record["checkpoints"].append(dict(iters=k, segment_seconds=seg, seconds_per_iter=1 / last_rate(out),
                                          cumulative_seconds=total, sample_seconds=sample_s, fd=q["value"],
                                          floor=q["floor"], floor_sd=q["floor_sd"], n=q["n"]))
        record["parameters"], record["samples"] = sizes, x[:50].cpu()
        print(f"{model}: {k} iters, {total:.0f}s cumulative ({1 / last_rate(out):.3f}s/iter), sampling "
              f"{sample_s:.1f}s: {common.format_quality(q)}", flush=True)
        done = k
    return record


def last_rate(out):
    """Iterations per second of the segment's last logged stretch (common.train's metrics.jsonl):
    training steps alone, without loading, encoding or checkpoints."""
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    return [l for l in lines if "it_s" in l][-1]["it_s"]


def time_to(record, target):
    """The cumulative seconds at the first checkpoint with FD <= target (None if never)."""
    hit = [c for c in record["checkpoints"] if c["fd"] <= target]
    return hit[0]["cumulative_seconds"] if hit else None


def ms(values, f=".3g"):
    return format(values[0], f) if len(values) < 2 else f"{statistics.mean(values):{f}} +- {statistics.stdev(values):.2g}"


def seed_files(results=bench.RESULTS):
    """Every seed's result, by seed."""
    paths = sorted(Path(results).glob("latent_diffusion_seed*.json"), key=lambda p: int(p.stem.split("seed")[1]))
    return [json.loads(p.read_text()) for p in paths]


def markdown(results):
    """One table over the seeds' results (mean +- sd where a checkpoint has several seeds), then the
    times to the targets per seed."""
    m, first = results[0]["machine"], results[0]["runs"]["cfm"]["checkpoints"][0]
    data = results[0].get("data", "digits32")  # a --quick run's: the 8x8 digits
    what = (f"{data}, conditional, midpoint x {STEPS} (NFE {2 * STEPS}); FD of {first['n']} "
            f"samples, floor {first['floor']:.3g} +- {first['floor_sd']:.2g} (real vs real); seeds "
            f"{', '.join(str(r['seed']) for r in results)}; seconds are wall seconds on one thread")
    lines = [bench.caption(m, COMMANDS, what), "",
             "| model | iterations | seeds | cumulative s | s / iteration | FD | sampling s |", "|---|---|---|---|---|---|---|"]
    for model in ("cfm", "latent_diffusion"):
        for k in sorted({c["iters"] for r in results for c in r["runs"][model]["checkpoints"]}):
            cs = [c for r in results for c in r["runs"][model]["checkpoints"] if c["iters"] == k]
            lines.append(f"| {model} | {k} | {len(cs)} | {ms([c['cumulative_seconds'] for c in cs], '.0f')} | "
                         f"{ms([c['seconds_per_iter'] for c in cs])} | {ms([c['fd'] for c in cs], '.4g')} | "
                         f"{ms([c['sample_seconds'] for c in cs])} |")
    lat = results[0]["runs"]["latent_diffusion"]
    lines += ["", f"latent_diffusion.py's stage 1 (autoencoder, counted above): "
              f"{ms([r['runs']['latent_diffusion']['setup_seconds'] for r in results], '.0f')} s. Parameters: cfm.py UNet "
              f"{results[0]['runs']['cfm']['parameters']['net'] / 1e6:.2f}M; latent_diffusion.py DiT "
              f"{lat['parameters']['net'] / 1e6:.2f}M + autoencoder {lat['parameters']['autoencoder'] / 1e6:.3f}M.", "",
              "Per seed: the time to the pixel model's final FD (the target: the latent model within 1/3 of "
              "the pixel model's total time), and each model's time to the floor's band (FD <= floor + sd).", ""]
    for r in results:
        pix, lat = r["runs"]["cfm"], r["runs"]["latent_diffusion"]
        target, total = pix["checkpoints"][-1]["fd"], pix["checkpoints"][-1]["cumulative_seconds"]
        band = pix["checkpoints"][0]["floor"] + pix["checkpoints"][0]["floor_sd"]
        reached = time_to(lat, target)
        when = lambda s: "never, within its budget" if s is None else f"{s:.0f} s"
        lines.append(f"- seed {r['seed']}: pixel final FD {target:.4g} after {total:.0f} s; latent reaches it: "
                     f"{when(reached)}" + ("" if reached is None else f" ({reached / total:.2f} of {total:.0f} s)")
                     + f". Band {band:.3g}: pixel {when(time_to(pix, band))}, latent {when(time_to(lat, band))}.")
    lines += ["", f"![cfm.py (top 5 rows) and latent_diffusion.py (bottom 5 rows), each at its last checkpoint, seed "
              f"{results[0]['seed']}](results/{results[0]['picture']})", ""]
    return "\n".join(lines)


def measure(args, work, results):
    """Both models through their segments on one seed: results/latent_diffusion_seed<S>.json (and,
    on seed 0, the picture of both models' samples)."""
    q = args.quick
    name = QUICK_DATA if q else "digits32"
    data, device, n = common.load_data(name), torch.device(args.device), 50 if q else 500
    flags = ["--data", name, "--n-eval", "0", "--device", args.device, "--log-every", "500",
             "--seed", str(args.seed)]
    flags += QUICK_FLAGS if q else []
    own = QUICK_OWN if q else {"cfm": [], "latent_diffusion": []}
    iters = dict(QUICK if q else ITERS, **({"cfm": tuple(args.cfm_iters)} if args.cfm_iters else {}))
    result = {"machine": dict(bench.machine(args.device), device=args.device), "data": name,
              "quick": q,
              "seed": args.seed, "iters": iters, "steps": STEPS, "solver": SOLVER, "runs": {},
              "picture": "latent_diffusion-samples.png"}
    for model, its in iters.items():
        result["runs"][model] = run(model, its, work, data, n, device, flags + own[model], args.seed)
    results.mkdir(parents=True, exist_ok=True)
    samples = torch.cat([result["runs"][model].pop("samples") for model in ("cfm", "latent_diffusion")])
    if args.seed == 0 or q:
        common.save_grid(samples, results / result["picture"])
    bench.write_json(results / f"latent_diffusion_seed{args.seed}.json", result)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    bench.add_output_flags(parser, bench.ROOT / "runs" / "bench-latent_diffusion")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=0, help="both models' training and sampling seed")
    parser.add_argument("--cfm-iters", type=int, nargs="+", help=f"cfm.py's segments (default {ITERS['cfm']})")
    parser.add_argument("--table", action="store_true", help="only print the table of the seeds' files")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    work = Path(args.work) / f"seed{args.seed}"
    if args.table:
        results = Path(args.results or bench.RESULTS)
    else:
        results = bench.results_dir(args, "bench_latent_diffusion.py")
    if not args.table:
        measure(args, work, results)
    print(markdown(seed_files(results)))


if __name__ == "__main__":
    main()
