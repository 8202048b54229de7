"""Benchmark of controlnet.py: ControlNet against the obvious alternative,
fine-tuning the whole base with the condition concatenated to x as extra input channels, at equal
compute, for both conditions (lowres, edges) on the bundled 8x8 digits.

Setup (single thread, OMP_NUM_THREADS=1; every model conditional on the class, as the defaults):
  base       one cfm.py model, unet width 16, batch 128, BASE_ITERS iterations, lr 2e-3 (cfm.py's
             digits budget); every method below starts from its EMA weights, exactly
  controlnet controlnet.ControlNet on the locked base: ITERS iterations, batch 128, lr 2e-3, warmup 200
  concat     ConcatNet below: a copy of the whole base, every weight trainable, its input convolution
             widened to x and the condition with the new weights at zero (so it too starts exactly at
             the base), fine-tuned with the same loss, batch, lr and warmup, (a) for ITERS iterations
             and (b) for as many iterations as fit in the ControlNet's measured training time (equal
             compute); its iterations are cheaper, the copy's backward pass being the difference
  evaluation the conditions and labels of 250 held-out digits (x_test[250:500]), the same noise for
             every method, midpoint x 10 steps: Frechet distance in the feature classifier's space
             against the 250 other held-out digits (x_test[:250]; against the digits the conditions
             came from it could beat its floor by copying) next to its floor (real vs real, mean +-
             sd over 20 draws), and control fidelity (lowres: MSE of the 4x4
             poolings of sample and source digit, 0 for the real digits; edges: IoU of the edge maps,
             1 for the real digits); the base sampled with the same labels and noise but no control is
             the reference. Each method is trained with SEEDS seeds; cells give mean +- sd over seeds.
  question   ControlNet's claim: it learns the control without losing the base's quality. It holds
             here when its fidelity approaches the concat model's while its FD stays at or below the
             base's; the tables say whether it does.

Outputs: benchmarks/results/controlnet.json (rendered by markdown()) and results/img/controlnet-lowres.png,
controlnet-edges.png (a row per condition: the condition, the base's sample, the ControlNet's, the concat
model's at equal time, all from the same noise and label, then the real digit it came from).

Run:
  OMP_NUM_THREADS=1 python benchmarks/bench_controlnet.py
  OMP_NUM_THREADS=1 python benchmarks/bench_controlnet.py --quick --work /tmp/cn   # smoke test in
                                                       # seconds: WORK/controlnet.json, WORK/img/
"""
import argparse
import copy
import statistics
import time
from pathlib import Path

import bench
import torch
import torch.nn as nn

import cfm  # the model files: bench puts the repository's root on sys.path
import common
import controlnet

COMMAND = "OMP_NUM_THREADS=1 python benchmarks/bench_controlnet.py"
CONDITIONS = ("lowres", "edges")  # controlnet.CONDITIONS, in the order of the tables

FULL = dict(base_iters=2000, iters=600, seeds=3, n=250, width=16, batch=128, steps=10)
QUICK = dict(base_iters=5, iters=3, seeds=1, n=30, width=8, batch=32, steps=2)


class ConcatNet(nn.Module):
    """The whole base, trainable, reading torch.cat([x, control], 1): the input convolution's new
    weights start at zero, so at initialisation it is the base exactly (no control: zeros)."""

    def __init__(self, base, control_channels):
        super().__init__()
        self.net = copy.deepcopy(base).requires_grad_(True)
        old = self.net.inp
        self.net.inp = nn.Conv2d(old.in_channels + control_channels, old.out_channels, 3, padding=1)
        with torch.no_grad():
            self.net.inp.weight.zero_()
            self.net.inp.weight[:, :old.in_channels] = old.weight
            self.net.inp.bias.copy_(old.bias)
        self.control_channels = control_channels

    def forward(self, x, t, y=None, control=None):
        if control is None:
            control = x.new_zeros(x.shape[0], self.control_channels, *x.shape[2:])
        return self.net(torch.cat([x, control], 1), t, y)


def train_args(out, iters, seed, width, batch):
    parser = common.add_args(argparse.ArgumentParser())
    args, _ = common.parse_args(parser, ["--iters", str(iters), "--seed", str(seed), "--out", str(out), "--width",
                                         str(width), "--batch-size", str(batch), "--device", "cpu",
                                         "--log-every", str(max(1, iters // 4)), "--ckpt-every", str(iters)],
                                "controlnet-bench")
    Path(out).mkdir(parents=True, exist_ok=True)
    return args


def evaluate(flow, net, data, x, y, noise, control, steps=10):
    """(samples, quality dict, mean fidelity) on the held-out conditions (control None: the
    base), sampled with the midpoint solver x steps."""
    samples = flow.sample(net, x.shape, steps, "midpoint", y, noise=noise, control=control)
    return samples, common.quality(data, samples), float(controlnet.fidelity(flow.control, samples, x).mean())


def mean_sd(values):
    values = [float(v) for v in values]
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else float("nan")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    bench.add_output_flags(parser, bench.ROOT / "runs" / "controlnet-bench")
    a = parser.parse_args(argv)
    B = QUICK if a.quick else FULL
    work = Path(a.work)
    results = bench.results_dir(a, "bench_controlnet.py")
    (results / "img").mkdir(parents=True, exist_ok=True)
    data = common.load_data("digits")
    base_seconds = bench.run(cfm.main, ["--iters", str(B["base_iters"]), "--width", str(B["width"]), "--batch-size",
                                        str(B["batch"]), "--out", str(work / "base"), "--n-eval", "0", "--device", "cpu",
                                        "--log-every", "500"])["train_seconds"]
    base = common.ema_net(common.load_checkpoint(work / "base" / "ckpt.pt", ("cfm",)), data, time_scale=1000.0)
    x, y = data.x_test[B["n"]:2 * B["n"]], data.y_test[B["n"]:2 * B["n"]]  # quality is against x_test[:n]
    rows = []
    for kind in CONDITIONS:
        flow = controlnet.FlowMatching(kind)
        control = flow.condition(x)
        for seed in range(B["seeds"]):
            noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 1))
            # the base: no control
            samples, q, fid = evaluate(flow, base, data, x, y, noise, None, B["steps"])
            pictures = [control.expand(-1, data.shape[0], -1, -1), samples]
            rows.append(dict(control=kind, method="base", seed=seed, iters=0, train_seconds=0.0, fd=q["value"],
                             floor=q["floor"], floor_sd=q["floor_sd"], fidelity=fid))
            seconds = {}
            for method, cls in (("controlnet", controlnet.ControlNet), ("concat, equal iterations", ConcatNet),
                                ("concat, equal time", ConcatNet)):
                iters = B["iters"]
                if method == "concat, equal time":  # the ControlNet's training time at the concat model's rate
                    iters = max(1, round(B["iters"] * seconds["controlnet"] / seconds["concat, equal iterations"]))
                args = train_args(work / kind / f"{method.replace(', ', '-').replace(' ', '-')}-{seed}", iters, seed,
                                  B["width"], B["batch"])
                t1 = time.time()
                net = common.train(cls(copy.deepcopy(base), control.shape[1]), flow.loss, data, args)
                seconds[method] = time.time() - t1
                samples, q, fid = evaluate(flow, net, data, x, y, noise, control, B["steps"])
                rows.append(dict(control=kind, method=method, seed=seed, iters=iters, train_seconds=seconds[method],
                                 fd=q["value"], floor=q["floor"], floor_sd=q["floor_sd"], fidelity=fid))
                if method != "concat, equal iterations":
                    pictures.append(samples)
            if seed == 0:  # rows: condition, base, ControlNet, concat (equal time), the real digit
                k = min(10, len(x))
                grid = torch.stack([p[:k] for p in pictures] + [x[:k]], 1)
                common.save_grid(grid.flatten(0, 1), results / "img" / f"controlnet-{kind}.png", nrow=grid.shape[1])
    result = {"budgets": B, "base_seconds": base_seconds, "machine": bench.machine(), "rows": rows,
              "quick": a.quick}
    bench.write_json(results / "controlnet.json", result)
    print(markdown(result))
    return result


def markdown(result):
    """One table: per condition and method, mean +- sd over seeds of fidelity and FD."""
    B, rows = result["budgets"], result["rows"]
    out = []
    for kind in CONDITIONS:
        for method in ("base", "controlnet", "concat, equal iterations", "concat, equal time"):
            rs = [r for r in rows if r["control"] == kind and r["method"] == method]
            f, fsd = mean_sd(r["fidelity"] for r in rs)
            d, dsd = mean_sd(r["fd"] for r in rs)
            out.append([kind, method, f"{mean_sd(r['iters'] for r in rs)[0]:.0f}",
                        f"{mean_sd(r['train_seconds'] for r in rs)[0]:.1f}", f"{f:.4f} +- {fsd:.2g}",
                        f"{d:.2f} +- {dsd:.2g}"])
    what = (f"Digits 8x8, base cfm.py {B['base_iters']} iterations ({result['base_seconds']:.0f} s), width {B['width']}, "
            f"batch {B['batch']}; n = {B['n']} held-out conditions; mean +- sd over {B['seeds']} seed(s). Fidelity: "
            "lowres MSE (0 for the real digits; lower is better), edges IoU (1 for the real digits; higher is better); "
            f"FD floor (real vs real) {rows[0]['floor']:.2f} +- {rows[0]['floor_sd']:.2g}")
    pictures = " ".join(f"![{kind}: condition, base, ControlNet, concat at equal time, real digit]"
                        f"(results/img/controlnet-{kind}.png)" for kind in CONDITIONS)
    return "\n".join([bench.caption(result.get("machine"), COMMAND, what), "",
                      bench.table(["condition", "method", "iterations", "train s", "fidelity", "FD"], out,
                                  ["l", "l", "r", "r", "r", "r"]), "",
                      "Seed 0's samples, one row per held-out condition; columns: the condition, the base, the "
                      "ControlNet, the concat model at equal time, the real digit:", "", pictures]) + "\n"


if __name__ == "__main__":
    main()
