"""A diffusion model is a classifier, and a classifier guides a diffusion model.

1. Zero-shot classification (Li et al., arXiv 2303.16203) with ddpm.DDPM.classify: one conditional
   digits model trained by ddpm.py at its defaults (unet width 16, T = 1000, linear schedule, label
   dropout 0.1, seed 0); the accuracy on the 500 held-out digits against n_samples, the (t, eps) draws
   per image (10 classes x n_samples network calls per image), for the "simple" weighting and the
   bound's ("elbo"), with its CPU and wall seconds, beside the feature classifier's test accuracy.
2. Guidance, fidelity against diversity (the lecture "Advanced Generative Models: From VAE to Diffusion
   and Flow Matching", NICE Lab, Zhejiang University, 2026): n = 500 samples with balanced labels
   (common.class_labels), DDPM ancestral sampling (T network calls), generator seed 1 for every row.
   Classifier guidance (Dhariwal & Nichol, arXiv 2105.05233): an --uncond model and its noisy classifier
   p_phi(y | x_t, t), both trained by `ddpm.py --uncond --classifier-scale 1` (same budget), at
   s in {0, 1, 2, 4}. Classifier-free guidance (Ho & Salimans, arXiv 2207.12598): the conditional model
   of part 1 at w in {1, 2, 4}. For each: the class accuracy of the samples (the share the feature
   classifier assigns to the label asked for; s = 0 ignores the label: chance, 0.1) and the Frechet
   distance in the feature classifier's space with its floor (real vs real), and a grid picture.

Run (single-threaded, CPU; or --device cuda):
  OMP_NUM_THREADS=1 python benchmarks/guidance.py            # writes benchmarks/results/guidance.json
  OMP_NUM_THREADS=1 python benchmarks/guidance.py --quick --out /tmp/g   # smoke test in seconds:
                                    # T = 10, tiny budgets; OUT-quick/guidance.json and its grids
Checkpoints go to OUT (default runs/benchmarks/guidance, not tracked); grids to
benchmarks/results/img/guidance-*.png.
"""
import argparse
import math
import time
from pathlib import Path

import bench
import torch

import common  # the model files: bench puts the repository's root on sys.path
import ddpm

COMMAND = "OMP_NUM_THREADS=1 python benchmarks/guidance.py"

N_SAMPLES = (10, 30, 100, 300)  # zero-shot (t, eps) draws per image; the "elbo" weighting up to 100
SCALES = (0.0, 1.0, 2.0, 4.0)  # classifier guidance s
CFG = (1.0, 2.0, 4.0)  # classifier-free guidance w


def timed(fn):
    t0, c0 = time.time(), time.process_time()
    out = fn()
    return out, time.time() - t0, time.process_time() - c0


def load(out, device, data):
    """The EMA networks in OUT: eps_theta (ckpt.pt) and, if there is one, the noisy classifier."""
    ckpt = common.load_checkpoint(out / "ckpt.pt", ("ddpm",))
    method = ddpm.DDPM(ckpt["args"]["T"], ckpt["args"]["schedule"])
    eps_theta = common.ema_net(ckpt, data).to(device)
    path = out / "classifier" / "ckpt.pt"
    if not path.exists():
        return method, eps_theta, None
    a = common.load_checkpoint(path, ("ddpm-classifier",))["args"]
    trunk = common.make_net(a["arch"], data.shape, a["width"])
    clf = ddpm.NoisyClassifier(trunk, math.prod(data.shape), data.num_classes).to(device)
    return method, eps_theta, common.load_ema(common.load_checkpoint(path, ("ddpm-classifier",)), clf)


def zero_shot(method, eps_theta, data, n_images, n_list, device):
    x, y = data.x_test[:n_images].to(device), data.y_test[:n_images]
    counts = torch.bincount(data.y_train, minlength=data.num_classes).double()
    rows = []
    for weighting in ("simple", "elbo"):
        for n in n_list:
            if weighting == "elbo" and n > 100:
                continue
            g = torch.Generator(device).manual_seed(3)
            pred, wall, cpu = timed(lambda: torch.cat([
                method.classify(eps_theta, xb, data.num_classes, n, g, (counts / counts.sum()).log(), weighting)
                .argmax(1) for xb in x.split(100)]).cpu())
            rows.append(dict(weighting=weighting, n_samples=n, accuracy=float((pred == y).double().mean()),
                             nfe_per_image=data.num_classes * n, wall_s=wall, cpu_s=cpu))
            print(f"zero-shot {weighting} n_samples={n}: accuracy {rows[-1]['accuracy']:.3f}, "
                  f"{wall:.1f}s wall, {cpu:.1f}s CPU", flush=True)
    return rows


def guided_row(kind, scale, sample, data, n, device, img):
    """n samples with balanced labels from sample(shape, y, g); their class accuracy and FD."""
    y = common.class_labels(n, data.num_classes, device)
    g = torch.Generator(device).manual_seed(1)
    x, wall, cpu = timed(lambda: sample((n, *data.shape), y, g))
    feature, _ = common.feature_net(data)
    with torch.no_grad():
        pred = feature(common.quantize(x.float().cpu(), data.levels)).argmax(1)
    q = common.quality(data, x)
    name = f"guidance-{kind}-{scale:g}.png"
    if img is not None:
        common.save_grid(x[:100].cpu(), img / name)
    row = dict(guidance=kind, scale=scale, class_accuracy=float((pred == y.cpu()).double().mean()), fd=q["value"],
               floor=q["floor"], floor_sd=q["floor_sd"], sample_wall_s=wall, sample_cpu_s=cpu, grid=name)
    print(f"{kind} {scale:g}: class accuracy {row['class_accuracy']:.3f}, FD {q['value']:.3g} "
          f"(floor {q['floor']:.3g}), {wall:.1f}s wall, {cpu:.1f}s CPU", flush=True)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(bench.ROOT / "runs" / "benchmarks" / "guidance"), help="checkpoint folder")
    parser.add_argument("--reuse", action="store_true", help="reuse the checkpoints in OUT (no training time)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="default cpu")
    parser.add_argument("--quick", action="store_true", help="smoke test in seconds: T = 10, tiny "
                        "budgets; the json and grids go to OUT-quick (or --results)")
    parser.add_argument("--results", help="folder for the json (default benchmarks/results; with "
                        "--quick, OUT-quick); the grids go to its img/ (--quick: beside the json)")
    args = parser.parse_args(argv)
    out = Path(args.out + ("-quick" if args.quick else ""))
    args.work = out
    results = bench.results_dir(args, "guidance.py")
    budget = (["--T", "10", "--iters", "5", "--log-every", "50", "--width", "8", "--batch-size",
               "32"] if args.quick else [])
    n_images, n_list, n = (20, (2,), 20) if args.quick else (500, N_SAMPLES, 500)
    common_flags = ["--n-eval", "0", "--seed", "0", "--device", args.device] + budget
    train_s = {}
    for name, flags in (("conditional", []), ("unconditional", ["--uncond", "--classifier-scale", "1"])):
        if not (args.reuse and (out / name / "ckpt.pt").exists()):
            q = bench.run(ddpm.main, common_flags + flags + ["--out", str(out / name)])
            train_s[name] = dict(wall_s=q["train_seconds"], cpu_s=q["train_cpu_seconds"])
    device = common.get_device(args.device)
    data = common.load_data("digits")
    img = results if args.quick else results / "img"
    img.mkdir(parents=True, exist_ok=True)

    method, cond, _ = load(out / "conditional", device, data)
    zs = zero_shot(method, cond, data, n_images, n_list, device)
    rows = [guided_row("cfg", w, lambda shape, y, g: method.sample(cond, shape, y, w, generator=g),
                       data, n, device, img) for w in CFG]
    method_u, uncond, clf = load(out / "unconditional", device, data)
    rows += [guided_row("classifier", s, lambda shape, y, g: method_u.sample(
        uncond, shape, y, generator=g, classifier=clf, classifier_scale=s), data, n, device, img) for s in SCALES]

    machine = dict(bench.machine(device), device=str(device))
    model = "ddpm.py defaults" + (" (quick: T 10, 5 iters)" if args.quick
                                  else " (unet width 16, T 1000, linear, 2000 iters, batch 128)")
    result = dict(config=dict(data="digits", model=model + ", seed 0",
                              n_classify=n_images, n_samples=n, seed=1),
                  feature_classifier_acc=common.feature_net(data)[1], machine=machine, train=train_s,
                  zero_shot=zs, guidance=rows)
    print(markdown(result))
    bench.write_json(results / "guidance.json", result)
    return result


def markdown(r):
    """Zero-shot accuracy against the draws per image; class accuracy and FD against the guidance scale."""
    c = r["config"]
    draws = sorted({z["n_samples"] for z in r["zero_shot"]})
    weightings = list(dict.fromkeys(z["weighting"] for z in r["zero_shot"]))
    cell = {(z["weighting"], z["n_samples"]): z for z in r["zero_shot"]}
    zero_shot = [[n, n * r["zero_shot"][0]["nfe_per_image"] // r["zero_shot"][0]["n_samples"]] + [
        f"{cell[w, n]['accuracy']:.3f} ({cell[w, n]['cpu_s']:.0f} s)" if (w, n) in cell else "" for w in weightings]
        for n in draws]
    floor = r["guidance"][0]
    scales = sorted({g["scale"] for g in r["guidance"]})
    kinds = {"cfg": "classifier-free, w", "classifier": "classifier, s"}
    at = {(g["guidance"], g["scale"]): g for g in r["guidance"]}
    guided = [[f"{scale:g}"] + [x for kind in kinds for x in (
        (f"{at[kind, scale]['class_accuracy']:.3f}", f"{at[kind, scale]['fd']:.3g}",
         f"{at[kind, scale]['sample_cpu_s']:.0f}", f"![](results/img/{at[kind, scale]['grid']})")
        if (kind, scale) in at else ("", "", "", ""))] for scale in scales]
    return "\n".join([
        bench.caption(r["machine"], COMMAND, f"Digits, {c['model']}"), "",
        f"Zero-shot accuracy on {c['n_classify']} held-out digits (Bayes' rule, p(y) the training label frequencies); "
        f"the feature classifier's test accuracy is {r['feature_classifier_acc']:.3f}:", "",
        bench.table(["draws per class", "network calls per image"] + [f"accuracy, {w} weighting (CPU s)" for w in weightings],
                    zero_shot), "",
        f"Guidance: n = {c['n_samples']} samples, balanced labels, DDPM ancestral sampling; class accuracy: the share of "
        f"samples the feature classifier assigns to the label asked for; FD floor (real vs real) {floor['floor']:.3g} +- "
        f"{floor['floor_sd']:.2g}; sampling in CPU seconds:", "",
        bench.table(["scale"] + [f"{kinds[k]}: {x}" for k in kinds for x in ("class accuracy", "FD", "sampling s", "grid")],
                    guided, ["r"] * 4 + ["l", "r", "r", "r", "l"])]) + "\n"


if __name__ == "__main__":
    main()
