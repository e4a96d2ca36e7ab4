"""Reading the official PARE checkpoint as tensors only: `torch.load(weights_only=True)`, and where
that refuses the Lightning file's pickled `hyper_parameters` (a yacs CfgNode), the project's
allow-list unpickler with every other name replaced by an inert stub."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mst_pipeline.fitting.pare.network import Pare
from mst_pipeline.fitting.state_keys import KeyReport, compare_state
from uh_train.format.unpickle import (
    NUMPY_ARRAYS,
    TORCH_SAVE_CONTAINERS,
    AllowListUnpickler,
    describe_load_error,
    torch_pickle_module,
)

PREFIXES = ("backbone.", "head.")
LIGHTNING_PREFIX = "model."


class PareCheckpointError(ValueError):
    """A file that cannot be read safely or holds no PARE network."""


class _Inert:
    """Stand-in for a global the allow-list does not know: it can be created empty and given
    state (yacs' CfgNode, Lightning's callback classes), but calling it — how a pickle runs a
    function — is refused."""

    origin = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise pickle.UnpicklingError(f"refusing to call {self.origin} while reading a checkpoint")

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state

    def append(self, item: Any) -> None:
        self.__dict__.setdefault("_items", []).append(item)

    def extend(self, items: Any) -> None:
        self.__dict__.setdefault("_items", []).extend(items)


class _InertDict(_Inert, dict):
    """Inert stand-in that also takes the items of a pickled dict subclass."""


class _StubbingUnpickler(AllowListUnpickler):
    """Tensors, numpy arrays and containers are rebuilt; any other name becomes inert."""

    allowed = {
        **NUMPY_ARRAYS,
        **TORCH_SAVE_CONTAINERS,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    }

    def unknown_global(self, module: str, name: str) -> Any:
        return type(name, (_InertDict,), {"origin": f"{module}.{name}", "__module__": __name__})


_stubbing_pickle_module = torch_pickle_module(_StubbingUnpickler, "mst_pare_restricted_pickle")


def read_checkpoint(path: str | os.PathLike) -> Any:
    """torch.load without running code: weights_only first, the stubbing unpickler where that
    refuses a foreign name (the Lightning file's yacs CfgNode)."""
    path = Path(path)
    if not path.is_file():
        raise PareCheckpointError(f"{path} is not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # weights_only refused a global: read again with foreign names stubbed
    except Exception as e:  # noqa: BLE001 - not a torch file at all: one clear message
        raise PareCheckpointError(f"cannot read {path} as a torch checkpoint: {describe_load_error(e)}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_stubbing_pickle_module)
    except Exception as e:  # noqa: BLE001
        raise PareCheckpointError(f"cannot read {path} safely: {describe_load_error(e)}") from None


def network_state(ckpt: Any, name: str = "checkpoint") -> tuple[dict[str, Tensor], int]:
    """The `backbone.*` / `head.*` tensors of a Lightning checkpoint (`state_dict` with `model.`
    prefixes), a bare state dict, or an already stripped one -> (state, number of other entries)."""
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise PareCheckpointError(f"{name} holds no state dict (found {type(ckpt).__name__})")
    net: dict[str, Tensor] = {}
    ignored = 0
    for key, value in state.items():
        k = key[len(LIGHTNING_PREFIX):] if isinstance(key, str) and key.startswith(LIGHTNING_PREFIX) else key
        if isinstance(k, str) and k.startswith(PREFIXES) and isinstance(value, Tensor):
            net[k] = value
        else:
            ignored += 1
    if not net:
        first = ", ".join(str(k) for k in list(state)[:5]) or "none"
        raise PareCheckpointError(
            f"{name} is not a PARE checkpoint: none of its {len(state)} entries is a `model.backbone.*` or "
            f"`model.head.*` tensor (first keys: {first})")
    return net, ignored


def load_pare_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu",
                         strict: bool = False) -> tuple[Pare, KeyReport]:
    """The official PARE checkpoint (or a state dict in its layout) -> (Pare in eval mode, KeyReport).

    Network tensors whose name and shape match are loaded; the report names every missing,
    unexpected and mis-shaped one. `strict`: raise PareCheckpointError listing them instead.
    """
    state, ignored = network_state(read_checkpoint(path), str(path))
    net = Pare()
    report, usable = compare_state(net, state, ignored)
    if strict and not report.ok:
        raise PareCheckpointError(f"{path} does not fit the released PARE network: {report.describe()}")
    net.load_state_dict(usable, strict=False)
    return net.to(device).eval(), report
