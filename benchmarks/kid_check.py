"""Does KID separate what FD separates at n = 2000? A paired check on two rows of one model.

The rows: cfm.py (unconditional, digits, the default UNet, half its default budget: 1000
iterations) sampled with Euler x 100 and with Euler x 10 and x 2 steps from the same starting
noise, 2000 samples each, against the 500 held-out digits; 3 training seeds. Compared pairs:
Euler x 10 against Euler x 100 (a close pair) and Euler x 2 against Euler x 100 (far apart).
Metrics (common.quality's): FD on the feature classifier's features, KID x 1e3 on those
features standardised with the training split's mean and sd, and beside them the KID of the raw
features (the definition before standardisation), so the two KIDs can be read side by side.

The paired bootstrap, per seed: replicate 0 is the sample itself; each of the other R replicates
draws 2000 of the generated positions and 500 of the held-out digits with replacement, the same
positions for every row (position i of each row starts from the same noise) and the same held-out
digits. Each metric is recomputed on every replicate from count weights: FD from the weighted
means and covariances, KID as the U-statistic over pairs of distinct items (a digit drawn twice is
not paired with itself, so a replicate's KID is not biased upwards). A pair's difference is
(worse row - better row) per replicate; its interval is benchmarks/stats.py's (the replicates'
central 95% about their median, moved onto the estimate). Pooled over the seeds: the mean of the
per-seed differences with stats.py's interval (those replicates' spread and the seeds' t
interval in quadrature), and the t interval over the seeds' estimates alone beside it. A metric "separates" a pair where the interval lies on one side of zero.

Every row's replicate figures are kept in the json (6 significant digits; about 70 kB), so
every interval here is recomputed from it (`analyse`, which `markdown` calls).

Run (one thread; under 10 CPU minutes):
  OMP_NUM_THREADS=1 python benchmarks/kid_check.py          # benchmarks/results/kid_check.json
  OMP_NUM_THREADS=1 python benchmarks/kid_check.py --quick  # a smoke test: WORK/kid_check.json
"""
import argparse
import json
import os
import re
import time
from pathlib import Path

import bench
import numpy as np
import stats
import torch

import cfm  # the model files: bench puts the repository's root on sys.path
import common

COMMAND = "OMP_NUM_THREADS=1 python benchmarks/kid_check.py"
FULL = dict(iters=1000, n=2000, seeds=[0, 1, 2], reps=300, steps=[100, 10, 2], extra=[])
QUICK = dict(iters=20, n=200, seeds=[0, 1], reps=40, steps=[4, 2, 1],
             extra=["--width", "8", "--batch-size", "32"])
METRICS = {"fd": "FD", "kid": "KID x 1e3", "kid_raw": "KID, raw features"}


# -----------------------------------------------------------------------------
# the metrics of every replicate, from count weights

def counts(index, n):
    """Resampled positions (B, m) as how often each of n items was drawn (B, n), float64."""
    w = torch.zeros(len(index), n, dtype=torch.float64)
    return w.scatter_add_(1, index, torch.ones_like(index, dtype=torch.float64))


def resamples(n, reps, generator):
    """Replicate 0 (every item once), then reps draws of n positions with replacement:
    (reps + 1, n)."""
    return torch.cat([torch.arange(n)[None], torch.randint(n, (reps, n), generator=generator)])


def moments(f, w):
    """Weighted means (B, d) and covariances (B, d, d), ddof 1, of features f (n, d) under
    count weights w (B, n)."""
    m = w.sum(1, keepdim=True)  # (B, 1)
    mu = w @ f / m
    outer = (f[:, :, None] * f[:, None, :]).reshape(len(f), -1)  # (n, d * d)
    second = (w @ outer).reshape(len(w), f.shape[1], f.shape[1]) / m[..., None]
    return mu, (second - mu[:, :, None] * mu[:, None, :]) * (m / (m - 1))[..., None]


def fd_replicates(f_gen, f_test, w_gen, w_test):
    """FD of each replicate (B,): ||mu1 - mu2||^2 + tr S1 + tr S2 - 2 tr (S1^1/2 S2 S1^1/2)^1/2
    (the trace of (S1 S2)^1/2 that common.frechet_distance takes, through symmetric matrices)."""
    mu1, s1 = moments(f_gen, w_gen)
    mu2, s2 = moments(f_test, w_test)
    e, v = torch.linalg.eigh(s1)
    root = v @ torch.diag_embed(e.clamp(min=0).sqrt()) @ v.transpose(1, 2)  # S1^1/2
    cross = torch.linalg.eigvalsh(root @ s2 @ root).clamp(min=0).sqrt().sum(1)
    trace = s1.diagonal(dim1=1, dim2=2).sum(1) + s2.diagonal(dim1=1, dim2=2).sum(1)
    return (mu1 - mu2).pow(2).sum(1) + trace - 2 * cross


def cubic(a, b):
    """KID's kernel k(a, b) = (a.b / d + 1)^3 between the rows of a (m, d) and b (n, d): (m, n)."""
    return (a @ b.T / a.shape[1] + 1) ** 3


def kid_replicates(f_gen, f_test, w_gen, w_test):
    """The unbiased squared MMD of the cubic kernel for each replicate (B,): within a set only pairs
    of distinct items count (an item drawn w_i times meets its own copies w_i^2 times: the sum is
    w^T K w - sum_i w_i^2 K_ii over m^2 - sum_i w_i^2 pairs; m (m - 1) for the sample itself)."""
    def within(k, w):
        return (((w @ k) * w).sum(1) - w.pow(2) @ k.diagonal()) / (w.sum(1) ** 2 - w.pow(2).sum(1))
    cross = ((w_gen @ cubic(f_gen, f_test)) * w_test).sum(1) / (w_gen.sum(1) * w_test.sum(1))
    return within(cubic(f_gen, f_gen), w_gen) + within(cubic(f_test, f_test), w_test) - 2 * cross


def replicates(f_gen, f_test, stats, w_gen, w_test, chunk=100):
    """Every metric of one row on every replicate: {metric: (B,)}, float64; f_* raw features."""
    z_gen, z_test = common.standardised(f_gen, stats), common.standardised(f_test, stats)
    f_gen, f_test = f_gen.double(), f_test.double()
    out = {k: [] for k in METRICS}
    for wg, wt in zip(w_gen.split(chunk), w_test.split(chunk)):
        out["fd"].append(fd_replicates(f_gen, f_test, wg, wt))
        out["kid"].append(common.KID_SCALE * kid_replicates(z_gen, z_test, wg, wt))
        out["kid_raw"].append(kid_replicates(f_gen, f_test, wg, wt))
    return {k: torch.cat(v) for k, v in out.items()}


# -----------------------------------------------------------------------------
# the intervals, recomputable from the json

def side(lo, hi):
    return "above 0" if lo > 0 else "below 0" if hi < 0 else "spans 0"


def analyse(results):
    """Per compared pair and metric: each seed's difference (worse - better) with its interval, and
    the pooled one (benchmarks/stats.py's, over seeds and replicates; the t interval over the seeds
    alone beside it)."""
    from scipy.stats import t as student
    out = []
    for worse, better in results["pairs"]:
        for metric in METRICS:
            diffs = [np.array(s["rows"][worse][metric]) - np.array(s["rows"][better][metric])
                     for s in results["seeds"]]  # per seed: (R + 1,), replicate 0 the estimate
            per_seed = []
            for s, d in zip(results["seeds"], diffs):
                _, lo, hi, _ = stats.interval([d[0]], d[1:][None])
                per_seed.append(dict(seed=s["seed"], estimate=float(d[0]), lo=lo, hi=hi,
                                     side=side(lo, hi), contains_estimate=bool(lo <= d[0] <= hi)))
            est = np.array([d[0] for d in diffs])
            m, lo, hi, _ = stats.interval(est, np.stack([d[1:] for d in diffs]))
            half = student.ppf(0.975, len(est) - 1) * est.std(ddof=1) / np.sqrt(len(est))
            pooled = dict(estimate=m, lo=lo, hi=hi, side=side(lo, hi),
                          contains_estimate=bool(lo <= m <= hi), t_lo=float(m - half),
                          t_hi=float(m + half), t_side=side(m - half, m + half))
            out.append(dict(worse=worse, better=better, metric=metric, seeds=per_seed,
                            pooled=pooled))
    return out


def verdict(results):
    """One sentence: of the pairs FD separates (every seed's interval and the pooled one on one
    side of 0), which each KID separates on the same side."""
    def separates(a):
        sides = {s["side"] for s in a["seeds"]} | {a["pooled"]["side"]}
        return sides.pop() if len(sides) == 1 and "spans 0" not in sides else None
    by = {(a["worse"], a["better"], a["metric"]): separates(a) for a in analyse(results)}
    parts = []
    for worse, better in results["pairs"]:
        fd = by[(worse, better, "fd")]
        if fd is None:
            parts.append(f"FD does not separate {worse} from {better} on every seed")
            continue
        same = [METRICS[m] for m in ("kid", "kid_raw") if by[(worse, better, m)] == fd]
        parts.append(f"{worse} - {better}: FD {fd} on every seed and pooled; "
                     + (f"so {'are' if len(same) > 1 else 'is'} {' and '.join(same)}" if same
                        else "KID is not"))
    return "Verdict: " + "; ".join(parts) + "."


def markdown(results):
    """The rows' figures (mean +- sd over seeds, beside the floors) and, per compared pair, each
    metric's paired difference per seed and pooled, and whether its interval is on one side of
    0."""
    c = results["config"]
    what = (f"Does KID separate what FD separates? cfm.py on digits, {c['iters']} iterations, "
            f"{len(c['seeds'])} seeds, {c['n']} samples against the {results['n_test']} held-out "
            f"digits, rows sampled from the same noise; paired bootstrap of {c['reps']} replicates "
            "(samples and held-out digits resampled)")
    lines = [bench.caption(results["machine"], results["command"], what), ""]
    floor = results["floor"]
    rows = []
    for name in results["rows"]:
        rows.append([name] + [bench.ms([s["rows"][name][m][0] for s in results["seeds"]])
                              for m in METRICS])
    rows.append(["floor (real vs real, n=500)", f"{floor['floor']:.3g} +- {floor['floor_sd']:.2g}",
                 f"{floor['kid_floor']:.3g} +- {floor['kid_floor_sd']:.2g}",
                 f"{floor['kid_raw_floor']:.3g} +- {floor['kid_raw_floor_sd']:.2g}"])
    lines += [bench.table(["row"] + list(METRICS.values()), rows), ""]
    rows = []
    for a in analyse(results):
        cells = [f"{s['estimate']:.3g} ({s['lo']:.3g} - {s['hi']:.3g}) {s['side']}"
                 for s in a["seeds"]]
        p = a["pooled"]
        rows.append([f"{a['worse']} - {a['better']}", METRICS[a["metric"]]] + cells
                    + [f"{p['estimate']:.3g} ({p['lo']:.3g} - {p['hi']:.3g}) {p['side']}",
                       f"{p['t_lo']:.3g} - {p['t_hi']:.3g} {p['t_side']}"])
    head = (["difference", "metric"] + [f"seed {s}" for s in c["seeds"]]
            + ["pooled (seeds and resamples)", "t over seeds alone"])
    lines += ["Paired differences, worse row minus better row, estimate (95% interval):", "",
              bench.table(head, rows, ["l", "l"] + ["r"] * (len(head) - 2)), "",
              verdict(results), ""]
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# measuring

def rounded(v):
    """6 significant digits: what the json keeps of each replicate (and what `analyse` reads)."""
    return [float(f"{x:.6g}") for x in v.tolist()]


def write_json(path, results):
    """bench.write_json's layout, with each list of numbers on one line (the replicates: about
    8 bytes each)."""
    text = json.dumps(results, indent=1)
    flat = lambda m: "[" + re.sub(r"\s+", "", m.group(1)) + "]"  # noqa: E731
    text = re.sub(r"\[([-+0-9.eE,\s]+)\]", flat, text)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)


def measure_seed(seed, cfg, data, f_test, stats, work):
    """Train one model (cfm.py, `seed`), sample every row from one noise, every row's replicates."""
    out = Path(work) / f"seed{seed}"
    flags = ["--data", "digits", "--uncond", "--iters", str(cfg["iters"]), "--seed", str(seed),
             "--out", str(out), "--n-eval", "0", "--device", "cpu", "--log-every", "500"]
    q = bench.run(cfm.main, flags + cfg["extra"])
    ckpt = common.load_checkpoint(out / "ckpt.pt", ("cfm",))
    net, flow = common.ema_net(ckpt, data, False, 1000.0), cfm.CFM()
    g = torch.Generator().manual_seed(100 + seed)
    noise = torch.randn((cfg["n"], *data.shape), generator=g)  # every row's starting noise
    g = torch.Generator().manual_seed(200 + seed)
    w_gen = counts(resamples(cfg["n"], cfg["reps"], g), cfg["n"])  # the same for every row
    w_test = counts(resamples(len(f_test), cfg["reps"], g), len(f_test))
    rows, seconds = {}, {}
    for steps in cfg["steps"]:
        t0 = time.process_time()
        with torch.no_grad():
            x = flow.sample(net, noise.shape, steps, "euler", noise=noise)
        seconds[f"Euler x {steps}"] = time.process_time() - t0
        reps = replicates(common.features(data, x), f_test, stats, w_gen, w_test)
        rows[f"Euler x {steps}"] = {k: rounded(v) for k, v in reps.items()}
        print(f"  seed {seed} Euler x {steps}: "
              + ", ".join(f"{METRICS[k]} {v[0]:.4g}" for k, v in reps.items()), flush=True)
    return dict(seed=seed, train_cpu_s=q["train_cpu_seconds"], sample_cpu_s=seconds, rows=rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    bench.add_output_flags(parser, bench.ROOT / "benchmarks" / "work" / "kid_check")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    results_dir = bench.results_dir(args, "kid_check.py")
    cfg = QUICK if args.quick else FULL
    data = common.load_data("digits")
    c0 = time.process_time()
    f_test = common.features(data, data.x_test)
    stats = common.feature_stats(data)
    q = common.floor_of(data, len(data.x_test))
    f_train = common.features(data, data.x_train).double()  # the raw KID's floor, the same draws
    g = torch.Generator().manual_seed(1)
    raw = [common.kid(f_train[torch.randperm(len(f_train), generator=g)[:len(f_test)]], f_test)
           for _ in range(q["floor_draws"])]
    floor = {k: q[k] for k in ("floor", "floor_sd", "kid_floor", "kid_floor_sd")}
    floor.update(kid_raw_floor=float(np.mean(raw)), kid_raw_floor_sd=float(np.std(raw, ddof=1)))
    names = [f"Euler x {s}" for s in cfg["steps"]]
    results = dict(machine=bench.machine(), command=COMMAND + (" --quick" if args.quick else ""),
                   config=cfg, n_test=len(f_test), rows=names,
                   pairs=[[names[1], names[0]], [names[2], names[0]]], floor=floor, seeds=[])
    for seed in cfg["seeds"]:
        results["seeds"].append(measure_seed(seed, cfg, data, f_test, stats, args.work))
    results["total_cpu_s"] = time.process_time() - c0
    results["analysis"] = analyse(results)
    write_json(results_dir / "kid_check.json", results)
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
