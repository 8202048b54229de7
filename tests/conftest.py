import os
import sys
from pathlib import Path

# one thread per process: the tests run many tiny tensor ops, for which torch's thread pool costs more
# than it gains, and on a shared or busy 2-core machine it can slow them tenfold (subprocesses inherit it)
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True, scope="session")
def _cache(tmp_path_factory):
    """Downloads and the cached feature classifier go to a temporary folder, not the home."""
    os.environ["GENMODELS_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


@pytest.fixture
def parsed_flags(monkeypatch):
    """Every (args, a deep copy of vars(args) as common.parse_args returned them) of the test's runs,
    so a test can check that a model file never writes into its parsed flags."""
    import copy
    import common
    parsed, parse = [], common.parse_args

    def spy(*a, **k):
        args, ckpt = parse(*a, **k)
        parsed.append((args, copy.deepcopy(vars(args))))
        return args, ckpt
    monkeypatch.setattr(common, "parse_args", spy)
    return parsed
