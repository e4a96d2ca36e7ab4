"""The one allow-list unpickler (uh_train.format.unpickle) that every reader of pickles subclasses."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest

from uh_train.format.unpickle import NUMPY_ARRAYS, AllowListUnpickler


class _Evil:
    def __reduce__(self):
        return os.system, ("echo should-never-run",)


def test_a_name_outside_the_allow_list_is_refused_without_running_it():
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global .*system"):
        AllowListUnpickler(io.BytesIO(pickle.dumps(_Evil()))).load()


def test_a_subclass_reads_what_its_own_allow_list_names():
    class Arrays(AllowListUnpickler):
        allowed = NUMPY_ARRAYS

    data = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": {1, 2}}
    out = Arrays(io.BytesIO(pickle.dumps(data))).load()
    np.testing.assert_array_equal(out["a"], data["a"])
    assert out["s"] == {1, 2}
    with pytest.raises(pickle.UnpicklingError):  # the base list stays empty: nothing leaks between lists
        AllowListUnpickler(io.BytesIO(pickle.dumps(data))).load()


def test_every_pickle_reader_uses_the_one_unpickler():
    from mst_pipeline.body import smpl_file
    from mst_pipeline.fitting.pare import checkpoint as pare
    from uh_train import checkpoint

    readers = [checkpoint.SnapshotUnpickler, smpl_file.ModelFileUnpickler, pare._StubbingUnpickler]
    assert all(issubclass(r, AllowListUnpickler) and r.find_class is AllowListUnpickler.find_class for r in readers)
    # each keeps its own list: only snapshots know StyleGAN's persistence records
    assert ("torch_utils.persistence", "_reconstruct_persistent_obj") in checkpoint.SnapshotUnpickler.allowed
    assert ("torch_utils.persistence", "_reconstruct_persistent_obj") not in pare._StubbingUnpickler.allowed
    assert ("copyreg", "_reconstructor") in smpl_file.ModelFileUnpickler.allowed
