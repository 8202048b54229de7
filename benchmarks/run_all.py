"""The seeds' claims measured side by side: every model file trained under a fixed, stated budget
on a 2-D set and on digits, sampled with the samplers each claim is about, on several seeds.

  for s in 0 1 2; do python benchmarks/run_all.py --part 2d --seed $s; done      # ~10 min a seed, one core
  for s in 0 1 2; do python benchmarks/run_all.py --part digits --seed $s; done  # ~30 min a seed, one core
  python benchmarks/run_all.py --readme   # the tables (mean +- sd over seeds), the claims' verdicts, the pictures

Each run writes benchmarks/results/all_<part>_seed<s>.json (and, for seed 0, pictures in
benchmarks/results/img/) as it goes; --readme reads every seed's file. Everything goes through the
model files' own command lines: train with `--n-eval 0` (its CPU time is recorded), then sample the
checkpoint with `--ckpt` and read the quality figure the file prints. A claim's verdict follows
issue 14's rule: its statistic's mean +- sd over seeds wholly on one side of the target, else
"within noise". Likelihoods are not measured here: benchmarks/likelihood.py puts them on one footing.
Budgets: digits 2500 iterations (meanflow.py 800, ar.py 1000: their defaults), batch 128, UNet
width 16; 2-D 3000 iterations, batch 512, MLP width 256; reflow 1000 and distillation 500
iterations; unconditional.
"""
import argparse
import contextlib
import io
import json
import platform
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import common  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DATA_2D = "checkerboard"


def jobs(data, n_eval):
    """(model file, run name, training flags, [(row label, sampler flags, NFE)])."""
    two_d = data != "digits"
    it = [] if two_d else ["--iters", "2500"]  # the measured budget on digits (the command lines' default is 2000)
    rf_pairs = ["--n-pairs", "10000" if two_d else "3000", "--pair-steps", "100" if two_d else "50"]
    return [
        ("ddpm", "ddpm", it, [("DDPM ancestral", [], 1000)]),
        ("ddim", "ddim", None, [(f"DDIM eta=0, {s} steps", ["--steps", str(s), "--eta", "0"], s) for s in (10, 20, 50)]
         + [("DDIM eta=1, 50 steps", ["--steps", "50", "--eta", "1"], 50)]),
        ("cfm", "cfm", it, [(f"CFM {m} x {s}", ["--solver", m, "--steps", str(s)], s * k)
                            for m, s, k in (("euler", 1, 1), ("euler", 10, 1), ("euler", 100, 1), ("euler", 1000, 1),
                                            ("midpoint", 10, 2), ("rk4", 5, 4))]),
        ("cfm", "cfm-ot", it + ["--coupling", "ot"], [(f"CFM-OT {m} x {s}", ["--solver", m, "--steps", str(s)], s * k)
                                                 for m, s, k in (("euler", 1, 1), ("euler", 10, 1), ("euler", 100, 1))]),
        ("rectified_flow", "rf1", it, [("1-RF, 1 step", ["--steps", "1"], 1), ("1-RF, 100 steps", ["--steps", "100"], 100)]),
        ("rectified_flow", "rf2", ["--reflow-from", "{rf1}", "--iters", "1000"] + rf_pairs,
         [("2-RF, 1 step", ["--steps", "1"], 1), ("2-RF, 100 steps", ["--steps", "100"], 100)]),
        ("rectified_flow", "rf2-distill", ["--distill-from", "{rf2}", "--iters", "500"] + rf_pairs,
         [("2-RF + distill, 1 step", ["--steps", "1"], 1)]),
        ("meanflow", "meanflow", [], [("MeanFlow, 1 step", ["--steps", "1"], 1), ("MeanFlow, 2 steps", ["--steps", "2"], 2)]),
        ("vae", "vae", it, [("VAE decoder", [], 1)]),
    ] + ([] if two_d else [
        ("ar", "ar", [], [("AR raster, KV cache", [], 64)]),
        ("ar", "ar-random", ["--order", "random"], [("AR random order, KV cache", [], 64)]),
    ])


def run_cli(module, argv):
    """Run `module.main(argv)`, returning (its result, its printed output, seconds)."""
    mod = __import__(module)
    buf = io.StringIO()
    t0 = time.time()
    with contextlib.redirect_stdout(buf):
        q = mod.main(argv)
    sys.stdout.write(buf.getvalue()[-2000:])
    return q, buf.getvalue(), time.time() - t0


def run_part(part, device, work, quick=False, only=None, resample=False, seed=0):
    data = DATA_2D if part == "2d" else "digits"
    n_eval = (1000 if part == "2d" else 500) if not quick else 100
    out_json = RESULTS / f"all_{part}_seed{seed}{'_quick' if quick else ''}{'_' + '_'.join(only) if only else ''}.json"
    (RESULTS / "img").mkdir(parents=True, exist_ok=True)
    rows, ckpts = [], {}
    previous = json.loads(out_json.read_text())["rows"] if resample else None
    machine = (f"{platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}"
               + (f", {torch.cuda.get_device_name()}" if device == "cuda" else ", CPU"))
    base = ["--data", data, "--uncond", "--device", device, "--log-every", "500", "--seed", str(seed)]
    for job in jobs(data, n_eval):
        if only and job[1] not in only:
            continue
        try:
            run_job(part, job, base, device, n_eval, work / f"seed{seed}", ckpts, rows, quick, previous, seed)
        except (Exception, SystemExit) as e:  # one failing model must not lose the others' rows
            print(f"FAILED {job[1]}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        out_json.write_text(json.dumps({"machine": machine, "data": data, "n_eval": n_eval, "seed": seed,
                                        "rows": rows}, indent=1))
    return rows


def run_job(part, job, base, device, n_eval, work, ckpts, rows, quick=False, resample=None, seed=0):
    module, name, train_flags, samplers = job
    folder = work / f"{part}-{name}"
    t_train = None
    cpu0 = time.process_time()
    cpu_train = None
    if train_flags is None:  # ddim: samples the ddpm checkpoint, no training of its own
        ckpt = ckpts["ddpm"]
    elif resample is not None and (folder / "ckpt.pt").exists():  # keep the trained model and its timing
        ckpt = folder / "ckpt.pt"
        ckpts[name] = str(ckpt)
        t_train, cpu_train = next((r["train_s"], r.get("train_cpu_s")) for r in resample if r["run"] == name)
    else:
        flags = [f.format(**ckpts) for f in train_flags] + (["--iters", "20", "--n-pairs", "600", "--pair-steps", "4"]
                                                            if quick and module == "rectified_flow" else
                                                            ["--iters", "20"] if quick else [])
        _, _, t_train = run_cli(module, base + flags + ["--n-eval", "0", "--out", str(folder)])
        ckpt = folder / "ckpt.pt"
        ckpts[name] = str(ckpt)
        cpu_train = time.process_time() - cpu0
    for label, sflags, nfe in samplers:
        q, text, _ = run_cli(module, ["--ckpt", str(ckpt), "--device", device, "--n-eval", str(n_eval),
                                      "--seed", str(seed), "--out", str(folder)] + sflags)
        row = dict(model=module, run=name, sampler=label, nfe=nfe, metric=q["metric"], value=q["value"],
                   floor=q["floor"], floor_sd=q.get("floor_sd"), train_s=t_train, train_cpu_s=cpu_train,
                   sample_s=q["sample_seconds"], seed=seed)
        if module in ("rectified_flow", "cfm") and nfe == 100:
            row["straightness"] = straightness(ckpt, base[1], device)
        img = RESULTS / "img" / f"{part}-{re.sub('[^a-z0-9]+', '-', label.lower()).strip('-')}.png"
        grid = folder / f"samples-{module}.png"  # a folder with a checkpoint keeps its training grid
        if seed == 0 and not quick:  # the pictures: seed 0's
            shutil.copy(grid if grid.exists() else folder / "samples.png", img)
        row["img"] = str(img.relative_to(ROOT))
        rows.append(row)
        print(json.dumps(row), flush=True)


def straightness(ckpt_path, data_name, device):
    """E int ||(x1 - x0) - v(x_t, t)||^2 dt along the flow's own paths (rectified_flow.straightness)."""
    import rectified_flow
    data = common.load_data(data_name)
    net = common.ema_net(common.load_checkpoint(ckpt_path, ("cfm", "rectified_flow")), data, time_scale=1000.0).to(device)
    noise = torch.randn((1000,) + data.shape, generator=torch.Generator().manual_seed(0)).to(device)
    return float(rectified_flow.RectifiedFlow().straightness(net, noise, steps=100))


# -----------------------------------------------------------------------------
# README: the table, the claims with their targets, the pictures

def mean_sd(values):
    """'m +- s (n)' over seeds; one value alone is printed as it is."""
    v = [x for x in values if x is not None]
    if len(v) < 2:
        return f"{v[0]:.3g}" if v else ""
    return f"{statistics.mean(v):.3g} +- {statistics.stdev(v):.2g}"


# each claim: (text, target, (value, threshold, sense) on one seed's rows by sampler, or None where absent)
def _ratio(q, a, b):
    return q[a] / q[b] if a in q and b in q else None


CLAIMS = [
    ("DDIM with 50 steps matches DDPM's 1000", "DDIM-50 / DDPM-1000 <= 1.2",
     lambda q, s, floor: _ratio(q, "DDIM eta=0, 50 steps", "DDPM ancestral"), 1.2, "<="),
    ("flow matching needs far fewer steps than DDPM", "CFM Euler-100 / DDPM-1000 <= 1.2",
     lambda q, s, floor: _ratio(q, "CFM euler x 100", "DDPM ancestral"), 1.2, "<="),
    ("one-step 2-RF beats one-step 1-RF", "2-RF-1 / 1-RF-1 < 1",
     lambda q, s, floor: _ratio(q, "2-RF, 1 step", "1-RF, 1 step"), 1.0, "<"),
    ("distillation improves one-step 2-RF", "distilled-1 / 2-RF-1 < 1",
     lambda q, s, floor: _ratio(q, "2-RF + distill, 1 step", "2-RF, 1 step"), 1.0, "<"),
    ("2-RF + distill at one step >= 10x better than 1-RF at one step", "1-RF-1 / distilled-1 >= 10",
     lambda q, s, floor: _ratio(q, "1-RF, 1 step", "2-RF + distill, 1 step"), 10.0, ">="),
    ("MeanFlow's one step is close to multi-step flow matching", "MeanFlow-1 / CFM Euler-100 <= 1.5",
     lambda q, s, floor: _ratio(q, "MeanFlow, 1 step", "CFM euler x 100"), 1.5, "<="),
    ("OT coupling straightens paths", "straightness OT / independent < 1",
     lambda q, s, floor: s["cfm-ot"] / s["cfm"] if "cfm" in s and "cfm-ot" in s else None, 1.0, "<"),
    ("CFM RK4 at 20 NFE matches Euler at 1000", "RK4-5 / Euler-1000 <= 1.1",
     lambda q, s, floor: _ratio(q, "CFM rk4 x 5", "CFM euler x 1000"), 1.1, "<="),
    ("the best model is close to real data", "best row / floor <= 2",
     lambda q, s, floor: min(q.values()) / floor, 2.0, "<="),
]


def verdict(values, threshold, sense):
    """The issue's rule: mean +- sd over seeds wholly on one side of the target, else "within noise"."""
    ok = {"<=": lambda v: v <= threshold, "<": lambda v: v < threshold, ">=": lambda v: v >= threshold}[sense]
    if len(values) < 2:
        return ("holds" if ok(values[0]) else "does not hold") + " (one seed)"
    m, sd = statistics.mean(values), statistics.stdev(values)
    if ok(m - sd) and ok(m + sd):
        return "holds"
    if not ok(m - sd) and not ok(m + sd):
        return "does not hold"
    return "within noise"


def claims(rows_by_seed, floor):
    out = []
    for text, target, stat, threshold, sense in CLAIMS:
        values = []
        for rows in rows_by_seed:
            q = {r["sampler"]: r["value"] for r in rows}
            s = {r["run"]: r["straightness"] for r in rows if r.get("straightness") is not None}
            v = stat(q, s, floor)
            if v is not None:
                values.append(v)
        if values:
            out.append(f"| {text} | {target} | {verdict(values, threshold, sense)} | {mean_sd(values)} "
                       f"(seeds: {', '.join(f'{v:.3g}' for v in values)}) |")
    return out


NOTES = """How to read these tables. Every model is unconditional and trained with one thread, under the
budgets in benchmarks/run_all.py's docstring, once per seed (the seed sets the weights' initialisation,
the batches, the training noise and the sampling noise); each quality cell is the mean +- sd over the
seeds of one figure on n samples against the same held-out set. The floor is real against real: the
mean +- sd of 20 draws of training examples against that held-out set, so the sd of a single figure
is at least about the floor's. A claim holds (or does not) when the mean +- sd over seeds of its
statistic lies wholly on one side of its target, and is "within noise" when that interval straddles
it. "train CPU s" is the training process's own CPU time (the seeds ran two at a time on the
2 cores, so wall-clock sampling times are not shown). Straightness is rectified_flow.straightness on
1000 paths of 100 Euler steps. W2 on 1000 2-D points cannot resolve differences below its floor.
Likelihoods are in the likelihood table above, on their own footing. The MeanFlow rows were measured
with meanflow.py's earlier defaults (the paper's tangent, 800 iterations); its recipes are compared
at equal training compute in the MeanFlow section above (benchmarks/meanflow_compute.py)."""


def readme():
    parts = []
    for part in ("2d", "digits"):
        files = [f for f in sorted(RESULTS.glob(f"all_{part}_seed*.json")) if "quick" not in f.name]
        if not files:
            continue
        runs = [json.loads(f.read_text()) for f in files]
        res = runs[0]
        order = [j[1] for j in jobs(res["data"], res["n_eval"])]
        by_seed = {}
        for r in runs:
            by_seed.setdefault(r["seed"], {}).update({(x["run"], x["sampler"]): x for x in r["rows"]})
        seeds = sorted(by_seed)
        rows_by_seed = [list(by_seed[s].values()) for s in seeds]
        keys = list(dict.fromkeys(k for s in seeds for k in by_seed[s]))  # in the order the runs wrote them
        keys.sort(key=lambda k: order.index(k[0]))
        first = rows_by_seed[0][0]
        floor, floor_sd = first["floor"], first.get("floor_sd") or 0.0
        metric = first["metric"]
        lines = [f"#### {res['data']}: {metric} of {res['n_eval']} samples, mean +- sd over seeds "
                 f"{', '.join(map(str, seeds))}; floor {floor:.3g} +- {floor_sd:.2g} (real vs real); {res['machine']}", "",
                 f"| model | sampler | NFE | {metric} | straightness | train CPU s |", "|---|---|---:|---|---:|---:|"]
        for k in keys:
            rs = [by_seed[s][k] for s in seeds if k in by_seed[s]]
            lines.append(f"| {rs[0]['model']}.py | {k[1]} | {rs[0]['nfe']} | {mean_sd([r['value'] for r in rs])} | "
                         f"{mean_sd([r.get('straightness') for r in rs])} | "
                         f"{mean_sd([r.get('train_cpu_s') for r in rs]) if rs[0].get('train_cpu_s') else ''} |")
        lines += ["", "| claim of the seeds | target | verdict | measured: mean +- sd over seeds |", "|---|---|---|---|"]
        lines += claims(rows_by_seed, floor)
        pics = [by_seed[seeds[0]][k] for k in keys if k[1] in (
            "DDPM ancestral", "DDIM eta=0, 50 steps", "CFM midpoint x 10", "2-RF + distill, 1 step", "MeanFlow, 1 step",
            "VAE decoder", "AR raster, KV cache", "1-RF, 1 step")]
        lines += ["", " ".join(f"![{r['sampler']}]({Path(r['img']).relative_to('benchmarks')})" for r in pics), "",
                  f"Pictures (seed {seeds[0]}), left to right: " + "; ".join(r["sampler"] for r in pics)
                  + (" (each: held-out points on the left, the model's on the right)." if part == "2d" else
                     " (100 samples each).")]
        parts.append("\n".join(lines))
    parts.append(NOTES)
    text = (ROOT / "benchmarks" / "README.md").read_text()
    start, end = "<!-- benchmark:start -->", "<!-- benchmark:end -->"
    if start not in text:
        raise SystemExit("benchmarks/README.md has no <!-- benchmark:start --> marker")
    head, rest = text.split(start)
    (ROOT / "benchmarks" / "README.md").write_text(head + start + "\n" + "\n\n".join(parts) + "\n" + end + rest.split(end)[1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=["2d", "digits"], help="which half to run")
    p.add_argument("--seed", type=int, default=0, help="one seed per run; --readme reads every seed's file")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--work", default=str(ROOT / "benchmarks" / "work"), help="checkpoints go here")
    p.add_argument("--readme", action="store_true", help="write the results into benchmarks/README.md")
    p.add_argument("--quick", action="store_true", help="smoke test: 20 iterations each, 100 samples")
    p.add_argument("--resample", action="store_true", help="sample the trained checkpoints again (no training)")
    p.add_argument("--only", default=None, help="comma-separated runs (e.g. vae,ar) to run in a second process")
    args = p.parse_args(argv)
    if args.part:
        run_part(args.part, args.device, Path(args.work) / ("quick" if args.quick else ""), args.quick,
                 args.only.split(",") if args.only else None, args.resample, args.seed)
    if args.readme:
        readme()


if __name__ == "__main__":
    main()
