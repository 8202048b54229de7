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


def cost_per_iter(module, flags, work, iters=(2, 20, 80)):
    """CPU seconds per training iteration of module.main(flags): iters[2] iterations minus
    iters[1] (80 minus 20), after a throwaway run of iters[0] (start-up, data loading and
    first-call costs cancel); the runs write under `work`. Tiny iters (a --quick run) can make
    the difference <= 0: it is then the longest run's seconds per iteration."""
    per = []
    for k in iters:
        q = run(module.main, flags + ["--iters", str(k), "--n-eval", "0", "--log-every", "1000",
                                     "--warmup", "1", "--out", str(Path(work) / f"calib-{k}")])
        per.append(q["train_cpu_seconds"])
    cost = (per[2] - per[1]) / (iters[2] - iters[1])
    return cost if cost > 0 else per[2] / iters[2]


def add_output_flags(parser, work):
    """--quick, --work and --results, as every benchmark script takes them: `work` is the default
    folder for checkpoints and runs (not tracked). A --quick run (tiny budgets, a smoke test of the
    script's code paths in seconds) writes its json and pictures into WORK unless --results says
    where: never into benchmarks/results/ (see results_dir)."""
    parser.add_argument("--quick", action="store_true", help="tiny budgets: a smoke test of this "
                        "script in seconds; its json and pictures go to WORK")
    parser.add_argument("--work", default=str(work),
                        help=f"folder for the checkpoints and runs (default {work})")
    parser.add_argument("--results", help="folder for the json and pictures (default "
                        "benchmarks/results; with --quick, WORK)")
    return parser


def results_dir(args, prog):
    """The folder a run writes its json and pictures to: --results, else WORK for --quick, else
    benchmarks/results/. A --quick run pointed at benchmarks/results/ ends with one line and exit
    status 2: its tiny budgets must never overwrite the committed results."""
    results = Path(args.results or (args.work if args.quick else RESULTS))
    if args.quick and results.resolve() == Path(RESULTS).resolve():
        print(f"{prog}: error: --quick writes tiny-budget results, which must not replace those "
              f"in {RESULTS}: pass --results to another folder (or leave it out: WORK)",
              file=sys.stderr)
        sys.exit(2)
    return results


def train(module, flags):
    """A training run of module.main(flags) in this process, no evaluation; its training CPU seconds (a
    teacher trained inside it included)."""
    return run(module.main, flags + ["--n-eval", "0", "--log-every", "1000"])["train_cpu_seconds"]


# the quality figures a row keeps from main()'s dict
QUALITY = ("metric", "value", "floor", "floor_sd", "floor_n", "n", "kid", "kid_floor", "kid_floor_sd", "kid_scale",
           "memorised",
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
