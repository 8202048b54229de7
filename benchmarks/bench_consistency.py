"""Consistency models against flow matching's 100 steps and MeanFlow's one, at equal training compute,
every claim a paired comparison with its 95% bootstrap interval.

  for p in digits-uncond digits-cond checkerboard; do for s in 0 1 2; do
      OMP_NUM_THREADS=1 python benchmarks/bench_consistency.py --part $p --seed $s; done; done  # ~15 min a run
  OMP_NUM_THREADS=1 python benchmarks/bench_consistency.py --part digits-uncond --seed 0 --ablation  # ~6 min
  OMP_NUM_THREADS=1 python benchmarks/bench_consistency.py --part digits-uncond --seed 0 --curve ect  # ~25 min
  python benchmarks/bench_consistency.py --analyse   # paired bootstrap -> results/consistency_claims.json

One seed of one part, in this process, through the model files' own main():
  1. cfm.py trains for T iterations (the flow model that ECT and CD start from: digits 1000, consistency.py's
     default teacher, checkerboard 1500), then continues exactly with --resume to the reference's
     iterations (digits 2500, checkerboard 3000: run_all.py's budgets). The reference's CPU seconds B
     (both segments) are the budget every other row is given.
  2. ECT (consistency tuning, consistency.py's default) and CD (distillation) start from the cfm.py model
     at T iterations and train for the rest of B: the flow model's seconds count against them.
  3. iCT (consistency training from scratch) and meanflow.py (its default recipe) train for all of B.
Iterations are the seconds left over each recipe's own CPU seconds per iteration, measured in this
process (80 iterations minus 20, one thread); the seconds each run actually spent are reported.

Sampling: every row draws its starting noise from the same generator (the same --seed), and the
labels (digits-cond) are the same, so a one-step row and the reference start from the same noise;
all are scored against the same held-out set: digits 2000 samples against the 500 held-out digits
(FD and KID in the feature classifier's space, the memorised share), the checkerboard 5000 points
against 5000 held-out (W2). The analysis is run_all.py's paired bootstrap: every replicate resamples
the generated samples (the same indices for every row) and the held-out items, and recomputes every
row's figure (FD on digits, sliced W2 on 2-D), kept in results/consistency_claims.json; a claim's
ratio is the mean over seeds of the per-seed ratio, its interval benchmarks/stats.py's (the
replicates' spread and the seeds' t interval); it holds (or does not) when the interval lies on one
side of the target, else it is within noise.

--curve RECIPE (on a measured seed): the recipe's run and the reference's run continued exactly (--resume on
a copy; the learning rate is constant after warm-up, ECT's and iCT's stages follow the iteration count)
until each has spent 2 and 4 times the reference's CPU seconds, each point sampled from the same noise:
how much more compute a one- or two-step model needs to come within the target of CFM-100, and whether
it does at equal compute. --ablation: ECT with the path's weight 1 / (r - t) and with CM's weight 1, from
the same flow model for as many iterations as ECT's row.

--only RUNS (on a measured seed, e.g. --only ect): cfm.py's flow model and reference are trained
again (deterministic on one thread: the reference's figures should come back as they were, and each
rerun records them before and now), only the named recipes are trained, and the reference's rows and
theirs replace their rows in the seed's results; the other rows keep their figures, marked
"older_run" (and "old_stages" for ect's ablation and curve rows, trained with the stages before the
published mapping).
"""
import argparse
import shutil
from pathlib import Path

import torch

import bench
import run_all  # the paired bootstrap (replicate_figures, figure_floor, kept_rows)
import stats  # the claims' intervals and verdicts

import cfm  # noqa: E402 (the model files: bench puts the repository's root on sys.path)
import common  # noqa: E402
import consistency  # noqa: E402
import meanflow  # noqa: E402

RESULTS = bench.RESULTS
COMMAND = "OMP_NUM_THREADS=1 python benchmarks/bench_consistency.py"
PARTS = {  # data flags, the flow model's iterations T, the reference's iterations, (run_all's part)
    "digits-uncond": (["--data", "digits", "--uncond"], 1000, 2500, "digits"),
    "digits-cond": (["--data", "digits"], 1000, 2500, "digits"),
    "checkerboard": (["--data", "checkerboard", "--uncond"], 1500, 3000, "2d"),
}
REFERENCE = "CFM Euler x 100"
# the rows: (label, module, run, sampler flags, NFE)
SAMPLERS = [(REFERENCE, "cfm", "cfm", ["--solver", "euler", "--steps", "100"], 100),
            ("CFM Euler x 2", "cfm", "cfm", ["--solver", "euler", "--steps", "2"], 2),
            ("ECT, 1 step", "consistency", "ect", ["--steps", "1"], 1),
            ("ECT, 2 steps", "consistency", "ect", ["--steps", "2"], 2),
            ("ECT, 4 steps", "consistency", "ect", ["--steps", "4"], 4),
            ("CD, 1 step", "consistency", "cd", ["--steps", "1"], 1),
            ("CD, 2 steps", "consistency", "cd", ["--steps", "2"], 2),
            ("iCT, 1 step", "consistency", "ict", ["--steps", "1"], 1),
            ("iCT, 2 steps", "consistency", "ict", ["--steps", "2"], 2),
            ("MeanFlow, 1 step", "meanflow", "meanflow", ["--steps", "1"], 1),
            ("MeanFlow, 2 steps", "meanflow", "meanflow", ["--steps", "2"], 2)]
MODULES = {"cfm": cfm, "consistency": consistency, "meanflow": meanflow}
# each claim: (text, numerator row, denominator row, threshold, sense)
CLAIMS = [(f"{label} within {t}x of CFM-100", label, REFERENCE, t, "<=")
          for label, t in (("ECT, 1 step", 1.3), ("ECT, 2 steps", 1.1), ("ECT, 4 steps", 1.1), ("CD, 1 step", 1.3),
                           ("CD, 2 steps", 1.1), ("iCT, 1 step", 1.3), ("iCT, 2 steps", 1.1), ("MeanFlow, 1 step", 1.3),
                           ("MeanFlow, 2 steps", 1.1), ("CFM Euler x 2", 1.3),
                           ("ECT weight path, 1 step", 1.3), ("ECT weight one, 1 step", 1.3))] + [
    ("CD's one step beats ECT's", "CD, 1 step", "ECT, 1 step", 1.0, "<"),
    ("CD's one step beats iCT's", "CD, 1 step", "iCT, 1 step", 1.0, "<"),
    ("CD's one step beats MeanFlow's", "CD, 1 step", "MeanFlow, 1 step", 1.0, "<"),
    ("ECT's one step beats MeanFlow's", "ECT, 1 step", "MeanFlow, 1 step", 1.0, "<"),
    ("a second step helps CD", "CD, 2 steps", "CD, 1 step", 1.0, "<"),
    ("a second step helps ECT", "ECT, 2 steps", "ECT, 1 step", 1.0, "<"),
    ("a second step helps iCT", "iCT, 2 steps", "iCT, 1 step", 1.0, "<")] + [
    (f"the {what} beats iCT's (ECT, 1 step)", f"ECT weight {w}, 1 step", "ECT, 1 step", 1.0, "<")
    for w, what in (("path", "path's weight 1 / (r - t)"), ("one", "weight 1 (CM's)"))]
# --curve: a consistency recipe and cfm.py continued exactly to these multiples of the reference's CPU seconds
CURVE = (2, 4)
CURVE_RUNS = {"ect": "ECT", "cd": "CD", "ict": "iCT"}
CLAIMS += [c for m in CURVE for name in CURVE_RUNS.values() for c in (
    (f"{name}, 1 step at {m}x the seconds within 1.3x of CFM-100", f"{name}, 1 step at {m}x", REFERENCE, 1.3, "<="),
    (f"{name}, 2 steps at {m}x the seconds within 1.1x of CFM-100", f"{name}, 2 steps at {m}x", REFERENCE, 1.1, "<="),
    (f"{name}, 1 step within 1.3x of CFM-100, both at {m}x", f"{name}, 1 step at {m}x", f"{REFERENCE} at {m}x", 1.3, "<="))]
CLAIMS += [(f"CFM-100 at {m}x the seconds beats CFM-100", f"{REFERENCE} at {m}x", REFERENCE, 1.0, "<") for m in CURVE]
# --ablation: ECT with another loss weight, from the same flow model, for as many iterations as ECT's row
ABLATIONS = {f"ect-weight-{w}": (["--training", "ect", "--weight", w], f"ECT weight {w}") for w in ("path", "one")}




RECIPES = ("ect", "cd", "ict", "meanflow")  # --only picks of these; cfm.py always runs


def results_file(part, seed, quick=False, work=None):
    """A seed's results file: under benchmarks/results, or under WORK for a --quick run."""
    return (Path(work) if quick else RESULTS) / f"consistency_{part}_seed{seed}{'_quick' if quick else ''}.json"


def run_part(part, seed, work, quick=False, only=None):
    """One seed of one part (the module docstring): its rows ->
    results/consistency_<part>_seed<s>.json, their samples (features on digits, points on 2-D) ->
    WORK/seed<s>/<part>-samples.pt.
    only: a subset of RECIPES. cfm.py still trains (the flow model at T, the reference, the
    budget), but only those recipes train (with their calibration); the reference's rows and theirs
    are sampled and replace their rows in the seed's results file, whose other rows stay as they
    were, marked "older_run": true ("old_stages": true where the run used ECT's stages: ect's
    ablations and curve); their samples join the seed's samples file, where it exists."""
    data_flags, t_iters, ref_iters, metric_part = PARTS[part]
    n_gen = 100 if quick else run_all.PARTS[metric_part]["n_gen"]
    if quick:
        t_iters, ref_iters = 2, 4
    data = common.load_data(data_flags[1])
    base = data_flags + ["--seed", str(seed)]
    folder = work / f"seed{seed}" / part
    out = {name: folder / name for name in ("flow", "cfm") + RECIPES}
    # 1. the flow model at T, continued to the reference's iterations
    cpu_t = bench.train(cfm, base + ["--iters", str(t_iters), "--out", str(out["flow"])])
    shutil.rmtree(out["cfm"], ignore_errors=True)
    shutil.copytree(out["flow"], out["cfm"])
    budget = cpu_t + bench.train(cfm, base + ["--iters", str(ref_iters), "--resume", "--out", str(out["cfm"])])
    teacher = ["--teacher", str(out["flow"] / "ckpt.pt")]
    recipes = {"ect": (consistency, ["--training", "ect"] + teacher, cpu_t),
               "cd": (consistency, ["--training", "cd"] + teacher, cpu_t),
               "ict": (consistency, ["--training", "ict"], 0.0),
               "meanflow": (meanflow, [], 0.0)}
    if only is not None:
        recipes = {name: recipe for name, recipe in recipes.items() if name in only}
    trained = {"cfm": dict(iters=ref_iters, train_cpu_s=budget, flow_cpu_s=cpu_t)}
    for name, (module, flags, spent) in recipes.items():  # 2., 3.: the rest of the budget
        cost = bench.cost_per_iter(module, base + flags, work / "calib" / name) if not quick else 0.0
        iters = max(1, round((budget - spent) / cost)) if not quick else 2  # --quick: no calibration
        cpu = bench.train(module, base + flags + ["--iters", str(iters), "--out", str(out[name])])
        trained[name] = dict(iters=iters, cost_per_iter=cost, train_cpu_s=spent + cpu, flow_cpu_s=spent)
        print(f"{part} seed {seed}: {name} {iters} iterations at {cost:.4f} CPU s each, {spent + cpu:.0f} CPU s "
              f"against the reference's {budget:.0f}", flush=True)
    rows, samples = [], {}
    for label, module, name, sflags, nfe in SAMPLERS:
        if name not in trained:
            continue
        q = bench.run(MODULES[module].main, ["--ckpt", str(out[name] / "ckpt.pt"), "--n-eval", str(n_gen), "--seed",
                                             str(seed), "--out", str(out[name])] + sflags, trains=False, samples=True)
        x = q.pop("samples")
        samples[label] = common.features(data, x) if data.is_image else x.double()
        rows.append(dict(sampler=label, model=module, run=name, nfe=nfe, seed=seed, **trained[name],
                         **bench.quality(q)))
        print({k: v for k, v in rows[-1].items()}, flush=True)
    keep = work / f"seed{seed}" / f"{part}-samples.pt"
    results = results_file(part, seed, quick, work)
    command = f"{COMMAND} --part {part} --seed {seed}"
    res = {"machine": bench.machine(), "part": part, "seed": seed, "n_gen": n_gen,
           "command": command, "rows": rows}
    if only is not None:  # the seed's other rows as they were
        res, new = bench.read_json(results), {r["sampler"]: r for r in rows}
        reproduced = {}
        for i, r in enumerate(res["rows"]):
            if r["sampler"] in new:
                if r["run"] == "cfm":  # the same training as before, deterministic on one thread
                    reproduced[r["sampler"]] = dict(before=r["value"],
                                                    now=new[r["sampler"]]["value"])
                res["rows"][i] = new.pop(r["sampler"])
            else:
                r["older_run"] = True
                if r["run"].startswith("ect"):  # ablations, curve: a = floor(k / K), a stage late
                    r["old_stages"] = True
        res["rows"] += list(new.values())
        res.setdefault("reruns", []).append(dict(
            command=f"{command} --only {','.join(sorted(only))}", machine=bench.machine(),
            rows=[r["sampler"] for r in rows], reference=reproduced))
        print(f"{part} seed {seed}: the reference's figures before and now: {reproduced}",
              flush=True)
        if keep.exists():
            samples = {**torch.load(keep, weights_only=True), **samples}
    common.atomic_save(samples, keep)
    bench.write_json(results, res)
    return rows


def measured(part, seed, work, quick=False):
    """A measured seed, to add rows to: (its results file, the results, the data, its runs' folder, its samples'
    file, the samples, the data and seed flags)."""
    name = results_file(part, seed, quick, work)
    keep = work / f"seed{seed}" / f"{part}-samples.pt"
    data_flags = PARTS[part][0]
    return (name, bench.read_json(name), common.load_data(data_flags[1]), work / f"seed{seed}" / part, keep,
            torch.load(keep, weights_only=True), data_flags + ["--seed", str(seed)])


def run_ablation(part, seed, work, quick=False):
    """ABLATIONS on a measured seed: each trains from the seed's flow model for ECT's iterations and is sampled
    with 1 and 2 steps from the same noise; its rows and samples join the seed's (the same --analyse)."""
    name, res, data, folder, keep, samples, base = measured(part, seed, work, quick)
    ect = next(r for r in res["rows"] if r["run"] == "ect")
    for run, (flags, label) in ABLATIONS.items():
        cpu = bench.train(consistency, base + flags + ["--teacher", str(folder / "flow" / "ckpt.pt"), "--iters", str(ect["iters"]),
                                                 "--out", str(folder / run)])
        res["rows"] = [r for r in res["rows"] if r["run"] != run]
        for steps in (1, 2):
            q = bench.run(consistency.main, ["--ckpt", str(folder / run / "ckpt.pt"), "--n-eval", str(res["n_gen"]),
                                             "--seed", str(seed), "--out", str(folder / run), "--steps", str(steps)],
                          trains=False, samples=True)
            x = q.pop("samples")
            row_label = f"{label}, {steps} step{'s' * (steps > 1)}"
            samples[row_label] = common.features(data, x) if data.is_image else x.double()
            res["rows"].append(dict(sampler=row_label, model="consistency", run=run, nfe=steps, seed=seed,
                                    iters=ect["iters"], train_cpu_s=ect["flow_cpu_s"] + cpu, flow_cpu_s=ect["flow_cpu_s"],
                                    **bench.quality(q)))
            print(res["rows"][-1], flush=True)
    common.atomic_save(samples, keep)
    bench.write_json(name, res)


def run_curve(part, seed, work, quick=False, recipe="ect", multiples=CURVE):
    """A consistency recipe (ect, cd or ict) and cfm.py of a measured seed continued exactly (--resume, a copy of each run) until their training
    CPU seconds reach each multiple of the reference's; each point sampled as the main rows, from the same
    noise, and joined to the seed's rows as "<row> at <m>x" (the same --analyse)."""
    name, res, data, folder, keep, samples, base = measured(part, seed, work, quick)
    budget = next(r for r in res["rows"] if r["sampler"] == REFERENCE)["train_cpu_s"]
    samplers = {recipe: [(f"{CURVE_RUNS[recipe]}, {k} step{'s' * (k > 1)}", ["--steps", str(k)], k) for k in (1, 2)],
                "cfm": [(REFERENCE, ["--solver", "euler", "--steps", "100"], 100)]}
    for run, module in ((recipe, consistency), ("cfm", cfm)):
        row = next(r for r in res["rows"] if r["run"] == run)
        out = folder / f"{run}-curve"
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(folder / run, out)
        cpu, iters = row["train_cpu_s"], row["iters"]
        cost = (cpu - (row["flow_cpu_s"] if run != "cfm" else 0.0)) / iters  # its CPU s per iteration
        res["rows"] = [r for r in res["rows"] if r["run"] != f"{run}-curve"]
        for m in multiples:
            iters += max(1, round((m * budget - cpu) / cost))
            cpu += bench.train(module, base + ["--iters", str(iters), "--resume", "--out", str(out)])
            for label, sflags, nfe in samplers[run]:
                q = bench.run(module.main, ["--ckpt", str(out / "ckpt.pt"), "--n-eval", str(res["n_gen"]), "--seed", str(seed),
                                            "--out", str(out)] + sflags, trains=False, samples=True)
                x = q.pop("samples")
                samples[f"{label} at {m}x"] = common.features(data, x) if data.is_image else x.double()
                res["rows"].append(dict(sampler=f"{label} at {m}x", model=row["model"], run=f"{run}-curve", nfe=nfe,
                                        seed=seed, iters=iters, train_cpu_s=cpu, flow_cpu_s=row["flow_cpu_s"], budget=m,
                                        **bench.quality(q)))
                print(res["rows"][-1], flush=True)
            common.atomic_save(samples, keep)
            bench.write_json(name, res)


def analyse(work, quick=False, replicates=None):
    root = Path(work) if quick else RESULTS  # a --quick run's files live in its work folder
    """Every part's seeds: run_all.py's paired bootstrap -> results/consistency_claims.json."""
    suffix = "_quick" if quick else ""
    res = {"machine": bench.machine(), "command": f"python benchmarks/bench_consistency.py --analyse", "parts": {}}
    prior_file = root / f"consistency_claims{suffix}.json"
    prior = bench.read_json(prior_file) if prior_file.exists() else {}
    for part, (data_flags, _, _, metric_part) in PARTS.items():
        runs = [bench.read_json(f) for f in sorted(root.glob(f"consistency_{part}_seed[0-9]{suffix}.json"))]
        if not runs:
            continue
        cfg = run_all.PARTS[metric_part]
        reps = replicates or cfg["replicates"]
        data = common.load_data(data_flags[1])
        n_gen = runs[0]["n_gen"]
        n_test = cfg["n_test"] if data.is_image else min(n_gen, cfg["n_test"])
        test = (common.features(data, data.x_test[:n_test]) if data.is_image else data.x_test[:n_test]).double()
        g = torch.Generator().manual_seed(0)
        index_gen = torch.cat([torch.arange(n_gen)[None], torch.randint(n_gen, (reps, n_gen), generator=g)])
        index_test = torch.cat([torch.arange(n_test)[None], torch.randint(n_test, (reps, n_test), generator=g)])
        previous = prior.get("parts", {}).get(part, {})
        rows, figure = {}, {}
        for run in runs:  # rows sampled in this work folder: every replicate; the others as last kept
            key, keep = str(run["seed"]), work / f"seed{run['seed']}" / f"{part}-samples.pt"
            labels = [r["sampler"] for r in run["rows"]]
            rows[key] = {k: v for k, v in previous.get("rows", {}).get(key, {}).items() if k in labels}
            figure[key] = {k: v for k, v in previous.get("figure", {}).get(key, {}).items() if k in labels}
            if keep.exists():
                figs = run_all.replicate_figures(torch.load(keep, weights_only=True), test, data.is_image,
                                                 index_gen, index_test)
                rows[key].update(run_all.kept_rows(figs))
                figure[key].update({k: float(v[0]) for k, v in figs.items()})
            missing = [k for k in labels if k not in rows[key]]
            if missing:
                raise SystemExit(f"{part} seed {key}: no samples under {work} and no kept rows for {missing}: "
                                 f"measure them (--part {part} --seed {key})")
        claims = stats.decide_rows(CLAIMS, rows)
        res["parts"][part] = dict(metric=cfg["metric"], n_gen=n_gen, n_test=n_test, replicates=reps,
                                  seeds=sorted(int(k) for k in rows), figure=figure,
                                  floor=run_all.figure_floor(data, test), rows=rows, claims=claims)
        print(f"{part}: {len(claims)} claims over seeds {sorted(rows)}", flush=True)
    bench.write_json(root / f"consistency_claims{suffix}.json", res)
    return res


# -----------------------------------------------------------------------------
# markdown for report.py

def markdown(results=RESULTS):
    """Per part: one row per sampler (iterations, training CPU seconds, figure, its ratio to CFM-100 with the
    paired interval and verdict), mean +- sd over seeds, beside the floor; then the pairwise claims."""
    claims_file = Path(results) / "consistency_claims.json"
    claims = bench.read_json(claims_file)["parts"] if claims_file.exists() else {}
    for c in claims.values():  # every interval recomputed from the kept rows
        c["claims"] = stats.decide_rows(CLAIMS, c["rows"])
    lines = []
    for part in PARTS:
        runs = [bench.read_json(f) for f in sorted(Path(results).glob(f"consistency_{part}_seed[0-9].json"))]
        if not runs:
            continue
        first = runs[0]["rows"][0]
        c = claims.get(part, {})
        by = {}
        for run in runs:
            for r in run["rows"]:
                by.setdefault(r["sampler"], []).append(r)
        image = first["metric"] == "FD"
        head = ["sampler", "NFE", "seeds", "iterations", "train CPU s", f"{first['metric']} (n={runs[0]['n_gen']})"]
        head += ([stats.kid_name([r for rs in by.values() for r in rs]), "memorised %"] if image else []) + [f"{c.get('metric', '')} ratio to CFM-100, 95% interval",
                                                             "target", "verdict"]
        out = []
        old = {label for label, rs in by.items() if any(r.get("old_stages") for r in rs)}
        mark = lambda text: text + (" *" if any(label in text for label in old) else "")  # noqa: E731
        for label, rs in by.items():
            claim = next((x for x in c.get("claims", []) if x["numerator"] == label and x["denominator"] == REFERENCE), None)
            cells = [mark(label), rs[0]["nfe"], len(rs), bench.ms([r["iters"] for r in rs], ".0f"), bench.ms([r["train_cpu_s"] for r in rs], ".0f"),
                     bench.ms([r["value"] for r in rs])]
            if image:
                raw = stats.kid_name(rs) == "KID (raw features)" and stats.kid_name(
                    [r for v in by.values() for r in v]) != "KID (raw features)"
                cells += [bench.ms([r.get("kid") for r in rs], ".2g") + (" (raw features)" if raw else ""),
                          bench.ms([100 * r["memorised"] for r in rs if r.get("memorised") is not None], ".2g")]
            cells += ([f"{claim['estimate']:.3g} ({stats.fmt_interval(claim)})", f"{claim['sense']} {claim['threshold']:g}",
                       f"**{claim['verdict']}**"] if claim else ["1" if label == REFERENCE else "", "", ""])
            out.append(cells)
        floor = (f"floor (real vs real, {first['floor_n']} training vs {first['floor_n']} held-out, mean +- sd over 20 "
                 f"draws): {first['metric']} {first['floor']:.3g} +- {first['floor_sd']:.2g}"
                 + (f", {stats.kid_name([first])} {first['kid_floor']:.2g} +- {first['kid_floor_sd']:.2g}"
                    if image else ""))
        if c:
            floor += f"; the ratios' {c['metric']}: floor {c['floor']['mean']:.3g} +- {c['floor']['sd']:.2g} at n={c['floor']['n']}"
        seeds = ", ".join(str(r["seed"]) for r in runs)
        lines += [f"#### {part}: {runs[0]['n_gen']} samples, mean +- sd over seeds {seeds} (or as many as a row has)", "",
                  bench.caption(runs[0]["machine"], f"for s in 0 1 2; do {COMMAND} --part {part} --seed $s; done; "
                                f"python benchmarks/bench_consistency.py --analyse"), "",
                  bench.table(head, out, ["l"] + ["r"] * (len(head) - 3) + ["l", "l"]), "", floor + ".", ""]
        if old:
            lines += ["\\* ECT's stages starting at a = floor(k / K) = 0, where every r is 1 (a first stage of plain "
                      "flow matching, one halving of the gap fewer than consistency.py's ECT): these rows and their "
                      "claims do not compare with the ECT rows above.", ""]
        pair = [x for x in c.get("claims", []) if x["denominator"] != REFERENCE]
        if pair:
            lines += [bench.table(["claim", "ratio", "95% interval", "per seed", "verdict"],
                                  [[mark(x["claim"]) if x["numerator"] in old or x["denominator"] in old
                                    else x["claim"], f"{x['estimate']:.3g}", stats.fmt_interval(x),
                                    stats.fmt_seeds(x), f"**{x['verdict']}**"] for x in pair],
                                  ["l", "r", "r", "l", "l"]), ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=list(PARTS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=str(bench.ROOT / "benchmarks" / "work" / "consistency"))
    p.add_argument("--analyse", action="store_true", help="the paired bootstrap over every part's seeds")
    p.add_argument("--quick", action="store_true", help="smoke test: 2-4 iterations, 100 samples")
    p.add_argument("--ablation", action="store_true", help="with --part and --seed (measured): ECT with the other "
                   "loss weights, the same flow model and iterations, rows added to the seed's")
    p.add_argument("--curve", choices=list(CURVE_RUNS), help="with --part and --seed (measured): this recipe and cfm.py continued "
                   f"to {' and '.join(map(str, CURVE))} times the reference's CPU seconds, rows added to the seed's")
    p.add_argument("--only", metavar="RUNS", help="with --part and --seed (measured): train and "
                   "sample only these recipes (comma-separated, of " + ", ".join(RECIPES) + ")"
                   " beside cfm.py's reference, replacing their rows in the seed's results; the "
                   "others stay, marked older_run")
    p.add_argument("--table", action="store_true", help="print the markdown of the results")
    args = p.parse_args(argv)
    only = None
    if args.only is not None:
        only = {name.strip() for name in args.only.split(",") if name.strip()}
        if not only or not only <= set(RECIPES):
            p.error(f"--only takes recipes of {', '.join(RECIPES)}, comma-separated, "
                    f"got {args.only!r}")
        if not args.part or args.ablation or args.curve:
            p.error("--only goes with --part (and --seed), not with --ablation or --curve")
        measured_file = results_file(args.part, args.seed, args.quick, Path(args.work) / "quick")
        if not measured_file.exists():
            p.error(f"--only updates a measured seed, and {measured_file} is missing: run "
                    f"--part {args.part} --seed {args.seed} without --only first")
    torch.set_num_threads(1)
    work = Path(args.work) / ("quick" if args.quick else "")
    if args.part and args.curve:
        run_curve(args.part, args.seed, work, args.quick, args.curve)
    elif args.part and args.ablation:
        run_ablation(args.part, args.seed, work, args.quick)
    elif args.part:
        run_part(args.part, args.seed, work, args.quick, only)
    if args.analyse:
        analyse(work, args.quick, replicates=20 if args.quick else None)
    if args.table:
        print(markdown())
    if not (args.part or args.analyse or args.table):
        p.error("give --part (to measure), --analyse or --table")


if __name__ == "__main__":
    main()
