"""Figures with axes and labels, drawn with matplotlib (an optional dependency of this script alone:
benchmarks/requirements.txt; the model files draw their own pictures with common.write_png).

  python benchmarks/figures.py nfe                       # quality against NFE, digits and checkerboard
  python benchmarks/figures.py loss runs/ddpm-digits runs/cfm-digits      # training loss curves
  python benchmarks/figures.py strips ddpm=runs/ddpm-digits cfm=runs/cfm-digits   # stacked strip.png files
  python benchmarks/figures.py trajectories ddpm=runs/ddpm-checkerboard ...       # trajectory.png side by side
  python benchmarks/figures.py compute                   # quality against training seconds: MeanFlow vs
                                                         # cfm.py, latent vs pixel (meanflow_compute.py
                                                         # --curve, bench_latent_diffusion.py's seed files)

nfe reads benchmarks/results/all_<part>_seed<s>.json (run_all.py, one file a seed; part 2d or
digits) and plots each sampler family's quality against its network calls (log-log): the mean over
seeds with +- sd bars, and the floor (real against real) as a band, mean +- sd. A folder argument
may be written LABEL=FOLDER; without a label the folder's name is used.
"""
import argparse
import json
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MODELS = ["ddpm", "ddim", "cfm", "rectified_flow", "meanflow", "vae", "ar", "latent_diffusion", "controlnet"]
PARTS = {"digits": "digits (FD of 500 samples)", "2d": "checkerboard (W2 of 1000 points)"}


def plt_():
    """matplotlib's pyplot, headless; one line and exit status 2 if it is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("figures.py: error: matplotlib is not installed: pip install -r benchmarks/requirements.txt")
    return plt


# -----------------------------------------------------------------------------
# quality against NFE

def result_files(part, results=RESULTS):
    """The seed files of a part (all_<part>_seed<s>.json, quick runs left out)."""
    return [f for f in sorted(results.glob(f"all_{part}_seed*.json")) if "quick" not in f.name]


def load_rows(files):
    """Every row of the files, each with its seed (the file's, else 0); of rows with the same seed,
    run and sampler, the last file's is kept."""
    by_key = {}
    for f in files:
        res = json.loads(Path(f).read_text())
        for r in res["rows"]:
            seed = r.get("seed", res.get("seed", 0))
            by_key[(seed, r["run"], r["sampler"])] = dict(r, seed=seed)
    return list(by_key.values())


def family(sampler):
    """The sampler's name with its step count taken out: the points of one line of the plot."""
    return re.sub(r"(?<=x )\d+$|(?<=, )\d+ steps?$", "N", sampler)


def mean_sd(values):
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, sd


def summarise(rows):
    """{(model, family): [(nfe, mean, sd, seeds)]} sorted by nfe, and the floor (mean over seeds, the mean of
    the seeds' sd, or None where the files have no floor_sd), and the metric's name."""
    values, floors = {}, {}
    for r in rows:
        values.setdefault((r["model"], family(r["sampler"]), r["nfe"]), []).append(r["value"])
        floors[r["seed"]] = (r["floor"], r.get("floor_sd"))
        sizes = (r.get("n"), r.get("floor_n"))
    lines = {}
    for (model, fam, nfe), vs in sorted(values.items(), key=lambda kv: kv[0][2]):
        lines.setdefault((model, fam), []).append((nfe, *mean_sd(vs), len(vs)))
    floor = mean_sd([f for f, _ in floors.values()])[0]
    sds = [s for _, s in floors.values() if s is not None]
    n, floor_n = sizes
    metric = rows[0]["metric"] + (f" of {n} samples" if n else "")
    if floor_n and floor_n != n:  # FD depends on n: say at which n the floor was computed
        metric += f" (floor at n = {floor_n})"
    return lines, (floor, sum(sds) / len(sds) if sds else None), metric


def plot_nfe(args):
    plt = plt_()
    parts = [p for p in PARTS if result_files(p, args.results)]
    if not parts:
        sys.exit(f"figures.py: error: no all_<part>*.json in {args.results}: run benchmarks/run_all.py first")
    fig, axes = plt.subplots(1, len(parts), figsize=(7 * len(parts), 7), squeeze=False)
    for ax, part in zip(axes[0], parts):
        files = result_files(part, args.results)
        rows = load_rows(files)
        lines, (floor, floor_sd), metric = summarise(rows)
        seeds = sorted({r["seed"] for r in rows})
        models = MODELS + sorted({model for model, _ in lines} - set(MODELS))  # a colour per model file
        for (model, fam), pts in lines.items():
            nfe, m, sd, _ = zip(*pts)
            k = [f for mo, f in lines if mo == model].index(fam)  # a marker and dashes per family within it
            ax.errorbar(nfe, m, yerr=sd if any(sd) else None, color=f"C{models.index(model) % 10}",
                        marker="osD^v"[k % 5], ls=["-", "--", ":", "-."][k % 4], ms=5, capsize=3, label=fam)
        ax.axhspan(floor - (floor_sd or 0), floor + (floor_sd or 0), color="grey", alpha=0.25, lw=0)
        ax.axhline(floor, color="grey", lw=1, ls="--",
                   label="floor, real vs real" + (" (mean +- sd)" if floor_sd is not None else ""))
        ax.set(xscale="log", yscale="log", xlabel="network calls per sample (NFE)", ylabel=metric,
               title=f"{PARTS[part]}\n{len(seeds)} seed(s): {', '.join(map(str, seeds))}; files "
                     f"{', '.join(f.name for f in files)}")
        ax.title.set_fontsize(9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.13))
    fig.tight_layout()
    fig.savefig(args.out, dpi=args.dpi)
    print(f"wrote {args.out}")


# -----------------------------------------------------------------------------
# quality against training compute

def compute_lines(results):
    """[(title, {label: [(seconds mean, sd, FD mean, sd)]}, (floor, floor sd), x label)] from
    meanflow_curve_<part>.json and latent_diffusion_seed*.json, each line's points averaged over seeds."""
    panels, curves = [], {}  # one panel a part: its default curve and any variant's MeanFlow lines
    for f in sorted(results.glob("meanflow_curve_*.json")):
        res = json.loads(f.read_text())
        rows, variant = res["rows"], res.get("variant")
        part = res.get("part", f.stem.removeprefix("meanflow_curve_"))
        by = curves.setdefault(part, {})
        if not by:
            panels.append((f"{part} (benchmarks/meanflow_compute.py --curve --part {part})", by,
                           (rows[0]["floor"], rows[0]["floor_sd"]), "training CPU seconds", rows[0]["metric"]))
        scale = f", w {res['cfg_scale']:g}" if res.get("cfg_scale", 1) != 1 else ""
        for r in rows:
            if r["method"] == "cfm.py" and variant:
                continue  # the same cfm.py runs as in the part's own file
            label = ("cfm.py, 100 Euler steps" if r["method"] == "cfm.py" else
                     f"meanflow.py {variant or 'default'}, {r['nfe']} step(s){scale}")
            by.setdefault(label, {}).setdefault(r["point"], []).append((r["train_cpu_s"], r["value"]))
    files = sorted(results.glob("latent_diffusion_seed*.json"))
    if files:
        by, first = {}, None
        for fl in files:
            res = json.loads(fl.read_text())
            for model, label in (("cfm", "cfm.py, pixels"), ("latent_diffusion", "latent_diffusion.py (incl. autoencoder)")):
                for c in res["runs"][model]["checkpoints"]:
                    first = first or c
                    by.setdefault(label, {}).setdefault(c["iters"], []).append((c["cumulative_seconds"], c["fd"]))
        panels.append(("digits32, conditional, NFE 20 (benchmarks/bench_latent_diffusion.py)", by,
                       (first["floor"], first["floor_sd"]), "training seconds (wall, one thread)", "FD"))
    out = []
    for title, by, floor, xlabel, metric in panels:
        lines = {label: [(*mean_sd([s for s, _ in pts]), *mean_sd([v for _, v in pts]))
                         for _, pts in sorted(points.items())]
                 for label, points in sorted(by.items(), key=lambda kv: not kv[0].startswith("cfm.py"))}  # cfm.py: C0
        out.append((title, lines, floor, xlabel, metric))
    return out


def plot_compute(args):
    plt = plt_()
    panels = compute_lines(args.results)
    if not panels:
        sys.exit(f"figures.py: error: no meanflow_curve_*.json or latent_diffusion_seed*.json in {args.results}")
    cols = min(len(panels), 2)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 5.5 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (title, lines, (floor, floor_sd), xlabel, metric) in zip(axes.flat, panels):
        for k, (label, pts) in enumerate(lines.items()):
            x, xs, y, ys = zip(*pts)
            ax.errorbar(x, y, xerr=xs, yerr=ys, color=f"C{k}", marker="osD^"[k % 4], ms=5, capsize=3, label=label)
        ax.axhspan(floor - floor_sd, floor + floor_sd, color="grey", alpha=0.25, lw=0)
        ax.axhline(floor, color="grey", lw=1, ls="--", label="floor, real vs real (mean +- sd)")
        ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=f"{metric} (mean +- sd over seeds)", title=title)
        ax.title.set_fontsize(9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=args.dpi)
    print(f"wrote {args.out}")


# -----------------------------------------------------------------------------
# loss curves, strips and trajectories from run folders

def labelled(items):
    """LABEL=FOLDER (or FOLDER: labelled by its name) -> [(label, Path)]."""
    out = []
    for item in items:
        label, _, folder = item.rpartition("=")
        out.append((label or Path(folder).name, Path(folder)))
    return out


def plot_loss(args):
    plt = plt_()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, folder in labelled(args.runs):
        path = folder / "metrics.jsonl"
        if not path.is_file():
            sys.exit(f"figures.py: error: {path} not found: give run folders written by a model file")
        logs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        logs = [r for r in logs if "loss" in r]  # training lines, not the evaluations
        ax.plot([r["step"] for r in logs], [r["loss"] for r in logs], label=label)
    ax.set(xlabel="iteration", ylabel="training loss (mean over the logging interval)", yscale="log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=args.dpi)
    print(f"wrote {args.out}")


def images(plt, items, name):
    """[(label, image)] from each folder's `name` (or the PNG given itself)."""
    out = []
    for label, folder in labelled(items):
        path = folder if folder.suffix == ".png" else folder / name
        if not path.is_file():
            sys.exit(f"figures.py: error: {path} not found: run the model file with --trajectory N --out {folder}")
        out.append((label, plt.imread(path)))
    return out


def plot_strips(args):
    """The strips one under another, each under its label: x_t from noise (left) to data (right)."""
    plt = plt_()
    strips = images(plt, args.runs, "strip.png")
    width = max(img.shape[1] for _, img in strips)
    heights = [img.shape[0] for _, img in strips]
    fig, axes = plt.subplots(len(strips), 1, figsize=(0.5 + width / 60, sum(heights) / 60 + 0.4 * len(strips) + 0.6),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (label, img) in zip(axes[:, 0], strips):
        ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xlim(-0.5, width - 0.5)  # shorter strips (fewer steps) keep the same scale, left-aligned
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
        ax.set_title(label, loc="left", fontsize=10)
    fig.suptitle("x_t from noise (left) to samples (right), one row per seed", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))  # room for the title above the first label
    fig.savefig(args.out, dpi=args.dpi)
    print(f"wrote {args.out}")


def plot_trajectories(args):
    """The trajectory pictures side by side, `cols` to a row, each under its label."""
    plt = plt_()
    pics = images(plt, args.runs, "trajectory.png")
    cols = min(args.cols, len(pics))
    rows = math.ceil(len(pics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (label, img) in zip(axes.flat, pics):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(label, fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=args.dpi)
    print(f"wrote {args.out}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="figure", required=True)
    img = RESULTS / "img"
    s = sub.add_parser("nfe", help="quality against NFE from benchmarks/results/all_<part>_seed*.json")
    s.add_argument("--results", type=Path, default=RESULTS, help="folder of the result files")
    s.add_argument("--out", default=img / "quality-vs-nfe.png")
    s.set_defaults(draw=plot_nfe)
    s = sub.add_parser("loss", help="training loss against iteration from run folders' metrics.jsonl")
    s.add_argument("runs", nargs="+", metavar="[LABEL=]FOLDER")
    s.add_argument("--out", default=img / "loss.png")
    s.set_defaults(draw=plot_loss)
    s = sub.add_parser("strips", help="run folders' strip.png (--trajectory N on images), stacked")
    s.add_argument("runs", nargs="+", metavar="[LABEL=]FOLDER")
    s.add_argument("--out", default=img / "digits-strips.png")
    s.set_defaults(draw=plot_strips)
    s = sub.add_parser("trajectories", help="run folders' trajectory.png (--trajectory N on 2-D data), in a grid")
    s.add_argument("runs", nargs="+", metavar="[LABEL=]FOLDER")
    s.add_argument("--cols", type=int, default=3, help="pictures per row (default 3)")
    s.add_argument("--out", default=img / "trajectories-2d.png")
    s.set_defaults(draw=plot_trajectories)
    s = sub.add_parser("compute", help="quality against training seconds from meanflow_curve_*.json and "
                       "latent_diffusion_seed*.json")
    s.add_argument("--results", type=Path, default=RESULTS, help="folder of the result files")
    s.add_argument("--out", default=img / "quality-vs-compute.png")
    s.set_defaults(draw=plot_compute)
    for s in sub.choices.values():
        s.add_argument("--dpi", type=int, default=120)
    args = p.parse_args(argv)
    args.draw(args)


if __name__ == "__main__":
    main()
