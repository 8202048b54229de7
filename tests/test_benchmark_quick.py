"""Every benchmark script's --quick path, end to end, in this process: it runs (tiny budgets,
seconds), writes its json (or picture) under the folder the test gives it and nowhere else, and
its markdown() renders what it wrote. So that no benchmark rots unnoticed between its (long)
measurements.

A script joins with one line in CASES. Outputs: each run gets a fresh WORK folder; bench.ROOT and
bench.RESULTS (and a module's own ROOT / RESULTS) point into an empty stand-in of the repository,
which must stay empty, and the working directory is an empty folder, which must stay empty too;
the real benchmarks/results/ file of that name must not change. benchmarks/gpu.py's quick path is
run by tests/test_gpu_benchmark.py."""
import importlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "benchmarks") not in sys.path:  # the benchmark scripts' names shadow no model file
    sys.path.append(str(ROOT / "benchmarks"))
COMMITTED = str(ROOT / "benchmarks" / "results")  # read-only here: figures.py draws from it


def load(path):
    return json.loads(Path(path).read_text())


def markdown(module, path):
    """The default rendering: the script's markdown() of the json it wrote."""
    return module.markdown(load(path))


def seed_files(module, path):
    return module.markdown(module.seed_files(path.parent))


def with_step_costs(module, path):
    return module.markdown(load(path)) + module.step_cost_table(load(path))


def curve(module, path):
    return module.curve_markdown([load(path)])


def run_all_claims(module, path):
    """run_all.py's analysis of the quick seed it measured, and its claims table."""
    module.analyse("2d", path.parent, replicates=5, suffix="_quick", results=path.parent)
    analysed = load(path.parent / "claims_2d_quick.json")
    return module.rows_table("2d", [load(path)])[0] + module.claims_block(
        dict(analysed, claims=module.claims_of(analysed)))


def unsuffixed(module, path):
    """The script's markdown(folder) of the quick run's files, renamed as a measured run names them
    (the quick run's names end in _quick, which its markdown does not read)."""
    folder = path.parent / "as-measured"
    folder.mkdir()
    for f in path.parent.glob("*_quick.json"):
        (folder / f.name.replace("_quick", "")).write_text(f.read_text())
    return module.markdown(folder)


def folder_markdown(module, path):
    return module.markdown(path.parent)


Q = ["--quick", "--work", "{work}"]
S = ["--seed", "0", "--quick", "--analyse", "--work", "{work}"]
PART = ["--part", "checkerboard", "--seeds", "0"]
# (script, argv ({work}: the run's folder), what it writes there, how its markdown renders that
# (None: a picture, not rendered), the optional packages it needs)
CASES = [
    ("bench_ar", Q, "ar.json", markdown, ()),
    ("bench_cfm", Q, "cfm.json", markdown, ()),
    ("bench_controlnet", Q, "controlnet.json", markdown, ()),
    ("bench_ddim", ["--quick", "--out", "{work}"], "ddim.json", markdown, ()),
    ("bench_latent_diffusion", Q, "latent_diffusion_seed0.json", seed_files, ()),
    ("bench_meanflow", Q, "meanflow.json", with_step_costs, ()),
    ("bench_rectified_flow", Q, "rectified_flow.json", markdown, ()),
    ("bench_vae", Q, "vae.json", markdown, ()),
    ("cfm_paths", Q + ["--data", "checkerboard"], "cfm_paths.json", markdown, ()),
    ("guidance", ["--quick", "--out", "{work}/g"], "g-quick/guidance.json", markdown, ()),
    ("likelihood", Q, "likelihood.json", markdown, ()),
    ("meanflow_compute", Q + PART + ["--variants", "iMF", "FM first"], "meanflow_compute.json",
     markdown, ()),
    ("meanflow_compute", Q + PART + ["--curve"], "meanflow_curve_checkerboard.json", curve, ()),
    ("peers", Q, "peers.json", markdown, ("diffusers", "torchcfm")),
    ("run_all", ["--part", "2d", "--quick", "--only", "rf1,vae", "--work", "{work}"],
     "quick/all_2d_seed0_quick.json", run_all_claims, ()),
    ("bench_mar", S, "quick/mar_claims_quick.json", unsuffixed, ()),
    ("bench_consistency", ["--part", "checkerboard"] + S, "quick/consistency_claims_quick.json",
     unsuffixed, ()),
    ("bench_physctrl", S, "quick/physctrl_claims.json", folder_markdown, ()),
    ("bench_motion_prompting", S, "quick/motion_prompting_claims.json", folder_markdown, ()),
    ("kid_check", Q, "kid_check.json", markdown, ()),
    ("figures", ["nfe", "--results", COMMITTED, "--out", "{work}/nfe.png", "--dpi", "30"],
     "nfe.png", None, ("matplotlib",)),
    ("figures", ["compute", "--results", COMMITTED, "--out", "{work}/compute.png", "--dpi", "30"],
     "compute.png", None, ("matplotlib",)),
]


class PooledPixels:
    """A stand-in for the feature classifier of a data set no other test trains one on (the moving
    digits' frames: half a minute of training, not what a quick path tests): pooled pixels as its
    features, their first ten as its logits."""
    @staticmethod
    def features(x):
        import torch
        return torch.nn.functional.avg_pool2d(x, 6).flatten(1)

    def __call__(self, x):
        return self.features(x)[:, :10]


STAND_INS = {"bench_motion_prompting": lambda data, root=None: (PooledPixels(), 1.0)}


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """(work folder, stand-in repository root, working directory) of one run; bench's ROOT and
    RESULTS point into the stand-in, the process works in an empty folder."""
    import bench
    work, repo, cwd = tmp_path / "work", tmp_path / "repo", tmp_path / "cwd"
    for folder in (work, repo, cwd):
        folder.mkdir()
    monkeypatch.setattr(bench, "ROOT", repo)
    monkeypatch.setattr(bench, "RESULTS", repo / "benchmarks" / "results")
    monkeypatch.chdir(cwd)
    return work, repo, cwd


@pytest.mark.parametrize("script, argv, output, render, needs", CASES,
                         ids=[f"{c[0]}-{Path(c[2]).stem}" for c in CASES])
def test_quick_path_runs_and_renders(script, argv, output, render, needs, isolated, monkeypatch):
    for package in needs:
        pytest.importorskip(package)
    work, repo, cwd = isolated
    if script in STAND_INS:
        import common
        monkeypatch.setattr(common, "feature_net", STAND_INS[script])
    module = importlib.import_module(script)
    for name, stand_in in (("ROOT", repo), ("RESULTS", repo / "benchmarks" / "results")):
        if isinstance(getattr(module, name, None), Path):  # the module's own copy of bench's paths
            monkeypatch.setattr(module, name, stand_in)
    committed = ROOT / "benchmarks" / "results" / Path(output).name
    before = committed.stat().st_mtime_ns if committed.exists() else None
    module.main([a.replace("{work}", str(work)) for a in argv])
    path = work / output
    assert path.is_file() and path.stat().st_size > 0, f"{script} wrote no {output} under WORK"
    if render is not None:
        text = render(module, path)
        assert text.strip() and "\n| " in text, text
    wrote = list(repo.rglob("*"))
    assert not wrote, f"{script} wrote into the repository's tree: {wrote}"
    wrote = list(cwd.rglob("*"))
    assert not wrote, f"{script} wrote into the working directory: {wrote}"
    after = committed.stat().st_mtime_ns if committed.exists() else None
    assert before == after, f"{script} --quick rewrote the committed {committed}"


def test_a_quick_run_refuses_to_write_into_the_committed_results(isolated, capsys):
    """--quick --results benchmarks/results/ ends with one line and exit status 2, before any
    training."""
    import bench
    import bench_vae
    with pytest.raises(SystemExit) as e:
        bench_vae.main(["--quick", "--work", str(isolated[0]), "--results", str(bench.RESULTS)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bench_vae.py: error: --quick") and len(err.splitlines()) == 1
    assert not list(isolated[0].rglob("*"))
