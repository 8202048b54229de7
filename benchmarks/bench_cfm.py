"""Benchmark of cfm.py: sample quality against the number of network evaluations (NFE) for each
ODE solver, independent vs exact minibatch-OT coupling, on a 2-D set (8gaussians, exact W2) and on
the bundled 8x8 digits (Frechet distance in the feature classifier's space), and the
log-likelihood of held-out digits in bits/dim.

Fixed budgets (single thread, OMP_NUM_THREADS=1), all models unconditional (so that log p(x) is the
likelihood of the data, not of the data given its label, and OT pairs the whole minibatch):
  8gaussians: mlp width 256, batch 512, 1500 iterations, lr 1e-3; W2 on 1000 samples vs 1000 held-out points
  digits:     unet width 16, batch 128, 1200 iterations, lr 2e-3; FD on 500 samples vs the 500 held-out digits
  NFE budgets 1, 2, 5, 10, 20, 100: each solver takes floor(budget / evaluations per step) steps
  (euler 1, midpoint 2, rk4 4); a cell shows the NFE actually spent when it is below the budget.
  bits/dim: the 500 held-out digits, uniform dequantization (cfm.held_out_bits_per_dim): RK4 at S and
  2S steps (S = cfm's --bpd-steps default) with the same points and probes, the 2S figure reported
  with the change beside it; one Rademacher probe per image (Hutchinson). The digits models train
  on dequantized data (--dequantize), so that the bound is the one the model is fitted to; the
  Frechet distance rounds samples to the 17 levels, so in-bin noise does not change it.

Training seconds come from the dict cfm.main returns.

Run (on one core):
  OMP_NUM_THREADS=1 python benchmarks/bench_cfm.py            # writes benchmarks/results/cfm.json
  OMP_NUM_THREADS=1 python benchmarks/bench_cfm.py --quick --work /tmp/cfm   # smoke test in seconds
                                                  # (tiny budgets): WORK/cfm.json
"""
import argparse
import math
import os
import time
from pathlib import Path

import bench
import torch

import cfm  # the model files: bench puts the repository's root on sys.path
import common

COMMAND = "OMP_NUM_THREADS=1 python benchmarks/bench_cfm.py"
NFE_BUDGETS = (1, 2, 5, 10, 20, 100)
BPD_STEPS = 40  # cfm.py's --bpd-steps default: RK4 at 40 and 80 steps


def train(data_name, coupling, iters, work, extra):
    """Train one unconditional model with cfm.main; returns (EMA net, training seconds)."""
    out = work / f"{data_name}-{coupling}"
    # the run's own final evaluation is made cheap (Euler, 1 step); the grid below is the measurement
    q = bench.run(cfm.main, ["--data", data_name, "--uncond", "--coupling", coupling, "--iters", str(iters),
                             "--out", str(out), "--solver", "euler", "--steps", "1", "--device", "cpu",
                             "--log-every", "500"] + extra)
    seconds = q["train_seconds"]
    ckpt = common.load_checkpoint(out / "ckpt.pt", ("cfm",))
    return common.ema_net(ckpt, common.load_data(data_name), False, 1000.0), ckpt["args"], seconds


def grid(net, data, n, budgets):
    """Quality of n samples for every solver and NFE budget (the same noise for all)."""
    rows, flow = [], cfm.CFM()
    noise = torch.randn((n,) + data.shape, generator=torch.Generator().manual_seed(1))
    for solver, stages in cfm.STAGES.items():
        for budget in budgets:
            steps = budget // stages
            if steps == 0:
                continue
            t0 = time.time()
            x = flow.sample(net, noise.shape, steps, solver, noise=noise)
            sample_s = time.time() - t0
            q = common.quality(data, x)
            rows.append(dict(solver=solver, budget=budget, steps=steps, nfe=steps * stages, metric=q["metric"],
                             value=q["value"], floor=q["floor"], n=q["n"], sample_seconds=sample_s))
            print(f"  {solver:8s} steps {steps:3d} NFE {steps * stages:3d}: {common.format_quality(q)} "
                  f"({sample_s:.1f}s)", flush=True)
    return rows


def bits(net, data, n, steps, dequantized):
    """cfm.held_out_bits_per_dim: RK4 at steps and 2 * steps, the same points and probes."""
    t0 = time.time()
    b = cfm.held_out_bits_per_dim(cfm.CFM(), net, data, n, False, 2, steps, dequantized, batch=250)
    return dict(bits_per_dim=b["bits_per_dim"], stderr=b["bits_per_dim_stderr"], n=b["bpd_n"],
                half_steps=b["bits_per_dim_half_steps"], change=b["bpd_step_change"], converged=b["bpd_converged"],
                method="rk4", steps=2 * steps, nfe=4 * 3 * steps, seconds=time.time() - t0,
                dequantized_training=dequantized, uniform_baseline=math.log2(data.levels))


def markdown(result):
    """Per data set: quality against NFE for each coupling and solver, then held-out bits/dim (digits)."""
    out = [bench.caption(result["machine"], COMMAND, "Unconditional models; budgets in benchmarks/bench_cfm.py"), ""]
    budgets = result["nfe_budgets"]
    for name, part in result["data"].items():
        first = part["runs"][0]["grid"][0]
        rows = []
        for run in part["runs"]:
            for k, solver in enumerate(dict.fromkeys(r["solver"] for r in run["grid"])):
                cells = {r["budget"]: r for r in run["grid"] if r["solver"] == solver}
                rows.append([run["coupling"], solver] + ["-" if b not in cells else f"{cells[b]['value']:.4g}"
                             + ("" if cells[b]["nfe"] == b else f" ({cells[b]['nfe']})") for b in budgets]
                            + [f"{run['iters']} in {run['train_seconds']:.0f} s" if k == 0 else ""])
        out += [f"{name}: {first['metric']} of {first['n']} samples (floor, one draw of real against real: "
                f"{first['floor']:.4g}); a cell's NFE in brackets where the solver's steps spend fewer than the budget.",
                "", bench.table(["coupling", "solver"] + [f"NFE {b}" for b in budgets] + ["training"], rows,
                                ["l", "l"] + ["r"] * (len(budgets) + 1)), ""]
        runs = [run for run in part["runs"] if "likelihood" in run]
        if runs:
            dequantized = "--dequantize" in result["budgets"][name].get("extra", [])
            rows = []
            for run in runs:
                b = run["likelihood"]
                half = (f"{b['half_steps']:.3f} ({b['change']:+.3f}{'' if b['converged'] else ', not converged'})"
                        if "half_steps" in b else "not measured")
                rows.append([run["coupling"], f"{b['bits_per_dim']:.3f} +- {b['stderr']:.3f}", f"{b['method']} x {b['steps']}",
                             half, b["nfe"], f"{b['seconds']:.0f}"])
            out += [f"{name}: held-out bits/dim (uniform dequantization: an upper bound on the discrete NLL), models "
                    + ("trained on dequantized data." if dequantized else
                       "trained on the grid values, not on dequantized data: not comparable with the likelihood table."),
                    "", bench.table(["coupling", "bits/dim", "solver", "at half the steps (change)", "NFE", "seconds"],
                                    rows), ""]
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    bench.add_output_flags(parser, bench.ROOT / "runs" / "bench-cfm")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(0)
    work = Path(args.work)
    results = bench.results_dir(args, "bench_cfm.py")
    q = args.quick
    tiny = ["--width", "8", "--batch-size", "32"]  # --quick: a narrow network, small batches
    plans = {"8gaussians": dict(iters=5 if q else 1500, n=100 if q else 1000,
                                extra=["--n-eval", "50" if q else "1000"] + tiny * q),
             "digits": dict(iters=5 if q else 1200, n=50 if q else 500,
                            extra=["--n-eval", "50" if q else "500", "--dequantize"] + tiny * q)}
    budgets = (1, 5) if q else NFE_BUDGETS
    result = {"machine": bench.machine(),
              "budgets": plans, "nfe_budgets": budgets, "data": {}}
    t_start = time.time()
    for name, plan in plans.items():
        data = common.load_data(name)
        part = result["data"][name] = {"runs": []}
        for coupling in ("independent", "ot"):
            print(f"{name}, {coupling} coupling: training {plan['iters']} iterations", flush=True)
            net, flags, train_s = train(name, coupling, plan["iters"], work, plan["extra"])
            run = dict(coupling=coupling, iters=plan["iters"], train_seconds=train_s, grid=grid(net, data, plan["n"], budgets))
            if data.is_image:
                run["likelihood"] = bits(net, data, plan["n"], 1 if q else BPD_STEPS, flags["dequantize"])
                print(f"  held-out bits/dim {run['likelihood']['bits_per_dim']:.3f} "
                      f"+- {run['likelihood']['stderr']:.3f} ({run['likelihood']['seconds']:.0f}s)", flush=True)
            part["runs"].append(run)
    result["total_seconds"] = time.time() - t_start
    bench.write_json(results / "cfm.json", result)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
