"""The small-scale analogue of the rectified-flow table in the lecture "Advanced Generative Models: From
VAE to Diffusion and Flow Matching" (NICE Lab, Zhejiang University, 2026), quoted there from Liu, Gong &
Liu (arXiv:2209.03003; CIFAR-10, FID):

    model                 1 step (+distill)     many steps (RK45)
    1-rectified flow      378   (6.18)          2.58
    2-rectified flow      12.21 (4.85)          3.36

Here: unconditional models on 8gaussians (exact W2) and on the bundled 8x8 digits (Frechet
distance in a small classifier's features), each trained by the command line of
rectified_flow.py in four stages with fixed budgets: 1-RF; 2-RF on pairs from 1-RF's ODE (started
from 1-RF's weights); one-step distillation of 1-RF and of 2-RF on pairs from their own ODEs.
Every model is then sampled from the same noise with 1 Euler step and with MANY steps; the
straightness S and the transport cost E||Z1 - Z0||^2 of its coupling are measured along the
MANY-step Euler paths.

A stage's training seconds come from the dict rectified_flow.main returns; its pairs are timed by
wrapping rectified_flow.make_pairs.

Run (single-threaded; writes benchmarks/results/rectified_flow.json, with the time it took; the
stages' checkpoints go to WORK, default runs/bench-rectified_flow, not tracked):
  OMP_NUM_THREADS=1 python benchmarks/bench_rectified_flow.py
  python benchmarks/bench_rectified_flow.py --table    # print the table of the json
  python benchmarks/bench_rectified_flow.py --quick --work /tmp/rf   # smoke test in seconds:
                                                       # QUICK's budgets, WORK/rectified_flow.json
"""
import argparse
import os
import shutil
import time
from pathlib import Path

import bench
import torch

import common  # the model files: bench puts the repository's root on sys.path
import rectified_flow
from rectified_flow import RectifiedFlow, transport_cost

COMMAND = "OMP_NUM_THREADS=1 python benchmarks/bench_rectified_flow.py"

MANY = 100  # Euler steps of the "many steps" column (the paper's RK45 took 104-127)
BUDGETS = {  # per data set: iterations of each stage, pairs, the pairs' Euler steps, samples evaluated
    "8gaussians": dict(rf1=1500, rf2=1000, distill=500, n_pairs=10000, pair_steps=100, n_eval=1000),
    "digits": dict(rf1=1500, rf2=800, distill=400, n_pairs=3000, pair_steps=50, n_eval=500),
}
# --quick: a smoke test of the code paths (narrow networks, a few iterations, QUICK_MANY steps)
QUICK = {
    "8gaussians": dict(rf1=4, rf2=2, distill=2, n_pairs=64, pair_steps=4, n_eval=50,
                       flags=["--width", "16", "--batch-size", "32"]),
    "digits": dict(rf1=3, rf2=2, distill=2, n_pairs=64, pair_steps=4, n_eval=50,
                   flags=["--width", "8", "--batch-size", "32"]),
}
QUICK_MANY = 10


def timed_stage(argv, timings):
    """Run rectified_flow.main(argv); wall and CPU seconds of the whole stage and of its pairs."""
    make_pairs = rectified_flow.make_pairs

    def timed_pairs(*a, **k):
        t0 = time.time()
        out = make_pairs(*a, **k)
        timings["pairs_s"] = time.time() - t0
        return out
    rectified_flow.make_pairs = timed_pairs
    try:
        t0, c0 = time.time(), time.process_time()
        q = rectified_flow.main(argv) or {}
        timings.update(stage_s=time.time() - t0, stage_cpu_s=time.process_time() - c0)
    finally:
        rectified_flow.make_pairs = make_pairs
    timings["train_s"] = q.get("train_seconds", timings["stage_s"] - timings.get("pairs_s", 0.0))
    return timings


def evaluate(ckpt_path, data, noise, steps):
    """Quality of the checkpoint's EMA network with `steps` Euler steps from `noise`, and for
    steps > 1 the straightness and transport cost along those paths."""
    net = rectified_flow.teacher_net(common.load_checkpoint(ckpt_path, ("rectified_flow",)), data)
    flow = RectifiedFlow()
    t0 = time.time()
    x = flow.sample(net, noise.shape, steps, noise=noise)
    row = {"nfe": steps, "sample_s": time.time() - t0, "quality": common.quality(data, x)}
    if steps > 1:
        row["straightness"] = flow.straightness(net, noise, steps)
        row["transport_cost"] = transport_cost(noise, x)
    return row


def measure(name, budget, root, many=MANY):
    root = root / name
    shutil.rmtree(root, ignore_errors=True)
    data = common.load_data(name)
    # every stage: the same network flags (a student repeats its teacher's), no evaluation of its own
    common_flags = ["--data", name, "--uncond", "--n-eval", "0", "--log-every", "250", "--seed", "0"]
    common_flags += budget.get("flags", [])
    ck = {k: str(root / k / "ckpt.pt") for k in ("rf1", "rf2", "rf1_distill", "rf2_distill")}
    pairs = ["--n-pairs", str(budget["n_pairs"]), "--pair-steps", str(budget["pair_steps"])]
    stages = {}
    stages["rf1"] = timed_stage(["--iters", str(budget["rf1"]), "--out", str(root / "rf1")] + common_flags, {})
    stages["rf2"] = timed_stage(["--reflow-from", ck["rf1"], "--iters", str(budget["rf2"]), "--out", str(root / "rf2")]
                                + pairs + common_flags, {})
    (root / "rf1_distill").mkdir(parents=True)  # the same pairs of 1-RF serve its distillation
    shutil.copy(root / "rf2" / "pairs.pt", root / "rf1_distill" / "pairs.pt")
    stages["rf1_distill"] = timed_stage(["--distill-from", ck["rf1"], "--iters", str(budget["distill"]),
                                         "--out", str(root / "rf1_distill")] + pairs + common_flags, {"pairs_s": 0.0})
    stages["rf2_distill"] = timed_stage(["--distill-from", ck["rf2"], "--iters", str(budget["distill"]),
                                         "--out", str(root / "rf2_distill")] + pairs + common_flags, {})
    noise = torch.randn((budget["n_eval"],) + data.shape, generator=torch.Generator().manual_seed(123))
    rows = []
    for model, label in (("rf1", "1-RF"), ("rf1_distill", "1-RF + distill"), ("rf2", "2-RF"), ("rf2_distill", "2-RF + distill")):
        for steps in ((1,) if "distill" in model else (1, many)):
            rows.append(dict(data=name, model=label, **evaluate(ck[model], data, noise, steps), **stages[model]))
            q = rows[-1]["quality"]
            print(f"{name:10s} {label:15s} NFE {steps:3d}: {common.format_quality(q)}", flush=True)
    x1 = data.x_test[:budget["n_eval"]]
    independent = transport_cost(noise, x1)  # the 1-RF's training coupling: noise and data drawn independently
    return {"budget": budget, "rows": rows, "independent_cost": independent}


def markdown(res):
    """One row per model of both data sets: quality at 1 and MANY steps, the MANY-step paths' straightness
    and transport cost, and its stage's cost."""
    rows = []
    for name, part in res["results"].items():
        for model in dict.fromkeys(r["model"] for r in part["rows"]):
            rs = {r["nfe"]: r for r in part["rows"] if r["model"] == model}
            one, many = rs.get(1), rs.get(res["many_steps"])
            quality = lambda r: f"{r['quality']['value']:.4g}" if r else ""
            r = many or one
            rows.append([name, model, quality(one), quality(many),
                         f"{many['straightness']:.4f}" if many else "", f"{many['transport_cost']:.3f}" if many else "",
                         f"{r['stage_s']:.0f} ({r['stage_cpu_s']:.0f})", f"{r['pairs_s']:.0f}" if "pairs_s" in r else ""])
        rows.append([name, "independent coupling (data, noise)", "", "", "", f"{part['independent_cost']:.3f}", "", ""])
    floors = "; ".join(f"{n} {p['rows'][0]['quality']['metric']} {p['rows'][0]['quality']['floor']:.3f}"
                       for n, p in res["results"].items())
    budgets = "; ".join(f"{n}: {r['budget']['rf1']} / {r['budget']['rf2']} / {r['budget']['distill']}, "
                        f"{r['budget']['n_pairs']} x {r['budget']['pair_steps']}" for n, r in res["results"].items())
    what = ("Rectified flow, reflow and distillation: unconditional, Euler, the same noise for every model; floor (one "
            f"draw of real against real): {floors}; a stage is one run of rectified_flow.py, its pairs made once (the "
            "1-RF distillation reuses 2-RF's), wall seconds on a shared machine (CPU seconds in brackets). Iterations of "
            f"1-RF / 2-RF / each distillation, pairs x Euler steps: {budgets}")
    many = res["many_steps"]
    return "\n".join([bench.caption(res["machine"], COMMAND, what), "", bench.table(
        ["data", "model", "quality, 1 step", f"quality, {many} steps", f"straightness S ({many} steps)",
         "E\\|\\|Z1 - Z0\\|\\|^2", "stage s (CPU s)", "of which pairs s"], rows, ["l", "l"] + ["r"] * 6)]) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    bench.add_output_flags(parser, bench.ROOT / "runs" / "bench-rectified_flow")
    parser.add_argument("--table", action="store_true",
                        help="only print the table of results/rectified_flow.json")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown(bench.read_json(Path(args.results or bench.RESULTS)
                                       / "rectified_flow.json")))
        return None
    results_dir = bench.results_dir(args, "bench_rectified_flow.py")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    t0 = time.time()
    budgets, many = (QUICK, QUICK_MANY) if args.quick else (BUDGETS, MANY)
    results = {name: measure(name, budget, Path(args.work), many)
               for name, budget in budgets.items()}
    res = {"machine": bench.machine(), "many_steps": many, "results": results,
           "total_s": time.time() - t0, "quick": args.quick}
    bench.write_json(results_dir / "rectified_flow.json", res)
    print(markdown(res))
    print(f"total {time.time() - t0:.0f}s")
    return res


if __name__ == "__main__":
    main()
