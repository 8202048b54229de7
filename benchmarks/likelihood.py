"""One likelihood table for four families on one footing: the same 500 held-out digits, the same
17-level bins, in bits/dim, each row saying whether it is exact, a bound or an estimate.

  OMP_NUM_THREADS=1 python benchmarks/likelihood.py          # trains each unconditional model at its
                                                             # file's default budget, then the table
  OMP_NUM_THREADS=1 python benchmarks/likelihood.py --only mar   # (re)measure mar.py's rows alone, the
                                                             # others kept (~6 CPU min)
  python benchmarks/likelihood.py --table                    # only print the table of the json
  OMP_NUM_THREADS=1 python benchmarks/likelihood.py --quick --work /tmp/lk   # smoke test in
                                                             # seconds: WORK/likelihood.json
Writes benchmarks/results/likelihood.json; the checkpoints go to WORK (default
benchmarks/work/likelihood, not tracked).

Rows: ar.py (the chain rule: exact in raster order; in random order exact for the one order drawn per
image, so an upper bound for the model ar.py samples, a mixture over orders), vae.py (IWAE k = 1000: a stochastic lower
bound on log p, so an upper bound on the NLL in expectation), mar.py (masked autoregression over 16 tokens of 2x2
pixels decoded in K groups: every token's flow head by the instantaneous change of variables, exact trace,
on dequantized data; exact for the one order drawn per image and the K-step schedule, so an upper bound
on the discrete NLL of the sampled model, a mixture over orders), cfm.py (the instantaneous change of
variables, RK4 converged, trained on dequantized data: an upper bound on the discrete NLL in
expectation over the dequantization, with a Hutchinson probe), ddpm.py (the variational bound),
and two baselines: uniform pixels (log2 17, exact) and independent per-pixel categoricals fitted
on the training digits (exact). "+-" is the standard error over the 500 images.
"""
import argparse
import math
from pathlib import Path

import bench
import torch

import ar  # the model files: bench puts the repository's root on sys.path
import cfm
import common
import ddpm
import mar
import vae

COMMAND = "OMP_NUM_THREADS=1 python benchmarks/likelihood.py"
N = 500
# --quick: a smoke test of the code paths, not a measurement: QUICK_N held-out digits, each model
# file's shared flags for a few iterations of a narrow network, and its own cheap settings
QUICK_N = 20
QUICK = ["--iters", "3", "--width", "8", "--batch-size", "32"]
QUICK_OWN = {"ar": [], "vae": ["--hidden", "16"], "cfm": ["--bpd-steps", "1"],
             "mar": ["--bpd-steps", "1", "--head-width", "16", "--head-steps", "2"],
             "ddpm": ["--T", "10"]}
QUICK_K = 8  # vae.py's IWAE importance samples
# rows whose label is fixed by the method (the table takes it from here): (kind, how)
LABELS = {"autoregressive, raster order": ("exact", "chain rule"),
          "autoregressive, random order": ("bound", "chain rule in one random order per image: exact for that order, "
                                                    "an upper bound for the sampled model, a mixture over orders")}


def baselines(data, n=N):
    """Uniform pixels and independent per-pixel categoricals (add-one smoothing), bits/dim per image."""
    L = data.levels
    k_tr = ((data.x_train + 1) / 2 * (L - 1)).round().long().flatten(1)  # (N, D) levels
    k_te = ((data.x_test[:n] + 1) / 2 * (L - 1)).round().long().flatten(1)
    D = k_tr.shape[1]
    counts = torch.zeros(D, L).scatter_add_(1, k_tr.T, torch.ones(k_tr.T.shape))
    logp = ((counts + 1) / (counts + 1).sum(1, keepdim=True)).log()  # (D, L)
    per_image = -logp.gather(1, k_te.T).sum(0) / (D * math.log(2))
    return [row("uniform pixels", "baseline", torch.full((n,), math.log2(L)), "exact", "log2 17"),
            row("independent pixels", "baseline", per_image, "exact", "per-pixel categoricals, add-one smoothing")]


def row(model, file, per_image, kind, how):
    per_image = torch.as_tensor(per_image, dtype=torch.float64)
    return {"model": model, "file": file, "bpd": float(per_image.mean()),
            "stderr": float(per_image.std() / math.sqrt(len(per_image))) if len(per_image) > 1 else None,
            "kind": kind, "how": how}


def run(module, argv):
    """module.main(argv): (its dict, training wall seconds, training CPU seconds)."""
    q = bench.run(module.main, argv)
    return q, q["train_seconds"], q["train_cpu_seconds"]


MAR_KS = (1, 8, 16)  # every token at once, mar.py's default, one token per step


def own(name, quick):
    """A model file's flags for a --quick run ([] for the measurement)."""
    return QUICK + QUICK_OWN[name] if quick else []


def measure_mar(work, n=N, quick=False):
    """mar.py (unconditional, its digits default) at K = 1, 8 and 16: rows of its exact schedule likelihood."""
    q, wall, cpu = run(mar, ["--uncond", "--bpd", str(n), "--n-eval", "0",
                             "--out", str(work / "mar")] + own("mar", quick))
    rows = []
    for K in MAR_KS:
        r = row(f"masked autoregression, K = {K}", "mar.py", [q[f"bits_per_dim_K{K}"]], "bound",
                f"per-token flow head, change of variables, exact trace, RK4 x {q['bpd_steps']}, dequantized training; "
                f"16 tokens of 2x2 pixels in {K} group{'s' * (K > 1)}, exact for one random order per image")
        r["train_cpu_s"] = cpu
        rows.append(r)
    return rows


def measure(work, n=N, quick=False):
    data = common.load_data("digits")
    rows = baselines(data, n)
    x = data.x_test[:n]
    n_eval = "20" if quick else "100"  # each run's own sample quality (not in the table)
    # ar.py: exact, raster and random order
    for order in ("raster", "random"):
        q, wall, cpu = run(ar, ["--uncond", "--order", order, "--n-eval", n_eval, "--bpd", str(n),
                                "--out", str(work / f"ar-{order}")] + own("ar", quick))
        model = f"autoregressive, {order} order"
        r = row(model, "ar.py", [q["bits_per_dim"]], *LABELS[model])
        r.update(stderr=q.get("bits_per_dim_stderr"), train_cpu_s=cpu)
        rows.append(r)
    # vae.py: IWAE k = 1000, per image from the trained checkpoint
    q, wall, cpu = run(vae, ["--iwae-k", "0", "--n-eval", n_eval, "--out", str(work / "vae")]
                       + own("vae", quick))
    k = QUICK_K if quick else 1000
    ckpt = common.load_checkpoint(work / "vae" / "ckpt.pt", ("vae",))
    a = ckpt["args"]
    model = common.load_ema(ckpt, vae.VAE(data.shape, a["latent_dim"], a["hidden"], data.levels, a["head_dim"]))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        ll = torch.cat([model.log_likelihood(b, k=k, generator=g) for b in x.split(50)])
    r = row("VAE", "vae.py", -ll / (64 * math.log(2)), "bound (estimate)",
            f"IWAE k = {k}, categorical decoder")
    r["train_cpu_s"] = cpu
    rows.append(r)
    # cfm.py: converged RK4, dequantized training
    q, wall, cpu = run(cfm, ["--uncond", "--bpd", str(n), "--n-eval", n_eval,
                             "--out", str(work / "cfm")] + own("cfm", quick))
    r = row("flow matching", "cfm.py", [q["bits_per_dim"]], "bound", f"change of variables, RK4 x {q['bpd_steps']} "
            f"(x {q['bpd_half_steps']}: {q['bits_per_dim_half_steps']:.4f}), Hutchinson, dequantized training")
    r.update(stderr=q["bits_per_dim_stderr"], train_cpu_s=cpu)
    rows.append(r)
    rows += measure_mar(work, n, quick)
    # ddpm.py: the variational bound, all T terms
    q, wall, cpu = run(ddpm, ["--uncond", "--bpd", str(n), "--n-eval", n_eval,
                              "--out", str(work / "ddpm")] + own("ddpm", quick))
    T = common.load_checkpoint(work / "ddpm" / "ckpt.pt", ("ddpm",))["args"]["T"]
    r = row("diffusion", "ddpm.py", [q["bits_per_dim"]], "bound",
            f"variational bound, all {T} terms, reverse variance {q['bpd_variance']} "
            f"({', '.join(f'{k} {v:.3f}' for k, v in q['bits_per_dim_by_variance'].items())})")
    r.update(stderr=q["bits_per_dim_stderr"], train_cpu_s=cpu)
    rows.append(r)
    return rows


def markdown(res):
    """The rows by bits/dim, each with its kind (exact, bound, estimate) and how it is computed."""
    rows = []
    for r in sorted(res["rows"], key=lambda r: r["bpd"]):
        kind, how = LABELS.get(r["model"], (r["kind"], r["how"]))
        rows.append([r["model"], r["file"], f"{r['bpd']:.3f}" + (f" +- {r['stderr']:.3f}" if r.get("stderr") else ""),
                     kind, how])
    what = (f"Held-out digits (the first {res.get('n', N)} of the fixed split), 17 levels, "
            "bits/dim; unconditional models at their files' default budgets, seed 0; +- the "
            "standard error over images")
    return "\n".join([bench.caption(res["machine"], COMMAND, what), "",
                      bench.table(["model", "file", "bits/dim", "kind", "how"], rows, ["l", "l", "r", "l", "l"])]) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default=str(bench.ROOT / "benchmarks" / "work" / "likelihood"), help="checkpoints go here")
    p.add_argument("--table", action="store_true", help="only print the table of results/likelihood.json")
    p.add_argument("--only", choices=["mar"], help="measure this file's rows alone, replacing them in the json")
    p.add_argument("--quick", action="store_true", help="smoke test in seconds: QUICK's budgets on "
                   "QUICK_N digits; the json goes to WORK (or --results)")
    p.add_argument("--results",
                   help="folder of the json (default benchmarks/results; with --quick, WORK)")
    args = p.parse_args(argv)
    if args.table:
        results = Path(args.results or bench.RESULTS)
    else:
        results = bench.results_dir(args, "likelihood.py")
    path, n, work = results / "likelihood.json", QUICK_N if args.quick else N, Path(args.work)
    if args.only:
        res = bench.read_json(path)
        kept = [r for r in res["rows"] if r["file"] != "mar.py"]
        res["rows"] = kept + measure_mar(work, n, args.quick)
        bench.write_json(path, res)
    elif not args.table:
        bench.write_json(path, {"machine": bench.machine(), "rows": measure(work, n, args.quick),
                                **({"n": n, "quick": True} if args.quick else {})})
    res = bench.read_json(path)
    print(markdown(res))
    return res


if __name__ == "__main__":
    main()
