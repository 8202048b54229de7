"""The lectures' claims measured side by side: every model file trained under a fixed, stated budget
on a 2-D set and on digits, sampled with the samplers each claim is about, on several seeds, and
every claim decided by a paired comparison with its 95% bootstrap interval.

  for s in 0 1 2; do OMP_NUM_THREADS=1 python benchmarks/run_all.py --part 2d --seed $s; done      # ~25 min a seed
  for s in 0 1 2; do OMP_NUM_THREADS=1 python benchmarks/run_all.py --part digits --seed $s; done  # ~30 min a seed
  python benchmarks/run_all.py --analyse   # the paired bootstrap over the seeds' samples -> results/claims_<part>.json
  python benchmarks/report.py              # the tables and verdicts of benchmarks/README.md and README.md

Everything goes through the model files' own `main()`: train with `--n-eval 0`, then sample the
checkpoint with `--ckpt` and take the quality, the seconds and the samples from the dict `main()`
returns. Every sampler of a seed draws its starting noise from the same generator (`--seed`), so
the ODE samplers, DDIM and the one-step models start from the same noise, row for row (DDPM's
ancestral steps add noise of their own); all are scored against the same held-out set. Digits:
2000 samples against the 500 held-out digits, FD and KID in the feature classifier's space; 2-D:
5000 points against 5000 held-out points, W2 (exact), sliced W2 (16 directions) and the energy
distance (unbiased like KID: no small-sample floor, but a ratio of two near-zero figures is noise).

A claim is a ratio of two rows' figures: FD on digits, sliced W2 on 2-D (exact W2 at 5000 points
costs seconds per evaluation, too many for a bootstrap). Its interval is a paired bootstrap: each
replicate resamples the generated samples (the same indices for every row, so a noise is kept with
its noise) and the held-out items (the same for every row and seed), and recomputes every row's
figure (500 replicates on digits, 200 on 2-D); the claim's statistic is the mean over seeds of the
per-seed ratio, its interval benchmarks/stats.py's: the replicates' spread (the sampling and
held-out noise of these trained models) and the seeds' t interval (the spread over training
seeds), added in quadrature. Every row's figure on every replicate is kept in
results/claims_<part>.json, so that report.py recomputes the intervals from what is committed. A
claim holds (or does not) when its interval lies on one side of the target, else it is "within
noise". "The best model is close to real data"
compares the best row with the real-vs-real floor at the floor's n (FD of its first 500 samples on
digits; sliced W2 at 5000 points on 2-D).

Budgets: digits 2500 iterations (meanflow.py 900 and ar.py 1000: their defaults), batch 128, UNet
width 16; 2-D 3000 iterations, batch 512, MLP width 256; reflow 1000 and distillation 500
iterations; unconditional, one thread.
"""
import argparse
import math
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import bench  # noqa: F401 (puts the repository's root on the path)
import stats

import common  # noqa: E402

ROOT, RESULTS = bench.ROOT, bench.RESULTS
PARTS = {"2d": dict(data="checkerboard", n_gen=5000, n_test=5000, metric="sliced W2", replicates=200),
         "digits": dict(data="digits", n_gen=2000, n_test=500, metric="FD", replicates=500)}


def jobs(data):
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


# -----------------------------------------------------------------------------
# measuring: train, sample, keep every row's samples (as features) for the paired analysis

def run_main(module, argv):
    """`module.main(argv)` in this process: (the dict it returns, or {}, and its CPU seconds)."""
    cpu0 = time.process_time()
    q = __import__(module).main(argv)
    return q or {}, time.process_time() - cpu0


def run_part(part, seed, device, work, quick=False, only=None):
    cfg = PARTS[part]
    data = common.load_data(cfg["data"])
    n_gen = 100 if quick else cfg["n_gen"]
    out_json = (work if quick else RESULTS) / f"all_{part}_seed{seed}{'_quick' if quick else ''}.json"
    keep = work / f"seed{seed}" / f"{part}-samples.pt"  # every row's samples, for --analyse
    samples = torch.load(keep, weights_only=True) if keep.exists() and only else {}
    rows = [r for r in bench.read_json(out_json)["rows"] if r["run"] not in only] if only and out_json.exists() else []
    base = ["--data", cfg["data"], "--uncond", "--device", device, "--log-every", "500", "--seed", str(seed)]
    ckpts = {}
    for module, name, train_flags, samplers in jobs(cfg["data"]):
        folder = work / f"seed{seed}" / f"{part}-{name}"
        ckpts[name] = str(folder / "ckpt.pt")
        if only and name not in only:
            continue
        trained = {}
        if train_flags is not None:  # ddim samples ddpm's checkpoint: no training of its own
            short = (["--iters", "2", "--n-pairs", "100", "--pair-steps", "2"] if module == "rectified_flow" else
                     ["--iters", "2"]) if quick else []
            q, cpu = run_main(module, base + [f.format(**ckpts) for f in train_flags] + short
                              + ["--n-eval", "0", "--out", str(folder)])
            trained = dict(train_s=q.get("train_seconds"), train_cpu_s=q.get("train_cpu_seconds", cpu))
        ckpt = ckpts["ddpm"] if train_flags is None else ckpts[name]
        for label, sflags, nfe in samplers:
            q, _ = run_main(module, ["--ckpt", ckpt, "--device", device, "--n-eval", str(n_gen), "--seed", str(seed),
                                     "--out", str(folder)] + sflags)
            x = q.pop("samples")
            samples[label] = common.features(data, x) if data.is_image else x.double()
            row = dict(model=module, run=name, sampler=label, nfe=nfe, seed=seed, sample_s=q.get("sample_seconds"),
                       **trained, **{k: q[k] for k in ("metric", "value", "floor", "floor_sd", "floor_n", "n", "kid",
                                                         "kid_floor", "kid_floor_sd", "kid_scale", "memorised") if k in q})
            if not data.is_image:
                row["energy"] = energy_distance(x.double(), data.x_test[:cfg["n_test"]].double())
            if module in ("rectified_flow", "cfm") and nfe == 100:
                row["straightness"] = straightness(ckpt, cfg["data"], device)
            img = RESULTS / "img" / f"{part}-{re.sub('[^a-z0-9]+', '-', label.lower()).strip('-')}.png"
            grid = folder / f"samples-{module}.png"  # a folder with a checkpoint keeps its training grid
            if seed == 0 and not quick:  # the pictures: seed 0's
                img.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(grid if grid.exists() else folder / "samples.png", img)
            row["img"] = str(img.relative_to(ROOT))
            rows.append(row)
            keep.parent.mkdir(parents=True, exist_ok=True)
            common.atomic_save(samples, keep)
            bench.write_json(out_json, {"machine": bench.machine(device), "data": cfg["data"], "n_gen": n_gen,
                                        "n_test": cfg["n_test"], "seed": seed, "rows": rows})
            print({k: v for k, v in row.items() if k != "img"}, flush=True)
    return rows


def straightness(ckpt_path, data_name, device, paths=1000, chunks=20):
    """rectified_flow.straightness on `paths` Euler paths of 100 steps, as the means of `chunks`
    equal chunks of paths (their mean is the figure; the chunks are what the bootstrap resamples)."""
    import rectified_flow
    data = common.load_data(data_name)
    net = common.ema_net(common.load_checkpoint(ckpt_path, ("cfm", "rectified_flow")), data, time_scale=1000.0).to(device)
    noise = torch.randn((paths,) + data.shape, generator=torch.Generator().manual_seed(0)).to(device)
    return [float(rectified_flow.RectifiedFlow().straightness(net, z, steps=100)) for z in noise.chunk(chunks)]


# -----------------------------------------------------------------------------
# the paired bootstrap: every row's figure on the same resamples

def counts(index, n):
    """Resampled indices (B, m) as how often each of the n items was drawn (B, n), float64."""
    return torch.zeros(len(index), n, dtype=torch.float64).scatter_add_(1, index, torch.ones_like(index, dtype=torch.float64))


def weighted_moments(f, w):
    """Means (B, d) and covariances (B, d, d, ddof 1) of features f (n, d) under count weights w (B, n)."""
    m = w.sum(1, keepdim=True)
    mu = w @ f / m
    second = torch.einsum("bn,nd,ne->bde", w, f, f) / m[..., None]
    cov = (second - mu[:, :, None] * mu[:, None, :]) * (m / (m - 1))[..., None]
    return mu, cov


def fd_batch(f_gen, f_test, w_gen, w_test):
    """Frechet distance of each replicate (B,): ||mu1 - mu2||^2 + tr S1 + tr S2 - 2 tr (S1^1/2 S2 S1^1/2)^1/2."""
    mu1, s1 = weighted_moments(f_gen, w_gen)
    mu2, s2 = weighted_moments(f_test, w_test)
    e, v = torch.linalg.eigh(s1)
    root = v @ torch.diag_embed(e.clamp(min=0).sqrt()) @ v.transpose(1, 2)  # S1^1/2
    cross = torch.linalg.eigvalsh(root @ s2 @ root).clamp(min=0).sqrt().sum(1)
    return (mu1 - mu2).pow(2).sum(1) + s1.diagonal(dim1=1, dim2=2).sum(1) + s2.diagonal(dim1=1, dim2=2).sum(1) - 2 * cross


def mmd_batch(k_gg, k_tt, k_gt, w_gen, w_test):
    """The unbiased squared MMD of each replicate (B,), from the kernel matrices and count weights.
    Within a set only pairs of distinct items count: a resample's item drawn w_i times is paired with
    its copies w_i^2 times, so the sum is w^T K w - sum_i w_i^2 K_ii over m^2 - sum_i w_i^2 pairs
    (m (m - 1) for the sample itself: the usual U-statistic)."""
    def within(k, w):
        return (((w @ k) * w).sum(1) - w.pow(2) @ k.diagonal()) / (w.sum(1) ** 2 - w.pow(2).sum(1))
    return within(k_gg, w_gen) + within(k_tt, w_test) - 2 * ((w_gen @ k_gt) * w_test).sum(1) / (w_gen.sum(1) * w_test.sum(1))


def energy_distance(a, b):
    """The unbiased energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| between point sets (zero in
    expectation for equal distributions): the squared MMD of the kernel -|x - y|."""
    w_a, w_b = torch.ones(1, len(a), dtype=torch.float64), torch.ones(1, len(b), dtype=torch.float64)
    return float(mmd_batch(-torch.cdist(a, a), -torch.cdist(b, b), -torch.cdist(a, b), w_a, w_b)[0])


def sorted_projections(x, directions=16):
    """Points (..., n, 2) projected on `directions` fixed directions (angles pi k / directions) and
    sorted along each: (..., directions, n). The 1-D W2 between two equal-size sets matches them in order."""
    angle = torch.arange(directions, dtype=torch.float64) * math.pi / directions
    d = torch.stack([angle.cos(), angle.sin()])  # (2, directions)
    return (x.double() @ d).transpose(-1, -2).sort(-1).values


def sliced_w2(a, b, directions=16):
    """Sliced W2 between equal-size point sets (..., n, 2): the root mean square over the directions
    of the exact 1-D W2 of the projections."""
    return (sorted_projections(a, directions) - sorted_projections(b, directions)).pow(2).mean((-2, -1)).sqrt()


def replicate_figures(samples, test, is_image, index_gen, index_test, chunk=25):
    """{row: its figure on every replicate (1 + B,)}: FD of the features (images) or sliced W2 of the
    points (2-D); replicate 0 is the sample itself. Every row is scored on the same resamples."""
    out = {label: [] for label in samples}
    for ig, it in zip(index_gen.split(chunk), index_test.split(chunk)):
        if is_image:
            w_t = counts(it, len(test))
            for label, x in samples.items():
                out[label].append(fd_batch(x.double(), test, counts(ig, len(x)), w_t))
        else:
            t = sorted_projections(test[it])  # (chunk, directions, n), once for every row
            for label, x in samples.items():
                out[label].append((sorted_projections(x[ig]) - t).pow(2).mean((-2, -1)).sqrt())
    return {label: torch.cat(v) for label, v in out.items()}


def analyse(part, work, replicates=None, suffix="", results=None):
    """Read every seed's samples, run the paired bootstrap, write results/claims_<part><suffix>.json
    (under `results`, by default benchmarks/results)."""
    results = Path(results or RESULTS)
    cfg = PARTS[part]
    replicates = replicates or cfg["replicates"]
    data = common.load_data(cfg["data"])
    runs = [bench.read_json(f) for f in sorted(results.glob(f"all_{part}_seed[0-9]{suffix}.json"))]
    n_gen, n_test = runs[0]["n_gen"], min(runs[0]["n_gen"], cfg["n_test"]) if not data.is_image else cfg["n_test"]
    test = common.features(data, data.x_test[:n_test]) if data.is_image else data.x_test[:n_test]
    test = test.double()
    g = torch.Generator().manual_seed(0)
    index_gen = torch.cat([torch.arange(n_gen)[None], torch.randint(n_gen, (replicates, n_gen), generator=g)])
    index_test = torch.cat([torch.arange(n_test)[None], torch.randint(n_test, (replicates, n_test), generator=g)])
    index_chunk = torch.cat([torch.arange(20)[None], torch.randint(20, (replicates, 20), generator=g)])
    floor = figure_floor(data, test)
    out_json = results / f"claims_{part}{suffix}.json"
    previous = bench.read_json(out_json) if out_json.exists() else {}
    rows, figure, best = {}, {}, {}  # per seed: what the intervals need (kept), the figures, the best row
    for run in runs:
        seed, key = run["seed"], str(run["seed"])
        keep = work / f"seed{seed}" / f"{part}-samples.pt"
        if not keep.exists():  # a seed measured elsewhere: its kept rows as the last analysis left them
            if key not in previous.get("rows", {}):
                raise SystemExit(f"seed {seed}: no samples at {keep} and no kept rows in {out_json}: "
                                 f"measure it (--part {part} --seed {seed})")
            rows[key], figure[key], best[key] = (previous[k][key] for k in ("rows", "figure", "best"))
            print(f"seed {seed}: kept rows of {out_json.name}", flush=True)
            continue
        samples = torch.load(keep, weights_only=True)
        figs = replicate_figures(samples, test, data.is_image, index_gen, index_test)
        best[key] = min(figs, key=lambda label: float(figs[label][0]))
        if data.is_image:  # FD depends on n: the best row's first 500 samples against the floor's 500
            n = min(500, n_gen)
            f500 = fd_batch(samples[best[key]][:n].double(), test, counts(index_gen[:, :n] % n, n),
                            counts(index_test, n_test))
            vs_floor = f500 / floor["mean"]
        else:
            vs_floor = figs[best[key]] / floor["mean"]
        rows[key] = kept_rows(figs)
        rows[key].update({f"straightness: {r['run']}": stats.compact(
            torch.tensor(r["straightness"], dtype=torch.float64)[index_chunk].mean(1))
            for r in run["rows"] if "straightness" in r})
        rows[key][BEST] = stats.compact(vs_floor)
        figure[key] = {label: float(f[0]) for label, f in figs.items()}
        print(f"seed {seed}: analysed {len(figs)} rows", flush=True)
    out = dict(part=part, data=cfg["data"], metric=cfg["metric"], n_gen=n_gen, n_test=n_test, replicates=replicates,
               seeds=sorted(run["seed"] for run in runs), best=best, figure=figure, floor=floor, rows=rows,
               machine=bench.machine(), command=f"python benchmarks/run_all.py --analyse --part {part}")
    out["claims"] = claims_of(out)
    bench.write_json(out_json, out)


def claims_of(analysed):
    """Every claim of CLAIMS decided (benchmarks/stats.py) from an analysis's kept rows: per seed, each
    row's figure on every replicate (or its figure alone, for runs whose replicates were not kept)."""
    specs = [(text, num, den, threshold, sense) for text, _, num, den, threshold, sense in CLAIMS]
    targets = {text: target for text, target, *_ in CLAIMS}
    return [dict(c, target=targets[c["claim"]]) for c in stats.decide_rows(specs, analysed["rows"])]


def kept_rows(figs):
    """{row: its figures on every replicate} as a results file keeps them (stats.compact)."""
    return {label: stats.compact(f) for label, f in figs.items()}


def figure_floor(data, test, draws=20):
    """The claims' figure between real training examples and the held-out set, mean and sd over
    draws: FD of 500 training digits (FD depends on n: the floor at the n it was computed with), or
    sliced W2 of as many training points as held-out ones."""
    g = torch.Generator().manual_seed(1)
    if data.is_image:
        f_train = common.features(data, data.x_train).double()
        n = min(500, len(test))
        v = [common.frechet_distance(f_train[torch.randperm(len(f_train), generator=g)[:n]], test[:n]) for _ in range(draws)]
    else:
        v = [float(sliced_w2(data.x_train[torch.randperm(len(data.x_train), generator=g)[:len(test)]], test))
             for _ in range(draws)]
        n = len(test)
    return dict(mean=float(np.mean(v)), sd=float(np.std(v, ddof=1)), n=n, draws=draws)


BEST = "best row's figure / floor"  # FD of its first 500 samples on digits, sliced W2 on 2-D
# each claim: (text, target, numerator row, denominator row, threshold, sense)
CLAIMS = [
    ("DDIM with 50 steps matches DDPM's 1000", "DDIM-50 / DDPM-1000 <= 1.2", "DDIM eta=0, 50 steps", "DDPM ancestral", 1.2, "<="),
    ("flow matching needs far fewer steps than DDPM", "CFM Euler-100 / DDPM-1000 <= 1.2", "CFM euler x 100",
     "DDPM ancestral", 1.2, "<="),
    ("one-step 2-RF beats one-step 1-RF", "2-RF-1 / 1-RF-1 < 1", "2-RF, 1 step", "1-RF, 1 step", 1.0, "<"),
    ("distillation improves one-step 2-RF", "distilled-1 / 2-RF-1 < 1", "2-RF + distill, 1 step", "2-RF, 1 step", 1.0, "<"),
    ("2-RF + distill at one step >= 10x better than 1-RF at one step", "1-RF-1 / distilled-1 >= 10", "1-RF, 1 step",
     "2-RF + distill, 1 step", 10.0, ">="),
    ("MeanFlow's one step is close to multi-step flow matching", "MeanFlow-1 / CFM Euler-100 <= 1.5", "MeanFlow, 1 step",
     "CFM euler x 100", 1.5, "<="),
    ("OT coupling straightens paths", "straightness OT / independent < 1", "straightness: cfm-ot",
     "straightness: cfm", 1.0, "<"),
    ("CFM RK4 at 20 NFE matches Euler at 1000", "RK4-5 / Euler-1000 <= 1.1", "CFM rk4 x 5", "CFM euler x 1000", 1.1, "<="),
    ("the best model is close to real data", "best row / floor <= 2", BEST, None, 2.0, "<="),
]


# -----------------------------------------------------------------------------
# markdown for report.py: the rows (mean +- sd over seeds), the claims with their intervals, the pictures

def mean_sd(values, scale=1.0, digits=3):
    v = [x * scale for x in values if x is not None]
    if len(v) < 2:
        return f"{v[0]:.{digits}g}" if v else ""
    return f"{statistics.mean(v):.{digits}g} +- {statistics.stdev(v):.2g}"


def load(part):
    files = sorted(RESULTS.glob(f"all_{part}_seed[0-9].json"))
    claims = RESULTS / f"claims_{part}.json"
    if not claims.exists():
        return [bench.read_json(f) for f in files], None
    analysed = bench.read_json(claims)
    return [bench.read_json(f) for f in files], dict(analysed, claims=claims_of(analysed))  # recomputed


def rows_table(part, runs, claims=None):
    data = PARTS[part]["data"]
    order = [j[1] for j in jobs(data)]
    by_key = {}
    for run in runs:
        for r in run["rows"]:
            by_key.setdefault((r["run"], r["sampler"]), []).append(r)
    keys = sorted(by_key, key=lambda k: order.index(k[0]))
    first = runs[0]["rows"][0]
    image = data == "digits"
    head = ["model", "sampler", "NFE", f"FD (n={runs[0]['n_gen']})" if image else f"W2 (n={runs[0]['n_gen']})",
            stats.kid_name([r for run in runs for r in run["rows"]]) if image else "energy distance x 1e3",
            "straightness", "train CPU s"]
    if image:
        head.insert(5, "memorised %")
    elif claims:  # the claims' figure, from --analyse
        head.insert(4, f"sliced W2 (n={claims['n_gen']})")
    rows = []
    for k in keys:
        rs = by_key[k]
        cells = [f"{rs[0]['model']}.py", k[1], rs[0]["nfe"], mean_sd([r["value"] for r in rs]),
                 mean_sd([r.get("kid") for r in rs], 1, 2) if image else mean_sd([r.get("energy") for r in rs], 1e3, 2)]
        if image:
            cells.append(mean_sd([r.get("memorised") for r in rs], 100, 2))
        elif claims:
            cells.insert(4, mean_sd([claims["figure"].get(str(r["seed"]), {}).get(k[1]) for r in rs]))
        cells += [mean_sd([statistics.mean(r["straightness"]) if r.get("straightness") else None for r in rs]),
                  mean_sd([r.get("train_cpu_s") for r in rs])]
        rows.append(cells)
    floor = (f"floor (real vs real, {first['floor_n']} training vs {first['floor_n']} held-out, mean +- sd over 20 draws): "
             f"{first['metric']} {first['floor']:.3g} +- {first['floor_sd']:.2g}")
    if image:
        floor += f", {stats.kid_name([first])} {first['kid_floor']:.2g} +- {first['kid_floor_sd']:.2g}"
    elif claims:
        floor += f", sliced W2 {claims['floor']['mean']:.3g} +- {claims['floor']['sd']:.2g}"
    return bench.table(head, rows, ["l", "l"] + ["r"] * (len(head) - 2)), floor


def fmt_claim(c):
    return [c["claim"], c["target"], f"**{c['verdict']}**", f"{c['estimate']:.3g}", stats.fmt_interval(c),
            f"{(c['hi'] - c['lo']) / 2:.2g}", stats.fmt_seeds(c)]


def claims_block(claims):
    head = ["claim of the lectures", "target", "verdict", "ratio", "95% interval", "half-width", "per seed"]
    return bench.table(head, [fmt_claim(c) for c in claims["claims"]], ["l", "l", "l", "r", "r", "r", "l"])


PICTURES = ("DDPM ancestral", "DDIM eta=0, 50 steps", "CFM midpoint x 10", "1-RF, 1 step", "2-RF + distill, 1 step",
            "MeanFlow, 1 step", "VAE decoder", "AR raster, KV cache")


def markdown():
    """The side-by-side section of benchmarks/README.md, from the results files."""
    out = []
    for part in ("digits", "2d"):
        runs, claims = load(part)
        if not runs:
            continue
        cfg = PARTS[part]
        table, floor = rows_table(part, runs, claims)
        seeds = ", ".join(str(r["seed"]) for r in runs)
        first = min(runs, key=lambda r: r["seed"])
        pics = [r for r in first["rows"] if r["sampler"] in PICTURES]
        out += [f"#### {cfg['data']}: {runs[0]['n_gen']} samples against {runs[0]['n_test']} held-out, "
                f"mean +- sd over seeds {seeds}", "",
                f"Machine: {bench.describe(runs[0]['machine'])}. Command: `for s in 0 1 2; do OMP_NUM_THREADS=1 python "
                f"benchmarks/run_all.py --part {part} --seed $s; done`.", "", table, "", floor + ".", ""]
        if claims:
            widest = max(claims["claims"], key=lambda c: c["hi"] - c["lo"])
            kept = max(c["replicates"] for c in claims["claims"])
            out += [f"Claims on {cfg['data']}: ratios of {claims['metric']}, the mean over seeds "
                    f"{', '.join(map(str, claims['seeds']))} of each seed's ratio, with its 95% interval "
                    f"(benchmarks/stats.py; `{claims['command']}`; "
                    + (f"{kept} paired replicates a seed kept" if kept else
                       "these runs kept no replicates: the seeds' part alone")
                    + f"). Widest interval: +-{(widest['hi'] - widest['lo']) / 2:.2g} ({widest['claim']}).", "",
                    claims_block(claims), ""]
        out += [" ".join(f"![{r['sampler']}]({Path(r['img']).relative_to('benchmarks')})" for r in pics), "",
                f"Samples of seed {first['seed']}, left to right: " + "; ".join(r["sampler"] for r in pics)
                + (" (each: held-out points on the left, the model's on the right)." if part == "2d" else
                   " (the first 100 of each)."), ""]
    return "\n".join(out)


def claims_table():
    """README.md's claims table: every claim on both parts, with its interval."""
    head = ["claim of the lectures", "target", "digits (FD ratio, 95% interval)", "checkerboard (sliced-W2 ratio, 95% interval)"]
    parts = {p: load(p)[1] for p in ("digits", "2d")}
    rows = []
    for text, target, *_ in CLAIMS:
        cells = [text, target]
        for p in ("digits", "2d"):
            c = next((c for c in (parts[p] or {}).get("claims", []) if c["claim"] == text), None)
            cells.append(f"{c['verdict']}: {c['estimate']:.3g} ({stats.fmt_interval(c)})" if c else "not measured")
        rows.append(cells)
    return bench.table(head, rows, ["l", "l", "l", "l"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=list(PARTS), help="which half to run (or to analyse: both if not given)")
    p.add_argument("--seed", type=int, default=0, help="one seed per run; --analyse reads every seed's samples")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--work", default=str(ROOT / "benchmarks" / "work"), help="checkpoints and samples go here")
    p.add_argument("--analyse", action="store_true", help="the paired bootstrap over every seed's samples")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 iterations each, 100 samples")
    p.add_argument("--only", default=None, help="comma-separated runs (e.g. vae,ar) to (re)run, keeping the others' rows")
    args = p.parse_args(argv)
    work = Path(args.work) / ("quick" if args.quick else "")
    if args.analyse:
        for part in [args.part] if args.part else list(PARTS):
            analyse(part, work, replicates=20 if args.quick else None, suffix="_quick" if args.quick else "",
                    results=work if args.quick else None)
    elif args.part:
        run_part(args.part, args.seed, args.device, work, args.quick, args.only.split(",") if args.only else None)
    else:
        p.error("give --part (to measure) or --analyse")


if __name__ == "__main__":
    main()
