"""Benchmark of ddim.py (issue #3): does DDIM sample a DDPM checkpoint 10-50x faster at its quality?
(The 10-50x speedup is the claim of the lecture "Advanced Generative Models: From VAE to Diffusion
and Flow Matching" (NICE Lab, Zhejiang University, 2026); this measures it.)

Fixed budget: one digits checkpoint trained by ddpm.py at its defaults (unet width 16, 2500 iters,
batch 128, T = 1000, linear schedule, seed 0). From its EMA weights, n = 500 samples with DDPM's
1000 ancestral steps (ddpm.DDPM.sample) and with DDIM at 10, 20, 50, 100 and 1000 steps for
eta = 0 and eta = 1. Every row uses the same generator seed (1, as the model files' own evaluation,
args.seed + 1), so the same x_T and the same balanced labels (common.class_labels); sampling time is
measured as CPU and wall seconds. Quality: Frechet
distance in the feature classifier's space, with its floor (real vs real, n = 500). Also the
invert -> sample reconstruction error of 500 held-out digits at 50 steps.

Run (single-threaded; the measured times are in benchmarks/results/ddim.md):
  OMP_NUM_THREADS=1 python benchmarks/ddim.py
Writes benchmarks/results/ddim.json and benchmarks/results/ddim.md; the checkpoint goes to
runs/benchmarks/ddim (not tracked).
"""
import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import common  # noqa: E402
import ddim  # noqa: E402
import ddpm  # noqa: E402

STEPS = (10, 20, 50, 100, 1000)
ETAS = (0.0, 1.0)


def train_ddpm(out, iters=None):
    """ddpm.main at its defaults, without its own evaluation; returns (wall, CPU) seconds."""
    argv = ["--out", str(out), "--seed", "0", "--n-eval", "0"] + (["--iters", str(iters)] if iters else [])
    t0, c0 = time.time(), time.process_time()
    ddpm.main(argv)
    return time.time() - t0, time.process_time() - c0


def timed_generate(sample_fn, data, n, uncond, seed):
    """n samples as the model files' own evaluation draws them (balanced labels, one generator seeded
    with `seed`, on the CPU), with wall and CPU time."""
    y = common.class_labels(n, 0 if uncond else data.num_classes, torch.device("cpu"))
    g = torch.Generator().manual_seed(seed)
    t0, c0 = time.time(), time.process_time()
    x = sample_fn((n, *data.shape), y, g)
    return x, time.time() - t0, time.process_time() - c0


def load_ema(path, data):
    """The EMA network of a ddpm.py checkpoint, and the flags it was trained with."""
    ckpt = common.load_checkpoint(path, ("ddpm",))
    return common.ema_net(ckpt, data), ckpt["args"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "runs" / "benchmarks" / "ddim"), help="checkpoint folder")
    parser.add_argument("--reuse", action="store_true", help="reuse OUT/ckpt.pt if present (no training time)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 200 iters, n = 100, few steps, no results written")
    args = parser.parse_args(argv)
    steps_list = (5, 10) if args.quick else STEPS
    n, seed = (100, 1) if args.quick else (500, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    ckpt = out / "ckpt.pt"
    train_s = None
    if not (args.reuse and ckpt.exists()):
        train_s = train_ddpm(out, 200 if args.quick else 2500)  # the measured budget (ddpm.py's default is 2000)
    data = common.load_data("digits")
    net, saved = load_ema(ckpt, data)
    T = saved["T"]
    ddpm_method, method = ddpm.DDPM(T, saved["schedule"]), ddim.DDIM(T, saved["schedule"])
    settings = [("DDPM (ancestral)", 1.0, T)] + [("DDIM", eta, steps) for eta in ETAS for steps in steps_list]
    rows = []
    for sampler, eta, steps in settings:
        if sampler == "DDIM":
            def sample_fn(shape, y, generator):
                return method.sample(net, shape, steps=steps, eta=eta, y=y, generator=generator)
        else:
            def sample_fn(shape, y, generator):
                return ddpm_method.sample(net, shape, y=y, generator=generator)
        x, wall, cpu = timed_generate(sample_fn, data, n, saved["uncond"], seed)
        q = common.quality(data, x)
        rows.append(dict(sampler=sampler, eta=eta, steps=steps, nfe=steps, fd=q["value"], floor=q["floor"],
                         sample_wall_s=wall, sample_cpu_s=cpu, classifier_acc=q["classifier_acc"]))
        print(f"{sampler} eta={eta:g} steps={steps}: FD {q['value']:.4g} (floor {q['floor']:.4g}), "
              f"{wall:.1f}s wall, {cpu:.1f}s CPU", flush=True)

    inv = []  # invert 500 held-out digits with their labels, sample back, measure the error
    x0, y0 = data.x_test[:n], data.y_test[:n]
    for refine in (0, 2):
        c0 = time.process_time()
        x_T = method.invert(net, x0, 50, y=y0, refine=refine)
        rec = method.sample(net, x0.shape, 50, y=y0, noise=x_T)
        dt = time.process_time() - c0
        inv.append(dict(steps=50, refine=refine, nfe=50 * (1 + refine) + 50, cpu_s=dt,
                        rmse=(rec - x0).pow(2).mean().sqrt().item(), max_abs=(rec - x0).abs().max().item(),
                        x_T_std=x_T.std().item()))
        print(f"invert+sample refine={refine}: RMSE {inv[-1]['rmse']:.4f}, {dt:.1f}s CPU", flush=True)

    machine = dict(processor=platform.processor() or platform.machine(), cores=os.cpu_count(),
                   torch=torch.__version__, threads=torch.get_num_threads(),
                   omp_num_threads=os.environ.get("OMP_NUM_THREADS"))
    result = dict(config=dict(data="digits", model="ddpm.py defaults (unet width 16, 2500 iters, batch 128, "
                              "T 1000, linear), seed 0", n=n, seed=seed),
                  machine=machine, train_wall_s=train_s and train_s[0], train_cpu_s=train_s and train_s[1],
                  rows=rows, inversion=inv)
    md = markdown(result)
    print(md)
    if args.quick:
        return result
    res = ROOT / "benchmarks" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / "ddim.json").write_text(json.dumps(result, indent=2) + "\n")
    (res / "ddim.md").write_text(md)
    return result


def markdown(r):
    m, rows = r["machine"], r["rows"]
    ddpm_row = rows[0]
    trained = (f"trained in {r['train_wall_s']:.0f}s wall, {r['train_cpu_s']:.0f}s CPU" if r["train_wall_s"]
               else "training time not measured (--reuse)")
    lines = [f"DDIM vs DDPM sampling one ddpm.py digits checkpoint ({r['config']['model']}; {trained}); "
             f"n = {r['config']['n']} samples, the same seed (same x_T, same labels) for every row. "
             f"Machine: {m['processor']}, {m['cores']} cores, torch {m['torch']}, {m['threads']} thread(s) "
             f"(OMP_NUM_THREADS={m['omp_num_threads']}). Speedup = DDPM's CPU seconds / the row's CPU seconds "
             "(CPU time: the machine is shared, so wall time is noisier).",
             "",
             "| sampler | eta | steps = NFE | FD (floor) | sampling s CPU (wall) | speedup vs DDPM-1000 |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['sampler']} | {row['eta']:g} | {row['nfe']} | {row['fd']:.3g} ({row['floor']:.3g}) | "
                     f"{row['sample_cpu_s']:.1f} ({row['sample_wall_s']:.1f}) | "
                     f"{ddpm_row['sample_cpu_s'] / row['sample_cpu_s']:.1f}x |")
    target = 1.1 * ddpm_row["fd"]  # the claim: the fewest DDIM steps whose FD is at most DDPM-1000's + 10%
    lines.append("")
    for eta in ETAS:
        ok = [row for row in rows[1:] if row["eta"] == eta and row["fd"] <= target]
        best = min(ok, key=lambda row: row["nfe"]) if ok else None
        lines.append(f"- eta = {eta:g}: fewest steps with FD <= 1.1 x DDPM-1000's ({target:.3g}): "
                     + (f"{best['nfe']}, {ddpm_row['sample_cpu_s'] / best['sample_cpu_s']:.0f}x faster" if best
                        else "none of the step counts tried"))
    lines += ["", f"| invert -> sample, {r['config']['n']} held-out digits, 50 steps | NFE | RMSE | max abs error "
              "| CPU s |",
              "|---|---|---|---|---|"]
    for row in r["inversion"]:
        lines.append(f"| {row['refine']} fixed-point iterations per step | {row['nfe']} | {row['rmse']:.4f} | "
                     f"{row['max_abs']:.3f} | {row['cpu_s']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
