import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))  # test helper modules
os.environ.setdefault("ANNY_CACHE_DIR", str(ROOT / ".cache" / "anny"))
os.environ.setdefault("UNITEDHUMAN_CACHE", str(ROOT / ".cache" / "unitedhuman"))  # the open body model


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tests with one torch thread (tiny batched fits are dominated by hand-offs)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def toy():
    """The tests' stick-figure SMPL-format body model (see test_smplify.toy_body_model)."""
    from test_smplify import toy_body_model

    return toy_body_model()


@pytest.fixture(scope="session")
def open_model():
    """The open default body model (built from anny into the cache the first time)."""
    from mst_pipeline.body.model import BodyModel
    from mst_pipeline.body.open_model import open_model_data

    return BodyModel(open_model_data())
