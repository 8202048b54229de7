"""What every benchmark script shares: where results go, the machine they ran on, running a model
file, and writing json and markdown.

Each script measures through the model files' `main()` (the dict it returns holds the quality, the
sampling and the training seconds), writes one json file under benchmarks/results/, and renders it
with its own `markdown()`; report.py puts those renderings together into benchmarks/README.md.
"""
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:  # the model files and common.py sit at the repository's root
    sys.path.insert(0, str(ROOT))


def machine(device="cpu"):
    """The machine as a dict: processor, cores, threads, torch version and the GPU's name if any."""
    import torch
    m = dict(processor=platform.processor() or platform.machine(), machine=platform.machine(),
             cores=os.cpu_count(), threads=torch.get_num_threads(), torch=torch.__version__)
    if str(device).startswith("cuda") and torch.cuda.is_available():
        m["gpu"] = torch.cuda.get_device_name()
    return m


def describe(m):
    """One line for a table's caption: 'x86_64, 2 cores, 1 thread(s), torch 2.13.0+cpu' (and the GPU)."""
    if isinstance(m, str):  # some files store the line itself; a bare version is torch's
        return m if "torch" in m else f"torch {m}"
    if not m:
        return "machine not recorded"
    text = ", ".join(str(x) for x in (m.get("gpu"), m.get("processor") or m.get("machine")) if x)
    text += f", {m['cores']} cores" if m.get("cores") else ""
    text += f", {m['threads']} thread(s)" if m.get("threads") else ""
    return text + f", torch {m.get('torch', 'not recorded')}"


def caption(m, command, what=""):
    """A table's source line: what it shows, the machine and torch, and the command that reproduces it."""
    return f"{what + '. ' if what else ''}Machine: {describe(m)}. Command: `{command}`"


def run(main, argv, trains=True, samples=False):
    """A model file's main(argv) in this process: the dict it returns (quality, sample_seconds and,
    when it trains, train_seconds and train_cpu_seconds), {} where it returns nothing; the samples
    themselves only if asked (they are no json). Where a training run's dict lacks its seconds, the
    call's own wall and CPU seconds, less sampling, stand in."""
    t0, c0 = time.time(), time.process_time()
    q = dict(main(argv) or {})
    if not samples:
        q.pop("samples", None)
    if trains:
        q.setdefault("train_seconds", time.time() - t0 - q.get("sample_seconds", 0.0))
        q.setdefault("train_cpu_seconds", time.process_time() - c0)
    return q


def cost_per_iter(module, flags, work):
    """CPU seconds per training iteration of module.main(flags): 80 iterations minus 20, after a throwaway
    run of 2 (start-up, data loading and first-call costs cancel); the runs write under `work`."""
    per = []
    for iters in (2, 20, 80):
        q = run(module.main, flags + ["--iters", str(iters), "--n-eval", "0", "--log-every", "1000", "--warmup", "1",
                                     "--out", str(Path(work) / f"calib-{iters}")])
        per.append(q["train_cpu_seconds"])
    return (per[2] - per[1]) / 60


def train(module, flags):
    """A training run of module.main(flags) in this process, no evaluation; its training CPU seconds (a
    teacher trained inside it included)."""
    return run(module.main, flags + ["--n-eval", "0", "--log-every", "1000"])["train_cpu_seconds"]


# the quality figures a row keeps from main()'s dict
QUALITY = ("metric", "value", "floor", "floor_sd", "floor_n", "n", "kid", "kid_floor", "kid_floor_sd", "memorised",
           "sample_seconds")


def quality(q):
    """The QUALITY entries that main()'s dict q has."""
    return {k: q[k] for k in QUALITY if k in q}


def write_json(path, obj):
    """Write obj as indented json through a temporary file renamed over `path` (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def read_json(name):
    """A results file by its name under benchmarks/results/ (or a path)."""
    path = Path(name) if os.sep in str(name) else RESULTS / name
    return json.loads(path.read_text())


def ms(values, f=".3g"):
    """'mean +- sd' of the values that are not None; one value as it is; '' for none."""
    v = [x for x in values if x is not None]
    if len(v) < 2:
        return format(v[0], f) if v else ""
    return f"{statistics.mean(v):{f}} +- {statistics.stdev(v):.2g}"


def table(header, rows, align=None):
    """A markdown table: header (list of str), rows (lists of cells), align ('l'/'r' per column)."""
    align = align or ["l"] + ["r"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
