"""The GPU path in one unattended command: speed, memory and efficiency of every model file.

  python benchmarks/gpu.py                        # on a GPU: under 10 minutes; writes results/gpu.json
  python benchmarks/gpu.py --device cpu --quick   # the same code paths on a CPU, no compile, under
                                                  # a minute; the json to runs/bench-gpu (or --out)
  python benchmarks/gpu.py --parts syncs,compile --data cifar10 --models ddpm,ar   # a part of it
                                                  # (tests/test_gpu_benchmark.py runs it so that it never rots)

The eager cases come first (about 5 minutes on an H100), then the end-to-end runs, then the
compiled cases, each cut at --compile-limit seconds and all skipped past --budget; the json is
rewritten after every case, so a run stopped early keeps what it measured (--name names the file).

What it measures, per model file (ddim.py trains exactly as ddpm.py and rectified_flow.py as cfm.py;
they are listed for their samplers):
  - training iterations/s and images/s, and peak memory (torch.cuda.max_memory_allocated), for fp32
    eager (TF32 matmuls, as common.setup_precision sets), bf16 autocast, and bf16 + torch.compile, on
    batches shaped like digits (1x8x8), MNIST (1x28x28) and CIFAR-10 (3x32x32), made in memory
    (speed only: no download); the step is common.train's (AdamW, clipping, EMA update);
  - sampling images/s at the file's default number of network calls (NFE);
  - FLOPs of one training step (torch.utils.flop_counter.FlopCounterMode), the achieved FLOP/s and
    the model FLOPs utilisation (MFU) against the device's dense peak (bf16 for bf16 rows, TF32 for
    fp32 rows; "n/a" for devices not in PEAKS);
  - host-device synchronisations in common.train's steps (torch.cuda.set_sync_debug_mode);
  - MeanFlow's JVP target under bf16 autocast against fp32, for both tangents, on a network whose
    zero-initialised parameters (the output convolution among them) are re-drawn with a fixed seed;
  - `python ddpm.py --device cuda` end to end (wall time and the quality it writes to OUT/metrics.jsonl), and
    `torchrun --nproc_per_node 1` (NCCL on a GPU, gloo on a CPU) for ddpm.py and meanflow.py.
Each case runs in a try block: a failure is a row saying so, not the end of the run. Every meanflow
row records meanflow.py's tangent; markdown() marks the rows whose tangent is not meanflow.py's default.
"""
import argparse
import contextlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import bench
import torch
from torch.utils.flop_counter import FlopCounterMode

import ar  # the model files: bench puts the repository's root on sys.path
import cfm
import common
import ddim
import ddpm
import meanflow
import rectified_flow
import vae

ROOT = bench.ROOT
# the result files and the commands that wrote them (a file written by this script records its own command)
FILES = {"gpu.json": "python benchmarks/gpu.py",
         "gpu_compile_run1.json": "python benchmarks/gpu.py --parts syncs,compile --data cifar10,digits "
                                  "--models ddpm,ar,meanflow,cfm,vae --name gpu_compile_run1.json",
         "gpu_compile_run2.json": "python benchmarks/gpu.py --parts eager,compile --data digits,cifar10 --models ddpm "
                                  "--compile-limit 150 --name gpu_compile_run2.json"}
# meanflow.py's tangent in the files whose rows record none, and the code it ran (the commit that added the file)
TANGENT_OF = {"gpu.json": ("sample", "the paper's tangent with the JVP on every pair (meanflow.py of commit 91c5570)"),
              "gpu_compile_run1.json": ("model", "iMF's tangent (meanflow.py of commit aa5ec6f)")}

# dense peak FLOP/s (no sparsity) by device-name substring: (bf16, tf32); SXM figures for H100/H200
PEAKS = {"H200": (989.4e12, 494.7e12), "H100 PCIe": (756.5e12, 378e12), "H100": (989.4e12, 494.7e12),
         "A100": (312e12, 156e12), "L40S": (362e12, 183e12), "A10G": (70e12, 35e12), "L4": (121e12, 60e12)}
SHAPES = {"digits": ((1, 8, 8), 17, 16), "mnist": ((1, 28, 28), 16, 32), "cifar10": ((3, 32, 32), 16, 64)}
MODES = ("fp32", "bf16", "bf16+compile")


def workload(name, shape, levels, width, num_classes, device, quick):
    """(network, loss(net, x, y), sample(net, y, generator), NFE) of a model file at its defaults."""
    def unet(two_times=False, time_scale=1.0):
        return common.make_net("unet", shape, width, num_classes, two_times, time_scale).to(device)
    if name in ("ddpm", "ddim"):
        method = (ddpm.DDPM if name == "ddpm" else ddim.DDIM)(20 if quick else 1000)
        steps = method.T if name == "ddpm" else min(50, method.T)
        sample = ((lambda net, y, g: method.sample(net, (len(y), *shape), y, generator=g)) if name == "ddpm" else
                  (lambda net, y, g: method.sample(net, (len(y), *shape), steps, y=y, generator=g)))
        return unet(), method.loss, sample, steps
    if name in ("cfm", "rectified_flow"):
        net = unet(time_scale=1000.0)
        if name == "cfm":
            method, steps = cfm.CFM(), 2 if quick else 10
            return net, method.loss, lambda net, y, g: method.sample(net, (len(y), *shape), steps, "midpoint", y,
                                                                     generator=g), 2 * steps
        method, steps = rectified_flow.RectifiedFlow(), 2 if quick else 100
        return net, method.loss, lambda net, y, g: method.sample(net, (len(y), *shape), steps, y, generator=g), steps
    if name == "meanflow":
        method = meanflow.MeanFlow()
        method.null_class = num_classes
        return (unet(two_times=True, time_scale=10.0), method.loss,
                lambda net, y, g: method.sample(net, (len(y), *shape), 1, y, generator=g), 1)
    if name == "vae":
        model = vae.VAE(shape, 16, 128, levels, 4).to(device)
        return model, vae.VAE.loss, lambda net, y, g: net.sample(len(y), generator=g), 1
    if name == "ar":
        model = ar.AR(levels, math.prod(shape), num_classes, dim=4 * width, depth=2, heads=4).to(device)
        return (model, lambda net, x, y: ar.AR.loss(net, ar.to_tokens(x, levels), y),
                lambda net, y, g: net.sample(len(y), y, 1.0, g), math.prod(shape))
    raise ValueError(name)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batch(shape, levels, n, num_classes, device, g):
    x = torch.randint(0, levels, (n, *shape), generator=g).float() / (levels - 1) * 2 - 1  # on the data's grid
    return x.to(device), torch.randint(0, num_classes, (n,), generator=g).to(device)


def measure(name, data, mode, args, device, peaks):
    """One row: training and sampling throughput, memory, FLOPs, MFU."""
    shape, levels, width = SHAPES[data]
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net, loss_fn, sample, nfe = workload(name, shape, levels, width, 10, device, args.quick)
    x, y = batch(shape, levels, args.batch, 10, device, g)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    ema = common.make_ema(net, 0.999)
    model = common.LossModule(torch.compile(net) if mode == "bf16+compile" else net, loss_fn)
    amp = "bf16" if mode.startswith("bf16") else "none"

    def step():  # common.train's step
        with common.autocast(device, amp):
            loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        ema.update_parameters(net)
        return loss

    with FlopCounterMode(display=False) as counter:  # one eager step, forward and backward
        with common.autocast(device, amp):
            loss_fn(net, x, y).backward()
    flops = counter.get_total_flops()
    opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(args.warmup):  # compile happens here
        step()
    sync(device)
    t_warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.iters):
        loss = step()
    sync(device)
    it_s = args.iters / (time.perf_counter() - t0)
    mem = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    ys = y[:args.n_sample]
    gen = torch.Generator(device).manual_seed(1)
    with torch.no_grad(), common.autocast(device, amp):  # warm already: training ran these layers
        sync(device)
        t0 = time.perf_counter()
        out = sample(ema.module, ys, gen)
        sync(device)
    sample_s = time.perf_counter() - t0
    peak = peaks[0 if amp == "bf16" else 1] if peaks else None
    recipe = {"tangent": loss_fn.__self__.tangent} if name == "meanflow" else {}
    return {"model": name, "data": data, "mode": mode, "batch": args.batch, "it_s": it_s, "img_s": it_s * args.batch, **recipe,
            "warmup_s": t_warm, "peak_mem_mib": mem, "flops_per_it": flops, "tflops": flops * it_s / 1e12,
            "mfu": flops * it_s / peak if peak else None, "nfe": nfe, "sample_img_s": len(ys) / sample_s,
            "loss_finite": bool(torch.isfinite(loss).item()), "samples_finite": bool(torch.isfinite(out.float()).all())}


def count_syncs(device, quick):
    """Host-device synchronisations per step of common.train (none expected): the warnings of
    torch.cuda.set_sync_debug_mode in a run of 2n steps minus those in a run of n steps, over n (both
    runs end with one log, whose .item() syncs, and one checkpoint, whose device-to-host copies do)."""
    if device.type != "cuda":
        return {"syncs": "n/a (CPU)"}
    data = common.Dataset("digits-like", *batch((1, 8, 8), 17, 512, 10, torch.device("cpu"), torch.Generator().manual_seed(0)),
                          *batch((1, 8, 8), 17, 64, 10, torch.device("cpu"), torch.Generator().manual_seed(1)), 10, 17)

    def warnings_in(iters):
        with tempfile.TemporaryDirectory() as out:
            args = SimpleNamespace(model="ddpm", out=out, iters=iters, batch_size=128, lr=1e-4, warmup=10, grad_clip=1.0,
                                   ema_decay=0.999, uncond=False, p_uncond=0.1, log_every=10 * iters,
                                   ckpt_every=10 * iters, seed=0, amp="bf16", compile=False)
            net = common.make_net("unet", (1, 8, 8), 16, 10).to(device)
            with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(open(os.devnull, "w")):
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    common.train(net, ddpm.DDPM(1000).loss, data, args)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
        return [str(w.message).splitlines()[0] for w in caught if "synchronizing CUDA operation" in str(w.message)]

    n = 10
    short, long = warnings_in(n), warnings_in(2 * n)
    per_step = (len(long) - len(short)) / n
    return {"per_step": per_step, "at_the_end": len(short) - n * per_step, "steps": [n, 2 * n]}


def meanflow_jvp_precision(device):
    """MeanFlow's target under bf16 autocast against float32, per tangent: its relative error, and how far
    the target is from v (the size of the part the check tests). A freshly built network outputs 0 (its
    output convolution starts at zero), and then the target is v in any precision: every parameter that
    starts at zero is re-drawn with a fixed seed first, as tests/test_meanflow.py does."""
    torch.manual_seed(0)
    net = common.make_net("unet", (1, 8, 8), 16, 10, two_times=True, time_scale=10.0).to(device)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g).to(device))
    z, v = torch.randn(64, 1, 8, 8, device=device), torch.randn(64, 1, 8, 8, device=device)
    r, t = torch.rand(64, device=device), torch.rand(64, device=device) * 0.5
    y = torch.randint(0, 10, (64,), device=device)
    out = {"network": "unet width 16, zero-initialised parameters re-drawn (seed 1)"}
    with torch.no_grad():  # autocast does round this network's forward
        u = net(z, t, t, y)
        with common.autocast(device, "bf16"):
            u_low = net(z, t, t, y).float()
    out["forward_rel_err_bf16"] = float((u_low - u).norm() / u.norm())
    for tangent in ("sample", "model"):
        method = meanflow.MeanFlow(tangent=tangent)
        ref = method.target(net, z, r, t, v, y)
        try:
            with common.autocast(device, "bf16"):
                low = method.target(net, z, r, t, v, y)
            out[tangent] = {"rel_err_bf16": float((low.float() - ref).norm() / ref.norm()),
                            "target_vs_v": float((ref - v).norm() / v.norm())}
        except Exception as e:
            out[tangent] = {"fails": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}
    return out


def run_cli(argv, out, timeout=600):
    """A model file's command line in a subprocess: its exit status, wall seconds, and the last quality it
    wrote to OUT/metrics.jsonl (its last line of output where it failed)."""
    t0 = time.time()
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    res = {"rc": done.returncode, "wall_s": time.time() - t0}
    metrics = Path(out) / "metrics.jsonl"
    evals = [json.loads(l)["eval"] for l in metrics.read_text().splitlines() if '"eval"' in l] if metrics.exists() else []
    if evals:
        res["quality"] = {k: evals[-1].get(k) for k in ("metric", "value", "floor", "floor_sd", "n", "memorised")}
    if done.returncode:
        res["error"] = ((done.stdout + done.stderr).strip().splitlines() or [""])[-1]
    return res


def end_to_end(device, quick):
    dev = "cuda" if device.type == "cuda" else "cpu"
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tiny = ["--iters", "10", "--T", "20", "--n-eval", "50", "--width", "8", "--batch-size", "32"] if quick else []
        out["ddpm default run"] = run_cli(["ddpm.py", "--device", dev, "--out", f"{tmp}/ddpm"] + tiny, f"{tmp}/ddpm")
        for name in ("ddpm", "meanflow"):
            flags = ["--device", dev, "--n-eval", "0", "--log-every", "2", "--out", f"{tmp}/ddp-{name}"]
            flags += ["--iters", "4", "--width", "8", "--batch-size", "32"] if quick else ["--iters", "20"]
            r = run_cli(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", f"{name}.py"] + flags,
                        f"{tmp}/ddp-{name}")
            losses = [json.loads(l)["loss"] for l in open(f"{tmp}/ddp-{name}/metrics.jsonl") if '"loss"' in l] \
                if Path(f"{tmp}/ddp-{name}/metrics.jsonl").exists() else []
            r.update(backend="nccl" if dev == "cuda" else "gloo", ckpt=Path(f"{tmp}/ddp-{name}/ckpt.pt").exists(),
                     loss_finite=bool(losses) and all(math.isfinite(v) for v in losses))
            out[f"torchrun {name}"] = r
    return out


def stale(name, row):
    """Why a meanflow row does not measure meanflow.py's default ('' where it does)."""
    tangent, words = ((row["tangent"], f"--tangent {row['tangent']}") if row.get("tangent") else
                      TANGENT_OF.get(name, (None, "a tangent the file does not record")))
    return "" if tangent == meanflow.MeanFlow().tangent else words


def markdown(files):
    """files: {file name: its json}, the first the main run. Its cases as one table, the modes side by side;
    every other file's cases as a list; then the synchronisations, MeanFlow's bf16 target and the end-to-end
    runs. A meanflow row that does not measure meanflow.py's default is marked, with what it measured."""
    fmt = lambda v, f: "n/a" if v is None else format(v, f)
    mfu = lambda r: f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "n/a"
    notes, lines, zero_output = {}, [], []

    def model(name, r):  # the model's name, with a footnote mark where the row is stale
        why = stale(name, r) if r["model"] == "meanflow" else ""
        if not why:
            return r["model"]
        mark = notes.setdefault(why, f"[{len(notes) + 1}]")
        return f"{r['model']} {mark}"

    for k, (name, res) in enumerate(files.items()):
        command = res.get("command") or FILES.get(name, f"python benchmarks/gpu.py --name {name}")
        lines += [bench.caption({"gpu": res.get("device"), "torch": res.get("torch")}, command,
                                f"{name}: batch {res['batch']}, {'quick (CPU smoke run)' if res['quick'] else 'full'} "
                                f"run of {res['total_s']:.0f} s"), ""]
        if k == 0:  # the main run: one row per model and data, the modes side by side
            modes = [m for m in MODES if any(r["mode"] == m for r in res["rows"])]
            keys = list(dict.fromkeys((r["model"], r["data"]) for r in res["rows"]))
            rows = []
            for m, d in keys:
                cells = {r["mode"]: r for r in res["rows"] if (r["model"], r["data"]) == (m, d)}
                ok = next((r for r in cells.values() if "error" not in r), None)
                row = [model(name, next(iter(cells.values()))), d, f"{ok['flops_per_it'] / 1e9:.2f}" if ok else "",
                       ok["nfe"] if ok else ""]
                for mode in modes:
                    r = cells.get(mode)
                    row += (["", "", "", ""] if r is None else [r["error"], "", "", ""] if "error" in r else
                            [f"{r['it_s']:.1f}", mfu(r), fmt(r["peak_mem_mib"], ".0f"), f"{r['sample_img_s']:.0f}"])
                rows.append(row)
            header = ["model", "data", "GFLOP / step", "NFE"] + [f"{mode} {x}" for mode in modes
                                                               for x in ("it/s", "MFU", "peak MiB", "sample img/s")]
            lines += [bench.table(header, rows, ["l", "l"] + ["r"] * (len(header) - 2)), ""]
        else:
            rows = [[model(name, r), r["data"], r["mode"]] + (
                [r["error"], "", "", "", ""] if "error" in r else
                [f"{r['it_s']:.1f}", mfu(r), fmt(r["peak_mem_mib"], ".0f"), f"{r['sample_img_s']:.0f}",
                 f"{r['warmup_s']:.1f}"]) for r in res["rows"]]
            lines += [bench.table(["model", "data", "mode", "it/s", "MFU", "peak MiB", "sample img/s",
                                   "warm-up s (compilation)"], rows, ["l", "l", "l", "r", "r", "r", "r", "r"]), ""]
        syncs = res.get("syncs")
        if isinstance(syncs, dict) and "per_step" in syncs:
            lines.append(f"- Host-device synchronisations in common.train: {syncs['per_step']:g} per step, "
                         f"{syncs['at_the_end']:g} at the end (the last log's .item() and the checkpoint's copies), "
                         f"from runs of {syncs['steps'][0]} and {syncs['steps'][1]} steps.")
        jvp = res.get("meanflow_jvp")
        if jvp and "network" not in jvp:
            zero_output.append(name)
        if isinstance(jvp, dict) and "network" in jvp:
            lines.append(f"- MeanFlow's target under bf16 autocast against float32 ({jvp['network']}; bf16 moves this "
                         f"network's forward by {jvp['forward_rel_err_bf16']:.1e}): " + "; ".join(
                             f"--tangent {t}: " + (jvp[t]["fails"] if "fails" in jvp[t] else
                                                   f"relative error {jvp[t]['rel_err_bf16']:.1e} (the target differs "
                                                   f"from v by {jvp[t]['target_vs_v']:.2f} of v)")
                             for t in ("sample", "model") if t in jvp) + ".")
        for what, v in res.get("end_to_end", {}).items():
            q = v.get("quality")
            got = (f"; {q['metric']} {q['value']:.4g} (floor {q['floor']:.4g} +- {q['floor_sd'] or 0:.2g}, n = {q['n']})"
                   if q else f"; {v.get('error') or v.get('line')}" if v.get("error") or v.get("line") else "")
            lines.append(f"- {what}: exit status {v['rc']}, {v['wall_s']:.1f} s wall{got}"
                         + (f"; {v['backend']}, checkpoint written: {v['ckpt']}" if "backend" in v else "") + ".")
        lines.append("") if lines[-1] else None
    lines += [f"{mark} Measured with {why}, not meanflow.py's default (--tangent {meanflow.MeanFlow().tangent}); "
              "not re-measured." for why, mark in notes.items()]
    if zero_output:
        lines += [""] if notes else []
        lines.append(f"MeanFlow's bf16 target check of {' and '.join(zero_output)} is not shown: it ran on a freshly built "
                     "network, whose zero output layer makes the target v in any precision; `--parts syncs` measures it "
                     "on a network whose zero-initialised parameters are re-drawn.")
    return "\n".join(lines).rstrip("\n") + "\n"


def table(res, name="gpu.json"):
    """One run's markdown (what a run prints when it ends)."""
    return markdown({name: res})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes: every file on digits in fp32, one bf16 and one "
                   "CIFAR-shaped case, no compile")
    p.add_argument("--out", help="folder for the json (default benchmarks/results; with --quick, "
                   "runs/bench-gpu: a quick run never writes into benchmarks/results/)")
    p.add_argument("--name", default="gpu.json", help="the json's file name (default gpu.json)")
    p.add_argument("--budget", type=float, default=420.0, help="seconds after which compile cases are skipped")
    p.add_argument("--compile-limit", type=float, default=60.0, help="seconds one compiled case may take")
    p.add_argument("--parts", default="eager,syncs,e2e,compile", help="which parts to run, in this order: eager "
                   "cases, sync count and JVP precision, end-to-end runs, compiled cases")
    p.add_argument("--data", default=",".join(SHAPES), help="batch shapes, in the order to run them")
    p.add_argument("--models", default="ddpm,ddim,cfm,rectified_flow,meanflow,vae,ar", help="model files to measure")
    args = p.parse_args(argv)
    args.work, args.results = str(bench.ROOT / "runs" / "bench-gpu"), args.out
    args.out = str(bench.results_dir(args, "gpu.py"))
    device = common.get_device(args.device)
    common.setup_precision(device)
    args.batch, args.iters, args.warmup, args.n_sample = (8, 1, 1, 4) if args.quick else (256, 20, 5, 256)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    peaks = next((v for k, v in PEAKS.items() if k in name), None) if device.type == "cuda" else None
    t_start = time.time()
    parts, models, datas = (set(args.parts.split(",")), args.models.split(","), args.data.split(","))
    if not parts <= {"eager", "syncs", "e2e", "compile"} or not set(datas) <= set(SHAPES):
        p.error(f"--parts takes eager,syncs,e2e,compile and --data {','.join(SHAPES)}")
    cases = ([(m, "digits", "fp32") for m in models] + [("meanflow", "digits", "bf16"), ("ddpm", "cifar10", "fp32")]
             if args.quick else
             [(m, d, mode) for mode in MODES for d in datas for m in models])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"device": name, "torch": torch.__version__, "batch": args.batch, "quick": args.quick,
           "command": "python benchmarks/gpu.py " + " ".join(argv if argv is not None else sys.argv[1:]), "rows": []}

    def write():  # after every stage, so that a run cut short still leaves its rows
        res["total_s"] = time.time() - t_start
        bench.write_json(out / args.name, res)

    def case(m, d, mode):
        try:
            with time_limit(args.compile_limit if mode == "bf16+compile" else None):
                row = measure(m, d, mode, args, device, peaks)
        except Exception as e:  # a row saying what failed, then on with the rest
            row = {"model": m, "data": d, "mode": mode, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}
        res["rows"].append(row)
        print(json.dumps(row), flush=True)
        write()

    for m, d, mode in cases:  # eager first; compiled cases come after the end-to-end runs
        if mode != "bf16+compile" and "eager" in parts:
            case(m, d, mode)
    if "syncs" in parts:
        res.update(syncs=count_syncs(device, args.quick), meanflow_jvp=meanflow_jvp_precision(device))
        write()
    if "e2e" in parts:
        res["end_to_end"] = end_to_end(device, args.quick)
        write()
    for m, d, mode in cases:
        if mode == "bf16+compile" and "compile" in parts:
            if time.time() - t_start > args.budget:
                res["rows"].append({"model": m, "data": d, "mode": mode, "error": "skipped (time budget)"})
            else:
                case(m, d, mode)
    write()
    print(table(res, args.name))
    return res


@contextlib.contextmanager
def time_limit(seconds):
    """Raise TimeoutError in the main thread after `seconds` (None: no limit); Unix only."""
    if not seconds or not hasattr(signal, "SIGALRM"):
        yield
        return
    def stop(signum, frame):
        raise TimeoutError(f"over {seconds:.0f} s (compilation included)")
    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(int(seconds))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)

if __name__ == "__main__":
    main()
