"""Benchmark of ar.py: held-out likelihood, the KV cache's speedup, sample quality.

Fixed budget: two digits models trained by ar.py at its defaults (17 levels, 64 tokens, width 64,
depth 2, 4 heads, dropout 0.1, its default iterations, batch 128, lr 2e-3, seed 0, 10 classes with
label dropout 0.1), one in raster order and one in random order (--order random). From their EMA
weights:
  - held-out NLL of the 500 test digits in bits/dim: -log p_sigma(x | y) / (64 ln 2) with the label
    (conditional); -log p_sigma(x) with p(x) = sum_y p(y) p(x | y), p(y) the training label
    frequencies (AR.log_prob_marginal: the conditional model's own likelihood of x alone, the figure
    to set beside unconditional models); and with the null label (y = None: the unconditional model
    learnt through label dropout). Exact for the order used; the random-order model is scored under
    one random order per image (the same for every label), averaged over 5 draws, which is an upper
    bound for the model it samples (a mixture over orders, ar.py's docstring), and under the raster order;
  - n = 500 samples (balanced labels, generator seed 1 as ar.py's evaluation) with and
    without the KV cache: CPU and wall seconds, the same samples both ways, Frechet distance in
    the feature classifier's space with its floor (real vs real, n = 500);
  - the cache at MNIST's length (784 tokens of 16 levels, width 128 as ar.py --data mnist; an
    untrained model, n = 2: only the time matters).
Training seconds come from the dict ar.main returns.

Run (about 12 minutes single-threaded):
  OMP_NUM_THREADS=1 python benchmarks/bench_ar.py
  python benchmarks/bench_ar.py --quick --work /tmp/ar-bench   # smoke test in seconds: QUICK
Writes benchmarks/results/ar.json (--quick: WORK/ar.json, never benchmarks/results/);
checkpoints go to WORK/ar-raster and WORK/ar-random (default WORK runs/benchmarks, not tracked).
"""
import argparse
import math
import time
from pathlib import Path

import bench
import torch

import ar  # the model files: bench puts the repository's root on sys.path
import common

COMMAND = "OMP_NUM_THREADS=1 python benchmarks/bench_ar.py"
# --quick: a smoke test of the code paths, not a measurement: a few iterations of a narrow model,
# few samples, and the cache's timing at a shorter length (MNIST's 784 tokens take minutes without
# the cache). The long model: dim 4 x long_width = 128, as ar.py --data mnist.
QUICK = dict(flags=["--iters", "4", "--width", "8", "--batch-size", "32"], n=20, n_test=50,
             long_tokens=64, long_width=16)
FULL = dict(flags=[], n=500, n_test=500, long_tokens=784, long_width=32)


def train(out, order, flags=()):
    """ar.main at its defaults (or flags) with a tiny evaluation and without its own held-out
    bits/dim (this script scores the checkpoint itself): (training wall s, training CPU s)."""
    argv = ["--out", str(out), "--seed", "0", "--order", order, "--n-eval", "10", "--bpd", "0"]
    q = bench.run(ar.main, argv + list(flags))
    return q["train_seconds"], q["train_cpu_seconds"]


def load_ema(path, data):
    """The checkpoint's EMA model, built as ar.main builds it."""
    ckpt = common.load_checkpoint(path, ("ar",))
    a = ckpt["args"]
    levels = a["levels"] or (17 if data.name == "digits" else 16)  # 0: a checkpoint that did not store its levels
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
    bench.add_output_flags(parser, bench.ROOT / "runs" / "benchmarks")
    args = parser.parse_args(argv)
    results = bench.results_dir(args, "bench_ar.py")
    B = QUICK if args.quick else FULL
    n = B["n"]
    data = common.load_data("digits")
    xte, yte = ar.to_tokens(data.x_test[:B["n_test"]], 17), data.y_test[:B["n_test"]]
    log_prior = (torch.bincount(data.y_train, minlength=data.num_classes).double() / len(data.y_train)).log()  # p(y)
    models = {}
    for order in ("raster", "random"):
        out = Path(args.work) / f"ar-{order}"
        wall, cpu = train(out, order, B["flags"])
        model, saved = load_ema(out / "ckpt.pt", data)
        row = dict(order=order, iters=saved["iters"], width=saved["width"],
                   batch=saved["batch_size"], train_wall_s=wall, train_cpu_s=cpu,
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

    # the cache at MNIST's length: 784 tokens of 16 levels, width 128, untrained
    long = {"tokens": B["long_tokens"]}
    torch.manual_seed(0)
    big = ar.AR(16, B["long_tokens"], 10, dim=4 * B["long_width"], depth=2, heads=4).eval()
    for cache in (True, False):
        c0, t0 = time.process_time(), time.time()
        s = big.sample(2, torch.tensor([3, 7]), generator=torch.Generator().manual_seed(0), cache=cache)
        long[f"cpu_s_{'cache' if cache else 'nocache'}"] = time.process_time() - c0
        long[f"wall_s_{'cache' if cache else 'nocache'}"] = time.time() - t0
        long.setdefault("samples", []).append(s)
    long["same_samples"] = bool(torch.equal(*long.pop("samples")))
    print(long, flush=True)

    ra = models["raster"]
    model = (f"ar.py defaults: width {ra['width']}, depth 2, heads 4, dropout 0.1, {ra['iters']} "
             f"iters, batch {ra['batch']}, lr 2e-3, seed 0")
    result = dict(config=dict(data="digits (17 levels, 64 tokens)", model=model, n=n, sample_seed=1,
                              n_test=len(xte)),
                  machine=bench.machine(), models=models, mnist_length=long, quick=args.quick)
    print(markdown(result))
    bench.write_json(results / "ar.json", result)
    return result


def markdown(r):
    """The likelihood table, the sampling table and the cache's speedup."""
    ra, rr, lg, n = r["models"]["raster"], r["models"]["random"], r["mnist_length"], r["config"]["n"]
    L = lg.get("tokens", 784)  # the long model's tokens (784, MNIST's; fewer in a --quick run)
    long_name = "MNIST length" if L == 784 else f"{L} tokens"
    n_test = r["config"].get("n_test", 500)
    bits = lambda row, key: f"{row[key]:.3f}" if key in row else "not measured"
    train = lambda row: f"{row.get('train_cpu_s', row.get('main_cpu_s')):.0f} ({row['train_wall_s']:.0f})"
    likelihood = bench.table(
        ["training order", "scored in order", "-log p(x given y), conditional", "-log p(x) = -log sum_y p(y) p(x given y)",
         "-log p(x given null label)", "FD (floor), cached sampling", "training CPU s (wall)"],
        [["raster", "raster", bits(ra, "bpd_raster_y"), bits(ra, "bpd_raster_marginal"), bits(ra, "bpd_raster_null"),
          f"{ra['fd_cache']:.3g} ({ra['floor']:.3g})", train(ra)],
         ["random", "random, one per image (upper bound)", bits(rr, "bpd_random_y"), bits(rr, "bpd_random_marginal"),
          bits(rr, "bpd_random_null"), f"{rr['fd_cache']:.3g} ({rr['floor']:.3g})", train(rr)],
         ["random", "raster", bits(rr, "bpd_raster_y"), bits(rr, "bpd_raster_marginal"), bits(rr, "bpd_raster_null"), "", ""]],
        ["l", "l", "r", "r", "r", "r", "r"])
    sampling = bench.table(
        ["sampling", "tokens = NFE", "positions computed per sample", "CPU s (wall)", "same samples"],
        [[f"digits, KV cache, n = {n}", 64, 64, f"{ra['sample_cpu_s_cache']:.1f} ({ra['sample_wall_s_cache']:.1f})", "-"],
         [f"digits, no cache, n = {n}", 64, 64 * 65 // 2,
          f"{ra['sample_cpu_s_nocache']:.1f} ({ra['sample_wall_s_nocache']:.1f})", ra["cache_same_samples"]],
         [f"{long_name}, KV cache, n = 2", L, L,
          f"{lg['cpu_s_cache']:.1f} ({lg['wall_s_cache']:.1f})", "-"],
         [f"{long_name}, no cache, n = 2", L, L * (L + 1) // 2,
          f"{lg['cpu_s_nocache']:.1f} ({lg['wall_s_nocache']:.1f})", lg["same_samples"]]])
    return "\n".join([
        bench.caption(r["machine"], COMMAND,
                      f"Held-out bits/dim of the {n_test} test digits, {r['config']['model']}"), "",
        likelihood, "", sampling, "",
        f"KV cache speedup (CPU seconds): {ra['sample_cpu_s_nocache'] / ra['sample_cpu_s_cache']:.1f}x at 64 tokens, "
        f"{lg['cpu_s_nocache'] / lg['cpu_s_cache']:.1f}x at {L} tokens."]) + "\n"


if __name__ == "__main__":
    main()
