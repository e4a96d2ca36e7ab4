"""Training state files: nested state (networks, optimisers, RNG states, data position) stored as
safetensors (every tensor) plus the JSON skeleton in the file's metadata. No pickles: loading runs
no code, and the file can be inspected with any safetensors reader.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from uh_train.format.atomic import atomic_path

_TENSOR = "__tensor__"


def _flatten(tree: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, torch.Tensor):
        name = prefix or "root"
        tensors[name] = tree.detach().cpu().contiguous()
        return {_TENSOR: name}
    if isinstance(tree, dict):
        for k in tree:
            if not isinstance(k, (str, int)):
                raise TypeError(f"cannot store dict key {k!r} of type {type(k).__name__}")
        return {"__dict__": [[k, _flatten(v, f"{prefix}.{k}" if prefix else str(k), tensors)] for k, v in tree.items()]}
    if isinstance(tree, (list, tuple)):
        items = [_flatten(v, f"{prefix}.{i}" if prefix else str(i), tensors) for i, v in enumerate(tree)]
        return {"__tuple__": items} if isinstance(tree, tuple) else items
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    raise TypeError(f"cannot store {type(tree).__name__} at {prefix!r} in a training state file")


def _unflatten(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, dict):
        if _TENSOR in node:
            return tensors[node[_TENSOR]]
        if "__dict__" in node:
            return {k: _unflatten(v, tensors) for k, v in node["__dict__"]}
        if "__tuple__" in node:
            return tuple(_unflatten(v, tensors) for v in node["__tuple__"])
    if isinstance(node, list):
        return [_unflatten(v, tensors) for v in node]
    return node


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write `state` atomically (temp file + rename)."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, "", tensors)
    # safetensors refuses tensors that share memory; the copies are cheap next to a training step.
    tensors = {k: v.clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"skeleton": json.dumps(skeleton)})


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises several types for damaged files
        raise ValueError(f"{path} is not a readable training state file ({e})") from None
    if "skeleton" not in meta:
        raise ValueError(f"{path} has no training-state skeleton (not written by uh-train?)")
    return _unflatten(json.loads(meta["skeleton"]), tensors)
