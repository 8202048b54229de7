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
