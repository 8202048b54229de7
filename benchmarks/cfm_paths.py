"""Benchmark of cfm.py's conditional paths: the straight (OT) path against the two diffusion
paths of Lipman et al. (arXiv 2210.02747, Example I), variance preserving (vp) and variance exploding
(ve), on the checkerboard (exact W2) and the bundled 8x8 digits (Frechet distance in the feature
classifier's space): sample quality against the number of network evaluations (NFE 1, 2, 5, 10, 20, 50,
100; Euler and midpoint) and the straightness of each learnt flow. The lecture ("Generative Modeling",
T.-W. Ke, 2026) claims the straight path "requires much fewer sampling steps": this measures by how much.

Fixed budgets, the same for every path (one network and training budget per data set; unconditional,
independent coupling, cfm.py's default sigma_min per path: 0 for ot, 0.01 for vp and ve; ve's sigma_max 10):
  checkerboard: mlp width 256, batch 512, 1500 iterations, lr 1e-3; W2 on 1000 samples vs 1000 held-out points
  digits:       unet width 16, batch 128, 1200 iterations, lr 2e-3; FD on 500 samples vs the 500 held-out digits
  seeds 0, 1, 2 (training and sampling noise): every cell is the mean +- the standard deviation over seeds.
  NFE budgets: each solver takes floor(budget / evaluations per step) steps (euler 1, midpoint 2); a
  cell shows the NFE actually spent when it is below the budget.
  straightness: rectified_flow.RectifiedFlow().straightness, S = E int_0^1 ||(Z_1 - Z_0) - v(Z_t, t)||^2 dt
  along 100 Euler steps from the path's prior (x_0 = prior_std eps), and S / E||Z_1 - Z_0||^2, which does
  not depend on the scale of the prior (ve's prior has std 10): 0 for a straight flow.
  verdicts: each of CLAIMS (which path beats which, at which budgets) decided per solver, per budget and
  per seed, and stated with the number of seeds on which it holds.
A picture of samples at 5 NFE (Euler x 5) per path: benchmarks/results/img/cfm_paths_<data>_nfe5.png
(rows / panels: ot, vp, ve; the checkerboard panel starts with held-out data).

Run (on one core):
  OMP_NUM_THREADS=1 python benchmarks/cfm_paths.py                   # writes benchmarks/results/cfm_paths.json
  OMP_NUM_THREADS=1 python benchmarks/cfm_paths.py --quick --work /tmp/paths   # smoke test in
                                                       # seconds: WORK/cfm_paths.json, WORK/img/
"""
import argparse
import os
import statistics
import time
from pathlib import Path

import bench
import numpy as np
import torch

import cfm  # the model files: bench puts the repository's root on sys.path
import common
from rectified_flow import RectifiedFlow

COMMAND = "OMP_NUM_THREADS=1 python benchmarks/cfm_paths.py"
NFE_BUDGETS = (1, 2, 5, 10, 20, 50, 100)
# the lecture's claim, as it reads on each data set: (data, claim, the path that should win, the paths it should
# beat, the NFE budgets the claim is about)
CLAIMS = (("digits", "OT best", "ot", ("vp", "ve"), (2, 5, 10, 20, 50, 100)),
          ("checkerboard", "VP better than OT", "vp", ("ot",), (1, 2, 5)))
SOLVERS = ("euler", "midpoint")
PATHS = cfm.PATHS


def train(data_name, path, seed, iters, work, extra):
    """Train one unconditional model with cfm.main; returns (EMA net, its CFM, training seconds)."""
    out = work / f"{data_name}-{path}-seed{seed}"
    seconds = bench.run(cfm.main, ["--data", data_name, "--uncond", "--path", path, "--seed", str(seed), "--iters",
                                   str(iters), "--out", str(out), "--n-eval", "0", "--device", "cpu", "--log-every",
                                   "500"] + extra)["train_seconds"]
    ckpt = common.load_checkpoint(out / "ckpt.pt", ("cfm",))
    a = ckpt["args"]
    flow = cfm.CFM(a["sigma_min"], a["coupling"], a["path"], sigma_max=a["sigma_max"])
    return common.ema_net(ckpt, common.load_data(data_name), False, 1000.0), flow, seconds


def grid(flow, net, data, n, budgets, seed):
    """Quality of n samples for every solver and NFE budget (the same noise eps for all)."""
    rows = []
    eps = torch.randn((n,) + data.shape, generator=torch.Generator().manual_seed(1000 + seed))
    for solver in SOLVERS:
        stages = cfm.STAGES[solver]
        for budget in budgets:
            steps = budget // stages
            if steps == 0:
                continue
            x = flow.sample(net, eps.shape, steps, solver, noise=eps)
            q = common.quality(data, x)
            rows.append(dict(solver=solver, budget=budget, steps=steps, nfe=steps * stages, metric=q["metric"],
                             value=q["value"], floor=q["floor"], n=q["n"]))
    return rows


@torch.no_grad()
def straightness(flow, net, data, n, steps, seed):
    """rectified_flow's S from the path's prior, and S / E||Z_1 - Z_0||^2 on the same Euler paths."""
    eps = torch.randn((n,) + data.shape, generator=torch.Generator().manual_seed(2000 + seed))
    z0 = flow.prior_std * eps
    s = RectifiedFlow().straightness(net, z0, steps)
    z1 = flow.sample(net, eps.shape, steps, "euler", noise=eps)
    transport = float((z1 - z0).double().flatten(1).pow(2).sum(1).mean())
    return dict(straightness=s, transport=transport, relative=s / transport)


def density(p, lim=4.0, size=128):
    """2-D points as a density picture (dark = dense), as common.save_points draws them."""
    h, _, _ = np.histogram2d(p[:, 1].double().numpy(), p[:, 0].double().numpy(), bins=size, range=[[-lim, lim]] * 2)
    h = np.log1p(h[::-1]) / max(np.log1p(h).max(), 1e-9)
    return (255 * (1 - h)).astype(np.uint8)


def samples_picture(models, data, path, nfe=5, n=10):
    """Euler x nfe samples of each path's first-seed model, from the same eps: digits a grid with a row
    per path; points one panel per path after a panel of held-out data."""
    eps = torch.randn((n if data.is_image else 2000,) + data.shape, generator=torch.Generator().manual_seed(7))
    xs = [flow.sample(net, eps.shape, nfe, "euler", noise=eps) for flow, net in models]
    path.parent.mkdir(parents=True, exist_ok=True)
    if data.is_image:
        common.save_grid(torch.cat(xs), path, nrow=n)
        return
    bar = np.full((128, 4), 128, np.uint8)
    panels = [density(data.x_test[:len(eps)])]
    for x in xs:
        panels += [bar, density(x)]
    common.write_png(path, np.concatenate(panels, axis=1))


def value(part, path, solver, budget):
    """{seed: quality} of one path, solver and NFE budget."""
    return {run["seed"]: r["value"] for run in part[path]["runs"] for r in run["grid"]
            if r["solver"] == solver and r["budget"] == budget}


def verdicts(result):
    """[(data, claim, solver, {budget: (seeds where it holds, seeds)})]: each claim per solver, budget and seed."""
    out = []
    for data, claim, winner, losers, budgets in CLAIMS:
        part = result["data"].get(data)
        if part is None:
            continue
        for solver in SOLVERS:
            cells = {}
            for b in budgets:
                win = value(part, winner, solver, b)
                if win:
                    others = [value(part, p, solver, b) for p in losers]
                    cells[b] = (sum(all(win[s] < o[s] for o in others) for s in win), len(win))
            out.append((data, claim, solver, cells))
    return out


def markdown(result):
    """Per data set the quality grid (mean +- sd over seeds) and the flows' straightness; then the
    claims' verdicts per solver, budget and seed."""
    budgets = result["nfe_budgets"]
    lines = [bench.caption(result["machine"], COMMAND, "Unconditional models, independent coupling; budgets in "
                           f"benchmarks/cfm_paths.py; mean +- sd over seeds {', '.join(map(str, result['seeds']))}"), ""]
    straight = []
    for name, part in result["data"].items():
        first = part[PATHS[0]]["runs"][0]["grid"][0]
        rows = []
        for path in PATHS:
            for solver in SOLVERS:
                row = []
                for b in budgets:
                    cells = [r for run in part[path]["runs"] for r in run["grid"] if r["solver"] == solver and r["budget"] == b]
                    row.append("-" if not cells else bench.ms([r["value"] for r in cells])
                               + ("" if cells[0]["nfe"] == b else f" ({cells[0]['nfe']})"))
                rows.append([path, solver] + row)
        lines += [f"{name}: {first['metric']} of {first['n']} samples (floor, real vs real: {first['floor']:.4g}); a cell's "
                  "NFE in brackets where the solver's steps spend fewer than the budget.", "",
                  bench.table(["path", "solver"] + [f"NFE {b}" for b in budgets], rows, ["l", "l"] + ["r"] * len(budgets)),
                  ""]
        for path in PATHS:
            runs = part[path]["runs"]
            straight.append([name, path, bench.ms([r["straightness"]["straightness"] for r in runs], ".4g"),
                             bench.ms([r["straightness"]["relative"] for r in runs], ".4g"),
                             f"{statistics.fmean(r['train_seconds'] for r in runs):.0f}"])
    lines += ["Straightness of each learnt flow along 100 Euler steps:", "",
              bench.table(["data", "path", "straightness S", "S / E‖Z1 - Z0‖²", "training s"], straight,
                          ["l", "l", "r", "r", "r"]), ""]
    summary = []
    for data, claim, solver, cells in verdicts(result):
        by_count = {}
        for b, (k, n) in sorted(cells.items(), key=lambda kv: -kv[1][0]):
            by_count.setdefault((k, n), []).append(b)
        summary.append(f"- {data}, {claim}, {solver}: " + "; ".join(
            f"{k} of {n} seeds at NFE {', '.join(map(str, sorted(bs)))}" for (k, n), bs in by_count.items()) + ".")
    lines += ["The claims, decided per solver, NFE budget and seed (OT best: OT's figure below VP's and VE's on that "
              "seed); on how many seeds each holds:", ""] + summary + [""]
    pictures = [f"![Samples at 5 NFE (Euler x 5) on {name}, rows / panels ot, vp, ve](results/{part['picture']})"
                for name, part in result["data"].items() if "picture" in part]
    return "\n".join(lines + [" ".join(pictures)]) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    bench.add_output_flags(parser, bench.ROOT / "runs" / "bench-cfm-paths")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per path (default 3)")
    parser.add_argument("--data", nargs="+", default=["checkerboard", "digits"], help="data sets")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    work = Path(args.work)
    results = bench.results_dir(args, "cfm_paths.py")
    q = args.quick
    plans = {"checkerboard": dict(iters=4 if q else 1500, n=50 if q else 1000,
                                  straight_n=50 if q else 1000, straight_steps=4 if q else 100,
                                  extra=["--batch-size", "32" if q else "512",
                                         "--width", "16" if q else "256"]),
             "digits": dict(iters=3 if q else 1200, n=50 if q else 500, straight_n=20 if q else 500,
                            straight_steps=4 if q else 100,
                            extra=["--batch-size", "32" if q else "128"] + ["--width", "8"] * q)}
    budgets = (1, 5) if q else NFE_BUDGETS
    seeds = list(range(2 if q else args.seeds))
    result = {"machine": bench.machine(),
              "budgets": {k: plans[k] for k in args.data}, "nfe_budgets": budgets, "seeds": seeds, "data": {}}
    t_start = time.time()
    for name in args.data:
        plan, data = plans[name], common.load_data(name)
        part = result["data"][name] = {}
        first = []
        for path in PATHS:
            part[path] = {"runs": []}
            for seed in seeds:
                print(f"{name}, path {path}, seed {seed}: training {plan['iters']} iterations", flush=True)
                net, flow, train_s = train(name, path, seed, plan["iters"], work, plan["extra"])
                run = dict(seed=seed, iters=plan["iters"], train_seconds=train_s,
                           grid=grid(flow, net, data, plan["n"], budgets, seed),
                           straightness=straightness(flow, net, data, plan["straight_n"],
                                                     plan["straight_steps"], seed))
                print("  " + ", ".join(f"{r['solver']} NFE {r['nfe']}: {r['value']:.4g}" for r in run["grid"])
                      + f"; straightness {run['straightness']['straightness']:.4g} "
                      f"(relative {run['straightness']['relative']:.4g})", flush=True)
                part[path]["runs"].append(run)
                if seed == seeds[0]:
                    first.append((flow, net))
        picture = results / "img" / f"cfm_paths_{name}_nfe5.png"
        samples_picture(first, data, picture)
        part["picture"] = str(picture.relative_to(results)) if picture.is_relative_to(results) else str(picture)
    result["total_seconds"] = time.time() - t_start
    bench.write_json(results / "cfm_paths.json", result)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
