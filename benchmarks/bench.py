"""What every benchmark script shares: where results go, the machine they ran on, and writing them.

Each script measures through the model files' `main()` (the dict it returns holds the quality, the
sampling and the training seconds) and writes one json file under benchmarks/results/; report.py
turns those files into benchmarks/README.md.
"""
import json
import os
import platform
import sys
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
    if isinstance(m, str):  # older files stored the line itself
        return m
    text = f"{m.get('processor') or m.get('machine')}, {m.get('cores')} cores"
    if m.get("threads"):
        text += f", {m['threads']} thread(s)"
    text += f", torch {m.get('torch')}"
    return text + (f", {m['gpu']}" if m.get("gpu") else "")


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


def table(header, rows, align=None):
    """A markdown table: header (list of str), rows (lists of cells), align ('l'/'r' per column)."""
    align = align or ["l"] + ["r"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
