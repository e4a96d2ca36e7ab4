"""Checkpoints: our safetensors files, and released StyleGAN3 / AnyRes / UnitedHuman snapshot pickles.

Our format (`unitedhuman-checkpoint/1`) is ONE safetensors file: tensors named
`<module>.<state-dict key>` (e.g. `G_ema.synthesis.L0_36_512.weight`) and, in the header metadata
under "config", a JSON object with `format`, `networks` ({module: {"kind": "generator" |
"discriminator", "config": {...}}}) and whatever the caller adds. Files are written to a temporary
name in the same folder and renamed, so a reader never sees a partial file.

Snapshot pickles (`network-snapshot-*.pkl`) hold network objects whose class source code travels
inside the pickle (`torch_utils.persistence` records with a `module_src` string). They are read by a
restricted unpickler (`uh_train.format.unpickle`) that resolves only an allow-list of globals
(tensor and numpy rebuilders, OrderedDict, a dict stand-in for EasyDict) and turns each persistence
record into a `Record` holding the object's state -- `module_src` is kept as text and never
executed. The generator's tensors are then mapped by name onto our `Generator` (same layer names;
AnyRes's `scale_mapping.*` moves to `synthesis.scale_mapping.*`), after checking that our schedule
reproduces the snapshot's filters.

API:

* `save_checkpoint(path, modules: {name: nn.Module | state dict}, config: dict | None = None)`
* `load_checkpoint(path) -> Checkpoint(tensors={module: state dict}, config=dict)`
* `load_generator(path, device="cpu", which=None) -> Generator` (our files and snapshot pickles;
  which defaults to "G_ema", falling back to "G")
* `read_snapshot(path) -> dict` (top-level snapshot dict with `Record`s for networks)
* `generator_from_snapshot(record) -> Generator`
* `import_snapshot(pkl_path, out_path, which="G_ema") -> GeneratorConfig` (writes our format)
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from uh_train.format.atomic import atomic_path
from uh_train.format.unpickle import (
    NUMPY_ARRAYS,
    TORCH_SAVE_CONTAINERS,
    AllowListUnpickler,
    one_line,
    torch_pickle_module,
)

from .networks.discriminator import Discriminator, DiscriminatorConfig
from .networks.generator import Generator, GeneratorConfig

FORMAT = "unitedhuman-checkpoint/1"


# ---------------------------------------------------------------------------------------------
# Our format


@dataclass
class Checkpoint:
    tensors: dict[str, dict[str, torch.Tensor]]
    config: dict[str, Any]


def _network_entry(module: nn.Module) -> dict | None:
    if isinstance(module, Generator):
        return {"kind": "generator", "config": dataclasses.asdict(module.cfg)}
    if isinstance(module, Discriminator):
        return {"kind": "discriminator", "config": dataclasses.asdict(module.cfg)}
    return None


def save_checkpoint(
    path: str | os.PathLike,
    modules: Mapping[str, nn.Module | Mapping[str, torch.Tensor]],
    config: Mapping | None = None,
) -> Path:
    """Write modules (or plain state dicts) and a JSON config to one safetensors file, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    networks = {}
    for name, module in modules.items():
        if "." in name:
            raise ValueError(f"module name {name!r} must not contain '.'")
        state = module.state_dict() if isinstance(module, nn.Module) else module
        for key, value in state.items():
            tensors[f"{name}.{key}"] = value.detach().cpu().contiguous().clone()
        entry = _network_entry(module) if isinstance(module, nn.Module) else None
        if entry is not None:
            networks[name] = entry
    meta = {**(config or {}), "format": FORMAT, "networks": networks}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"config": json.dumps(meta)})
    return path


def checkpoint_config(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON config of one of our checkpoint files, read from its header alone (no tensors);
    ValueError for any other file (an official pickle, a corrupt file)."""
    from safetensors import safe_open

    if not _is_safetensors(Path(path)):
        raise ValueError(f"{path}: not a safetensors file")

    with safe_open(str(path), framework="pt", device="cpu") as f:
        return _config_of(f, path)


def _config_of(opened, path: str | os.PathLike) -> dict[str, Any]:
    """The JSON config in an opened safetensors file's header."""
    meta = opened.metadata() or {}
    if "config" not in meta:
        raise ValueError(f"{path}: not a {FORMAT} file (no config in the safetensors header)")
    return json.loads(meta["config"])


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        config = _config_of(f, path)
        tensors: dict[str, dict[str, torch.Tensor]] = collections.defaultdict(dict)
        for key in f.keys():
            module, _, rest = key.partition(".")
            tensors[module][rest] = f.get_tensor(key)
    if config.get("format") != FORMAT:
        raise ValueError(f"{path}: format {config.get('format')!r}, expected {FORMAT!r}")
    return Checkpoint(dict(tensors), config)


def build_network(entry: Mapping) -> nn.Module:
    """A fresh network from a checkpoint's `networks` entry."""
    if entry["kind"] == "generator":
        return Generator(GeneratorConfig(**entry["config"]))
    if entry["kind"] == "discriminator":
        return Discriminator(DiscriminatorConfig(**entry["config"]))
    raise ValueError(f"unknown network kind {entry['kind']!r}")


def _is_safetensors(path: Path) -> bool:
    """safetensors files start with the JSON header's length (uint64 LE) and then '{'."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


class CheckpointError(ValueError):
    """A checkpoint or snapshot that cannot be used; the message names the file and the reason in one line."""


class RefusedPickle(CheckpointError, pickle.UnpicklingError):
    """A snapshot pickle that names a global outside the allow-list (nothing in it was executed)."""


def read_latest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """A run folder's `latest.json` ({"state", "network", ...}: the files of its last snapshot), None
    without one; ValueError (one line) when it is not the object the trainer writes."""
    latest = Path(folder) / "latest.json"
    if not latest.exists():
        return None
    try:
        info = json.loads(latest.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{latest} cannot be read ({type(e).__name__}); delete it to start afresh") from None
    if not (isinstance(info, dict) and all(isinstance(info.get(k), str) and info[k] and "/" not in info[k]
                                           for k in ("state", "network"))):
        raise ValueError(f"{latest} does not name a training state and network; delete it to start afresh")
    return info


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run folder -> the generator file it stands for: the network its
    `latest.json` names, else its `network-latest.safetensors`. Anything else is returned as given."""
    path = Path(path)
    if not path.is_dir():
        return path
    try:
        info = read_latest(path)
    except ValueError:
        info = None
    if info is not None and (path / info["network"]).is_file():
        return path / info["network"]
    if (path / "network-latest.safetensors").is_file():
        return path / "network-latest.safetensors"
    raise CheckpointError(f"{path} is a folder without a run's network (no latest.json or "
                          "network-latest.safetensors); pass a checkpoint file or a uh-train run folder")


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu", which: str | None = None) -> Generator:
    """Our checkpoint or a StyleGAN3/AnyRes/UnitedHuman snapshot pickle -> Generator in eval mode. A
    uh-train run folder stands for its latest network (`resolve_checkpoint`).

    Every failure (a refused or corrupt pickle, a damaged safetensors file, a missing network, an
    architecture that does not fit) is a CheckpointError naming the file, in one line.
    """
    path = resolve_checkpoint(path)
    try:
        G = _load_generator(path, which)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - safetensors, torch and architecture errors: one line each
        raise CheckpointError(f"cannot load a generator from {path}: {one_line(e)}") from None
    return G.eval().requires_grad_(False).to(device)


def _load_generator(path: Path, which: str | None) -> Generator:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if not _is_safetensors(path):
        snapshot = read_snapshot(path)
        name = which or ("G_ema" if "G_ema" in snapshot else "G")
        if not isinstance(snapshot.get(name), Record):
            raise CheckpointError(f"{path}: no network {name!r} in the snapshot (keys: {sorted(snapshot)})")
        G = generator_from_snapshot(snapshot[name])
    else:
        ckpt = load_checkpoint(path)
        networks = ckpt.config["networks"]
        gens = [k for k, v in networks.items() if v["kind"] == "generator"]
        name = which or next((k for k in ("G_ema", "G") if k in gens), gens[0] if gens else None)
        if name not in gens:
            raise CheckpointError(f"{path}: no generator {name!r} (generators: {gens})")
        G = build_network(networks[name])
        G.load_state_dict(ckpt.tensors[name])
    return G


# ---------------------------------------------------------------------------------------------
# Snapshot pickles, read without executing code


@dataclass
class Record:
    """A `torch_utils.persistence` object as data: its class name and `__dict__` state. The
    module source is kept as text for inspection only."""

    class_name: str
    state: dict
    module_src: str = dataclasses.field(repr=False, default="")

    def child(self, name: str) -> Record:
        return self.state["_modules"][name]


def _reconstruct_persistent_obj(meta: dict) -> Record:
    if meta.get("type") != "class":
        raise pickle.UnpicklingError(f"unsupported persistent object type {meta.get('type')!r}")
    return Record(class_name=str(meta["class_name"]), state=dict(meta["state"]), module_src=str(meta["module_src"]))


class _AttrDict(dict):
    """Stand-in for dnnlib.util.EasyDict: a plain dict subclass."""


def _load_storage_blob(blob: bytes):
    # Each storage is a complete legacy torch.save blob; weights_only refuses anything but storages.
    return torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")


class SnapshotUnpickler(AllowListUnpickler):
    """Resolves only the globals a network snapshot needs; anything else is refused."""

    allowed = {
        **NUMPY_ARRAYS,
        **TORCH_SAVE_CONTAINERS,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch.storage", "_load_from_bytes"): _load_storage_blob,
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
        ("dnnlib.util", "EasyDict"): _AttrDict,
    }

    def unknown_global(self, module: str, name: str):
        raise RefusedPickle(f"refusing to load global {module}.{name} from a snapshot pickle")


# Passed to torch.load for snapshots saved as torch zip files.
_restricted_pickle_module = torch_pickle_module(SnapshotUnpickler, "uh_restricted_pickle")


def read_snapshot(path: str | os.PathLike) -> dict:
    """The top-level dict of a snapshot (`G`, `D`, `G_ema`, ...), networks as `Record`s."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            data = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle_module)
        else:
            with open(path, "rb") as f:
                data = SnapshotUnpickler(f).load()
    except RefusedPickle as e:
        raise RefusedPickle(f"{path}: refused, nothing in it was run: {e}") from None
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: one line naming it
        raise CheckpointError(f"{path}: not a readable snapshot pickle ({one_line(e)})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict at the top of the snapshot, got {type(data).__name__}")
    return data


def record_state_dict(record: Record, prefix: str = "") -> dict[str, torch.Tensor]:
    """state_dict() of a recorded module: own parameters, own buffers, then children, skipping None."""
    out: dict[str, torch.Tensor] = {}
    for group in ("_parameters", "_buffers"):
        for key, value in (record.state.get(group) or {}).items():
            if value is not None:
                out[prefix + key] = value
    for key, child in (record.state.get("_modules") or {}).items():
        if isinstance(child, Record):
            out.update(record_state_dict(child, f"{prefix}{key}."))
    return out


def _attr(record: Record, name: str, default=None):
    value = record.state.get(name, default)
    return value.item() if isinstance(value, np.generic) else value


def snapshot_generator_config(record: Record) -> GeneratorConfig:
    """Rebuild our GeneratorConfig from a recorded StyleGAN3 (or AnyRes) Generator."""
    synth, mapping = record.child("synthesis"), record.child("mapping")
    kwargs = dict(record.state.get("_init_kwargs") or {})
    if _attr(record, "c_dim", 0):
        raise ValueError("conditional generators (c_dim > 0) are not supported")
    layer = synth.child(synth.state["layer_names"][0])
    if _attr(layer, "conv_kernel", 3) != 3 or kwargs.get("use_radial_filters"):
        raise ValueError("only the StyleGAN3-T configuration is supported (this looks like StyleGAN3-R)")
    scale = {"scale_norm": "none"}
    if "scale_mapping" in record.state["_modules"]:
        sm = dict(_attr(record, "scale_mapping_kwargs", None) or {})
        norm = sm.get("scale_mapping_norm", "positive")
        if norm not in ("positive", "zerocentered"):
            raise ValueError(f"unknown AnyRes scale normalisation {norm!r}")
        scale = {"scale_norm": f"anyres-{norm}", "scale_dim": int(_attr(record, "w_dim")),
                 "scale_min": float(sm.get("scale_mapping_min", 1)), "scale_max": float(sm.get("scale_mapping_max", 8))}
    return GeneratorConfig(
        img_resolution=int(_attr(record, "img_resolution")),
        img_channels=int(_attr(record, "img_channels")),
        z_dim=int(_attr(record, "z_dim")),
        w_dim=int(_attr(record, "w_dim")),
        mapping_layers=int(_attr(mapping, "num_layers")),
        channel_base=int(kwargs.get("channel_base", 32768)),
        channel_max=int(kwargs.get("channel_max", 512)),
        num_layers=int(_attr(synth, "num_layers")),
        num_critical=int(_attr(synth, "num_critical")),
        first_cutoff=float(_attr(synth.child("input"), "bandwidth")),
        margin_size=int(_attr(synth, "margin_size")),
        output_scale=float(_attr(synth, "output_scale")),
        conv_clamp=_attr(layer, "conv_clamp"),
        magnitude_ema_beta=float(_attr(layer, "magnitude_ema_beta")),
        name="imported",
        **scale,
    )


def generator_from_snapshot(record: Record) -> Generator:
    """Our Generator carrying the weights of a recorded StyleGAN3 / AnyRes Generator."""
    cfg = snapshot_generator_config(record)
    theirs = record_state_dict(record)
    G = Generator(cfg)
    ours = G.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in theirs.items():
        if key == "synthesis.input.transform":
            if not torch.allclose(value, torch.eye(3)):
                raise ValueError("synthesis.input.transform of the snapshot is not the identity")
            continue
        if key.startswith("scale_mapping."):
            key = "synthesis." + key
        mapped[key] = value.float()
    missing, extra = sorted(set(ours) - set(mapped)), sorted(set(mapped) - set(ours))
    if missing or extra:
        raise ValueError(
            f"snapshot does not match the derived architecture: missing {missing[:5]}, unexpected {extra[:5]}")
    for key, value in mapped.items():
        if ours[key].shape != value.shape:
            raise ValueError(f"{key}: snapshot shape {list(value.shape)}, derived {list(ours[key].shape)}")
        if key.endswith("_filter") and not torch.allclose(ours[key], value, atol=1e-6):
            raise ValueError(f"{key}: the snapshot's filter differs from the derived schedule")
    G.load_state_dict(mapped)
    return G.eval()


def import_snapshot(pkl_path: str | os.PathLike, out_path: str | os.PathLike, which: str = "G_ema") -> GeneratorConfig:
    """Convert a snapshot pickle's generator into our safetensors checkpoint (saved as "G_ema")."""
    pkl_path = Path(pkl_path)
    G = load_generator(pkl_path, which=which)
    digest = hashlib.sha256(pkl_path.read_bytes()).hexdigest()
    save_checkpoint(out_path, {"G_ema": G}, config={"imported_from": {"file": pkl_path.name, "sha256": digest,
                                                                       "network": which}})
    return G.cfg
