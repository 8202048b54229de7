"""Benchmark of ar.py (issue #8): held-out likelihood, the KV cache's speedup, sample quality.

Fixed budget: two digits models trained by ar.py at its defaults (17 levels, 64 tokens, width 64,
depth 2, 4 heads, dropout 0.1, 1000 iters, batch 128, lr 2e-3, seed 0, 10 classes with label
dropout 0.1), one in raster order and one in random order (--order random). From their EMA
weights:
  - held-out NLL of the 500 test digits in bits/dim, exact: -log p_sigma(x | y) / (64 ln 2) with the
    label; -log p_sigma(x) with p(x) = sum_y p(y) p(x | y), p(y) the training label frequencies
    (AR.log_prob_marginal: the conditional model's own likelihood of x alone, the figure to set
    beside unconditional models); and with the null label (y = None: the unconditional model
    learnt through label dropout); the random-order model scored under one random order per image
    (the same for every label), averaged over 5 draws, and under the raster order;
  - n = 500 samples (balanced labels, generator seed 1 as ar.py's evaluation) with and
    without the KV cache: CPU and wall seconds, the same samples both ways, Frechet distance in
    the feature classifier's space with its floor (real vs real, n = 500);
  - the cache at MNIST's length (784 tokens of 16 levels, width 128 as ar.py --data mnist; an
    untrained model, n = 2: only the time matters).

Run (about 12 minutes single-threaded):
  OMP_NUM_THREADS=1 python benchmarks/ar.py
Writes benchmarks/results/ar.json and benchmarks/results/ar.md; checkpoints go to
runs/benchmarks/ar-raster and runs/benchmarks/ar-random (not tracked).
"""
import argparse
import contextlib
import io
import json
import math
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import ar  # noqa: E402
import common  # noqa: E402


def train(out, order, iters=None):
    """ar.main at its defaults with a tiny evaluation; returns the training wall seconds (its log)
    and the CPU seconds of the whole call."""
    argv = ["--out", str(out), "--seed", "0", "--order", order, "--n-eval", "10"]
    argv += ["--iters", str(iters)] if iters else []
    buf, c0 = io.StringIO(), time.process_time()
    with contextlib.redirect_stdout(buf):
        ar.main(argv)
    cpu = time.process_time() - c0
    print(buf.getvalue(), end="", flush=True)
    wall = float(re.search(r"trained ar in ([\d.]+)s", buf.getvalue()).group(1))
    return wall, cpu


def load_ema(path, data):
    """The checkpoint's EMA model, built as ar.main builds it."""
    ckpt = common.load_checkpoint(path, ("ar",))
    a = ckpt["args"]
    levels = a["levels"] or (17 if data.name == "digits" else 16)  # 0: a checkpoint of an earlier ar.py
    model = ar.AR(levels, math.prod(data.shape), 0 if a["uncond"] else data.num_classes,
                  dim=4 * a["width"], depth=a["depth"], heads=a["heads"], order=a["order"])
    return common.load_ema(ckpt, model), a


def timed_samples(model, data, n, cache, seed=1):
    """Samples as ar.main draws them: balanced labels, a generator seeded with seed (ar.main: --seed + 1)."""
    y = common.class_labels(n, model.num_classes, "cpu")
    t0, c0 = time.time(), time.process_time()
    tokens = model.sample(n, y, generator=torch.Generator().manual_seed(seed), cache=cache)
    x = ar.to_images(tokens, data.shape, model.vocab)
    return x, time.time() - t0, time.process_time() - c0


def nll(model, x, y, order, draws=1, log_prior=None):
    """Held-out bits/dim, averaged over images (and over `draws` random orders per image); with
    log_prior, of the marginal p(x) = sum_y p(y) p(x | y) (y is then not used)."""
    g, vals = torch.Generator().manual_seed(0), []
    with torch.no_grad():
        for _ in range(draws):
            sigma = model.orders(order, len(x), "cpu", g)
            lp = model.log_prob(x, y, sigma) if log_prior is None else model.log_prob_marginal(x, log_prior, sigma)
            vals.append(-lp.double().mean().item() / (model.length * math.log(2)))
    return sum(vals) / len(vals)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 50 iters, n = 50, no results written")
    args = parser.parse_args(argv)
    n, iters = (50, 50) if args.quick else (500, None)
    data = common.load_data("digits")
    xte, yte = ar.to_tokens(data.x_test, 17), data.y_test
    log_prior = (torch.bincount(data.y_train, minlength=data.num_classes).double() / len(data.y_train)).log()  # p(y)
    models = {}
    for order in ("raster", "random"):
        out = ROOT / "runs" / "benchmarks" / f"ar-{order}"
        wall, cpu = train(out, order, iters)
        model, saved = load_ema(out / "ckpt.pt", data)
        row = dict(order=order, iters=saved["iters"], train_wall_s=wall, main_cpu_s=cpu,
                   bpd_raster_y=nll(model, xte, yte, "raster"), bpd_raster_null=nll(model, xte, None, "raster"),
                   bpd_raster_marginal=nll(model, xte, None, "raster", log_prior=log_prior))
        if order == "random":
            row.update(bpd_random_y=nll(model, xte, yte, "random", 5),
                       bpd_random_null=nll(model, xte, None, "random", 5),
                       bpd_random_marginal=nll(model, xte, None, "random", 5, log_prior))
        for cache in ((True, False) if order == "raster" else (True,)):
            x, w, c = timed_samples(model, data, n, cache)
            q = common.quality(data, x)
            key = "cache" if cache else "nocache"
            row.update({f"fd_{key}": q["value"], "floor": q["floor"], f"sample_wall_s_{key}": w,
                        f"sample_cpu_s_{key}": c, "classifier_acc": q["classifier_acc"]})
            row.setdefault("samples", []).append(x)
            print(f"{order} cache={cache}: FD {q['value']:.4g} (floor {q['floor']:.4g}), {c:.1f}s CPU", flush=True)
        if len(row["samples"]) == 2:
            row["cache_same_samples"] = bool(torch.equal(row["samples"][0], row["samples"][1]))
        del row["samples"]
        models[order] = row
        print(row, flush=True)

    long = {}  # the cache at MNIST's length: 784 tokens of 16 levels, width 128, untrained
    torch.manual_seed(0)
    big = ar.AR(16, 784, 10, dim=128, depth=2, heads=4).eval()
    for cache in (True, False):
        c0, t0 = time.process_time(), time.time()
        s = big.sample(2, torch.tensor([3, 7]), generator=torch.Generator().manual_seed(0), cache=cache)
        long[f"cpu_s_{'cache' if cache else 'nocache'}"] = time.process_time() - c0
        long[f"wall_s_{'cache' if cache else 'nocache'}"] = time.time() - t0
        long.setdefault("samples", []).append(s)
    long["same_samples"] = bool(torch.equal(*long.pop("samples")))
    print(long, flush=True)

    machine = dict(processor=platform.processor() or platform.machine(), cores=os.cpu_count(),
                   torch=torch.__version__, threads=torch.get_num_threads(),
                   omp_num_threads=os.environ.get("OMP_NUM_THREADS"))
    result = dict(config=dict(data="digits (17 levels, 64 tokens)", model="ar.py defaults: width 64, depth 2, "
                              "heads 4, dropout 0.1, 1000 iters, batch 128, lr 2e-3, seed 0", n=n, sample_seed=1),
                  machine=machine, models=models, mnist_length=long)
    md = markdown(result)
    print(md)
    if args.quick:
        return result
    res = ROOT / "benchmarks" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / "ar.json").write_text(json.dumps(result, indent=2) + "\n")
    (res / "ar.md").write_text(md)
    return result


def markdown(r):
    m, ra, rr, lg = r["machine"], r["models"]["raster"], r["models"]["random"], r["mnist_length"]
    lines = [f"AR on digits ({r['config']['model']}), n = {r['config']['n']} samples with balanced labels. "
             f"Machine: {m['processor']}, {m['cores']} cores (shared), torch {m['torch']}, {m['threads']} thread(s) "
             f"(OMP_NUM_THREADS={m['omp_num_threads']}). Uniform over 17 levels = {math.log2(17):.3f} bits/dim. "
             "Every NLL is exact for the order used; the random-order rows average 5 random orders per image. "
             "p(y): the training label frequencies; p(x) is the conditional model's likelihood of x alone, "
             "the figure comparable with unconditional models. "
             "Training CPU s: the whole ar.main call (1000 steps and a 10-sample check).",
             "",
             "| training order | held-out bits/dim, p(x given y) | bits/dim, p(x) = sum_y p(y) p(x given y) | "
             "bits/dim, p(x given null label) | FD (floor), cached sampling | training: CPU s (wall s) |",
             "|---|---|---|---|---|---|",
             f"| raster | {ra['bpd_raster_y']:.3f} (raster) | {ra['bpd_raster_marginal']:.3f} (raster) | "
             f"{ra['bpd_raster_null']:.3f} (raster) | "
             f"{ra['fd_cache']:.3g} ({ra['floor']:.3g}) | {ra['main_cpu_s']:.0f} ({ra['train_wall_s']:.0f}) |",
             f"| random | {rr['bpd_random_y']:.3f} (random), {rr['bpd_raster_y']:.3f} (raster) | "
             f"{rr['bpd_random_marginal']:.3f} (random), {rr['bpd_raster_marginal']:.3f} (raster) | "
             f"{rr['bpd_random_null']:.3f} (random), {rr['bpd_raster_null']:.3f} (raster) | "
             f"{rr['fd_cache']:.3g} ({rr['floor']:.3g}) | {rr['main_cpu_s']:.0f} ({rr['train_wall_s']:.0f}) |",
             "",
             "| sampling | tokens | network calls per sample (NFE) | positions computed per sample | "
             "CPU s (wall) | same samples |",
             "|---|---|---|---|---|---|",
             f"| digits, KV cache, n = {r['config']['n']} | 64 | 64 | 64 | {ra['sample_cpu_s_cache']:.1f} "
             f"({ra['sample_wall_s_cache']:.1f}) | - |",
             f"| digits, no cache, n = {r['config']['n']} | 64 | 64 | {64 * 65 // 2} | "
             f"{ra['sample_cpu_s_nocache']:.1f} "
             f"({ra['sample_wall_s_nocache']:.1f}) | {ra['cache_same_samples']} (FD {ra['fd_nocache']:.3g}) |",
             f"| MNIST length, KV cache, n = 2 | 784 | 784 | 784 | {lg['cpu_s_cache']:.1f} "
             f"({lg['wall_s_cache']:.1f}) | - |",
             f"| MNIST length, no cache, n = 2 | 784 | 784 | {784 * 785 // 2} | {lg['cpu_s_nocache']:.1f} "
             f"({lg['wall_s_nocache']:.1f}) | {lg['same_samples']} |",
             "",
             f"KV cache speedup: {ra['sample_cpu_s_nocache'] / ra['sample_cpu_s_cache']:.1f}x at 64 tokens, "
             f"{lg['cpu_s_nocache'] / lg['cpu_s_cache']:.1f}x at 784 tokens (CPU seconds)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
