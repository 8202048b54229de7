"""Every model file's command line: exact resume, and bad input answered with one line and exit
status 2, no traceback, nothing overwritten."""
import hashlib
import importlib
from pathlib import Path

import pytest
import torch

import common

MODELS = ["ddpm", "ddim", "cfm", "rectified_flow", "meanflow", "vae", "ar", "latent_diffusion", "controlnet",
          "consistency", "mar"]
# the smallest run of each file: flags beside the shared ones
OWN = {"ddpm": ["--T", "20"], "ddim": ["--T", "20", "--steps", "5"], "cfm": ["--steps", "2"],
       "rectified_flow": ["--steps", "2"], "meanflow": [], "vae": ["--hidden", "16", "--iwae-k", "0"],
       "ar": ["--depth", "1", "--bpd", "0"], "latent_diffusion": ["--ae-iters", "4", "--ae-width", "4", "--steps", "2"],
       "controlnet": ["--base-iters", "4", "--steps", "2"], "consistency": ["--teacher-iters", "4"],
       "mar": ["--depth", "1", "--head-width", "8", "--head-steps", "2"]}


def tiny(model, out, iters=8):
    return (["--width", "8", "--batch-size", "16", "--log-every", "2", "--ckpt-every", "4", "--n-eval", "0",
             "--iters", str(iters), "--out", str(out)] + OWN[model])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny checkpoint per model file, trained straight through 8 iterations."""
    root = tmp_path_factory.mktemp("trained")
    for m in MODELS:
        importlib.import_module(m).main(tiny(m, root / m))
    return root


def tensors(path):
    ck = torch.load(path, weights_only=True)
    flat = {}
    def walk(prefix, obj):
        if isinstance(obj, torch.Tensor):
            flat[prefix] = obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(f"{prefix}.{i}", v)
    walk("", {k: ck[k] for k in ("net", "ema", "opt", "rng")})
    return ck["step"], flat


@pytest.mark.parametrize("model", MODELS)
def test_resume_is_bit_identical(model, trained, tmp_path):
    """8 iterations straight == 4 iterations, then --resume for 4 more: weights, EMA, optimizer, RNG.
    One command serves a preemptible job: '--resume auto' starts fresh without a checkpoint."""
    main = importlib.import_module(model).main
    main(tiny(model, tmp_path, iters=4) + ["--resume", "auto"])
    main(["--resume", "auto", "--iters", "8", "--out", str(tmp_path)])
    (s1, a), (s2, b) = tensors(trained / model / "ckpt.pt"), tensors(tmp_path / "ckpt.pt")
    assert s1 == s2 == 8 and a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.mark.parametrize("model", MODELS)
def test_main_returns_its_training_seconds_and_never_writes_the_flags(model, tmp_path, parsed_flags):
    """A run that trains returns a dict with the wall and CPU seconds of common.train (benchmarks read
    them there, not from the log). The flags common.parse_args returned are read, never written: what
    a file derives from them it passes on explicitly, and the checkpoint records the flags as parsed,
    a derived value only where the flag was left unset (None)."""
    parsed = parsed_flags
    q = importlib.import_module(model).main(tiny(model, tmp_path, iters=2))
    first = {"latent_diffusion": "ae_", "controlnet": "base_",  # a network trained before the model
             "consistency": "teacher_"}.get(model, "")
    assert all(q[p + k] > 0 for p in ("", first) for k in ("train_seconds", "train_cpu_seconds")), q
    [(args, before)] = parsed
    assert vars(args) == before
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)["args"]
    assert saved.keys() == before.keys() and {k: v for k, v in saved.items() if before[k] is not None} == {
        k: v for k, v in before.items() if v is not None}


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir()) if p.is_file()}


def expect_exit_2(capsys, main, argv, words):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2, err
    assert words in err and "Traceback" not in err, err
    assert len(err.splitlines()) <= 2, err  # argparse adds its usage line; ours is one line


BAD = {
    "unknown data set": (["--data", "imagenet"], "unknown data set"),
    "unknown architecture": (["--arch", "resnet"], "invalid choice"),
    "zero iterations": (["--iters", "0"], "must be positive"),
    "negative batch": (["--batch-size", "-4"], "must be positive"),
    "batch larger than the data": (["--batch-size", "100000"], "exceeds the 1297 training examples"),
    "cuda without a GPU": (["--device", "cuda"], "no CUDA GPU"),
    "nan guidance scale": (["--cfg-scale", "nan"], "--cfg-scale: 'nan' is not a finite number"),
    "infinite learning rate": (["--lr=-inf"], "--lr: '-inf' is not a finite number"),
    "unwritable output": (["--out", "/proc/no-such-folder/run"], "cannot write to output folder"),
}


@pytest.mark.parametrize("case", BAD)
@pytest.mark.parametrize("model", MODELS)
def test_bad_flags(model, case, capsys, tmp_path):
    if case == "cuda without a GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    flags, words = BAD[case]
    expect_exit_2(capsys, importlib.import_module(model).main, tiny(model, tmp_path) + flags, words)
    assert not (tmp_path / "ckpt.pt").exists()


@pytest.mark.parametrize("model", MODELS)
def test_bad_checkpoints_change_nothing(model, trained, capsys, tmp_path):
    main = importlib.import_module(model).main
    other = "vae" if model != "vae" else "ddpm"
    before = digest(trained / model)
    # a checkpoint of another model
    expect_exit_2(capsys, main, ["--ckpt", str(trained / other / "ckpt.pt"), "--out", str(tmp_path)],
                  f"is a {other} checkpoint")
    # a corrupt (truncated) checkpoint
    cut = tmp_path / "cut.pt"
    cut.write_bytes((trained / model / "ckpt.pt").read_bytes()[:1000])
    expect_exit_2(capsys, main, ["--ckpt", str(cut)], "corrupt")
    # resuming with a network of another shape than the checkpoint's
    expect_exit_2(capsys, main, ["--resume", "--out", str(trained / model), "--width", "32", "--hidden", "64"]
                  if model == "vae" else ["--resume", "--out", str(trained / model), "--width", "32"],
                  "does not fit")
    assert digest(trained / model) == before


@pytest.mark.parametrize("model", MODELS)
def test_truncated_download(model, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(common.urllib.request, "urlretrieve", lambda url, path: Path(path).write_bytes(b"cut"))
    expect_exit_2(capsys, importlib.import_module(model).main,
                  tiny(model, tmp_path / "run") + ["--data", "mnist", "--download", "--data-root", str(tmp_path)],
                  "SHA-256")
    assert not any((tmp_path / "mnist").iterdir())
