"""Benchmark of vae.py: held-out likelihoods and sample quality at fixed budgets.

Run from the repository root (about 5 minutes on one CPU thread):
  OMP_NUM_THREADS=1 python benchmarks/bench_vae.py
  OMP_NUM_THREADS=1 python benchmarks/bench_vae.py --quick --work /tmp/vae   # smoke test in
                                                   # seconds: QUICK's budgets, WORK/vae.json
Writes benchmarks/results/vae.json; the runs go to WORK (default runs/bench-vae, not tracked).

Measured, seed 0, vae.py's default model flags unless stated, each at the budget DIGITS_ITERS below
sets (digits: 2500 iterations, batch 128, set here above the command line's default) or at the
command line's default (moons: 3000 iterations, batch 512); the json records each run's iterations:
  digits, the default model: held-out -ELBO and IWAE (k = 1000) NLL in nats per image and bits per
    dimension (500 test images; a categorical decoder over the 17 levels, so these are code lengths),
    Frechet distance of 500 samples (pixels drawn, and decoder means) next to its floor;
  digits, a full categorical head (--hidden 256 --head-dim 16): the same, to show the overfitting
    the default's low-rank head avoids;
  digits, two references that need no training: uniform pixels (64 ln 17 nats) and the best model
    with independent pixels (smoothed training frequencies);
  moons: W2 of 1000 samples next to its floor, and -ELBO / IWAE NLL in nats per point (a continuous
    density, not comparable to the digits' code lengths).
Training seconds come from the dict vae.main returns.
"""
import argparse
import math
import time
from pathlib import Path

import bench
import torch

import common  # the model files: bench puts the repository's root on sys.path
import vae

COMMAND = "OMP_NUM_THREADS=1 python benchmarks/bench_vae.py"
DIGITS_ITERS = 2500  # the measured budget on digits; moons trains at the command line's default
K = 1000
# --quick: a smoke test of the code paths (appended to every run's flags), and its IWAE k
QUICK = ["--iters", "5", "--batch-size", "32", "--hidden", "16", "--n-eval", "50", "--n-nll", "50"]
QUICK_K = 8


def independent_pixels_nll(data):
    """Held-out NLL (nats/image) of independent per-pixel categoricals fitted on the training set."""
    k_tr = ((data.x_train + 1) / 2 * (data.levels - 1)).round().long().flatten(1)
    k_te = ((data.x_test + 1) / 2 * (data.levels - 1)).round().long().flatten(1)
    counts = torch.zeros(k_tr.shape[1], data.levels).scatter_add_(1, k_tr.T, torch.ones(k_tr.T.shape))
    p = (counts + 0.5) / (counts + 0.5).sum(1, keepdim=True)
    return -p.log().gather(1, k_te.T).sum(0).mean().item()


def run_config(name, data, flags, tmp, k=K, extra=()):
    """Train with `flags` (then `extra`), then re-load the checkpoint for likelihoods (IWAE with
    k) and for mean-pixel samples."""
    out = str(Path(tmp) / name)
    budget = ["--iters", str(DIGITS_ITERS)] if data == "digits" else []
    extra = list(extra)
    q = bench.run(vae.main, ["--data", data, "--out", out, "--iwae-k", "0", "--device", "cpu"]
                  + budget + flags + extra)
    t0 = time.time()
    again = ["--ckpt", f"{out}/ckpt.pt", "--out", out, "--device", "cpu"]  # the trained model
    q_nll = bench.run(vae.main, again + ["--iwae-k", str(k)] + extra, trains=False)
    nll_wall = time.time() - t0 - q_nll["sample_seconds"]
    row = {"name": name, "data": data, "flags": " ".join(flags), "train_seconds": q["train_seconds"],
           "nll_seconds": nll_wall, "quality": q, "likelihood": q_nll["likelihood"]}
    if data == "digits":
        mean_pixels = again + ["--iwae-k", "0", "--pixels", "mean"] + extra
        row["quality_mean_pixels"] = bench.run(vae.main, mean_pixels, trains=False)
    ckpt = torch.load(f"{out}/ckpt.pt", map_location="cpu", weights_only=True)
    row["params"] = sum(v.numel() for k, v in ckpt["net"].items())
    row["iters"] = ckpt["step"]
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    bench.add_output_flags(parser, bench.ROOT / "runs" / "bench-vae")
    args = parser.parse_args(argv)
    results, work = bench.results_dir(args, "bench_vae.py"), Path(args.work)
    k, extra = (QUICK_K, QUICK) if args.quick else (K, [])
    t_start = time.time()
    digits = common.load_data("digits")
    refs = {"uniform_nats": 64 * math.log(17), "independent_pixels_nats": independent_pixels_nll(digits)}
    rows = [run_config("digits (default)", "digits", [], work, k, extra),
            run_config("digits, full head", "digits", ["--hidden", "256", "--head-dim", "16"], work,
                       k, extra),
            run_config("moons (default)", "moons", [], work, k, extra)]
    result = {"machine": bench.machine(), "k": k, "references": refs, "runs": rows,
              "total_seconds": time.time() - t_start, "quick": args.quick}
    bench.write_json(results / "vae.json", result)
    print(markdown(result))
    return result


def markdown(result):
    """One row per run: likelihoods, sample quality and seconds; then the references."""
    K, bpd, rows = result["k"], 64 * math.log(2), []
    for r in result["runs"]:
        lk, q = r["likelihood"], r["quality"]
        ne, nl = lk["neg_elbo_nats"], lk[f"iwae{K}_nll_nats"]
        digits = r["data"] == "digits"
        rows.append([r["name"], f"{r['params'] / 1e3:.0f}k", r["iters"], f"{ne:.2f}", f"{nl:.2f}",
                     f"{ne / bpd:.3f} / {nl / bpd:.3f}" if digits else "n/a (density)",
                     f"{q['metric']} {q['value']:.3g} ({q['floor']:.3g})",
                     f"{r['quality_mean_pixels']['value']:.3g}" if digits else "n/a",
                     f"{r.get('train_seconds', r.get('train_and_eval_seconds')):.0f}", f"{r['nll_seconds']:.0f}"])
    uni, ind = result["references"]["uniform_nats"], result["references"]["independent_pixels_nats"]
    what = (f"Seed 0; held-out: 500 test digits / 500 test moons points; IWAE with k = {K} importance samples; "
            "quality of 500 samples (floor: one draw of real against real); moons' NLL is a continuous density in nats "
            "per 2-D point, not a code length")
    return "\n".join([
        bench.caption(result["machine"], COMMAND, what), "",
        bench.table(["run", "params", "iterations", "-ELBO (nats)", "IWAE NLL (nats)", "bits/dim (-ELBO / IWAE)",
                     "quality, pixels drawn (floor)", "quality, decoder mean", "train s", "IWAE s"], rows), "",
        f"References on the same 500 test digits, no training: uniform over 17 levels {uni:.2f} nats "
        f"({uni / bpd:.3f} bits/dim); independent per-pixel categoricals {ind:.2f} nats ({ind / bpd:.3f} bits/dim)."]) + "\n"


if __name__ == "__main__":
    main()
