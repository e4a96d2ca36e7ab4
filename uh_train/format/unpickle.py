"""The one restricted unpickler: a pickle is read without running any code it names.

A pickle rebuilds objects by naming globals (`module.name`) and calling them, so `pickle.load` on a
foreign file runs whatever it names. `AllowListUnpickler` resolves a name only through its class's
`allowed` map (`(module, name) -> object`); any other name goes to `unknown_global`, which refuses it
by default. Each reader subclasses it with its own allow-list and its own answer to unknown names:
network snapshots (`uh_train.checkpoint`) refuse them, SMPL-format model files
(`mst_pipeline.body.smpl_file`) turn chumpy and scipy-sparse objects into inert stand-ins, PARE
checkpoints (`mst_pipeline.fitting.pare`) turn every other name into an inert stand-in that can hold state
but never be called.

`torch_pickle_module(cls)` wraps a subclass so that `torch.load(..., pickle_module=...)` reads a
torch zip file with it: torch's own unpickler then subclasses ours, so every global still passes
through the allow-list. `describe_load_error` words a refused or failed load in one line.
"""

from __future__ import annotations

import codecs
import collections
import importlib
import pickle
import re
import types
from collections.abc import Mapping
from typing import Any

import numpy as np


class AllowListUnpickler(pickle.Unpickler):
    """Resolves only the globals of `allowed`; every other name goes to `unknown_global`."""

    allowed: Mapping[tuple[str, str], Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.allowed:
            return self.allowed[module, name]
        return self.unknown_global(module, name)

    def unknown_global(self, module: str, name: str) -> Any:
        """A name outside the allow-list: refused (subclasses may return an inert stand-in instead)."""
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a pickle")


def _numpy_multiarray() -> types.ModuleType:
    """The installed NumPy's multiarray module under its own name (NumPy 2 keeps `numpy.core` only as a
    deprecated alias, which warns when touched)."""
    major = int(np.__version__.split(".")[0])
    return importlib.import_module("numpy._core.multiarray" if major >= 2 else "numpy.core.multiarray")


# Rebuilding numpy arrays and scalars, under numpy 1's and numpy 2's module names, and Python 2's
# `set` (protocol 2 names the builtins module as Python 2 did): the part every allow-list shares.
NUMPY_ARRAYS: Mapping[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_multiarray()._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_multiarray()._reconstruct,
    ("numpy.core.multiarray", "scalar"): _numpy_multiarray().scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_multiarray().scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("__builtin__", "set"): set,
    ("builtins", "set"): set,
}


def parameter_as_tensor(data: Any, requires_grad: bool = False, backward_hooks: Any = None, *state: Any) -> Any:
    """Stand-in for torch's `_rebuild_parameter(_with_state)`: the parameter's tensor alone, without
    the hooks and attributes a pickle could attach to it."""
    return data


# What a torch.save pickle names around its tensors: state-dict containers, parameters, and bytes
# (protocol 2 writes them as encode(str, 'latin1')). The tensor rebuilders themselves need torch and
# are added by the torch-side callers.
TORCH_SAVE_CONTAINERS: Mapping[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_parameter"): parameter_as_tensor,
    ("torch._utils", "_rebuild_parameter_with_state"): parameter_as_tensor,
    ("_codecs", "encode"): codecs.encode,
}


def torch_pickle_module(unpickler: type[AllowListUnpickler], name: str) -> types.SimpleNamespace:
    """A `pickle_module` for `torch.load` that unpickles with UNPICKLER (torch subclasses it, so its
    `find_class` still sees every global)."""
    return types.SimpleNamespace(
        __name__=name,
        Unpickler=unpickler,
        load=lambda f, **kw: unpickler(f, **kw).load(),
    )


def one_line(exc: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message`, at most LIMIT characters (library errors can span pages)."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    first = text.strip().splitlines()[0] if text.strip() else ""
    first = first if len(first) <= limit else first[:limit - 3] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def describe_load_error(exc: BaseException) -> str:
    """Why `torch.load(..., weights_only=True)` refused or failed, in one line and without torch's
    advice to retry unsafely (loading a file that holds code is never the way out)."""
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) and "weights_only" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        return f"refused: it holds Python objects{what}, not only tensors; nothing in it was run"
    if "PytorchStreamReader" in text or isinstance(exc, EOFError):
        return f"truncated or corrupt file ({one_line(exc, 120)})"
    return one_line(exc)
