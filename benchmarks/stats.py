"""The yardstick every benchmark decides its claims with: a claim's estimate over training seeds,
its 95% interval, its verdict, and the table of claims they make.

A claim is a statistic of two rows (a ratio of their figures, or a difference) measured on S
training seeds. Per seed s a benchmark gives the estimate e_s and, where it kept them, B paired
bootstrap replicates r_{s,b} (replicate b resamples the generated samples and the held-out items,
the same indices for both rows and, the held-out set being shared, for every seed). Then

  estimate   E = mean_s e_s
  sampling   the pooled replicates p_b = mean_s r_{s,b}, centred on their median:
             d_- = median(p) - q_{2.5%}(p),  d_+ = q_{97.5%}(p) - median(p)
  seeds      h = t_{97.5%, S-1} sd(e_1..e_S) / sqrt(S)       (the t interval of the seeds' mean)
  interval   [E - sqrt(d_-^2 + h^2),  E + sqrt(d_+^2 + h^2)]

Centring on the median keeps the replicates' spread and skew but not their shift: FD grows when a
resample's duplicates shrink its spread, so the replicates of an FD ratio can sit wholly on one side
of the estimate, and a percentile interval (bias-corrected or not) then excludes its own estimate.
Here E lies inside by construction. The seeds' part carries the training seeds' spread, which the
resamples cannot see; it holds each seed's sampling noise of its generated samples as well, so the
sum in quadrature counts that noise twice: the interval errs wide, never narrow. With S = 3 the t
factor is 4.30: three seeds decide only large effects. One seed: the sampling part alone ("one
seed"); no replicates kept (results of older runs): the seeds' part alone ("seeds only").

A claim holds (or does not) when its whole interval lies on one side of its threshold, else it is
within noise; with one seed and no replicates it is not decided.
"""
import math

import numpy as np

LEVEL = 0.95
SENSES = {"<=": lambda v, c: v <= c, "<": lambda v, c: v < c, ">=": lambda v, c: v >= c,
          ">": lambda v, c: v > c}


def t_quantile(p, df):
    """Student's t quantile (scipy's, imported here so that the module loads without it)."""
    from scipy.stats import t
    return float(t.ppf(p, df))


def interval(estimates, replicates=None, level=LEVEL):
    """(E, lo, hi, method) of per-seed estimates (S,) and their paired replicates (S, B) or None.
    method: 'seeds and resamples', 'one seed' (resamples only), 'seeds only' or 'none'."""
    e = np.asarray(estimates, dtype=np.float64)
    est = float(e.mean())
    down = up = 0.0
    if replicates is not None:
        p = np.asarray(replicates, dtype=np.float64).reshape(len(e), -1).mean(0)  # (B,) pooled
        med = float(np.median(p))
        q_lo, q_hi = np.quantile(p, [(1 - level) / 2, (1 + level) / 2])
        down, up = med - float(q_lo), float(q_hi) - med
    h = t_quantile((1 + level) / 2, len(e) - 1) * float(e.std(ddof=1)) / math.sqrt(len(e)) \
        if len(e) > 1 else 0.0
    parts = (len(e) > 1, replicates is not None)  # (seeds' part, sampling part)
    method = {(True, True): "seeds and resamples", (False, True): "one seed",
              (True, False): "seeds only", (False, False): "none"}[parts]
    return est, est - math.hypot(down, h), est + math.hypot(up, h), method


def verdict(lo, hi, threshold, sense, method="seeds and resamples"):
    """'holds' or 'does not hold' when the whole interval is on one side of the threshold, else
    'within noise'; 'not decided' without an interval."""
    if method == "none":
        return "not decided"
    ok = SENSES[sense]
    if ok(lo, threshold) and ok(hi, threshold):
        return "holds"
    if not ok(lo, threshold) and not ok(hi, threshold):
        return "does not hold"
    return "within noise"


def per_seed_arrays(values):
    """{seed: [estimate, replicate 1, ...] or estimate} -> (seeds, estimates (S,), replicates (S, B)
    or None). Replicates count only where every seed has them, as many of each."""
    seeds = sorted(values, key=lambda s: int(s))
    rows = [np.atleast_1d(np.asarray(values[s], dtype=np.float64)) for s in seeds]
    est = np.array([r[0] for r in rows])
    lengths = {len(r) for r in rows}
    reps = np.stack([r[1:] for r in rows]) if len(lengths) == 1 and lengths.pop() > 1 else None
    return seeds, est, reps


def decide(text, values, threshold, sense, **extra):
    """One claim from {seed: [estimate, replicates...]}: its estimate, interval, method, verdict,
    per-seed estimates, and whatever `extra` the benchmark records beside it."""
    seeds, est, reps = per_seed_arrays(values)
    e, lo, hi, method = interval(est, reps)
    return dict(claim=text, threshold=threshold, sense=sense, estimate=e, lo=lo, hi=hi,
                method=method, verdict=verdict(lo, hi, threshold, sense, method),
                seeds={str(s): float(v) for s, v in zip(seeds, est)},
                replicates=0 if reps is None else reps.shape[1], **extra)


def decide_rows(specs, rows):
    """Claims [(text, numerator row, denominator row or None, threshold, sense)] decided on kept
    rows {seed: {row: its figure on every replicate, replicate 0 the figure itself}}: each seed's
    statistic is the numerator's figure over the denominator's, replicate by replicate (the
    numerator's alone where the denominator is None). A claim no seed has both rows of is left
    out."""
    out = []
    for text, num, den, threshold, sense in specs:
        values = {s: ratio(r[num], r[den]) if den else r[num]
                  for s, r in rows.items() if num in r and (den is None or den in r)}
        if values:
            out.append(decide(text, values, threshold, sense, numerator=num, denominator=den))
    return out


def ratio(num, den):
    """The per-seed ratio of two rows' figures, replicate by replicate: [e, r_1, ...] lists."""
    a = np.atleast_1d(np.asarray(num, dtype=np.float64))
    b = np.atleast_1d(np.asarray(den, dtype=np.float64))
    return list(a / b) if a.size == b.size else [a[0] / b[0]]  # replicates where both kept them


def resample_index(n, replicates, seed=0):
    """(1 + replicates, n) indices of n shared items: row 0 every item once (the estimate), then
    draws with replacement, the same for every row and seed that share the items."""
    g = np.random.default_rng(seed)
    return np.concatenate([np.arange(n)[None], g.integers(0, n, (replicates, n))])


def ratio_of_means(a, b, index):
    """[ratio of the mean of per-item figures a to b, and on every replicate of index]: the paired
    statistic of two rows scored item by item (the same items resampled for both)."""
    return list(np.asarray(a)[index].mean(1) / np.asarray(b)[index].mean(1))


def compact(values, digits=5):
    """Figures as a JSON list rounded to `digits` significant digits: what a results file keeps of
    each row's replicates (the intervals need a few digits, not sixteen)."""
    return [float(f"{float(v):.{digits}g}") for v in np.asarray(values, dtype=np.float64).ravel()]


# -----------------------------------------------------------------------------
# how the documents print a claim

NOTE = {"seeds and resamples": "", "one seed": ", one seed", "seeds only": ", seeds only",
        "none": ", no interval"}


def fmt_interval(c, spec=".3g"):
    """'lo to hi' with the method's note where the interval lacks a part."""
    return f"{c['lo']:{spec}} to {c['hi']:{spec}}{NOTE[c['method']]}"


def fmt_seeds(c, spec=".3g"):
    return ", ".join(f"{v:{spec}}" for v in c["seeds"].values())


def kid_name(rows):
    """The KID column's name for these results rows: common.quality's KID on standardised features
    x 1e3 (rows with kid_scale), or the raw-feature KID of results measured without it."""
    scales = {r.get("kid_scale") for r in rows if r.get("kid") is not None}
    return {frozenset({1e3}): "KID x 1e3", frozenset({None}): "KID (raw features)"}.get(
        frozenset(scales), "KID (x 1e3; raw features where marked)")


METHOD = """Every claim's interval comes from benchmarks/stats.py: the estimate is the mean over
training seeds of the per-seed statistic; the interval adds, in quadrature on each side, the spread
of the pooled paired-bootstrap replicates about their median (the sampling noise of the generated
samples and the held-out set) and the t interval of the seeds' mean (t with S - 1 degrees of
freedom: the training seeds' spread, which resampling cannot see). It contains its estimate by
construction and errs wide (the seeds' spread holds some sampling noise too). "seeds only" marks a
claim whose runs kept no replicates (the seeds' part alone, until those runs are measured again),
"one seed" one measured on a single seed (its resamples alone). A claim holds, or does not, when
its whole interval lies on one side of the target; otherwise it is within noise."""
