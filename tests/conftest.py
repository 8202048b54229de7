import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True, scope="session")
def _cache(tmp_path_factory):
    """Downloads and the cached feature classifier go to a temporary folder, not the home."""
    os.environ["GENMODELS_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
