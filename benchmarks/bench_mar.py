"""Masked autoregression (mar.py) against K, its decoding steps, beside cfm.py and ar.py at equal training
compute on digits: FD, bits/dim and time per sample, every claim a paired comparison with its 95% bootstrap
interval.

  for s in 0 1 2; do OMP_NUM_THREADS=1 python benchmarks/bench_mar.py --seed $s; done  # ~16 CPU min a seed
  python benchmarks/bench_mar.py --analyse   # paired bootstrap -> results/mar_claims.json

One seed, in this process, through the model files' own main(), every model unconditional (--uncond, as in
the likelihood table):
  1. mar.py trains at its digits default (1500 iterations, 16 tokens of 2x2 pixels); its training CPU
     seconds B are the budget every other model is given.
  2. cfm.py (its default: the straight path) and ar.py in raster and in random order train for B seconds:
     B over each recipe's own CPU seconds per iteration, measured in this process (80 iterations minus 20,
     one thread); the seconds each run actually spent are reported.
  3. One mar.py checkpoint is sampled with K = 1, 2, 4, 8 and 16 steps (16: one token per step, random-order
     autoregression over tokens; 1: every token at once), cfm.py with 100 Euler steps, ar.py in its order;
     every row draws from the same generator (the same --seed). 2000 samples against the 500 held-out digits:
     FD and KID in the feature classifier's space, the memorised share; time per sample is the sampling's
     wall seconds over 2000 (one thread).
  4. Bits/dim on the first 200 held-out digits dequantized within their 17 levels: mar.py's exact likelihood of each
     K-step schedule (mar.held_out_bits_per_dim: one random order per image, the same for every K; the
     exact trace, RK4 at 20 and 40 steps), exact for that order and schedule, so an upper bound for the
     sampled model (a mixture over orders) and, through the dequantization, on the discrete NLL; ar.py's
     exact chain rule on the same digits (raster: exact; random: one order per image, a bound alike). cfm.py's bits/dim (a converged ODE per image) is not measured here: the
     likelihood table has it at its own budget.
The analysis is run_all.py's paired bootstrap on FD: every replicate resamples the generated samples (the
same indices for every row) and the held-out digits and recomputes every row's FD, kept in
results/mar_claims.json; a claim's ratio is the mean over seeds of the per-seed ratio, its interval
benchmarks/stats.py's (the replicates' spread and the seeds' t interval); it holds (or does not)
when the interval lies on one side of the target, else it is within noise. Seed 0 also draws four
samples decoded group by group at K = 8 (results/img/mar-decoding.png).
"""
import argparse
import math
import time
from pathlib import Path

import torch

import bench
import run_all  # the paired bootstrap (replicate_figures, figure_floor, kept_rows)
import stats  # the claims' intervals and verdicts

import ar  # noqa: E402 (the model files: bench puts the repository's root on sys.path)
import cfm  # noqa: E402
import common  # noqa: E402
import mar  # noqa: E402

RESULTS = bench.RESULTS
COMMAND = "OMP_NUM_THREADS=1 python benchmarks/bench_mar.py"
DATA = ["--data", "digits", "--uncond"]
MAR_ITERS = 1500  # mar.py's digits default: the budget's reference
KS = (1, 2, 4, 8, 16)
BPD_N = 200  # held-out digits for bits/dim (about 0.1 CPU s per image and K)
PICTURE_K = 8
REFERENCE = "CFM Euler x 100"  # the ratios' reference
MAR_ROWS = [(f"MAR, K={k}", "mar", "mar", ["--steps", str(k)], k) for k in KS]
# the rows: (label, module, run, sampler flags, steps (network passes; CFM: its NFE))
SAMPLERS = MAR_ROWS + [(REFERENCE, "cfm", "cfm", ["--solver", "euler", "--steps", "100"], 100),
                       ("AR raster", "ar", "ar-raster", [], 64),
                       ("AR random order", "ar", "ar-random", [], 64)]
MODULES = {"mar": mar, "cfm": cfm, "ar": ar}
RUNS = {"cfm": (cfm, []), "ar-raster": (ar, ["--order", "raster", "--bpd", "0"]),
        "ar-random": (ar, ["--order", "random", "--bpd", "0"])}  # trained for mar.py's seconds
# each claim: (text, numerator row, denominator row, threshold, sense)
CLAIMS = ([(f"{label} within 1.2x of CFM-100", label, REFERENCE, 1.2, "<=") for label, *_ in MAR_ROWS]
          + [(f"{label} within 1.2x of CFM-100", label, REFERENCE, 1.2, "<=") for label in ("AR raster", "AR random order")]
          + [("MAR with one token per step (K=16) within 1.2x of AR random order", "MAR, K=16", "AR random order", 1.2, "<="),
             ("MAR with one token per step (K=16) within 1.2x of AR raster", "MAR, K=16", "AR raster", 1.2, "<=")]
          + [(f"MAR, K={k} within 1.1x of MAR, K=16 (several tokens per step cost little)", f"MAR, K={k}", "MAR, K=16",
              1.1, "<=") for k in KS[:-1]])




def load_mar(path, data):
    """mar.py's sampling (EMA) network of a checkpoint and its MaskedAR (tokens, sampler, likelihood)."""
    ckpt = common.load_checkpoint(path, ("mar",))
    a = ckpt["args"]
    m = mar.MaskedAR(data.shape, a["patch"], a["mask_ratio"], a["draws"], data.levels)
    net = mar.MAR(m.d, m.N, 0 if a["uncond"] else data.num_classes, 4 * a["width"], a["depth"], a["heads"],
                  a["head_width"], a["head_depth"])
    return m, common.load_ema(ckpt, net)


def picture(m, net, data, seed, path, n=4, K=PICTURE_K):
    """n samples decoded group by group at K steps: a row per sample, the empty canvas then each group (grey:
    unknown); mar.py's sampler, its own generator (seed + 4, as --trajectory)."""
    states = []
    m.sample(net, (n, *data.shape), steps=K, generator=torch.Generator().manual_seed(seed + 4), trajectory=states)
    common.save_strip(torch.stack([s.float() for s in states]), path, cols=K + 1)


def run_seed(seed, work, quick=False):
    n_gen = 100 if quick else run_all.PARTS["digits"]["n_gen"]
    bpd_n = 2 if quick else BPD_N
    data = common.load_data("digits")
    base = DATA + ["--seed", str(seed)]
    folder = work / f"seed{seed}"
    out = {name: folder / name for name in ("mar", *RUNS)}
    # 1. the reference's budget
    budget = bench.train(mar, base + ["--iters", str(4 if quick else MAR_ITERS), "--bpd", "0", "--out", str(out["mar"])])
    trained = {"mar": dict(iters=4 if quick else MAR_ITERS, train_cpu_s=budget)}
    print(f"seed {seed}: mar {trained['mar']['iters']} iterations, {budget:.0f} CPU s: the budget", flush=True)
    for name, (module, flags) in RUNS.items():  # 2. the same seconds
        cost = bench.cost_per_iter(module, base + flags, folder / "calib" / name) if not quick else 0.0
        iters = max(1, round(budget / cost)) if not quick else 2  # --quick: no calibration
        cpu = bench.train(module, base + flags + ["--iters", str(iters), "--out", str(out[name])])
        trained[name] = dict(iters=iters, cost_per_iter=cost, train_cpu_s=cpu)
        print(f"seed {seed}: {name} {iters} iterations at {cost:.4f} CPU s each, {cpu:.0f} CPU s against mar.py's "
              f"{budget:.0f}", flush=True)
    rows, samples = [], {}
    for label, module, name, sflags, nfe in SAMPLERS:  # 3. the same noise generator for every row
        extra = ["--bpd", str(bpd_n)] if module == "ar" else []
        q = bench.run(MODULES[module].main, ["--ckpt", str(out[name] / "ckpt.pt"), "--n-eval", str(n_gen), "--seed",
                                             str(seed), "--out", str(out[name])] + sflags + extra, trains=False, samples=True)
        x = q.pop("samples")
        samples[label] = common.features(data, x)
        rows.append(dict(sampler=label, model=module, run=name, nfe=nfe, seed=seed, **trained[name],
                         bits_per_dim=q.get("bits_per_dim"), bpd_n=q.get("bpd_n"),
                         **bench.quality(q)))
        print(rows[-1], flush=True)
    common.atomic_save(samples, folder / "digits-samples.pt")
    # 4. mar.py's exact bits/dim of every schedule, one order per image for all of them
    m, net = load_mar(out["mar"] / "ckpt.pt", data)
    c0 = time.process_time()
    q = mar.held_out_bits_per_dim(m, net, data, bpd_n, list(KS), False, seed + 2, 20)
    bpd_cpu = time.process_time() - c0
    for r in rows:
        if r["model"] == "mar":
            r.update(bits_per_dim=q[f"bits_per_dim_K{r['nfe']}"], bpd_step_change=q[f"bpd_step_change_K{r['nfe']}"],
                     bpd_n=q["bpd_n"])
    if seed == 0:
        picture(m, net, data, seed, RESULTS / "img" / "mar-decoding.png" if not quick else folder / "mar-decoding.png")
    name = f"mar_seed{seed}{'_quick' if quick else ''}.json"
    bench.write_json((Path(work) if quick else RESULTS) / name, {"machine": bench.machine(), "seed": seed, "n_gen": n_gen, "bpd_n": q["bpd_n"],
                                      "bpd_cpu_s": bpd_cpu, "bpd_steps": q["bpd_steps"],
                                      "command": f"{COMMAND} --seed {seed}", "rows": rows})
    return rows


def analyse(work, quick=False, replicates=None, results=None):
    """Every seed: run_all.py's paired bootstrap of FD -> results/mar_claims.json."""
    results = Path(results or RESULTS)
    suffix = "_quick" if quick else ""
    runs = [bench.read_json(f) for f in sorted(results.glob(f"mar_seed[0-9]{suffix}.json"))]
    if not runs:
        raise SystemExit(f"no mar_seed*{suffix}.json under {results}: measure a seed first")
    cfg = run_all.PARTS["digits"]
    reps = replicates or cfg["replicates"]
    data = common.load_data("digits")
    n_gen, n_test = runs[0]["n_gen"], cfg["n_test"]
    test = common.features(data, data.x_test[:n_test]).double()
    g = torch.Generator().manual_seed(0)
    index_gen = torch.cat([torch.arange(n_gen)[None], torch.randint(n_gen, (reps, n_gen), generator=g)])
    index_test = torch.cat([torch.arange(n_test)[None], torch.randint(n_test, (reps, n_test), generator=g)])
    figs = {}
    for run in runs:
        samples = torch.load(Path(work) / f"seed{run['seed']}" / "digits-samples.pt", weights_only=True)
        figs[run["seed"]] = run_all.replicate_figures(samples, test, True, index_gen, index_test)
    res = {"machine": bench.machine(), "command": "python benchmarks/bench_mar.py --analyse", "metric": cfg["metric"],
           "n_gen": n_gen, "n_test": n_test, "replicates": reps, "seeds": sorted(figs),
           "figure": {str(s): {k: float(v[0]) for k, v in f.items()} for s, f in figs.items()},
           "floor": run_all.figure_floor(data, test),
           "rows": {str(s): run_all.kept_rows(f) for s, f in figs.items()}}
    res["claims"] = stats.decide_rows(CLAIMS, res["rows"])
    print(f"{len(res['claims'])} claims over seeds {sorted(figs)}", flush=True)
    bench.write_json(results / f"mar_claims{suffix}.json", res)
    return res


# -----------------------------------------------------------------------------
# markdown for report.py

def markdown(results=RESULTS):
    """One row per sampler (K or NFE, iterations, training CPU seconds, FD, KID, memorised share, bits/dim, time
    per sample, its FD ratio to CFM-100 with the paired interval and verdict), mean +- sd over seeds, beside
    the floor; then the pairwise claims (MAR's K against one token per step, MAR against ar.py)."""
    results = Path(results)
    runs = [bench.read_json(f) for f in sorted(results.glob("mar_seed[0-9].json"))]
    if not runs:
        return ""
    claims_file = results / "mar_claims.json"
    c = bench.read_json(claims_file) if claims_file.exists() else {}
    if c:  # every interval recomputed from the kept rows
        c["claims"] = stats.decide_rows(CLAIMS, c["rows"])
    first = runs[0]["rows"][0]
    by = {}
    for run in runs:
        for r in run["rows"]:
            by.setdefault(r["sampler"], []).append(r)
    head = ["sampler", "K / NFE", "seeds", "iterations", "train CPU s", f"FD (n={runs[0]['n_gen']})",
            stats.kid_name([r for rs in by.values() for r in rs]), "memorised %",
            f"bits/dim (n={runs[0]['bpd_n']})", "ms per sample", "FD ratio to CFM-100, 95% interval", "target", "verdict"]
    out = []
    for label, rs in by.items():
        claim = next((x for x in c.get("claims", []) if x["numerator"] == label and x["denominator"] == REFERENCE), None)
        cells = [label, rs[0]["nfe"], len(rs), bench.ms([r["iters"] for r in rs], ".0f"),
                 bench.ms([r["train_cpu_s"] for r in rs], ".0f"), bench.ms([r["value"] for r in rs]),
                 bench.ms([r.get("kid") for r in rs], ".2g"),
                 bench.ms([100 * r["memorised"] for r in rs if r.get("memorised") is not None], ".2g"),
                 bench.ms([r.get("bits_per_dim") for r in rs], ".3f") or "not measured",
                 bench.ms([1000 * r["sample_seconds"] / r["n"] for r in rs if r.get("sample_seconds") is not None], ".3g")]
        cells += ([f"{claim['estimate']:.3g} ({stats.fmt_interval(claim)})", f"<= {claim['threshold']:g}",
                   f"**{claim['verdict']}**"] if claim else ["1" if label == REFERENCE else "", "", ""])
        out.append(cells)
    floor = (f"floor (real vs real, {first['floor_n']} training vs {first['floor_n']} held-out, mean +- sd over 20 "
             f"draws): FD {first['floor']:.3g} +- {first['floor_sd']:.2g}, {stats.kid_name([first])} "
             f"{first['kid_floor']:.2g} +- "
             f"{first['kid_floor_sd']:.2g}")
    if c:
        floor += (f"; the ratios' FD: floor {c['floor']['mean']:.3g} +- "
                  f"{c['floor']['sd']:.2g} at n={c['floor']['n']}")
    seeds = ", ".join(str(r["seed"]) for r in runs)
    bpd = (f"Bits/dim: the first {runs[0]['bpd_n']} held-out digits, 17 levels; mar.py's exact likelihood of each "
           f"K-step schedule (exact trace, RK4 x {runs[0]['bpd_steps']}; one random order per image, the "
           "same for every K: exact for that order and schedule, an upper bound for the sampled mixture over orders "
           "and, through the dequantization, on the discrete NLL), "
           "ar.py's exact chain rule (random order: one order per image, a bound alike); cfm.py's is not measured "
           "here (the likelihood table has it at its own budget). Time per sample: sampling wall seconds over "
           f"{runs[0]['n_gen']}, one thread")
    lines = [f"#### digits, unconditional: {runs[0]['n_gen']} samples, mean +- sd over seeds {seeds}", "",
             bench.caption(runs[0]["machine"], f"for s in 0 1 2; do {COMMAND} --seed $s; done; "
                           "python benchmarks/bench_mar.py --analyse"), "",
             bench.table(head, out, ["l"] + ["r"] * (len(head) - 3) + ["l", "l"]), "", floor + ".", "", bpd + ".", ""]
    pair = [x for x in c.get("claims", []) if x["denominator"] != REFERENCE]
    if pair:
        lines += [bench.table(["claim", "FD ratio", "95% interval", "per seed", "verdict"],
                              [[x["claim"], f"{x['estimate']:.3g}", stats.fmt_interval(x), stats.fmt_seeds(x),
                                f"**{x['verdict']}**"] for x in pair],
                              ["l", "r", "r", "l", "l"]), ""]
    if (results / "img" / "mar-decoding.png").exists():
        lines += [f"Seed 0's model decoding four samples in K = {PICTURE_K} groups (left: nothing known, grey; then "
                  "after each group):", "", "![mar.py decoding group by group](results/img/mar-decoding.png)", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, help="measure this seed")
    p.add_argument("--work", default=str(bench.ROOT / "benchmarks" / "work" / "mar"))
    p.add_argument("--analyse", action="store_true", help="the paired bootstrap over the measured seeds")
    p.add_argument("--quick", action="store_true", help="smoke test: 2-4 iterations, 100 samples, 2 digits' bits/dim")
    p.add_argument("--table", action="store_true", help="print the markdown of the results")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(args.work) / ("quick" if args.quick else "")
    if args.seed is not None:
        run_seed(args.seed, work, args.quick)
    if args.analyse:
        analyse(work, args.quick, replicates=20 if args.quick else None, results=work if args.quick else None)
    if args.table:
        print(markdown())
    if args.seed is None and not (args.analyse or args.table):
        p.error("give --seed (to measure), --analyse or --table")


if __name__ == "__main__":
    main()
