"""The seeds' claims measured side by side: every model file trained under a fixed, stated budget
on a 2-D set and on digits, sampled with the samplers each claim is about, one table.

  python benchmarks/run_all.py --part 2d        # ~10 min on one core of a 2-core CPU
  python benchmarks/run_all.py --part digits    # ~35 min on one core (or --device cuda)
  python benchmarks/run_all.py --readme         # write the table, the claims and the pictures into benchmarks/README.md

Each part writes benchmarks/results/all_<part>.json (and pictures in benchmarks/results/img/) as it
goes; --readme reads those files. Everything goes through the model files' own command lines:
train with `--n-eval 0` (timed: the training time), then sample the checkpoint with `--ckpt`
(timed: the sampling time) and read the quality figure the file prints, next to its floor.
Budgets: digits 2500 iterations (meanflow.py 800, ar.py 1000: their defaults), batch 128, UNet
width 16; 2-D 3000 iterations, batch 512, MLP width 256; reflow 1000 and distillation 500
iterations; unconditional.
"""
import argparse
import contextlib
import io
import json
import platform
import re
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import common  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DATA_2D = "checkerboard"


def jobs(data, n_eval):
    """(model file, run name, training flags, [(row label, sampler flags, NFE)])."""
    two_d = data != "digits"
    it = [] if two_d else ["--iters", "2500"]  # the measured budget on digits (the command lines' default is 2000)
    rf_pairs = ["--n-pairs", "10000" if two_d else "3000", "--pair-steps", "100" if two_d else "50"]
    return [
        ("ddpm", "ddpm", it, [("DDPM ancestral", [], 1000)]),
        ("ddim", "ddim", None, [(f"DDIM eta=0, {s} steps", ["--steps", str(s), "--eta", "0"], s) for s in (10, 20, 50)]
         + [("DDIM eta=1, 50 steps", ["--steps", "50", "--eta", "1"], 50)]),
        ("cfm", "cfm", it, [(f"CFM {m} x {s}", ["--solver", m, "--steps", str(s)], s * k)
                            for m, s, k in (("euler", 1, 1), ("euler", 10, 1), ("euler", 100, 1), ("euler", 1000, 1),
                                            ("midpoint", 10, 2), ("rk4", 5, 4))]),
        ("cfm", "cfm-ot", it + ["--coupling", "ot"], [(f"CFM-OT {m} x {s}", ["--solver", m, "--steps", str(s)], s * k)
                                                 for m, s, k in (("euler", 1, 1), ("euler", 10, 1), ("euler", 100, 1))]),
        ("rectified_flow", "rf1", it, [("1-RF, 1 step", ["--steps", "1"], 1), ("1-RF, 100 steps", ["--steps", "100"], 100)]),
        ("rectified_flow", "rf2", ["--reflow-from", "{rf1}", "--iters", "1000"] + rf_pairs,
         [("2-RF, 1 step", ["--steps", "1"], 1), ("2-RF, 100 steps", ["--steps", "100"], 100)]),
        ("rectified_flow", "rf2-distill", ["--distill-from", "{rf2}", "--iters", "500"] + rf_pairs,
         [("2-RF + distill, 1 step", ["--steps", "1"], 1)]),
        ("meanflow", "meanflow", [], [("MeanFlow, 1 step", ["--steps", "1"], 1), ("MeanFlow, 2 steps", ["--steps", "2"], 2)]),
        ("vae", "vae", it, [("VAE decoder", [], 1)]),
    ] + ([] if two_d else [
        ("ar", "ar", [], [("AR raster, KV cache", [], 64)]),
        ("ar", "ar-random", ["--order", "random"], [("AR random order, KV cache", [], 64)]),
    ])


def run_cli(module, argv):
    """Run `module.main(argv)`, returning (its result, its printed output, seconds)."""
    mod = __import__(module)
    buf = io.StringIO()
    t0 = time.time()
    with contextlib.redirect_stdout(buf):
        q = mod.main(argv)
    sys.stdout.write(buf.getvalue()[-2000:])
    return q, buf.getvalue(), time.time() - t0


NLL = re.compile(r"([0-9.]+) bits/dim")


def run_part(part, device, work, quick=False, only=None, resample=False):
    data = DATA_2D if part == "2d" else "digits"
    n_eval = (1000 if part == "2d" else 500) if not quick else 100
    out_json = RESULTS / f"all_{part}{'_quick' if quick else ''}{'_' + '_'.join(only) if only else ''}.json"
    (RESULTS / "img").mkdir(parents=True, exist_ok=True)
    rows, ckpts = [], {}
    previous = json.loads(out_json.read_text())["rows"] if resample else None
    machine = (f"{platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}"
               + (f", {torch.cuda.get_device_name()}" if device == "cuda" else ", CPU"))
    base = ["--data", data, "--uncond", "--device", device, "--log-every", "500"]
    for job in jobs(data, n_eval):
        if only and job[1] not in only:
            continue
        try:
            run_job(part, job, base, device, n_eval, work, ckpts, rows, quick, previous)
        except (Exception, SystemExit) as e:  # one failing model must not lose the others' rows
            print(f"FAILED {job[1]}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        out_json.write_text(json.dumps({"machine": machine, "data": data, "n_eval": n_eval, "rows": rows}, indent=1))
    return rows


def run_job(part, job, base, device, n_eval, work, ckpts, rows, quick=False, resample=None):
    module, name, train_flags, samplers = job
    folder = work / f"{part}-{name}"
    t_train = None
    cpu0 = time.process_time()
    cpu_train = None
    if train_flags is None:  # ddim: samples the ddpm checkpoint, no training of its own
        ckpt = ckpts["ddpm"]
    elif resample is not None and (folder / "ckpt.pt").exists():  # keep the trained model and its timing
        ckpt = folder / "ckpt.pt"
        ckpts[name] = str(ckpt)
        t_train, cpu_train = next((r["train_s"], r.get("train_cpu_s")) for r in resample if r["run"] == name)
    else:
        flags = [f.format(**ckpts) for f in train_flags] + (["--iters", "20", "--n-pairs", "64", "--pair-steps", "4"]
                                                            if quick and module == "rectified_flow" else
                                                            ["--iters", "20"] if quick else [])
        _, _, t_train = run_cli(module, base + flags + ["--n-eval", "0", "--out", str(folder)])
        ckpt = folder / "ckpt.pt"
        ckpts[name] = str(ckpt)
        cpu_train = time.process_time() - cpu0
    for label, sflags, nfe in samplers:
        extra = []
        if module == "cfm" and base[1] == "digits" and label == "CFM midpoint x 10":
            extra = ["--bpd", "500"]  # held-out bits/dim by the instantaneous change of variables
        if module == "vae":
            extra = ["--iwae-k", "1000" if base[1] == "digits" else "0"]
        q, text, _ = run_cli(module, ["--ckpt", str(ckpt), "--device", device, "--n-eval", str(n_eval),
                                      "--out", str(folder)] + sflags + extra)
        m = NLL.findall(text)
        row = dict(model=module, run=name, sampler=label, nfe=nfe, metric=q["metric"], value=q["value"],
                   floor=q["floor"], train_s=t_train, train_cpu_s=cpu_train, sample_s=q["sample_seconds"],
                   nll_bpd=float(m[-1]) if m else q.get("bits_per_dim"))
        if module == "ar":
            row["nll_bpd"] = ar_bits_per_dim(ckpt, device)
        if module in ("rectified_flow", "cfm") and nfe == 100:
            row["straightness"] = straightness(ckpt, base[1], device)
        img = RESULTS / "img" / f"{part}-{re.sub('[^a-z0-9]+', '-', label.lower()).strip('-')}.png"
        grid = folder / f"samples-{module}.png"  # a folder with a checkpoint keeps its training grid
        shutil.copy(grid if grid.exists() else folder / "samples.png", img)
        row["img"] = str(img.relative_to(ROOT))
        rows.append(row)
        print(json.dumps(row), flush=True)


@torch.no_grad()
def ar_bits_per_dim(ckpt_path, device):
    """Held-out digits NLL of an ar.py checkpoint in bits/dim, exact for the order it was trained in
    (random order: one random order per image, seeded)."""
    import ar
    ckpt = common.load_checkpoint(ckpt_path, ("ar",))
    a, data = ckpt["args"], common.load_data("digits")
    levels = a["levels"] or 17
    model = ar.AR(levels, 64, 0 if a["uncond"] else data.num_classes, dim=4 * a["width"], depth=a["depth"],
                  heads=a["heads"], order=a["order"], dropout=a["dropout"])
    ema = common.make_ema(model, a["ema_decay"])
    ema.load_state_dict(ckpt["ema"])
    model = ema.module.eval().to(device)
    tokens = ar.to_tokens(data.x_test, levels).to(device)
    order = model.orders(a["order"], len(tokens), device, torch.Generator(device).manual_seed(0))
    return float(model.bits_per_dim(tokens, None, order).mean())


def straightness(ckpt_path, data_name, device):
    """E int ||(x1 - x0) - v(x_t, t)||^2 dt along the flow's own paths (rectified_flow.straightness)."""
    import rectified_flow
    data = common.load_data(data_name)
    net = common.ema_net(common.load_checkpoint(ckpt_path, ("cfm", "rectified_flow")), data, time_scale=1000.0).to(device)
    noise = torch.randn((1000,) + data.shape, generator=torch.Generator().manual_seed(0)).to(device)
    return float(rectified_flow.RectifiedFlow().straightness(net, noise, steps=100))


# -----------------------------------------------------------------------------
# README: the table, the claims with their targets, the pictures

def fmt(r):
    return f"{r['metric']} {r['value']:.3g} ({r['floor']:.3g})"


def claims(rows):
    q = {r["sampler"]: r["value"] for r in rows}
    floor = rows[0]["floor"]
    out = []
    def claim(text, target, ok, detail):
        out.append(f"| {text} | {target} | {'holds' if ok else 'does not hold'} | {detail} |")
    if "DDIM eta=0, 50 steps" in q:
        r = q["DDIM eta=0, 50 steps"] / q["DDPM ancestral"]
        claim("DDIM with 50 steps matches DDPM's 1000", "ratio <= 1.2", r <= 1.2, f"{q['DDIM eta=0, 50 steps']:.3g} / {q['DDPM ancestral']:.3g} = {r:.2f}")
    cfm_nfe = sorted((r["nfe"], r["value"]) for r in rows if r["run"] == "cfm")
    if cfm_nfe and "DDPM ancestral" in q:
        good = [n for n, v in cfm_nfe if v <= 1.2 * q["DDPM ancestral"]]
        claim("flow matching needs far fewer steps than DDPM", "CFM within 1.2x of DDPM-1000 at <= 100 NFE",
              bool(good) and good[0] <= 100, f"first NFE within 1.2x: {good[0] if good else 'none'} (DDPM: 1000)")
    r1, r2, rd = q.get("1-RF, 1 step"), q.get("2-RF, 1 step"), q.get("2-RF + distill, 1 step")
    if r1 and r2 and rd:
        claim("one-step 2-RF beats one-step 1-RF", "2-RF < 1-RF", r2 < r1, f"{r2:.3g} vs {r1:.3g}")
        claim("distillation improves one-step 2-RF", "distilled < 2-RF", rd < r2, f"{rd:.3g} vs {r2:.3g}")
        claim("2-RF + distill at one step >= 10x better than 1-RF at one step", "ratio >= 10", r1 / rd >= 10,
              f"{r1:.3g} / {rd:.3g} = {r1 / rd:.1f}x")
    if "MeanFlow, 1 step" in q and "CFM euler x 100" in q:
        ref = q["CFM euler x 100"]
        claim("MeanFlow's one step is close to multi-step flow matching", "MeanFlow-1 <= 1.5x CFM-100",
              q["MeanFlow, 1 step"] <= 1.5 * ref, f"{q['MeanFlow, 1 step']:.3g} vs {ref:.3g} = {q['MeanFlow, 1 step'] / ref:.2f}x")
    s = {r["run"]: r.get("straightness") for r in rows if r.get("straightness") is not None}
    if "cfm" in s and "cfm-ot" in s:
        claim("OT coupling straightens paths", "straightness OT < independent", s["cfm-ot"] < s["cfm"],
              f"{s['cfm-ot']:.3g} vs {s['cfm']:.3g}")
    if "CFM rk4 x 5" in q and "CFM euler x 1000" in q:
        r = q["CFM rk4 x 5"] / q["CFM euler x 1000"]
        claim("CFM RK4 at 20 NFE matches Euler at 1000", "ratio <= 1.1", r <= 1.1, f"{r:.2f}")
    best = min(rows, key=lambda r: r["value"])
    claim("the best model (of the rows above) is close to real data", "within 2x of the floor", best["value"] <= 2 * floor,
          f"{best['sampler']}: {best['value']:.3g} vs floor {floor:.3g} ({best['value'] / floor:.2f}x)")
    return out


NOTES = """How to read these tables. Every model is unconditional here and trained with one thread; the
two parts (and, for digits, two halves) ran side by side on the 2 cores, sometimes beside the test
suite, so "sample s" (wall) is inflated by up to about 1.5x, while "train CPU s" is the training
process's own CPU time. NLL: cfm.py by the instantaneous change of variables (the sampler's
midpoint x 10 steps, Hutchinson probes, uniform dequantization: an upper bound on the discrete
NLL), vae.py the IWAE bound with k = 1000, ar.py exact (raster order, or one random order per image).
Straightness is rectified_flow.straightness on 1000 paths of 100 Euler steps. W2 on 1000 2-D points
cannot resolve differences below its floor: rows at the floor are as good as this metric can tell.
The per-file tables (benchmarks/results/) use other budgets (some conditional) and are the figures
each issue asked for."""


def readme():
    parts = []
    for part in ("2d", "digits"):
        files = sorted(RESULTS.glob(f"all_{part}*.json"))
        files = [f for f in files if "quick" not in f.name]
        if not files:
            continue
        res = json.loads(files[0].read_text())
        order = [j[1] for j in jobs(res["data"], res["n_eval"])]
        rows = {(r["run"], r["sampler"]): r for f in files for r in json.loads(f.read_text())["rows"]}
        rows = sorted(rows.values(), key=lambda r: order.index(r["run"]))
        lines = [f"#### {res['data']} ({'W2' if part == '2d' else 'Frechet distance'} of {res['n_eval']} samples; "
                 f"the floor in brackets; {res['machine']})", "",
                 "| model | sampler | NFE | quality (floor) | NLL bits/dim | straightness | train CPU s | sample s |",
                 "|---|---|---:|---|---:|---:|---:|---:|"]
        for r in rows:
            nll = f"{r['nll_bpd']:.3f}" if r.get("nll_bpd") else ""
            st = f"{r['straightness']:.3g}" if r.get("straightness") is not None else ""
            tr = f"{r['train_cpu_s']:.0f}" if r.get("train_cpu_s") else ""
            lines.append(f"| {r['model']}.py | {r['sampler']} | {r['nfe']} | {fmt(r)} | {nll} | {st} | {tr} | {r['sample_s']:.1f} |")
        lines += ["", "| claim of the seeds | target | here | measured |", "|---|---|---|---|"] + claims(rows)
        pics = [r for r in rows if r["sampler"] in ("DDPM ancestral", "DDIM eta=0, 50 steps", "CFM midpoint x 10",
                                                     "2-RF + distill, 1 step", "MeanFlow, 1 step", "VAE decoder",
                                                     "AR raster, KV cache", "1-RF, 1 step")]
        lines += ["", " ".join(f"![{r['sampler']}]({Path(r['img']).relative_to('benchmarks')})" for r in pics), "",
                  "Pictures, left to right: " + "; ".join(r["sampler"] for r in pics)
                  + (" (each: held-out points on the left, the model's on the right)." if part == "2d" else
                     " (100 samples each).")]
        parts.append("\n".join(lines))
    parts.append(NOTES)
    text = (ROOT / "benchmarks" / "README.md").read_text()
    start, end = "<!-- benchmark:start -->", "<!-- benchmark:end -->"
    if start not in text:
        raise SystemExit("benchmarks/README.md has no <!-- benchmark:start --> marker")
    head, rest = text.split(start)
    (ROOT / "benchmarks" / "README.md").write_text(head + start + "\n" + "\n\n".join(parts) + "\n" + end + rest.split(end)[1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=["2d", "digits"], help="which half to run")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--work", default=str(ROOT / "benchmarks" / "work"), help="checkpoints go here")
    p.add_argument("--readme", action="store_true", help="write the results into benchmarks/README.md")
    p.add_argument("--quick", action="store_true", help="smoke test: 20 iterations each, 100 samples")
    p.add_argument("--resample", action="store_true", help="sample the trained checkpoints again (no training)")
    p.add_argument("--only", default=None, help="comma-separated runs (e.g. vae,ar) to run in a second process")
    args = p.parse_args(argv)
    if args.part:
        run_part(args.part, args.device, Path(args.work) / ("quick" if args.quick else ""), args.quick,
                 args.only.split(",") if args.only else None, args.resample)
    if args.readme:
        readme()


if __name__ == "__main__":
    main()
