"""One step against a hundred at equal training compute: MeanFlow variants against cfm.py's
100 Euler steps, each trained for the same CPU seconds, on several seeds.

  OMP_NUM_THREADS=1 python benchmarks/meanflow_compute.py --part digits-uncond   # ~30 min on one core
  OMP_NUM_THREADS=1 python benchmarks/meanflow_compute.py --part checkerboard    # ~25 min on one core
  OMP_NUM_THREADS=1 python benchmarks/meanflow_compute.py --part digits-cond     # ~30 min on one core
  python benchmarks/meanflow_compute.py --table      # print the table of results/meanflow_compute.json

The reference is cfm.py (independent coupling) trained for a fixed number of iterations (digits 2500,
checkerboard 3000; batch 128 / 512, UNet width 16 / MLP width 256, the data's default learning rate)
and sampled with 100 Euler steps. Each MeanFlow variant is given the same training CPU seconds: its
iterations are the CPU seconds that the reference spent on the same seed divided by its own measured
cost per iteration (calibrated in this process on 60 iterations, one thread), and the CPU seconds
each run actually spent are reported beside it. CPU seconds are the train_cpu_seconds of the dict
the model file's main() returns (the whole call's CPU seconds where it reports none).
Variants (--variants picks some):
  paper      the paper's recipe: 25% of pairs with r != t, the sample's v as the JVP tangent;
  iMF        --tangent model: the network's own u(z, t, t) as the tangent (arXiv 2512.02012);
  FM first   --ratio 0 (flow matching) for half of the CPU seconds, then --resume with --ratio 0.25
             for the other half (AlphaFlow arXiv 2510.20771, Decoupled MeanFlow arXiv 2510.24474);
  iMF, FM first   both;   iMF, ratio 0.5   iMF with half of the pairs r != t;
  iMF, p 0.5 / p 0 (L2)   the adaptive weight 1 / (||e||^2 + c)^p with a smaller power (the paper's ablation);
  iMF, mu 0 / mu -0.4     logit-normal times centred at 1/2, or mirrored towards the noise end;
  iMF, w input   --cfg-max 2: the guidance scale as the network's input, trained on w in [1, 2] (digits-cond),
             sampled at each scale of SAMPLE_SCALES (one network call a step at any of them); beside it
             cfm.py is also sampled with guidance at w 1.25 (two calls a step: NFE 200), for context.
Each is sampled with 1 and 2 steps. Quality: the file's own figure (FD on digits, W2 on the
checkerboard) of n samples against the held-out set, mean +- sd over the seeds, next to the floor
(real against real, mean +- sd over 20 draws); digits also give the memorised share. A target
("1 step within 1.3x of CFM-100", "2 steps within 1.1x") is met or not met when the mean +- sd over
seeds of the per-seed ratio lies on one side of it, and within noise otherwise.

Where the curves meet (--curve, with --part): quality against training CPU seconds for both. cfm.py
trains in segments of 0.1, 0.2, 0.4, 1 and 2 times the reference's iterations (each continuing the
last exactly with --resume: the learning rate is constant after warm-up) and is scored with 100 Euler
steps after each; meanflow.py (its default, iMF; on conditional digits the best one step of the
table, --cfg-max 2 sampled at w 1.25) trains in segments ending at the same cumulative CPU seconds,
then on to 2x and 4x cfm.py's last, and is scored with 1 and 2 steps after each.
  OMP_NUM_THREADS=1 python benchmarks/meanflow_compute.py --curve --part digits-uncond   # ~70 min on one core
  python benchmarks/meanflow_compute.py --curve-table --part digits-uncond  # print results/meanflow_curve_<part>.json
"""
import argparse
import json
import statistics
from pathlib import Path

import bench
import torch

import cfm  # the model files: bench puts the repository's root on sys.path
import meanflow

RESULTS = bench.RESULTS
COMMAND = "OMP_NUM_THREADS=1 python benchmarks/meanflow_compute.py"
PARTS = {  # data flags, the reference's iterations, samples evaluated
    "digits-uncond": (["--data", "digits", "--uncond"], 2500, 500),
    "digits-cond": (["--data", "digits"], 2500, 500),
    "checkerboard": (["--data", "checkerboard", "--uncond"], 3000, 1000),
}
VARIANTS = {"paper": ["--tangent", "sample"], "iMF": ["--tangent", "model"], "FM first": ("fm", ["--tangent", "sample"]),  # ("fm", flags): two phases
            "iMF, FM first": ("fm", ["--tangent", "model"]), "iMF, ratio 0.5": ["--tangent", "model", "--ratio", "0.5"],
            "iMF, p 0.5": ["--tangent", "model", "--adaptive-p", "0.5"], "iMF, p 0 (L2)": ["--tangent", "model", "--adaptive-p", "0"],
            "iMF, mu 0": ["--tangent", "model", "--time-mu", "0"], "iMF, mu -0.4": ["--tangent", "model", "--time-mu", "-0.4"],
            "iMF, w input": ["--tangent", "model", "--cfg-max", "2"]}
LABELLED = {"iMF, w input"}  # variants that need labels: not run on the unconditional parts
SAMPLE_SCALES = {"iMF, w input": (1.0, 1.25, 1.5)}  # --cfg-scale of each evaluation; the others are sampled at 1
REF_SCALES = {"digits-cond": (1.0, 1.25)}  # cfm.py's; the reference (the targets' denominator) is w = 1
TARGETS = {1: 1.3, 2: 1.1}


def variant_flags(name):
    """meanflow.py's flags of a variant (of its MeanFlow phase, for the two-phase ones)."""
    flags = VARIANTS[name]
    return flags[1] if isinstance(flags, tuple) else flags


def run(module, argv):
    """A training run of module.main(argv) in this process: (its dict, training CPU seconds)."""
    q = bench.run(module.main, argv)
    return q, q["train_cpu_seconds"]


QUICK_FLAGS = ["--width", "8", "--batch-size", "32"]  # --quick: narrow networks, small batches
QUICK_CALIBRATION = (1, 2, 4)  # --quick: the calibration's iterations (bench's: 2, 20, 80)


def cost_per_iter(module, flags, work, quick=False):
    """bench.cost_per_iter, its runs under work/calib-<module>."""
    return bench.cost_per_iter(module, flags, work / f"calib-{module.__name__}",
                               *([QUICK_CALIBRATION] if quick else []))


def quick_iters(iters, ref_iters, quick):
    """A run's iterations; with --quick kept within 1..2 x the reference's (a tiny calibration is
    noise)."""
    return min(max(1, iters), 2 * ref_iters) if quick else iters


def evaluate(module, ckpt, n_eval, seed, out, steps_flags):
    q = bench.run(module.main, ["--ckpt", str(ckpt), "--n-eval", str(n_eval), "--seed", str(seed), "--out", str(out)]
                  + steps_flags, trains=False)
    return {k: q.get(k) for k in ("metric", "value", "floor", "floor_sd", "memorised", "memorised_heldout")}


def run_part(part, seeds, work, quick=False, variants=tuple(VARIANTS)):
    data_flags, ref_iters, n_eval = PARTS[part]
    if quick:  # a smoke test of the code paths: a few iterations, written beside the checkpoints
        ref_iters, n_eval = 4, 50
    base = data_flags + ["--log-every", "1000"] + QUICK_FLAGS * quick
    c_cfm = cost_per_iter(cfm, base, work, quick)
    c_mf = {name: cost_per_iter(meanflow, base + variant_flags(name), work, quick)
            for name in variants}
    if any(isinstance(VARIANTS[name], tuple) for name in variants):  # the flow-matching phase's cost
        c_mf["ratio 0"] = cost_per_iter(meanflow, base + ["--ratio", "0"], work, quick)
    print(f"{part}: CPU s per iteration: cfm {c_cfm:.4f}, " + ", ".join(f"{k} {v:.4f}" for k, v in c_mf.items()),
          flush=True)
    rows = []
    for seed in seeds:
        s = ["--seed", str(seed)]
        out = work / f"{part}-s{seed}-cfm"
        _, cpu = run(cfm, base + s + ["--iters", str(ref_iters), "--n-eval", "0", "--out", str(out)])
        for w in REF_SCALES.get(part, (1.0,)):
            rows.append(dict(method="cfm.py", variant="Euler", nfe=100 if w == 1 else 200, cfg_scale=w, iters=ref_iters,
                             train_cpu_s=cpu, seed=seed, **evaluate(cfm, out / "ckpt.pt", n_eval, seed, out,
                                                                    ["--solver", "euler", "--steps", "100", "--cfg-scale", str(w)])))
            print(json.dumps(rows[-1]), flush=True)
        budget = cpu  # this seed's reference run's own CPU seconds: the others get as many
        for name in variants:
            flags = VARIANTS[name]
            out = work / f"{part}-s{seed}-{name.replace(' ', '-').replace(',', '')}"
            if isinstance(flags, tuple):  # flow matching for half the budget, then MeanFlow for the other half
                k1 = quick_iters(round(budget / 2 / c_mf["ratio 0"]), ref_iters, quick)
                k2 = quick_iters(round(budget / 2 / c_mf[name]), ref_iters, quick)
                _, cpu1 = run(meanflow, base + s + ["--ratio", "0", "--iters", str(k1), "--n-eval", "0", "--out", str(out)])
                _, cpu2 = run(meanflow, base + s + flags[1] + ["--resume", "--ratio", "0.25", "--iters", str(k1 + k2),
                                                              "--n-eval", "0", "--out", str(out)])
                iters, cpu = f"{k1} + {k2}", cpu1 + cpu2
            else:
                iters = quick_iters(round(budget / c_mf[name]), ref_iters, quick)
                _, cpu = run(meanflow, base + s + flags + ["--iters", str(iters), "--n-eval", "0", "--out", str(out)])
            for steps in (1, 2):
                for w in SAMPLE_SCALES.get(name, (1.0,)):
                    rows.append(dict(method="meanflow.py", variant=name, nfe=steps, cfg_scale=w, iters=iters, train_cpu_s=cpu,
                                     seed=seed, **evaluate(meanflow, out / "ckpt.pt", n_eval, seed, out,
                                                           ["--steps", str(steps), "--cfg-scale", str(w)])))
                    print(json.dumps(rows[-1]), flush=True)
    path = work / "meanflow_compute.json" if quick else RESULTS / "meanflow_compute.json"
    res = json.loads(path.read_text()) if path.exists() else {}
    old = res.get(part, {"costs": {}, "rows": []})
    res[part] = {"costs": {**old["costs"], "cfm": c_cfm, **c_mf}, "rows": _merge(old["rows"], rows, variants),
                 "machine": bench.machine()}
    bench.write_json(path, res)


def _merge(old, rows, variants):
    """This run's rows and the file's rows of the variants it did not run (its reference replaces the
    file's), in the order of VARIANTS (cfm.py first)."""
    kept = [r for r in old if r["method"] != "cfm.py" and r["variant"] not in variants]
    order = ["Euler"] + list(VARIANTS)
    return sorted(rows + kept, key=lambda r: (order.index(r["variant"]), r["seed"], r["nfe"], r.get("cfg_scale", 1.0)))


ms = bench.ms


def span(percents):
    """'0.0%' or '0.0-0.2%': the range of memorised shares; '' for none."""
    if not percents:
        return ""
    lo, hi = f"{min(percents):.1f}", f"{max(percents):.1f}"
    return f"{lo}%" if lo == hi else f"{lo}-{hi}%"


def verdict(ratios, target):
    if len(ratios) < 2:
        return ("met" if ratios[0] <= target else "not met") + " (one seed)"
    m, s = statistics.mean(ratios), statistics.stdev(ratios)
    return "met" if m + s <= target else "not met" if m - s > target else "within noise"


def markdown(res):
    """Per part: the reference (cfm.py, 100 Euler steps) in the caption, then one row per MeanFlow recipe
    (and guidance scale): its iterations, measured cost per iteration and training CPU seconds, and for
    1 and 2 steps its quality and its ratio to the reference, per seed (mean +- sd), against the target."""
    lines = []
    for part in PARTS:
        if part not in res:
            continue
        rows, costs = res[part]["rows"], res[part].get("costs", {})
        scale = lambda r: r.get("cfg_scale", 1.0)  # a row without a scale is sampled at w = 1
        ref = {r["seed"]: r["value"] for r in rows if r["method"] == "cfm.py" and scale(r) == 1}
        ratios = lambda rs: [r["value"] / ref[r["seed"]] for r in rs if r["seed"] in ref]
        cost = lambda k: f"{costs[k]:.3f}" + (f" ({costs[k] / costs['cfm']:.1f}x)" if k != "cfm" else "") if k in costs else ""
        first, refs, out = rows[0], [], []
        for w in dict.fromkeys(scale(r) for r in rows if r["method"] == "cfm.py"):
            rs = [r for r in rows if r["method"] == "cfm.py" and scale(r) == w]
            refs.append(f"cfm.py, {rs[0]['nfe']} Euler NFE" + (f" sampled with guidance at w {w:g}: " if w != 1 else
                        f" (the reference; {rs[0]['iters']} iterations, {ms([r['train_cpu_s'] for r in rs], '.0f')} CPU "
                        f"s, {cost('cfm')} CPU s / iteration): ") + f"{first['metric']} {ms([r['value'] for r in rs])}"
                        + (f", {ms(ratios(rs))} of the reference" if w != 1 else ""))
        for variant, w in dict.fromkeys((r["variant"], scale(r)) for r in rows if r["method"] != "cfm.py"):
            rs = [r for r in rows if r["method"] != "cfm.py" and (r["variant"], scale(r)) == (variant, w)]
            mem = [100 * r["memorised"] for r in rs if r.get("memorised") is not None]
            cells = [variant + (f", sampled at w {w:g}" if w != 1 else ""), rs[0]["iters"], cost(variant) if w == 1 or
                     all(scale(r) != 1 for r in rows if r["variant"] == variant) else "",
                     ms([r["train_cpu_s"] for r in rs if r["nfe"] == 1], ".0f")]
            for nfe in (1, 2):
                at = [r for r in rs if r["nfe"] == nfe]
                cells += [ms([r["value"] for r in at]), f"{ms(ratios(at))}: {verdict(ratios(at), TARGETS[nfe])}"] if at else ["", ""]
            out.append(cells + [span(mem)])
        lines += [bench.caption(res[part].get("machine"), f"{COMMAND} --part {part}",
                                f"{part}: {first['metric']} (floor {first['floor']:.3g} +- {first['floor_sd']:.2g}, real vs "
                                f"real), seeds {', '.join(map(str, sorted(ref)))}; " + "; ".join(refs)), "",
                  bench.table(["meanflow.py recipe", "iterations", "CPU s / iteration (x cfm.py)", "train CPU s",
                               "1 step", f"1 step / CFM-100: <= {TARGETS[1]}", "2 steps", f"2 steps / CFM-100: <= {TARGETS[2]}",
                               "memorised"], out, ["l", "r", "r", "r", "r", "l", "r", "l", "r"]), ""]
    return "\n".join(lines)


def table(path=RESULTS / "meanflow_compute.json"):
    print(markdown(json.loads(Path(path).read_text())))


CURVE_ITERS, CURVE_BEYOND = (0.1, 0.2, 0.4, 1, 2), (2, 4)  # cfm.py's segments (x the reference); MeanFlow's beyond
CURVE_MEANFLOW = {"digits-cond": (["--cfg-max", "2"], 1.25)}  # meanflow.py's flags and sampling scale; default ([], 1)


def curve_name(part, variant=None):
    """meanflow_curve_<part>.json, or meanflow_curve_<part>-<variant>.json for a variant's curve."""
    return f"meanflow_curve_{part}" + (f"-{variant.replace(', ', '-').replace(' ', '-')}" if variant else "") + ".json"


def curve(part, seeds, work, quick=False, variant=None):
    """Quality against cumulative training CPU seconds, cfm.py (Euler-100) and meanflow.py (1, 2 steps):
    meanflow.py's CURVE_MEANFLOW recipe for the part, or a one-phase variant's flags (sampled at w = 1)."""
    data_flags, ref_iters, n_eval = PARTS[part]
    cfm_iters = (2, 4) if quick else tuple(round(f * ref_iters) for f in CURVE_ITERS)
    n_eval = 50 if quick else n_eval
    mf_flags, w = (variant_flags(variant), 1.0) if variant else CURVE_MEANFLOW.get(part, ([], 1.0))
    base = data_flags + ["--log-every", "1000"] + QUICK_FLAGS * quick
    c_mf = cost_per_iter(meanflow, base + mf_flags, work, quick)
    path = (work if quick else RESULTS) / curve_name(part, variant)
    res = {"part": part, "variant": variant, "meanflow_flags": mf_flags, "cfg_scale": w, "cost_meanflow": c_mf, "rows": [],
           "machine": bench.machine()}
    for seed in seeds:
        s = ["--seed", str(seed)]
        out, cpu, marks = work / f"{path.stem}-s{seed}-cfm", 0.0, []
        for k, iters in enumerate(cfm_iters):
            _, c = run(cfm, base + s + ["--iters", str(iters), "--n-eval", "0", "--out", str(out)] + ["--resume"] * (k > 0))
            cpu += c
            marks.append(cpu)
            res["rows"].append(dict(method="cfm.py", nfe=100, point=k, iters=iters, train_cpu_s=cpu, seed=seed,
                                    **evaluate(cfm, out / "ckpt.pt", n_eval, seed, out, ["--solver", "euler", "--steps", "100"])))
            print(json.dumps(res["rows"][-1]), flush=True)
        out, cpu, done = work / f"{path.stem}-s{seed}-meanflow", 0.0, 0
        for k, budget in enumerate(marks + [f * marks[-1] for f in CURVE_BEYOND]):
            iters = max(done + 1, done + round((budget - cpu) / c_mf))  # the next segment reaches this budget
            iters = min(iters, done + 2 * cfm_iters[-1]) if quick else iters
            _, c = run(meanflow, base + mf_flags + s + ["--iters", str(iters), "--n-eval", "0", "--out", str(out)]
                       + ["--resume"] * (k > 0))
            cpu, done = cpu + c, iters
            for steps in (1, 2):
                res["rows"].append(dict(method="meanflow.py", nfe=steps, point=k, iters=iters, train_cpu_s=cpu, seed=seed,
                                        **evaluate(meanflow, out / "ckpt.pt", n_eval, seed, out,
                                                   ["--steps", str(steps), "--cfg-scale", str(w)])))
                print(json.dumps(res["rows"][-1]), flush=True)
        bench.write_json(path, res)  # after every seed
    return res


def meet(rows, part, nfe, factor):
    """Per seed: the first MeanFlow checkpoint (by CPU seconds) whose quality is within factor x cfm.py's at
    the reference's iterations, as its CPU seconds over cfm.py's there; else how far it is at its last."""
    found = []
    for seed in sorted({r["seed"] for r in rows}):
        ref = [r for r in rows if r["seed"] == seed and r["method"] == "cfm.py"]
        ref = next((r for r in ref if r["iters"] == PARTS[part][1]), ref[-1])
        mf = sorted((r for r in rows if r["seed"] == seed and r["method"] == "meanflow.py" and r["nfe"] == nfe),
                    key=lambda r: r["train_cpu_s"])
        hit = next((r for r in mf if r["value"] <= factor * ref["value"]), None)
        found.append(f"seed {seed}: " + (f"{hit['train_cpu_s'] / ref['train_cpu_s']:.2g}x ({hit['iters']} iterations)"
                                         if hit else f"not within {mf[-1]['train_cpu_s'] / ref['train_cpu_s']:.2g}x, "
                                         f"where it is at {mf[-1]['value'] / ref['value']:.2f}x"))
    return f"- MeanFlow {nfe} step{'s' * (nfe > 1)} within {factor}x of CFM-100: " + "; ".join(found)


def curve_label(res):
    """A curve's part and meanflow.py's recipe on it, in words."""
    flags = " ".join(res.get("meanflow_flags", [])) + (f", sampled at w {res['cfg_scale']:g}" if res.get("cfg_scale", 1) != 1 else "")
    return f"{res['variant']} ({flags})" if res.get("variant") else flags or "default"


def curve_markdown(curves):
    """Every curve in one table: a row per curve and method, a column per budget point (multiples of the
    reference's CPU seconds: the points' budgets by construction, their measured seconds in the json),
    the cell the mean +- sd over seeds; then, per curve and seed, where MeanFlow meets each target."""
    points = CURVE_ITERS + tuple(CURVE_ITERS[-1] * f for f in CURVE_BEYOND)
    out, meets, commands, memorised = [], [], [], []
    for res in curves:
        rows, part = res["rows"], res.get("part", "digits-uncond")
        recipe = curve_label(res)
        methods = ([("cfm.py", 100, "cfm.py, 100 Euler steps")] if not res.get("variant") else []) + [
            ("meanflow.py", nfe, f"meanflow.py {recipe}, {nfe} step{'s' * (nfe > 1)}") for nfe in (1, 2)]
        for method, nfe, label in methods:  # a variant's cfm.py runs repeat its part's own curve's
            at = lambda k: [r["value"] for r in rows if (r["method"], r["nfe"], r["point"]) == (method, nfe, k)]
            if any(at(k) for k in range(len(points))):
                out.append([f"{part}, {rows[0]['metric']}", label] + [ms(at(k)) if at(k) else "" for k in range(len(points))])
        meets += [meet(rows, part, nfe, TARGETS[nfe]).replace("- MeanFlow", f"- {part}, {recipe}:", 1) for nfe in (1, 2)
                  if any(r["method"] == "meanflow.py" and r["nfe"] == nfe for r in rows)]
        mem = [100 * r["memorised"] for r in rows if r.get("memorised") is not None]
        memorised += [f"{part} {span(mem)}"] if mem else []
        commands.append(f"{COMMAND} --curve --part {part}" + (f" --variants {res['variant']!r}" if res.get("variant") else ""))
    seeds = ", ".join(str(x) for x in sorted({r["seed"] for res in curves for r in res["rows"]}))
    what = (f"Quality (floor: as in the equal-compute tables), mean +- sd over seeds {seeds}, at budgets of x times the "
            f"reference's CPU seconds" + (f"; memorised: {', '.join(memorised)}" if memorised else ""))
    return "\n".join([bench.caption(curves[0].get("machine"), "; ".join(commands), what), "",
                      bench.table(["part", "method"] + [f"x {p:g}" for p in points], out, ["l", "l"] + ["r"] * len(points)),
                      ""] + meets) + "\n"


def curve_files(results=RESULTS):
    """Every curve's json (meanflow_curve_<part>[-<variant>].json), the parts in PARTS' order."""
    out = []
    for f in sorted(Path(results).glob("meanflow_curve_*.json")):
        res = json.loads(f.read_text())
        res.setdefault("part", f.stem.removeprefix("meanflow_curve_"))  # a file without its part is a part's own curve
        out.append(res)
    return sorted(out, key=lambda r: (list(PARTS).index(r["part"]), r.get("variant") or ""))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=list(PARTS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="default: all that the part can run")
    p.add_argument("--work", default="/tmp/meanflow-compute")
    p.add_argument("--table", action="store_true")
    p.add_argument("--curve", action="store_true", help="with --part: quality against training CPU seconds, both methods")
    p.add_argument("--curve-table", action="store_true", help="with --part: print results/meanflow_curve_<part>.json's table")
    p.add_argument("--quick", action="store_true", help="smoke test in seconds: 4 reference "
                   "iterations of narrow networks, 50 samples; the json goes to WORK, not "
                   "benchmarks/results/")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if (args.curve or args.curve_table) and not args.part:
        p.error("--curve and --curve-table need --part (digits-uncond, digits-cond or checkerboard)")
    unlabelled = bool(args.part) and "--uncond" in PARTS[args.part][0]
    if args.variants and unlabelled and LABELLED & set(args.variants):
        p.error(f"{', '.join(sorted(LABELLED & set(args.variants)))} need labels: run them with --part digits-cond")
    variants = args.variants or [v for v in VARIANTS if not (unlabelled and v in LABELLED)]
    one = args.variants[0] if args.variants else None  # a curve's MeanFlow: one one-phase variant, if given
    if (args.curve or args.curve_table) and args.variants and (len(args.variants) > 1 or isinstance(VARIANTS[one], tuple)):
        p.error("a curve takes one --variants name of one phase (not the 'FM first' ones), or none for the part's recipe")
    if args.curve:
        curve(args.part, args.seeds, Path(args.work), args.quick, one)
    elif args.part and not args.curve_table:
        run_part(args.part, args.seeds, Path(args.work), args.quick, tuple(variants))
    if args.table:
        table()
    if args.curve_table:
        print(curve_markdown([json.loads(((Path(args.work) if args.quick else RESULTS) / curve_name(args.part, one)).read_text())]))


if __name__ == "__main__":
    main()
