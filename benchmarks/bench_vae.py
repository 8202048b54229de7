"""Benchmark of vae.py: held-out likelihoods and sample quality at fixed budgets.

Run from the repository root (about 5 minutes on one CPU thread):
  OMP_NUM_THREADS=1 python benchmarks/vae.py
Writes benchmarks/results/vae.json and benchmarks/results/vae.md.

Measured, each on the data set's default training budget (digits: 2500 iterations, batch 128;
moons: 3000, batch 512), seed 0, vae.py's default model flags unless stated:
  digits, the default model: held-out -ELBO and IWAE (k = 1000) NLL in nats per image and bits per
    dimension (500 test images; a categorical decoder over the 17 levels, so these are code lengths),
    Frechet distance of 500 samples (pixels drawn, and decoder means) next to its floor;
  digits, a full categorical head (--hidden 256 --head-dim 16): the same, to show the overfitting
    the default's low-rank head avoids;
  digits, two references that need no training: uniform pixels (64 ln 17 nats) and the best model
    with independent pixels (smoothed training frequencies);
  moons: W2 of 1000 samples next to its floor, and -ELBO / IWAE NLL in nats per point (a continuous
    density, not comparable to the digits' code lengths).
"""
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import common  # noqa: E402
import vae  # noqa: E402

K = 1000


def independent_pixels_nll(data):
    """Held-out NLL (nats/image) of independent per-pixel categoricals fitted on the training set."""
    k_tr = ((data.x_train + 1) / 2 * (data.levels - 1)).round().long().flatten(1)
    k_te = ((data.x_test + 1) / 2 * (data.levels - 1)).round().long().flatten(1)
    counts = torch.zeros(k_tr.shape[1], data.levels).scatter_add_(1, k_tr.T, torch.ones(k_tr.T.shape))
    p = (counts + 0.5) / (counts + 0.5).sum(1, keepdim=True)
    return -p.log().gather(1, k_te.T).sum(0).mean().item()


def run_config(name, data, flags, tmp):
    """Train with `flags`, then re-load the checkpoint for likelihoods and for mean-pixel samples."""
    out = str(Path(tmp) / name)
    t0 = time.time()
    budget = ["--iters", "2500"] if data == "digits" else []  # the measured budget (the default is now 2000)
    q = vae.main(["--data", data, "--out", out, "--iwae-k", "0", "--device", "cpu"] + budget + flags)
    train_wall = time.time() - t0 - q["sample_seconds"]
    t0 = time.time()
    q_nll = vae.main(["--ckpt", f"{out}/ckpt.pt", "--out", out, "--iwae-k", str(K), "--device", "cpu"])
    nll_wall = time.time() - t0 - q_nll["sample_seconds"]
    row = {"name": name, "data": data, "flags": " ".join(flags), "train_and_eval_seconds": train_wall,
           "nll_seconds": nll_wall, "quality": q, "likelihood": q_nll["likelihood"]}
    if data == "digits":
        row["quality_mean_pixels"] = vae.main(["--ckpt", f"{out}/ckpt.pt", "--out", out, "--iwae-k", "0",
                                              "--pixels", "mean", "--device", "cpu"])
    ckpt = torch.load(f"{out}/ckpt.pt", map_location="cpu", weights_only=True)
    row["params"] = sum(v.numel() for k, v in ckpt["net"].items())
    row["iters"] = ckpt["step"]
    return row


def main():
    t_start = time.time()
    digits = common.load_data("digits")
    refs = {"uniform_nats": 64 * math.log(17), "independent_pixels_nats": independent_pixels_nll(digits)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(run_config("digits (default)", "digits", [], tmp))
        rows.append(run_config("digits, full head", "digits", ["--hidden", "256", "--head-dim", "16"], tmp))
        rows.append(run_config("moons (default)", "moons", [], tmp))
    machine = {"processor": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "torch": torch.__version__, "threads": torch.get_num_threads()}
    result = {"machine": machine, "k": K, "references": refs, "runs": rows,
              "total_seconds": time.time() - t_start}
    res_dir = ROOT / "benchmarks" / "results"
    res_dir.mkdir(parents=True, exist_ok=True)
    (res_dir / "vae.json").write_text(json.dumps(result, indent=2) + "\n")

    bpd = 64 * math.log(2)
    lines = [f"# vae.py benchmark (seed 0, CPU, {machine['threads']} thread(s))", "",
             f"Machine: {machine['processor']}, {machine['cores']} cores, torch {machine['torch']}, "
             f"threads {machine['threads']}. Held-out: 500 test digits / 500 test moons points; "
             f"IWAE with k = {K} importance samples. NFE: 1 decoder call per sample.", "",
             "| run | params | iters | -ELBO (nats) | IWAE NLL (nats) | bits/dim (-ELBO / IWAE) "
             "| quality, pixels drawn (floor) | quality, decoder mean | train+eval s | IWAE s | sampling s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lk, q = r["likelihood"], r["quality"]
        ne, nl = lk["neg_elbo_nats"], lk[f"iwae{K}_nll_nats"]
        if r["data"] == "digits":
            bits = f"{ne / bpd:.3f} / {nl / bpd:.3f}"
            qm = f"{r['quality_mean_pixels']['value']:.2f}"
            qs = f"FD {q['value']:.2f} ({q['floor']:.2f})"
        else:
            bits, qm = "n/a (density)", "n/a"
            qs = f"W2 {q['value']:.3f} ({q['floor']:.3f})"
        lines.append(f"| {r['name']} | {r['params'] / 1e3:.0f}k | {r['iters']} | {ne:.2f} | {nl:.2f} | {bits} | {qs} "
                     f"| {qm} | {r['train_and_eval_seconds']:.0f} | {r['nll_seconds']:.0f} "
                     f"| {q['sample_seconds']:.2f} |")
    uni, ind = refs["uniform_nats"], refs["independent_pixels_nats"]
    lines += ["", "References on the same 500 test digits (no training): uniform over 17 levels "
              f"{uni:.2f} nats ({uni / bpd:.3f} bits/dim); independent per-pixel categoricals "
              f"{ind:.2f} nats ({ind / bpd:.3f} bits/dim).",
              "Moons NLL is a continuous density in nats per 2-D point (can be negative; not a code length).",
              "FD: Frechet distance in common.py's small digit classifier's features, 500 samples vs 500 test "
              "images; floor = 500 training images vs the same test images.",
              f"Total benchmark time {result['total_seconds']:.0f} s."]
    (res_dir / "vae.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
