"""The verdicts of benchmarks/meanflow_compute.py, on made-up rows: where the curves meet, and which
rows a partial rerun keeps (the measurements themselves take an hour and run by hand); and how
figures.py gathers the curves into panels."""
import importlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "benchmarks") not in sys.path:  # the benchmark scripts' names shadow no model file
    sys.path.append(str(ROOT / "benchmarks"))


def load(name):
    return importlib.import_module(name)


def row(method, nfe, point, iters, cpu, value, seed):
    return dict(method=method, nfe=nfe, point=point, iters=iters, train_cpu_s=cpu, seed=seed, metric="FD",
                value=value, floor=10.0, floor_sd=1.0, memorised=0.0)


def test_curve_table_finds_the_first_meanflow_checkpoint_within_each_factor(tmp_path):
    mc = load("meanflow_compute")
    rows = []
    for seed, mf in ((0, [40.0, 25.0, 21.0, 19.0]), (1, [50.0, 45.0, 40.0, 35.0])):
        rows += [row("cfm.py", 100, 0, 1000, 50.0, 30.0, seed), row("cfm.py", 100, 1, 2500, 100.0, 20.0, seed),
                 row("cfm.py", 100, 2, 5000, 200.0, 18.0, seed)]  # the reference: 20.0 at 2500 iterations, 100 s
        rows += [row("meanflow.py", 1, k, 500 * (k + 1), 100.0 * (k + 1), v, seed) for k, v in enumerate(mf)]
    # within 1x of 20: seed 0 first at 19.0 (400 s = 4x); within 1.3x (26): at 25.0 (200 s = 2x); seed 1 never
    assert mc.meet(rows, "digits-uncond", 1, 1.0) == ("- MeanFlow 1 step within 1.0x of CFM-100: seed 0: 4x (2000 "
                                                      "iterations); seed 1: not within 4x, where it is at 1.75x")
    text = mc.curve_markdown([{"rows": rows, "machine": "test", "part": "digits-uncond"}])
    assert "- digits-uncond, default: 1 step within 1.3x of CFM-100: seed 0: 2x (1000 iterations); seed 1: not within 4x" in text
    # a column per budget point, mean +- sd over the two seeds; cfm.py has three points, no 2-step rows
    assert "| digits-uncond, FD | cfm.py, 100 Euler steps | 30 +- 0 | 20 +- 0 | 18 +- 0 |  |  |  |  |" in text
    assert "| digits-uncond, FD | meanflow.py default, 1 step | 45 +- 7.1 | 35 +- 14 | 30.5 +- 13 | 27 +- 11 |" in text
    assert "2 steps" not in text


def test_a_partial_rerun_keeps_the_other_variants_rows_and_replaces_its_own():
    mc = load("meanflow_compute")
    old = [dict(method="meanflow.py", variant=v, seed=0, nfe=1, value=1.0) for v in ("paper", "iMF")]
    old.append(dict(method="cfm.py", variant="Euler", seed=0, nfe=100, value=1.0))
    new = [dict(method="cfm.py", variant="Euler", seed=0, nfe=100, value=2.0),
           dict(method="meanflow.py", variant="iMF", seed=0, nfe=1, value=2.0)]
    merged = mc._merge(old, new, ("iMF",))  # a rerun of iMF and of the reference
    assert [(r["variant"], r["value"]) for r in merged] == [("Euler", 2.0), ("paper", 1.0), ("iMF", 2.0)]


def test_rows_sampled_at_several_guidance_scales_are_rows_of_their_own(tmp_path):
    mc = load("meanflow_compute")
    rows = [dict(method="cfm.py", variant="Euler", nfe=100, iters=10, train_cpu_s=1.0, seed=s, metric="FD", value=20.0,
                 floor=10.0, floor_sd=1.0, memorised=0.0) for s in (0, 1)]
    rows += [dict(r, nfe=200, cfg_scale=1.25, value=10.0) for r in rows]  # guided cfm.py: context, not the reference
    for s in (0, 1):
        rows += [dict(rows[0], method="meanflow.py", variant="iMF, w input", nfe=1, cfg_scale=w, seed=s, value=v + s)
                 for w, v in ((1.0, 40.0), (1.5, 24.0))]
    rows = mc._merge([], rows, ("iMF, w input",))
    assert [(r["seed"], r.get("cfg_scale")) for r in rows[4:]] == [(0, 1.0), (0, 1.5), (1, 1.0), (1, 1.5)]
    text = mc.markdown({"digits-cond": {"rows": rows, "costs": {"cfm": 0.05, "iMF, w input": 0.1}}})
    assert "| iMF, w input | 10 | 0.100 (2.0x) | 1 +- 0 | 40.5 +- 0.71 | 2.02 +- 0.035: not met |  |  | 0.0% |" in text
    assert "cfm.py, 200 Euler NFE sampled with guidance at w 1.25: FD 10 +- 0, 0.5 +- 0 of the reference" in text
    assert "| iMF, w input, sampled at w 1.5 | 10 |  | 1 +- 0 | 24.5 +- 0.71 | 1.23 +- 0.035: met |  |  | 0.0% |" in text


def test_a_variants_curve_joins_its_parts_panel(tmp_path):
    """figures.py compute: one panel a part; a variant's file adds its MeanFlow lines, not a second cfm.py."""
    figures = load("figures")
    rows = [row("cfm.py", 100, k, 10 * (k + 1), 1.0 * (k + 1), 0.2, s) for k in range(2) for s in (0, 1)]
    mf = [row("meanflow.py", 1, k, 10 * (k + 1), 1.0 * (k + 1), 0.3 + s, s) for k in range(2) for s in (0, 1)]
    (tmp_path / "meanflow_curve_checkerboard.json").write_text(json.dumps({"part": "checkerboard", "rows": rows + mf}))
    (tmp_path / "meanflow_curve_checkerboard-paper.json").write_text(
        json.dumps({"part": "checkerboard", "variant": "paper", "rows": [dict(r, value=9.0) for r in rows] + mf}))
    panels = figures.compute_lines(tmp_path)
    assert len(panels) == 1
    title, lines, floor, xlabel, metric = panels[0]
    assert list(lines) == ["cfm.py, 100 Euler steps", "meanflow.py paper, 1 step(s)", "meanflow.py default, 1 step(s)"]
    assert lines["cfm.py, 100 Euler steps"][0][2] == 0.2  # the default file's cfm.py rows only
    assert lines["meanflow.py default, 1 step(s)"][1][2:] == (0.8, figures.mean_sd([0.3, 1.3])[1])
    assert "checkerboard" in title and metric == "FD" and floor == (10.0, 1.0)


def test_consistency_claims_and_table_on_made_up_samples(tmp_path, monkeypatch):
    """benchmarks/bench_consistency.py's analysis on two seeds of made-up checkerboard rows: a row identical
    to the reference has ratio 1 on every replicate and meets a <= target; a row stretched off the data is
    far above it with an interval that excludes it; a row no seed has makes no claim. The table shows
    each row's ratio, interval and verdict beside the floor."""
    import torch
    import common
    bc = load("bench_consistency")
    monkeypatch.setattr(bc, "RESULTS", tmp_path)
    data = common.load_data("checkerboard")
    n = 300
    for seed in (0, 1):
        # the same points on both seeds: seeds that agree, so the interval is the resamples' alone
        good = data.x_train[torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(0))[:n]].double()
        samples = {bc.REFERENCE: good, "ECT, 1 step": good.clone(), "ECT, 2 steps": good * 1.5}
        (tmp_path / f"seed{seed}").mkdir()
        torch.save(samples, tmp_path / f"seed{seed}" / "checkerboard-samples.pt")
        rows = [dict(sampler=k, run="cfm" if k == bc.REFERENCE else "ect", nfe=1, seed=seed, iters=10, train_cpu_s=5.0,
                     metric="W2", value=1.0, floor=0.5, floor_sd=0.1, floor_n=n) for k in samples]
        (tmp_path / f"consistency_checkerboard_seed{seed}.json").write_text(json.dumps(
            dict(machine="test", part="checkerboard", seed=seed, n_gen=n, rows=rows)))
    bc.analyse(tmp_path, replicates=50)
    res = json.loads((tmp_path / "consistency_claims.json").read_text())["parts"]["checkerboard"]
    claims = {c["claim"]: c for c in res["claims"]}
    same = claims["ECT, 1 step within 1.3x of CFM-100"]
    assert (same["estimate"], same["lo"], same["hi"], same["verdict"]) == (1.0, 1.0, 1.0, "holds")
    off = claims["ECT, 2 steps within 1.1x of CFM-100"]
    assert off["lo"] > 1.1 and off["verdict"] == "does not hold" and set(off["seeds"]) == {"0", "1"}
    assert "CD, 1 step within 1.3x of CFM-100" not in claims and res["seeds"] == [0, 1]
    text = bc.markdown(tmp_path)
    assert "| ECT, 1 step | 1 | 2 | 10 +- 0 | 5 +- 0 | 1 +- 0 | 1 (1 to 1) | <= 1.3 | **holds** |" in text
    assert f"| ECT, 2 steps | 1 | 2 | 10 +- 0 | 5 +- 0 | 1 +- 0 | {off['estimate']:.3g} " in text and "**does not hold**" in text
    assert "floor (real vs real, 300 training vs 300 held-out, mean +- sd over 20 draws): W2 0.5 +- 0.1" in text


def test_mar_claims_and_table_on_made_up_samples(tmp_path, monkeypatch):
    """benchmarks/bench_mar.py's analysis on two seeds of made-up digits rows: one token per step (K=16)
    identical to CFM-100 has ratio 1 on every replicate and meets its <= 1.2 target; K=1 made of noisy
    digits is far above K=16 with an interval that excludes 1.1; a row no seed has makes no claim. The table
    shows each row's ratio to CFM-100, its interval and verdict, the bits/dim per K and the floor."""
    import torch
    import common
    bm = load("bench_mar")
    monkeypatch.setattr(bm, "RESULTS", tmp_path)
    data = common.load_data("digits")
    n = 200
    for seed in (0, 1):
        g = torch.Generator().manual_seed(seed)
        x = data.x_train[torch.randperm(len(data.x_train), generator=g)[:n]]
        noisy = (x + 0.8 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
        good = common.features(data, x).double()
        samples = {bm.REFERENCE: good, "MAR, K=16": good.clone(), "MAR, K=1": common.features(data, noisy).double()}
        (tmp_path / f"seed{seed}").mkdir()
        torch.save(samples, tmp_path / f"seed{seed}" / "digits-samples.pt")
        rows = [dict(sampler=k, run="cfm" if k == bm.REFERENCE else "mar", nfe=100 if k == bm.REFERENCE else int(k.split("=")[1]),
                     seed=seed, iters=10, train_cpu_s=5.0, metric="FD", value=1.0, floor=0.5, floor_sd=0.1, floor_n=n,
                     kid=2.0, kid_floor=0.1, kid_floor_sd=0.1, memorised=0.0, n=n, sample_seconds=0.2,
                     bits_per_dim=None if k == bm.REFERENCE else 1.5) for k in samples]
        (tmp_path / f"mar_seed{seed}.json").write_text(json.dumps(
            dict(machine="test", seed=seed, n_gen=n, bpd_n=50, bpd_steps=40, rows=rows)))
    bm.analyse(tmp_path, replicates=50)
    res = json.loads((tmp_path / "mar_claims.json").read_text())
    claims = {c["claim"]: c for c in res["claims"]}
    same = claims["MAR, K=16 within 1.2x of CFM-100"]
    assert (same["estimate"], same["lo"], same["hi"], same["verdict"]) == (1.0, 1.0, 1.0, "holds")
    off = claims["MAR, K=1 within 1.1x of MAR, K=16 (several tokens per step cost little)"]
    assert off["lo"] > 1.1 and off["verdict"] == "does not hold" and set(off["seeds"]) == {"0", "1"}
    assert not any("AR random order" in c for c in claims) and res["seeds"] == [0, 1]
    text = bm.markdown(tmp_path)
    assert "| MAR, K=16 | 16 | 2 | 10 +- 0 | 5 +- 0 | 1 +- 0 | 2 +- 0 | 0 +- 0 | 1.500 +- 0 | 1 +- 0 | 1 (1 to 1) | <= 1.2 | **holds** |" in text
    assert "| CFM Euler x 100 | 100 | 2 | 10 +- 0 | 5 +- 0 | 1 +- 0 | 2 +- 0 | 0 +- 0 | not measured | 1 +- 0 | 1 |  |  |" in text
    assert f"| MAR, K=1 within 1.1x of MAR, K=16 (several tokens per step cost little) | {off['estimate']:.3g} |" in text
    assert "floor (real vs real, 200 training vs 200 held-out, mean +- sd over 20 draws): FD 0.5 +- 0.1" in text


def test_physctrl_claims_and_table_on_made_up_errors(tmp_path):
    """benchmarks/bench_physctrl.py's analysis on two seeds of made-up per-condition errors: a flow at exactly
    a fifth of the ballistic baseline on every condition has ratio 0.2 on every replicate and holds its <= 1/4
    target; a regressor at twice the flow's does not hold <= 1/4 of ... (0.4); the v-prediction rows pair with
    the main runs' conditions (x below v holds at 0.5), and so do the shifted rows of seed 1 alone (0.15: 0.375 of the
    regressor's, 0.75 of x). The table shows every method and the withheld check."""
    bp = load("bench_physctrl")
    n = 50
    errs = [0.5 + 0.01 * i for i in range(n)]
    fig = lambda scale: dict(last=scale * sum(errs) / n, mean=0.1, chamfer=0.1, spring=0.01, ground=0.0,  # noqa: E731
                             last_each=[scale * e for e in errs])
    check = dict(mean=1.7, sd=0.5, residual=0.1, ks=0.1, p=0.5, passes=True)
    for seed in (0, 1):
        rows = {"flow": fig(0.2), "regressor": fig(0.4), "ballistic": fig(1.0), "static": fig(1.2)}
        (tmp_path / f"physctrl_seed{seed}.json").write_text(json.dumps(dict(
            machine="test", seed=seed, iters=10, n_eval=n, n_withhold=8, rows=rows, train_cpu_s=5.0,
            regressor_train_cpu_s=5.0, withheld=dict(reference=dict(mean=1.7, sd=0.5), flow=check,
                                                     regressor=dict(check, passes=False, p=0.001)))))
        (tmp_path / f"physctrl_v_seed{seed}.json").write_text(json.dumps(dict(
            machine="test", seed=seed, iters=10, n_eval=n, n_withhold=8, rows={"flow": fig(0.4)}, train_cpu_s=5.0,
            withheld=dict(reference=dict(mean=1.7, sd=0.5), flow=check))))
    (tmp_path / "physctrl_shift_seed1.json").write_text(json.dumps(dict(
        machine="test", seed=1, iters=10, n_eval=n, n_withhold=8, rows={"flow": fig(0.15)}, train_cpu_s=5.0,
        withheld=dict(reference=dict(mean=1.7, sd=0.5), flow=dict(check, passes=False, p=0.01)))))
    bp.analyse(tmp_path, replicates=50)
    claims = {c["claim"]: c for c in json.loads((tmp_path / "physctrl_claims.json").read_text())["claims"]}
    x = claims["x-prediction flow's last-frame error at most 1/4 of the rigid ballistic baseline's"]
    assert (round(x["estimate"], 9), round(x["lo"], 9), round(x["hi"], 9), x["verdict"]) == (0.2, 0.2, 0.2, "holds")
    r = claims["MSE regressor's last-frame error at most 1/4 of the rigid ballistic baseline's"]
    assert round(r["estimate"], 9) == 0.4 and r["verdict"] == "does not hold"
    xv = claims["x-prediction's last-frame error below v-prediction's"]
    assert round(xv["estimate"], 9) == 0.5 and xv["verdict"] == "holds" and set(xv["seeds"]) == {"0", "1"}
    v = claims["v-prediction flow's (the default's) last-frame error at most 1/4 of the rigid ballistic baseline's"]
    assert round(v["estimate"], 9) == 0.4 and v["verdict"] == "does not hold"
    shifted = claims[f"shifted (--shift {bp.SHIFT}) x-prediction flow's last-frame error at most the MSE regressor's"]
    assert round(shifted["estimate"], 9) == 0.375 and shifted["verdict"] == "holds" and set(shifted["seeds"]) == {"1"}
    sx = claims[f"shifted (--shift {bp.SHIFT}) x-prediction's last-frame error below unshifted x-prediction's"]
    assert round(sx["estimate"], 9) == 0.75 and sx["verdict"] == "holds"
    md = bp.markdown(tmp_path)
    assert "flow, v-prediction (the default; seeds 0, 1)" in md and "**passes**" in md and "**fails**" in md
    assert f"flow, x-prediction, --shift {bp.SHIFT} (seeds 1)" in md and "p = 0.01: **fails**" in md
    assert "| x-prediction flow's last-frame error at most 1/4 of the rigid ballistic baseline's | 0.2 |" in md


def test_motion_prompting_claims_and_table_on_made_up_errors(tmp_path):
    """benchmarks/bench_motion_prompting.py's analysis on two seeds of made-up per-clip motion errors: 4 tracks at
    exactly a fifth of the base on every clip has ratio 0.2 on every replicate and holds its <= 1/3 target; 1 track at
    the base's own errors is 1 on every replicate, so '< 1' does not hold; an FD difference whose replicates straddle
    the floor's sd is within noise."""
    bm = load("bench_motion_prompting")
    n = 40
    errs = [2.0 + 0.1 * i for i in range(n)]
    fig = lambda scale: dict(motion=scale * sum(errs) / n, motion_each=[scale * e for e in errs], identity=0.5,  # noqa: E731
                             fd=30.0, fd_floor=20.0, fd_floor_sd=2.0)
    for seed in (0, 1):
        rows = {"real clips": fig(0.02), "base": fig(1.0), "1 track": fig(1.0), "4 tracks": fig(0.2), "all tracks": fig(0.1)}
        (tmp_path / f"motion_prompting_seed{seed}.json").write_text(json.dumps(dict(
            machine="test", seed=seed, n_eval=n, rows=rows, fd_difference=[2.0] + [1.0, 3.0] * 20, train_cpu_s=5.0,
            base_train_cpu_s=5.0, sample_seconds=1.0)))
    bm.analyse(tmp_path, replicates=50)
    claims = {c["claim"]: c for c in json.loads((tmp_path / "motion_prompting_claims.json").read_text())["claims"]}
    four = claims["ControlNet with 4 tracks: motion error at most 1/3 of the base's"]
    assert (round(four["estimate"], 9), round(four["lo"], 9), round(four["hi"], 9), four["verdict"]) == (0.2, 0.2, 0.2, "holds")
    assert claims["ControlNet with 1 track: motion error below the base's"]["verdict"] == "does not hold"
    assert claims["ControlNet with all tracks: motion error below 4 tracks'"]["verdict"] == "holds"
    fd = claims[bm.FD_CLAIM]
    assert fd["threshold"] == 2.0 and fd["estimate"] == 2.0 and fd["verdict"] == "within noise"
    md = bm.markdown(tmp_path)
    assert "| ControlNet, 4 tracks | 0.79 +- 0 | 0.500 +- 0 | 30 +- 0 |" in md and "**holds**" in md and "**within noise**" in md


def test_motion_prompting_fd_replicates_pair_the_clips(monkeypatch):
    """The FD difference's replicates resample the same clips for both rows: two identical rows differ by exactly 0 on
    every replicate; rows of real frames against noise differ by a negative amount, first and on every replicate."""
    import torch
    import common
    bm = load("bench_motion_prompting")
    monkeypatch.setattr(common, "features", lambda data, x, root=None: torch.nn.functional.avg_pool2d(x, 6).flatten(1))
    g = torch.Generator().manual_seed(0)
    real = torch.rand(30, 8, 24, 24, generator=g) * 0.2 - 1
    noise = torch.randn(30, 8, 24, 24, generator=g)
    ref = torch.rand(30, 7, 24, 24, generator=g) * 0.2 - 1
    same = bm.fd_replicates(None, {"4 tracks": noise, "base": noise}, ref, 10, 0)
    assert len(same) == 11 and all(v == 0 for v in same)
    better = bm.fd_replicates(None, {"4 tracks": real, "base": noise}, ref, 10, 0)
    assert all(v < 0 for v in better)


def test_motion_prompting_physics_pipeline_picture(tmp_path):
    """bench_motion_prompting --physics on two tiny checkpoints: physctrl.py's tracks prompt motion_prompting.py; the
    figure, its json and the paragraph that shows it."""
    import motion_prompting
    import physctrl
    physctrl.main(["--width", "16", "--depth", "1", "--heads", "2", "--batch-size", "8", "--n-train", "32", "--iters", "2",
                   "--regressor-iters", "0", "--n-eval", "0", "--n-withhold", "0", "--out", str(tmp_path / "pc")])
    motion_prompting.main(["--width", "8", "--batch-size", "8", "--base-iters", "2", "--iters", "2", "--n-eval", "0",
                           "--out", str(tmp_path / "mp")])
    bm = load("bench_motion_prompting")
    res = bm.run_physics(tmp_path / "pc" / "ckpt.pt", tmp_path / "mp" / "ckpt.pt", tmp_path / "work", tmp_path)
    assert res["motion"] >= 0 and res["trajectory_last_frame_error"] >= 0
    assert (tmp_path / "img" / "motion_prompting-physics.png").exists()
    (tmp_path / "motion_prompting_seed0.json").write_text(json.dumps(dict(
        machine="test", seed=0, n_eval=2, train_cpu_s=1.0, base_train_cpu_s=1.0, fd_difference=[0.0, 0.1, -0.1],
        rows={k: dict(motion=1.0, motion_each=[1.0, 1.0], identity=0.5, fd=1.0, fd_floor=1.0, fd_floor_sd=0.1)
              for k in bm.ROWS})))
    assert "![physics to video](results/img/motion_prompting-physics.png)" in bm.markdown(tmp_path)
