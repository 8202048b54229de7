"""The paired bootstrap of benchmarks/run_all.py against direct computations: every replicate's figure
equals the metric recomputed on the explicitly resampled sets, and the claims are decided from the
replicates the results file keeps."""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import common  # noqa: E402
import run_all  # noqa: E402


def resample(n, reps, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.arange(n)[None], torch.randint(n, (reps, n), generator=g)])


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000))
def test_fd_of_each_replicate_is_the_fd_of_the_resampled_sets(seed):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(60, 5, generator=g).double(), (torch.randn(40, 5, generator=g) * 1.5 + 0.3).double()
    ia, ib = resample(60, 3, seed), resample(40, 3, seed + 1)
    got = run_all.fd_batch(a, b, run_all.counts(ia, 60), run_all.counts(ib, 40))
    for k in range(4):
        assert math.isclose(float(got[k]), common.frechet_distance(a[ia[k]], b[ib[k]]), rel_tol=1e-6, abs_tol=1e-9)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000))
def test_mmd_replicates_are_u_statistics_over_distinct_items(seed):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(30, 4, generator=g).double(), (torch.randn(20, 4, generator=g) + 0.5).double()
    ia, ib = resample(30, 2, seed), resample(20, 2, seed + 1)
    got = run_all.mmd_batch(run_all_cubic(a, a), run_all_cubic(b, b), run_all_cubic(a, b),
                            run_all.counts(ia, 30), run_all.counts(ib, 20))
    assert math.isclose(float(got[0]), common.kid(a, b), rel_tol=1e-9, abs_tol=1e-12)  # the sample itself: KID
    for k in range(3):  # brute force: pairs of positions whose items differ
        def within(x, idx):
            s = [float(run_all_cubic(x[i:i + 1], x[j:j + 1])) for p, i in enumerate(idx) for q, j in enumerate(idx) if i != j]
            return sum(s) / len(s)
        cross = float(run_all_cubic(a[ia[k]], b[ib[k]]).mean())
        assert math.isclose(float(got[k]), within(a, ia[k].tolist()) + within(b, ib[k].tolist()) - 2 * cross,
                            rel_tol=1e-9, abs_tol=1e-12)


def run_all_cubic(x, y):
    return (x @ y.T / x.shape[1] + 1) ** 3  # KID's kernel, as common.kid defines it


def test_energy_distance_matches_its_definition_and_vanishes_on_average_for_equal_laws():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(40, 2, generator=g).double(), (torch.randn(30, 2, generator=g) + 1).double()
    d = lambda x, y: torch.cdist(x, y)  # noqa: E731
    want = 2 * d(a, b).mean() - d(a, a).sum() / (40 * 39) - d(b, b).sum() / (30 * 29)
    assert math.isclose(run_all.energy_distance(a, b), float(want), rel_tol=1e-9)
    same = [run_all.energy_distance(torch.randn(50, 2, generator=g).double(), torch.randn(50, 2, generator=g).double())
            for _ in range(200)]
    assert abs(np.mean(same)) < 3 * np.std(same) / math.sqrt(len(same))  # unbiased: zero in expectation


def test_sliced_w2_is_the_rms_of_exact_one_dimensional_w2():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(50, 2, generator=g), torch.rand(50, 2, generator=g)
    angles = torch.arange(8, dtype=torch.float64) * math.pi / 8
    w2 = [common.w2_exact(a.double() @ torch.stack([t.cos(), t.sin()])[:, None], b.double() @ torch.stack([t.cos(), t.sin()])[:, None])
          for t in angles]
    assert math.isclose(float(run_all.sliced_w2(a, b, directions=8)), math.sqrt(np.mean(np.square(w2))), rel_tol=1e-9)


def test_claims_end_to_end_on_made_up_samples(tmp_path, monkeypatch):
    """Two seeds of made-up 2-D rows: a row identical to another has ratio 1 on every replicate; a
    row off the data has a ratio far above 1, with an interval that excludes 1."""
    monkeypatch.setattr(run_all, "RESULTS", tmp_path)
    data = common.load_data("checkerboard")
    n = 300
    for seed in (0, 1):
        good = data.x_train[torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(seed))[:n]]
        samples = {"CFM euler x 1000": good.double(), "CFM rk4 x 5": good.double().clone(),
                   "DDPM ancestral": good.double() * (1.5 + 0.1 * seed), "DDIM eta=0, 50 steps": good.double()}
        (tmp_path / f"seed{seed}").mkdir()
        torch.save(samples, tmp_path / f"seed{seed}" / "2d-samples.pt")
        rows = [dict(run="cfm", sampler=k, model="cfm", nfe=1, value=0.0) for k in samples]
        (tmp_path / f"all_2d_seed{seed}.json").write_text(json.dumps(dict(n_gen=n, seed=seed, rows=rows)))
    run_all.analyse("2d", tmp_path, replicates=100)
    claims = {c["claim"]: c for c in json.loads((tmp_path / "claims_2d.json").read_text())["claims"]}
    same = claims["CFM RK4 at 20 NFE matches Euler at 1000"]
    assert same["estimate"] == 1.0 and same["lo"] == 1.0 and same["hi"] == 1.0 and same["verdict"] == "holds"
    assert same["method"] == "seeds and resamples" and same["replicates"] == 100
    off = claims["DDIM with 50 steps matches DDPM's 1000"]  # good data against data stretched by 1.5
    assert off["hi"] < 1.0 and off["verdict"] == "holds" and set(off["seeds"]) == {"0", "1"}
    seeds = list(off["seeds"].values())
    assert abs(seeds[0] - seeds[1]) > 0.01 and math.isclose(off["estimate"], np.mean(seeds))  # the mean over seeds
    kept = json.loads((tmp_path / "claims_2d.json").read_text())["rows"]  # every row's replicates, kept
    assert set(kept) == {"0", "1"} and len(kept["0"]["DDPM ancestral"]) == 101
    assert run_all.claims_of(json.loads((tmp_path / "claims_2d.json").read_text()))[0]["lo"] == claims[
        run_all.CLAIMS[0][0]]["lo"]  # recomputed from what the file keeps
    best = claims["the best model is close to real data"]
    assert best["lo"] < 1.0 < best["hi"] * 1.5  # real data against the real-vs-real floor: about 1


def test_a_seed_without_samples_keeps_the_rows_its_last_analysis_kept(tmp_path, monkeypatch):
    """A seed measured elsewhere (its samples not here) keeps the rows of the claims file; a seed
    with neither is refused, naming the command that measures it."""
    monkeypatch.setattr(run_all, "RESULTS", tmp_path)
    data = common.load_data("checkerboard")
    for seed in (0, 1):
        x = data.x_train[torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(seed))[:200]]
        (tmp_path / f"seed{seed}").mkdir()
        torch.save({"CFM euler x 1000": x.double(), "CFM rk4 x 5": 1.1 * x.double()},
                   tmp_path / f"seed{seed}" / "2d-samples.pt")
        rows = [dict(run="cfm", sampler=k, model="cfm", nfe=1, value=0.0) for k in ("CFM euler x 1000", "CFM rk4 x 5")]
        (tmp_path / f"all_2d_seed{seed}.json").write_text(json.dumps(dict(n_gen=200, seed=seed, rows=rows)))
    run_all.analyse("2d", tmp_path, replicates=20)
    first = json.loads((tmp_path / "claims_2d.json").read_text())
    (tmp_path / "seed1" / "2d-samples.pt").unlink()
    run_all.analyse("2d", tmp_path, replicates=20)
    again = json.loads((tmp_path / "claims_2d.json").read_text())
    assert again["rows"]["1"] == first["rows"]["1"] and again["figure"]["1"] == first["figure"]["1"]
    assert again["claims"] == first["claims"]
    del again["rows"]["1"]
    (tmp_path / "claims_2d.json").write_text(json.dumps(again))
    with pytest.raises(SystemExit, match="--part 2d --seed 1"):
        run_all.analyse("2d", tmp_path, replicates=20)
