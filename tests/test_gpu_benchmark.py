"""benchmarks/gpu.py runs its code paths on the CPU (--quick), so that the one GPU command never rots."""
import importlib
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "benchmarks") not in sys.path:  # the benchmark scripts' names shadow no model file
    sys.path.append(str(ROOT / "benchmarks"))


def test_gpu_benchmark_quick_on_cpu(tmp_path):
    gpu = importlib.import_module("gpu")
    res = gpu.main(["--device", "cpu", "--quick", "--out", str(tmp_path)])
    models = {"ddpm", "ddim", "cfm", "rectified_flow", "meanflow", "vae", "ar"}
    assert {r["model"] for r in res["rows"]} == models and not [r for r in res["rows"] if "error" in r]
    assert all(r["loss_finite"] and r["samples_finite"] and r["flops_per_it"] > 0 for r in res["rows"])
    assert all(v["rc"] == 0 for v in res["end_to_end"].values())
    assert res["end_to_end"]["torchrun ddpm"]["ckpt"] and res["end_to_end"]["torchrun meanflow"]["loss_finite"]
    assert res["end_to_end"]["ddpm default run"]["quality"]["metric"] == "FD"  # read from OUT/metrics.jsonl
    assert json.loads((tmp_path / "gpu.json").read_text())["quick"]
    # the bf16 check is live (bf16 rounds this network, the target is not v) and reported per tangent
    jvp = res["meanflow_jvp"]
    assert jvp["forward_rel_err_bf16"] > 1e-4
    for tangent in ("sample", "model"):
        assert jvp[tangent]["target_vs_v"] > 0.01 and math.isfinite(jvp[tangent]["rel_err_bf16"])
    text = gpu.table(res)
    assert "| ddpm |" in text and "--tangent model: relative error" in text and "not re-measured" not in text
    assert [r["tangent"] for r in res["rows"] if r["model"] == "meanflow"] == ["model", "model"]


def test_meanflow_rows_of_another_tangent_are_marked_stale():
    gpu = importlib.import_module("gpu")
    row = dict(model="meanflow", data="digits", mode="fp32", it_s=1.0, mfu=None, peak_mem_mib=None, sample_img_s=1.0,
               flops_per_it=1e9, nfe=1)
    res = dict(device="cpu", torch="x", batch=8, quick=True, total_s=1.0, rows=[dict(row, tangent="sample")])
    assert "| meanflow [1] |" in gpu.table(res) and "[1] Measured with --tangent sample" in gpu.table(res)
    assert "[1]" not in gpu.table(dict(res, rows=[dict(row, tangent="model")]))
    # a file that records no tangent: what the commit that added it ran
    assert "the paper's tangent" in gpu.table(dict(res, rows=[row]), "gpu.json")
