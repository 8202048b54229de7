"""benchmarks/gpu.py runs its code paths on the CPU (--quick), so that the one GPU command never rots."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_benchmark_quick_on_cpu(tmp_path):
    # loaded from its path: benchmarks/ on sys.path would shadow the model files (benchmarks/ddpm.py, ...)
    spec = importlib.util.spec_from_file_location("gpu_benchmark", ROOT / "benchmarks" / "gpu.py")
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    res = gpu.main(["--device", "cpu", "--quick", "--out", str(tmp_path)])
    models = {"ddpm", "ddim", "cfm", "rectified_flow", "meanflow", "vae", "ar"}
    assert {r["model"] for r in res["rows"]} == models and not [r for r in res["rows"] if "error" in r]
    assert all(r["loss_finite"] and r["samples_finite"] and r["flops_per_it"] > 0 for r in res["rows"])
    assert all(v["rc"] == 0 for v in res["end_to_end"].values())
    assert res["end_to_end"]["torchrun ddpm"]["ckpt"] and res["end_to_end"]["torchrun meanflow"]["loss_finite"]
    assert json.loads((tmp_path / "gpu.json").read_text())["quick"] and "| ddpm |" in (tmp_path / "gpu.md").read_text()
