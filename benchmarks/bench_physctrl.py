"""physctrl.py against the simulator on held-out conditions (unseen force directions or stiffnesses), beside its
baselines: frame 0 repeated, the rigid ballistic motion of the centre of mass (the simulator's ground,
restitution and Coulomb friction acting on it as on one point), and the MSE regressor (the same
network, trained for as many iterations: the same CPU seconds within a few percent); then the
withheld-stiffness check. Every claim is paired: the same held-out conditions for every row.

  for s in 0 1 2; do OMP_NUM_THREADS=1 python benchmarks/bench_physctrl.py --seed $s; done   # ~16 CPU min a seed
  for s in 0 1 2; do OMP_NUM_THREADS=1 python benchmarks/bench_physctrl.py --ablation --seed $s; done  # --predict v
  for s in 0 1 2; do OMP_NUM_THREADS=1 python benchmarks/bench_physctrl.py --shifted --seed $s; done  # --shift SHIFT
  python benchmarks/bench_physctrl.py --baselines  # the rigid baselines' rows, from the simulator alone
  python benchmarks/bench_physctrl.py --analyse   # paired bootstrap -> results/physctrl_claims.json

One seed, in this process, through physctrl.main (its defaults but --predict x, the network giving the trajectory,
and longer training: ITERS iterations for the flow and as many for the regressor; --ablation: the default
--predict v flow alone, the same seed, conditions and noise; the simulated data are the default run's, the seed moves the networks' initialisation,
their batches and the sampler's noise; --shifted: the x-prediction flow with --shift SHIFT alone, likewise). Per held-out condition (N_EVAL of them) the mean position error at the
last frame; a claim's ratio is the mean over seeds of the per-seed ratio of mean errors, its interval
benchmarks/stats.py's, from a bootstrap that resamples the conditions (the same indices for both rows of a
ratio and for every seed) and the seeds' t interval; it holds (or does not) when the interval lies on one
side of the target, else it is within noise. The per-condition errors are in the results files, so report.py
recomputes every interval from them. The withheld check (N_WITHHOLD conditions): the stiffness fitted by
the simulator to each trajectory generated without it, against the fits of trajectories simulated at stiffnesses
drawn from the prior; two-sample Kolmogorov-Smirnov, p > 0.05 passes, per seed.
"""
import argparse
from pathlib import Path

import torch

import bench
import stats  # the claims' intervals and verdicts

import physctrl  # noqa: E402

RESULTS = bench.RESULTS
COMMAND = "OMP_NUM_THREADS=1 python benchmarks/bench_physctrl.py"
ITERS = 2500  # the flow's and the regressor's iterations
N_EVAL, N_WITHHOLD = 500, 128
ROWS = ("flow", "regressor", "ballistic", "static")
LABELS = {"flow": "flow, x-prediction (--predict x)", "regressor": "MSE regressor (same network)",
          "ballistic": "rigid ballistic", "static": "frame 0 repeated"}
# each claim: (text, numerator row, denominator row, threshold, sense)
CLAIMS = [("x-prediction flow's last-frame error at most 1/4 of the rigid ballistic baseline's", "flow", "ballistic", 0.25, "<="),
          ("x-prediction flow's last-frame error at most the MSE regressor's", "flow", "regressor", 1.0, "<="),
          ("MSE regressor's last-frame error at most 1/4 of the rigid ballistic baseline's", "regressor", "ballistic", 0.25, "<="),
          ("rigid ballistic beats frame 0 repeated", "ballistic", "static", 1.0, "<")]
V_CLAIMS = [("v-prediction flow's (the default's) last-frame error at most 1/4 of the rigid ballistic baseline's", "flow",
             "ballistic", 0.25, "<="),
            ("v-prediction flow's last-frame error at most the MSE regressor's", "flow", "regressor", 1.0, "<=")]
X_AGAINST_V = ("x-prediction's last-frame error below v-prediction's", "flow", "flow", 1.0, "<")
SHIFT = 8  # --shifted's K
S_CLAIMS = [(f"shifted (--shift {SHIFT}) x-prediction flow's last-frame error at most 1/4 of the rigid ballistic baseline's",
             "flow", "ballistic", 0.25, "<="),
            (f"shifted (--shift {SHIFT}) x-prediction flow's last-frame error at most the MSE regressor's", "flow", "regressor",
             1.0, "<=")]
S_AGAINST_X = (f"shifted (--shift {SHIFT}) x-prediction's last-frame error below unshifted x-prediction's", "flow", "flow",
               1.0, "<")
VARIANTS = {"v": (["--predict", "v"], "--ablation"), "shift": (["--predict", "x", "--shift", str(SHIFT)], "--shifted")}


def run_seed(seed, work, quick=False):
    iters, n_eval, n_withhold = (2, 16, 4) if quick else (ITERS, N_EVAL, N_WITHHOLD)
    q = bench.run(physctrl.main, ["--seed", str(seed), "--predict", "x", "--iters", str(iters), "--regressor-iters", str(iters),
                                  "--n-eval", str(n_eval), "--n-withhold", str(n_withhold), "--log-every", "500",
                                  "--out", str(Path(work) / f"seed{seed}")])
    res = dict(machine=bench.machine(), seed=seed, iters=iters, n_eval=n_eval, n_withhold=n_withhold,
               command=f"{COMMAND} --seed {seed}", rows={k: q[k] for k in ROWS}, withheld=q["withheld"],
               train_cpu_s=q["train_cpu_seconds"], regressor_train_cpu_s=q["regressor_train_cpu_seconds"],
               sample_seconds=q["sample_seconds"])
    bench.write_json((Path(work) if quick else RESULTS) / f"physctrl_seed{seed}.json", res)
    return res


def run_baselines(results=RESULTS):
    """The rigid baselines' rows (frame 0 repeated, the ballistic centre of mass) of every seed's results
    file, recomputed from the simulator on its held-out conditions: they need no training, and every seed
    shares the conditions (the default run's data), so a change to a baseline is measured here alone."""
    for f in sorted(Path(results).glob("physctrl_seed[0-9].json")):
        res = bench.read_json(f)
        _, sets = physctrl.load_springs(16, 2000, max(res["n_eval"], physctrl.N_TEST))
        test = {k: v[:res["n_eval"]] for k, v in sets["test"].items()}
        sim = test["traj"].double()
        res["rows"]["static"] = physctrl.row_figures(sim[:, :1].expand_as(sim), sim, test["shape"])
        res["rows"]["ballistic"] = physctrl.row_figures(physctrl.ballistic(test, sim[:, 0], sim.shape[1]), sim,
                                                        test["shape"])
        res["baselines_command"] = f"python benchmarks/bench_physctrl.py --baselines"
        bench.write_json(f, res)
        print(f"{f.name}: ballistic {res['rows']['ballistic']['last']:.4f}, static {res['rows']['static']['last']:.4f}")


def run_variant(seed, work, name):
    """A variant of the flow (VARIANTS: "v", cfm.py's velocity target; "shift", x-prediction with --shift SHIFT) on
    the same seed, conditions and noise: no regressor."""
    flags, option = VARIANTS[name]
    q = bench.run(physctrl.main, ["--seed", str(seed), *flags, "--iters", str(ITERS), "--regressor-iters", "0",
                                  "--n-eval", str(N_EVAL), "--n-withhold", str(N_WITHHOLD), "--log-every", "500",
                                  "--out", str(Path(work) / f"{name}-seed{seed}")])
    res = dict(machine=bench.machine(), seed=seed, iters=ITERS, n_eval=N_EVAL, n_withhold=N_WITHHOLD,
               command=f"{COMMAND} {option} --seed {seed}", rows={"flow": q["flow"]},
               withheld={k: q["withheld"][k] for k in ("reference", "flow")}, train_cpu_s=q["train_cpu_seconds"])
    bench.write_json(RESULTS / f"physctrl_{name}_seed{seed}.json", res)


def variant_runs(results, name):
    """{seed: result} of a variant's runs (run_variant's physctrl_{name}_seed*.json), in seed order."""
    return {r["seed"]: r for r in map(bench.read_json, sorted(Path(results).glob(f"physctrl_{name}_seed[0-9].json")))}


def paired(runs, num, den, index):
    """{seed: [ratio of mean last-frame errors, its value on every replicate]}: runs {seed: (numerator's
    rows, denominator's rows)}, index (1 + B, n) the resampled conditions, replicate 0 all of them, the
    same for every row and seed (the held-out conditions are shared)."""
    return {seed: stats.ratio_of_means(rows_a[num]["last_each"], rows_b[den]["last_each"], index)
            for seed, (rows_a, rows_b) in runs.items()}


def claims(results=RESULTS, replicates=2000):
    """Every claim decided (benchmarks/stats.py) from the seeds' per-condition errors in the results
    files: the bootstrap resamples the conditions, so what the intervals need is committed."""
    runs = {r["seed"]: r for r in map(bench.read_json, sorted(Path(results).glob("physctrl_seed[0-9].json")))}
    if not runs:
        return []
    n = len(next(iter(runs.values()))["rows"]["flow"]["last_each"])
    index = stats.resample_index(n, replicates)
    todo = [(claim, {s: (r["rows"], r["rows"]) for s, r in runs.items()}) for claim in CLAIMS]
    for name, specs, against in (("v", V_CLAIMS, X_AGAINST_V), ("shift", S_CLAIMS, S_AGAINST_X)):
        variant = variant_runs(results, name)
        both = [s for s in runs if s in variant]
        if both:  # the variant's flow against the same conditions' rows of the main runs
            todo += [(claim, {s: (variant[s]["rows"], runs[s]["rows"]) for s in both}) for claim in specs]
            order = (lambda s: (runs[s]["rows"], variant[s]["rows"])) if name == "v" else \
                (lambda s: (variant[s]["rows"], runs[s]["rows"]))
            todo += [(against, {s: order(s) for s in both})]
    return [stats.decide(text, paired(pairs, num, den, index), threshold, sense, numerator=num,
                         denominator=den) for (text, num, den, threshold, sense), pairs in todo]


def analyse(results=RESULTS, replicates=2000):
    runs = [bench.read_json(f) for f in sorted(Path(results).glob("physctrl_seed[0-9].json"))]
    out = dict(machine=runs[0]["machine"], command="python benchmarks/bench_physctrl.py --analyse",
               replicates=replicates, seeds=[r["seed"] for r in runs], claims=claims(results, replicates))
    bench.write_json(Path(results) / "physctrl_claims.json", out)
    return out


def markdown(results=RESULTS):
    """One row per method: last-frame and all-frame position error, Chamfer, spring-length error, ground
    penetration (mean +- sd over seeds), its ratio to the ballistic baseline; then the claims and the
    withheld-stiffness check per seed."""
    results = Path(results)
    runs = [bench.read_json(f) for f in sorted(results.glob("physctrl_seed[0-9].json"))]
    if not runs:
        return ""
    c = {"claims": claims(results)}  # recomputed from the per-condition errors
    head = ["method", "last frame", "all frames", "Chamfer (last)", "spring length", "ground penetration"]
    rows = [[LABELS[k]] + [bench.ms([r["rows"][k][f] for r in runs], ".3g")
                           for f in ("last", "mean", "chamfer", "spring", "ground")] for k in ROWS]
    v, sh = variant_runs(results, "v"), variant_runs(results, "shift")
    for variant, label in ((sh, f"flow, x-prediction, --shift {SHIFT} (seeds {{}})"),
                           (v, "flow, v-prediction (the default; seeds {})")):
        if variant:
            rows.insert(0, [label.format(", ".join(map(str, variant)))]
                        + [bench.ms([r["rows"]["flow"][f] for r in variant.values()], ".3g")
                           for f in ("last", "mean", "chamfer", "spring", "ground")])
    r0 = runs[0]
    seeds = ", ".join(str(r["seed"]) for r in runs)
    lines = [f"#### {r0['n_eval']} held-out conditions, mean +- sd over seeds {seeds}", "",
             bench.caption(r0["machine"], f"for s in 0 1 2; do {COMMAND} --seed $s; {COMMAND} --ablation --seed $s; {COMMAND} --shifted --seed $s; "
                           "done; python benchmarks/bench_physctrl.py --analyse",
                           f"Errors in the simulator's length unit (the objects are about 1 across); flow and "
                           f"regressor trained {r0['iters']} iterations each ({bench.ms([r['train_cpu_s'] for r in runs], '.0f')} "
                           f"and {bench.ms([r['regressor_train_cpu_s'] for r in runs], '.0f')} CPU s)"
                           + (f"; the shifted flow is the same network trained as many iterations "
                              f"({bench.ms([r['train_cpu_s'] for r in sh.values()], '.0f')} CPU s, timed beside other jobs; alone, an iteration "
                              f"costs the same with and without the shift)"
                              if sh else "")), "",
             bench.table(head, rows), ""]
    if c["claims"]:
        lines += [bench.table(["claim", "ratio of mean last-frame errors", "95% interval", "per seed", "verdict"],
                              [[x["claim"], f"{x['estimate']:.3g}", stats.fmt_interval(x), stats.fmt_seeds(x),
                                f"**{x['verdict']}**"] for x in c["claims"]], ["l", "r", "r", "l", "l"]), ""]
    def check(w):
        return (f"{w['mean']:.2f} +- {w['sd']:.2f}, residual {w['residual']:.3f} (KS {w['ks']:.2f}, p = {w['p']:.2g}: "
                f"**{'passes' if w['passes'] else 'fails'}**)")
    w = [[r["seed"], f"{r['withheld']['reference']['mean']:.2f} +- {r['withheld']['reference']['sd']:.2f}"]
         + [check(r["withheld"][k]) for k in ("flow", "regressor")]
         + [check(other[r["seed"]]["withheld"]["flow"]) if r["seed"] in other else "" for other in (v, sh) if other]
         for r in runs]
    lines += [f"Stiffness withheld ({r0['n_withhold']} held-out force conditions): log10 k fitted by the simulator "
              "(grid of 11 over the range) to each generated trajectory, against the fits of trajectories simulated "
              "at stiffnesses drawn from the training prior; residual: the mean position error of a generated trajectory to "
              "its best-fitting simulation:", "",
              bench.table(["seed", "prior's fits", "flow, x-prediction", "regressor"]
                          + (["flow, v-prediction (the default)"] if v else [])
                          + ([f"flow, x-prediction, --shift {SHIFT}"] if sh else []), w,
                          ["r"] + ["l"] * (3 + bool(v) + bool(sh))), ""]
    if (results / "img" / "physctrl-trajectories.png").exists():
        lines += ["Seed 0: eight held-out conditions from the side (x right, z up), frames 0, 3, ..., 15; simulated "
                  "grey, generated by the x-prediction flow orange:", "", "![physctrl.py trajectories](results/img/physctrl-trajectories.png)", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, help="measure this seed")
    p.add_argument("--work", default=str(bench.ROOT / "benchmarks" / "work" / "physctrl"))
    variant = p.add_mutually_exclusive_group()
    variant.add_argument("--ablation", action="store_true", help="with --seed: the flow with --predict v (the default) alone")
    variant.add_argument("--shifted", action="store_true", help=f"with --seed: the x-prediction flow with --shift {SHIFT} alone")
    p.add_argument("--baselines", action="store_true", help="recompute the rigid baselines' rows of every seed")
    p.add_argument("--analyse", action="store_true", help="the paired bootstrap over the measured seeds")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 iterations, 16 conditions")
    p.add_argument("--table", action="store_true", help="print the markdown of the results")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(args.work) / ("quick" if args.quick else "")
    if args.seed is not None and (args.ablation or args.shifted):
        run_variant(args.seed, work, "v" if args.ablation else "shift")
    elif args.seed is not None:
        run_seed(args.seed, work, args.quick)
        if args.seed == 0 and not args.quick:
            img = RESULTS / "img" / "physctrl-trajectories.png"
            img.parent.mkdir(parents=True, exist_ok=True)
            img.write_bytes((work / "seed0" / "trajectories.png").read_bytes())
    if args.baselines:
        run_baselines(work if args.quick else RESULTS)
    if args.analyse:
        analyse(work if args.quick else RESULTS, replicates=50 if args.quick else 2000)
    if args.table:
        print(markdown(work if args.quick else RESULTS))
    if args.seed is None and not (args.analyse or args.table or args.baselines):
        p.error("give --seed (to measure), --baselines, --analyse or --table")


if __name__ == "__main__":
    main()
