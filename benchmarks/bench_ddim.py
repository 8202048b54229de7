"""Benchmark of ddim.py: does DDIM sample a DDPM checkpoint 10-50x faster at its quality?
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

Run (single-threaded):
  OMP_NUM_THREADS=1 python benchmarks/bench_ddim.py
  python benchmarks/bench_ddim.py --quick --out /tmp/ddim   # smoke test in seconds: QUICK
Writes benchmarks/results/ddim.json (--quick: OUT/ddim.json, never benchmarks/results/); the
checkpoint goes to OUT (default runs/benchmarks/ddim, not tracked).
"""
import argparse
import time
from pathlib import Path

import bench
import torch

import common  # the model files: bench puts the repository's root on sys.path
import ddim
import ddpm

COMMAND = "OMP_NUM_THREADS=1 python benchmarks/bench_ddim.py"

STEPS = (10, 20, 50, 100, 1000)
ETAS = (0.0, 1.0)
# the measured budget (ddpm.py's default is 2000 iterations); --quick: a smoke test of the code
# paths, with T = 20 so that DDPM's ancestral sampler takes 20 steps
FULL = dict(flags=["--iters", "2500"], steps=STEPS, n=500, inversion_steps=50)
QUICK = dict(flags=["--iters", "5", "--T", "20", "--width", "8", "--batch-size", "32"],
             steps=(5, 10), n=50, inversion_steps=5)


def train_ddpm(out, flags):
    """ddpm.main at its defaults but for flags, without its own evaluation: its training (wall, CPU)
    seconds."""
    q = bench.run(ddpm.main, ["--out", str(out), "--seed", "0", "--n-eval", "0"] + list(flags))
    return q["train_seconds"], q["train_cpu_seconds"]


def timed_generate(sample_fn, data, n, uncond, seed):
    """n samples as the model files' own evaluation draws them (balanced labels, one generator seeded
    with `seed`, on the CPU), with wall and CPU time."""
    y = common.class_labels(n, 0 if uncond else data.num_classes, torch.device("cpu"))
    g = torch.Generator().manual_seed(seed)
    t0, c0 = time.time(), time.process_time()
    x = sample_fn((n, *data.shape), y, g)
    return x, time.time() - t0, time.process_time() - c0


def load_ema(path, data):
    """The EMA network of a ddpm.py checkpoint, and the flags it trained with."""
    ckpt = common.load_checkpoint(path, ("ddpm",))
    return common.ema_net(ckpt, data), ckpt["args"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(bench.ROOT / "runs" / "benchmarks" / "ddim"), help="checkpoint folder")
    parser.add_argument("--reuse", action="store_true", help="reuse OUT/ckpt.pt if present (no training time)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test in seconds: QUICK's budgets; the json goes to OUT "
                        "(or --results)")
    parser.add_argument("--results",
                        help="folder for the json (default benchmarks/results; with --quick, OUT)")
    args = parser.parse_args(argv)
    args.work = args.out
    results = bench.results_dir(args, "bench_ddim.py")
    B = QUICK if args.quick else FULL
    steps_list, n, seed, k = B["steps"], B["n"], 1, B["inversion_steps"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    ckpt = out / "ckpt.pt"
    train_s = None
    if not (args.reuse and ckpt.exists()):
        train_s = train_ddpm(out, B["flags"])
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

    inv = []  # invert n held-out digits with their labels, sample back, measure the error
    x0, y0 = data.x_test[:n], data.y_test[:n]
    for refine in (0, 2):
        c0 = time.process_time()
        x_T = method.invert(net, x0, k, y=y0, refine=refine)
        rec = method.sample(net, x0.shape, k, y=y0, noise=x_T)
        dt = time.process_time() - c0
        inv.append(dict(steps=k, refine=refine, nfe=k * (1 + refine) + k, cpu_s=dt,
                        rmse=(rec - x0).pow(2).mean().sqrt().item(), max_abs=(rec - x0).abs().max().item(),
                        x_T_std=x_T.std().item()))
        print(f"invert+sample refine={refine}: RMSE {inv[-1]['rmse']:.4f}, {dt:.1f}s CPU", flush=True)

    model = (f"ddpm.py defaults (unet width {saved['width']}, {saved['iters']} iters, batch "
             f"{saved['batch_size']}, T {T}, {saved['schedule']}), seed 0")
    result = dict(config=dict(data="digits", model=model, n=n, seed=seed),
                  machine=bench.machine(), train_wall_s=train_s and train_s[0], train_cpu_s=train_s and train_s[1],
                  rows=rows, inversion=inv, quick=args.quick)
    print(markdown(result))
    bench.write_json(results / "ddim.json", result)
    return result


def markdown(r):
    """The step counts of both etas side by side against DDPM-1000, the fewest steps within 10% of
    DDPM's FD, and the inversion's reconstruction error."""
    rows, (ddpm_row, *ddim_rows) = [], r["rows"]
    T, k = ddpm_row["steps"], r["inversion"][0]["steps"]  # DDPM's steps (T = 1000), the inversion's
    etas = sorted({row["eta"] for row in ddim_rows})
    cpu = lambda row: f"{row['sample_cpu_s']:.1f} ({ddpm_row['sample_cpu_s'] / row['sample_cpu_s']:.0f}x)"
    for steps in sorted({row["steps"] for row in ddim_rows}):
        cells = {row["eta"]: row for row in ddim_rows if row["steps"] == steps}
        rows.append([steps] + [x for eta in etas for x in (f"{cells[eta]['fd']:.3g}", cpu(cells[eta]))])
    trained = (f"trained in {r['train_cpu_s']:.0f} CPU s" if r.get("train_cpu_s") else "training not timed")
    what = (f"DDIM and DDPM sampling one ddpm.py digits checkpoint ({r['config']['model']}, {trained}); "
            f"n = {r['config']['n']} samples from the same x_T and labels for every row; FD floor (one draw of real "
            f"against real) {ddpm_row['floor']:.3g}. DDPM's {T} ancestral steps: FD "
            f"{ddpm_row['fd']:.3g} in "
            f"{ddpm_row['sample_cpu_s']:.1f} CPU s; speedup = DDPM's CPU seconds / the row's")
    target = 1.1 * ddpm_row["fd"]  # the claim: the fewest DDIM steps whose FD is at most DDPM-1000's + 10%
    verdicts = []
    for eta in etas:
        ok = [row for row in ddim_rows if row["eta"] == eta and row["fd"] <= target]
        best = min(ok, key=lambda row: row["nfe"]) if ok else None
        verdicts.append(f"eta = {eta:g}: " + (f"{best['nfe']} steps, {ddpm_row['sample_cpu_s'] / best['sample_cpu_s']:.0f}x "
                                              "faster" if best else "none of the step counts"))
    inversion = [[row["refine"], row["nfe"], f"{row['rmse']:.4f}", f"{row['max_abs']:.3f}", f"{row['cpu_s']:.1f}"]
                 for row in r["inversion"]]
    return "\n".join([
        bench.caption(r["machine"], COMMAND, what), "",
        bench.table(["steps = NFE"] + [x for eta in etas for x in (f"FD, eta {eta:g}", f"CPU s (speedup), eta {eta:g}")], rows),
        "", f"Fewest steps with FD <= 1.1 x DDPM-{T}'s ({target:.3g}): " + "; ".join(verdicts)
        + ".",
        "", f"Inversion: {r['config']['n']} held-out digits inverted to x_T with {k} steps, then "
        "sampled back:", "",
        bench.table(["fixed-point iterations per step", "NFE", "RMSE", "max abs error", "CPU s"], inversion)]) + "\n"


if __name__ == "__main__":
    main()
