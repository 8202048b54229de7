"""motion_prompting.py on held-out clips (digits never trained on): the motion error of the base without tracks
and of the ControlNet prompted with 1, 4 and all of each clip's tracks, beside the real clips (the estimator's own
error); identity and per-frame FD beside the floor. Every claim is paired: the same clips and starting noise for
every row.

  for s in 0 1 2; do OMP_NUM_THREADS=1 python benchmarks/bench_motion_prompting.py --seed $s; done   # ~10 CPU min a seed
  python benchmarks/bench_motion_prompting.py --analyse   # paired bootstrap -> results/motion_prompting_claims.json
  python physctrl.py && python motion_prompting.py && python benchmarks/bench_motion_prompting.py --physics \
    runs/physctrl-springs/ckpt.pt runs/motion_prompting-moving-digits/ckpt.pt   # the pipeline's picture

One seed, in this process, through motion_prompting.main with its defaults (the base, then the ControlNet) but
N_EVAL held-out clips; the clips are the default run's, the seed moves the networks' initialisation, their batches,
the tracks chosen and the sampler's noise. The motion claim's ratio is the mean over seeds of the per-seed ratio of
mean motion errors, its interval benchmarks/stats.py's, from a bootstrap that resamples the clips (the same
indices for both rows and every seed) and the seeds' t interval. The FD claim is a difference: per seed, the
per-frame FD of the 4-track ControlNet's frames minus the base's, each replicate resampling the clips (the same for
both rows, a clip's frames together) and the reference clips; its mean over seeds against the floor's sd (the spread
of FD between two sets of real frames); each seed's results file keeps its replicates and per-clip errors, so
report.py recomputes every interval. A claim holds (or does not) when its interval lies on one side of the
target, else it is within noise.
"""
import argparse
from pathlib import Path

import numpy as np
import torch

import bench
import stats  # the claims' intervals and verdicts

import common  # noqa: E402
import motion_prompting as mp  # noqa: E402

RESULTS = bench.RESULTS
COMMAND = "OMP_NUM_THREADS=1 python benchmarks/bench_motion_prompting.py"
N_EVAL, FD_REPLICATES = 250, 200
ROWS = ("real clips", "base", "1 track", "4 tracks", "all tracks")
LABELS = {"real clips": "real clips (the estimator's error)", "base": "base, no tracks", "1 track": "ControlNet, 1 track",
          "4 tracks": "ControlNet, 4 tracks", "all tracks": "ControlNet, all tracks"}
# each motion claim: (text, numerator row, denominator row, threshold, sense)
CLAIMS = [("ControlNet with 4 tracks: motion error at most 1/3 of the base's", "4 tracks", "base", 1 / 3, "<="),
          ("ControlNet with 1 track: motion error below the base's", "1 track", "base", 1.0, "<"),
          ("ControlNet with all tracks: motion error below 4 tracks'", "all tracks", "4 tracks", 1.0, "<")]
FD_CLAIM = "ControlNet with 4 tracks raises per-frame FD by at most the floor's sd"


def fd_replicates(frames_data, rows, reference, n_rep, seed, root=None):
    """(1 + n_rep,) FD(4 tracks) - FD(base) on frames 1..F-1, the first on the samples as they are, then on resampled
    clips (the same for both rows) and resampled reference clips."""
    feats = {k: common.features(frames_data, rows[k][:, 1:].reshape(-1, 1, mp.CANVAS, mp.CANVAS), root).double()
             for k in ("4 tracks", "base")}
    ref = common.features(frames_data, reference.reshape(-1, 1, mp.CANVAS, mp.CANVAS), root).double()
    per, n, m = rows["base"].shape[1] - 1, len(rows["base"]), len(reference)
    g = np.random.default_rng(seed)
    out = []
    for r in range(1 + n_rep):
        i = np.arange(n) if r == 0 else g.integers(0, n, n)
        j = np.arange(m) if r == 0 else g.integers(0, m, m)
        fi, fj = (torch.as_tensor((a[:, None] * per + np.arange(per)).ravel()) for a in (i, j))
        out.append(common.frechet_distance(feats["4 tracks"][fi], ref[fj]) - common.frechet_distance(feats["base"][fi], ref[fj]))
    return out


def run_seed(seed, work, quick=False):
    n = 8 if quick else N_EVAL
    flags = ["--seed", str(seed), "--n-eval", str(n), "--log-every", "500", "--out", str(Path(work) / f"seed{seed}")]
    if quick:
        flags += ["--base-iters", "2", "--iters", "2"]
    q = bench.run(mp.main, flags, samples=True)
    rows = q.pop("samples")
    clips, frames_data = mp.load_clips(rows["base"].shape[1])  # the run's clips
    reference = clips.x_test[n:2 * n, 1:]
    fd = fd_replicates(frames_data, rows, reference, 20 if quick else FD_REPLICATES, seed)
    res = dict(machine=bench.machine(), seed=seed, n_eval=n, command=f"{COMMAND} --seed {seed}",
               rows={k: q[k] for k in ROWS}, fd_difference=fd,
               train_cpu_s=q["train_cpu_seconds"], base_train_cpu_s=q["base_train_cpu_seconds"],
               sample_seconds=q["sample_seconds"])
    bench.write_json((Path(work) if quick else RESULTS) / f"motion_prompting_seed{seed}.json", res)
    return res


PHYSICS = ["--force", "0", "8", "12", "--drag", "5", "--stiffness", "2.5"]  # the pipeline's physics condition


def run_physics(physctrl_ckpt, prompting_ckpt, work, results=RESULTS):
    """The lecture's pipeline on one condition: physctrl.py's 8 trajectories for PHYSICS from physctrl_ckpt, their
    tracks as the prompt of motion_prompting.py's ControlNet (prompting_ckpt): the motion error and the picture."""
    import physctrl
    q = bench.run(physctrl.main, ["--ckpt", str(physctrl_ckpt), *PHYSICS, "--out", str(Path(work) / "physctrl")], trains=False)
    r = bench.run(mp.main, ["--ckpt", str(prompting_ckpt), "--tracks", str(Path(work) / "physctrl" / "tracks.pt"),
                            "--out", str(Path(work) / "video")], trains=False)
    img = Path(results) / "img" / "motion_prompting-physics.png"
    img.parent.mkdir(parents=True, exist_ok=True)
    img.write_bytes((Path(work) / "video" / "physics.png").read_bytes())
    res = dict(machine=bench.machine(), physctrl_ckpt=str(physctrl_ckpt), prompting_ckpt=str(prompting_ckpt),
               command=(f"python physctrl.py --ckpt {physctrl_ckpt} {' '.join(PHYSICS)} --out runs/pc1 && python "
                        f"motion_prompting.py --ckpt {prompting_ckpt} --tracks runs/pc1/tracks.pt"),
               trajectory_last_frame_error=q["last"], motion=r["physics_motion"])
    bench.write_json(Path(results) / "motion_prompting_physics.json", res)
    return res


def claims(results=RESULTS, replicates=2000):
    """Every claim decided (benchmarks/stats.py) from the results files: the motion ratios from the
    per-clip errors (the clips resampled, the same indices for both rows and every seed: the held-out
    clips are shared), the FD difference from each seed's kept replicates."""
    runs = [bench.read_json(f) for f in sorted(Path(results).glob("motion_prompting_seed[0-9].json"))]
    if not runs:
        return []
    n = len(runs[0]["rows"]["base"]["motion_each"])
    index = stats.resample_index(n, replicates)
    out = []
    for text, num, den, threshold, sense in CLAIMS:
        values = {r["seed"]: stats.ratio_of_means(r["rows"][num]["motion_each"], r["rows"][den]["motion_each"],
                                                  index) for r in runs}
        out.append(stats.decide(text, values, threshold, sense, kind="ratio of mean motion errors"))
    k = min(len(r["fd_difference"]) for r in runs)
    floor_sd = float(np.mean([r["rows"]["base"]["fd_floor_sd"] for r in runs]))
    out.append(stats.decide(FD_CLAIM, {r["seed"]: r["fd_difference"][:k] for r in runs}, floor_sd, "<=",
                            kind="FD(4 tracks) - FD(base)"))
    return out


def analyse(results=RESULTS, replicates=2000):
    runs = [bench.read_json(f) for f in sorted(Path(results).glob("motion_prompting_seed[0-9].json"))]
    out = dict(machine=runs[0]["machine"], command="python benchmarks/bench_motion_prompting.py --analyse",
               replicates=replicates, seeds=[r["seed"] for r in runs], claims=claims(results, replicates))
    bench.write_json(Path(results) / "motion_prompting_claims.json", out)
    return out


def markdown(results=RESULTS):
    """One row per prompt: motion error, identity, per-frame FD (mean +- sd over seeds), the FD floor; then the
    claims with their intervals and the picture."""
    results = Path(results)
    runs = [bench.read_json(f) for f in sorted(results.glob("motion_prompting_seed[0-9].json"))]
    if not runs:
        return ""
    c = {"claims": claims(results)}  # recomputed from the per-clip errors and the kept FD replicates
    r0 = runs[0]
    rows = [[LABELS[k], bench.ms([r["rows"][k]["motion"] for r in runs], ".3g"),
             bench.ms([r["rows"][k]["identity"] for r in runs], ".3f"), bench.ms([r["rows"][k]["fd"] for r in runs], ".3g")]
            for k in ROWS]
    floor, base_id = r0["rows"]["base"], [r["rows"]["base"]["identity"] for r in runs]
    seeds = ", ".join(str(r["seed"]) for r in runs)
    lines = [f"#### {r0['n_eval']} held-out clips, mean +- sd over seeds {seeds}", "",
             bench.caption(r0["machine"], f"for s in 0 1 2; do {COMMAND} --seed $s; done; "
                           "python benchmarks/bench_motion_prompting.py --analyse",
                           f"motion_prompting.py's default run: the base ({bench.ms([r['base_train_cpu_s'] for r in runs], '.0f')} "
                           f"CPU s of training), then the ControlNet ({bench.ms([r['train_cpu_s'] for r in runs], '.0f')} CPU s)"),
             "", bench.table(["prompt", "motion error (pixels)", "identity", "per-frame FD"], rows), "",
             f"Per-frame FD of {r0['n_eval'] * 7} generated frames against as many frames of other held-out clips; "
             f"its floor (as many training frames against the same frames, 20 draws): {floor['fd_floor']:.3g} +- "
             f"{floor['fd_floor_sd']:.2g}; the real clips' row compares held-out frames with held-out frames. "
             "Identity: the share of generated frames the feature classifier labels as it labels frame 0 (chance: 0.1). "
             f"The base keeps the digit's class in {bench.ms(base_id, '.2f')} of its frames"
             + (", about chance: at this budget it blurs the digit as it moves it" if max(base_id) < 0.2 else "")
             + f"; with all the tracks, which say where the digit goes, the ControlNet keeps it in "
             f"{bench.ms([r['rows']['all tracks']['identity'] for r in runs], '.2f')} (real clips: "
             f"{r0['rows']['real clips']['identity']:.2f}).", ""]
    if c["claims"]:
        lines += [bench.table(["claim", "statistic", "value", "95% interval", "per seed", "target", "verdict"],
                              [[x["claim"], x["kind"], f"{x['estimate']:.3g}", stats.fmt_interval(x),
                                stats.fmt_seeds(x),
                                f"{x['sense']} {x['threshold']:.3g}", f"**{x['verdict']}**"] for x in c["claims"]],
                              ["l", "l", "r", "r", "l", "r", "l"]), ""]
    if (results / "motion_prompting_physics.json").exists():
        ph = bench.read_json(results / "motion_prompting_physics.json")
        lines += [f"The lecture's pipeline from a physics condition to a trajectory to a video (`{ph['command']}`; the two checkpoints are "
                  "the default runs of physctrl.py and motion_prompting.py): physctrl.py generates 8 trajectories for a force "
                  f"(0, 8, 12) on point 5 of the box at log10 k = 2.5 (last-frame error {ph['trajectory_last_frame_error']:.3f} against "
                  "the simulator), the first one's tracks, resampled to 10 frames a second and moved onto 4 points of a held-out "
                  f"digit, prompt the ControlNet; the video's mean end-point error against them is {ph['motion']:.2f} pixels (the object deforms "
                  "and the digit moves rigidly). Frames 0 to 7: the prompted tracks alone, then over the generated video:", "",
                  "![physics to video](results/img/motion_prompting-physics.png)", ""]
    if (results / "img" / "motion_prompting-tracks.png").exists():
        lines += ["Seed 0, one held-out clip: rows real, base, ControlNet with 1, 4 and all tracks; frames 0 to 7 left to "
                  "right; the dots are the 4 prompted tracks:", "",
                  "![motion_prompting.py tracks](results/img/motion_prompting-tracks.png)", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, help="measure this seed")
    p.add_argument("--work", default=str(bench.ROOT / "benchmarks" / "work" / "motion_prompting"))
    p.add_argument("--analyse", action="store_true", help="the paired bootstrap over the measured seeds")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 iterations each, 8 clips")
    p.add_argument("--table", action="store_true", help="print the markdown of the results")
    p.add_argument("--physics", nargs=2, metavar=("PHYSCTRL_CKPT", "PROMPTING_CKPT"),
                   help="the pipeline picture from the two default runs' checkpoints")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(args.work) / ("quick" if args.quick else "")
    if args.seed is not None:
        run_seed(args.seed, work, args.quick)
        if args.seed == 0 and not args.quick:
            img = RESULTS / "img" / "motion_prompting-tracks.png"
            img.parent.mkdir(parents=True, exist_ok=True)
            img.write_bytes((work / "seed0" / "tracks.png").read_bytes())
    if args.physics:
        run_physics(*args.physics, work / "physics")
    if args.analyse:
        analyse(work if args.quick else RESULTS, replicates=50 if args.quick else 2000)
    if args.table:
        print(markdown(work if args.quick else RESULTS))
    if args.seed is None and not (args.analyse or args.table or args.physics):
        p.error("give --seed (to measure), --analyse or --table")


if __name__ == "__main__":
    main()
