"""Benchmark of meanflow.py: 1- and 2-step MeanFlow quality against plain flow matching's 100-step
Euler quality, with the same data, network size, batch, learning rate, iterations and training loop
(common.train: AdamW, warmup, clipping, EMA), on a 2-D set and on digits; and the training cost of one
step (loss + backward + AdamW) relative to flow matching's.

The flow-matching baseline is cfm.py (independent coupling, sigma_min 0, Euler, 100 steps) when it
runs here, else the plain loss written below (linear path, v = x1 - x0); the output names which.

Every run records meanflow.py's recipe (tangent, ratio of pairs with r != t) from its checkpoint;
timings and quality come from the dict each model file's main() returns.

Run (single-threaded; the results record the time it took):
  OMP_NUM_THREADS=1 python benchmarks/bench_meanflow.py
  OMP_NUM_THREADS=1 python benchmarks/bench_meanflow.py --quick --work /tmp/mf   # smoke test in
                                                       # seconds: QUICK_BUDGETS, WORK/meanflow.json
Writes benchmarks/results/meanflow.json; the runs go to WORK (default runs/bench-meanflow, not
tracked).
"""
import argparse
import statistics
import time
from pathlib import Path

import bench
import torch

import common  # the model files: bench puts the repository's root on sys.path
import meanflow

COMMAND = "OMP_NUM_THREADS=1 python benchmarks/bench_meanflow.py"
# a run that records no recipe is meanflow.py of commit 0de1276: the paper's tangent, the JVP on every pair
UNRECORDED = "the paper's tangent (--tangent sample) with the JVP on every pair (meanflow.py of commit 0de1276)"

# fixed budgets: one network size per data set, the same for both methods
BUDGETS = {
    "8gaussians": dict(arch="mlp", width=128, iters=1500, batch_size=256, lr=2e-3, n_eval=1000),
    "digits": dict(arch="unet", width=16, iters=1000, batch_size=128, lr=2e-3, n_eval=500),
}
# --quick: a smoke test of the code paths, not a measurement
QUICK_BUDGETS = {
    "8gaussians": dict(arch="mlp", width=16, iters=5, batch_size=32, lr=2e-3, n_eval=50),
    "digits": dict(arch="unet", width=8, iters=3, batch_size=32, lr=2e-3, n_eval=50),
}
FM_STEPS = 100
QUICK_FM_STEPS = 4
# MeanFlow's default time scale (10), and on the 2-D set also the flows' usual 1000 (cheap there)
TIME_SCALES = {"8gaussians": (10.0, 1000.0), "digits": (10.0,)}


# -----------------------------------------------------------------------------
# the plain flow-matching baseline, used when cfm.py is missing or fails

def fm_loss(net, x1, y=None):
    """E || v(x_t, t) - (x1 - x0) ||^2 on the linear path x_t = (1 - t) x0 + t x1."""
    x0 = torch.randn_like(x1)
    t = torch.rand(x1.shape[0], device=x1.device)
    x_t = (1 - common.bcast(t, x1)) * x0 + common.bcast(t, x1) * x1
    return (net(x_t, t, y) - (x1 - x0)).pow(2).mean()


def fm_main(argv):
    """Plain flow matching with common.py's loop and an Euler sampler: a model file's main, in short."""
    parser = common.add_args(argparse.ArgumentParser())
    parser.add_argument("--steps", type=int, help=f"Euler steps (default {FM_STEPS})")
    args, ckpt = common.parse_args(parser, argv, "fm", defaults=dict(steps=FM_STEPS))
    with common.session(args) as device:
        data = common.load_data(args.data, args.data_root, args.download)
        num_classes = 0 if args.uncond else data.num_classes
        v = common.make_net(args.arch, data.shape, args.width, num_classes, time_scale=1000.0).to(device)
        v = common.train(v, fm_loss, data, args, ckpt)
        y = common.class_labels(args.n_eval, num_classes, device)
        t0 = time.time()
        with torch.no_grad():
            z = torch.randn((args.n_eval, *data.shape), generator=torch.Generator(device).manual_seed(args.seed + 1),
                            device=device)
            for i in range(args.steps):  # Euler: z += v(z, i/N) / N
                z = z + v(z, torch.full((len(z),), i / args.steps, device=device), y) / args.steps
        return common.report(z, data, args, sample_seconds=time.time() - t0)


def fm_loss_fn():
    """The baseline's loss for the per-step timing (cfm.CFM().loss when cfm.py is used)."""
    try:
        import cfm
        return cfm.CFM().loss, "cfm.py"
    except Exception:
        return fm_loss, "plain FM in benchmarks/bench_meanflow.py"


# -----------------------------------------------------------------------------
# runs

def flags(data, out, budgets=BUDGETS):
    b = budgets[data]
    return ["--data", data, "--arch", b["arch"], "--width", str(b["width"]), "--iters", str(b["iters"]),
            "--batch-size", str(b["batch_size"]), "--lr", str(b["lr"]), "--n-eval", str(b["n_eval"]),
            "--out", str(out), "--log-every", "500", "--ckpt-every", "100000", "--device", "cpu"]


def recipe(out):
    """meanflow.py's recipe as its checkpoint in OUT records it."""
    a = common.load_checkpoint(Path(out) / "ckpt.pt", ("meanflow",))["args"]
    return {k: a.get(k) for k in ("tangent", "ratio", "time_scale")}


def baseline(data, out, budgets=BUDGETS, steps=FM_STEPS):
    """cfm.py's 100-step Euler quality, or the local plain FM when cfm.py is absent or fails."""
    try:
        import cfm
        q = bench.run(cfm.main, flags(data, out, budgets) + ["--solver", "euler", "--steps",
                                                             str(steps)])
        return q, "cfm.py (independent coupling, Euler)"
    except (Exception, SystemExit) as e:
        print(f"  cfm.py unusable here ({type(e).__name__}: {e}); using the local plain FM", flush=True)
        return (bench.run(fm_main, flags(data, out / "fm", budgets) + ["--steps", str(steps)]),
                "plain FM in benchmarks/bench_meanflow.py (Euler)")


def step_cost(arch, shape, width, batch, reps=3, n=15):
    """Median seconds of one training step (loss, backward, AdamW step) for FM and MeanFlow."""
    fm_loss, fm_name = fm_loss_fn()
    mf = meanflow.MeanFlow()
    torch.manual_seed(0)
    x = torch.randn(batch, *shape)
    y = torch.randint(0, 8, (batch,))
    nets = {"fm": common.make_net(arch, shape, width, 10, False, 1000.0),
            "mf": common.make_net(arch, shape, width, 10, True, 1000.0)}
    losses = {"fm": fm_loss, "mf": mf.loss}
    opts = {k: torch.optim.AdamW(v.parameters(), 1e-4) for k, v in nets.items()}
    times = {"fm": [], "mf": []}
    for _ in range(reps):  # interleaved, so that a change in machine load hits both
        for k in ("fm", "mf"):
            for i in range(n + 2):
                if i == 2:
                    t0 = time.perf_counter()
                loss = losses[k](nets[k], x, y)
                opts[k].zero_grad()
                loss.backward()
                opts[k].step()
            times[k].append((time.perf_counter() - t0) / n)
    fm_s, mf_s = statistics.median(times["fm"]), statistics.median(times["mf"])
    return {"arch": arch, "width": width, "batch": batch, "fm_ms": 1e3 * fm_s, "mf_ms": 1e3 * mf_s,
            "ratio": mf_s / fm_s, "fm_loss": fm_name}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    bench.add_output_flags(parser, bench.ROOT / "runs" / "bench-meanflow")
    args = parser.parse_args(argv)
    out_dir, work = bench.results_dir(args, "bench_meanflow.py"), Path(args.work)
    budgets, fm_steps = (QUICK_BUDGETS, QUICK_FM_STEPS) if args.quick else (BUDGETS, FM_STEPS)
    torch.manual_seed(0)
    results = {"machine": bench.machine(), "budgets": budgets, "runs": [], "step_cost": [],
               "quick": args.quick}
    if args.quick:
        results["fm_steps"] = fm_steps
    t_start = time.time()
    for data in budgets:
        b = budgets[data]
        print(f"{data}: flow matching, {fm_steps} steps", flush=True)
        q, name = baseline(data, work / f"fm-{data}", budgets, fm_steps)
        results["runs"].append(dict(q, data=data, method=f"flow matching ({name})", nfe=fm_steps,
                                    train_s=q["train_seconds"]))
        for ts in TIME_SCALES[data]:
            out = work / f"mf-{data}-{ts:g}"
            method = f"MeanFlow, --time-scale {ts:g}"
            print(f"{data}: {method}", flush=True)
            q = bench.run(meanflow.main, flags(data, out, budgets) + ["--time-scale", str(ts)])
            results["runs"].append(dict(q, data=data, method=method, nfe=1,
                                        train_s=q["train_seconds"], **recipe(out)))
            q = bench.run(meanflow.main, ["--ckpt", str(out / "ckpt.pt"), "--steps", "2", "--out",
                                          str(out), "--n-eval", str(b["n_eval"]), "--device",
                                          "cpu"], trains=False)
            results["runs"].append(dict(q, data=data, method=method, nfe=2, train_s=None,
                                        **recipe(out)))
    costs = ((("mlp", (2,), 16, 32), ("unet", (1, 8, 8), 8, 32)) if args.quick else
             (("mlp", (2,), 128, 256), ("unet", (1, 8, 8), 16, 128)))
    for arch, shape, width, batch in costs:
        c = step_cost(arch, shape, width, batch, *((1, 2) if args.quick else ()))
        results["step_cost"].append(c)
        print(f"step cost {arch}: FM {c['fm_ms']:.1f} ms, MeanFlow {c['mf_ms']:.1f} ms, "
              f"x{c['ratio']:.2f}", flush=True)
    results["total_s"] = time.time() - t_start
    bench.write_json(out_dir / "meanflow.json", results)
    print(markdown(results) + "\n" + step_cost_table(results))
    return results


def recorded(r):
    """The run's recipe in words, or UNRECORDED."""
    if not r.get("tangent"):
        return UNRECORDED
    return f"--tangent {r['tangent']}, ratio {r['ratio']:g}"


def markdown(results):
    """1- and 2-step MeanFlow against flow matching's 100 steps, per data set: a row per trained model."""
    rows, many = [], results.get("fm_steps", FM_STEPS)  # flow matching's steps (fewer: --quick)
    for data, b in results["budgets"].items():
        runs = [r for r in results["runs"] if r["data"] == data]
        for method in dict.fromkeys(r["method"] for r in runs):
            rs = {r["nfe"]: r for r in runs if r["method"] == method}
            first = next(iter(rs.values()))
            rows.append([data, f"{b['arch']} width {b['width']}, {b['iters']} iterations", method] + [
                f"{rs[n]['metric']} {rs[n]['value']:.4g}" if n in rs else "" for n in (1, 2, many)]
                + [f"{first['floor']:.3g}", f"{first['train_s']:.0f}"])
    recipes = sorted({recorded(r) for r in results["runs"] if r["method"].startswith("MeanFlow")})
    what = ("One seed; the same network, batch, lr, iterations and training loop for both methods per data set; quality "
            "(floor: one draw of real against real) of the EMA weights, conditional sampling without guidance; "
            f"MeanFlow's recipe: {'; '.join(recipes)}")
    return "\n".join([bench.caption(results["machine"], COMMAND, what), "",
                      bench.table(["data", "network, budget", "method", "1 step", "2 steps",
                                   f"{many} steps", "floor", "train s"], rows,
                                  ["l", "l", "l", "r", "r", "r", "r", "r"])]) + "\n"


def step_cost_table(results):
    """The training cost per step of both methods (loss + backward + AdamW)."""
    rows = [[f"{c['arch']} width {c['width']}", c["batch"], f"{c['fm_ms']:.1f}", f"{c['mf_ms']:.1f}", f"{c['ratio']:.2f}x"]
            for c in results["step_cost"]]
    return bench.table(["net", "batch", "flow matching ms", "MeanFlow ms", "ratio"], rows) + "\n"


if __name__ == "__main__":
    main()
