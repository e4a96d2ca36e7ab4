"""Checkpoints: our safetensors format, and snapshot pickles read without executing their code."""

from __future__ import annotations

import builtins
import contextlib
import os
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from uh_train.checkpoint import (
    import_snapshot,
    load_checkpoint,
    load_generator,
    read_snapshot,
    save_checkpoint,
)
from uh_train.networks import Discriminator, Generator, get_preset, patch_transforms
from uh_train.networks.ops import FullyConnected

# If any loader ran this, the flag would be set (and loading would fail with the error).
MODULE_SRC = "import builtins\nbuiltins.UH_SNAPSHOT_CODE_RAN = True\nraise RuntimeError('module_src was executed')\n"


def _tiny(seed: int, **overrides) -> Generator:
    torch.manual_seed(seed)
    G = Generator(get_preset("tiny", **overrides).generator).eval().requires_grad_(False)
    with torch.no_grad():
        G(torch.randn(4, G.z_dim), update_emas=True)
        G.mapping.w_avg.normal_()
        if G.cfg.scale_norm != "none":
            for name in G.synthesis.layer_names:
                getattr(G.synthesis, name).scale_affine.weight.normal_()
    return G


# --- writing a snapshot in the StyleGAN3 persistence-record layout -------------------------------


@contextlib.contextmanager
def _upstream_modules():
    """Stand-ins for `torch_utils.persistence` and `dnnlib.util`, present only while pickling."""
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # what the original loader does: run module_src
        exec(compile(meta["module_src"], "<module_src>", "exec"), {})

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util = types.ModuleType("dnnlib.util")
    util.EasyDict = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
    mods = {"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": persistence,
            "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": util}
    sys.modules.update(mods)
    try:
        yield persistence, util.EasyDict
    finally:
        for name in mods:
            del sys.modules[name]


class _Persistent:
    """Pickles as the persistence record `_reconstruct_persistent_obj(meta)`."""

    def __init__(self, reconstruct, class_name: str, state: dict):
        self.reconstruct, self.meta = reconstruct, {
            "type": "class", "version": 6, "module_src": MODULE_SRC, "class_name": class_name, "state": state}

    def __reduce__(self):
        return self.reconstruct, (self.meta,)


def snapshot_records(G: Generator, reconstruct, EasyDict) -> _Persistent:
    """Our tiny generator expressed as StyleGAN3/AnyRes persistence records (module tree, tensors
    as parameters and buffers, numpy attributes, EasyDict kwargs)."""
    cfg = G.cfg

    def rec(class_name, params=(), buffers=(), children=(), **attrs):
        state = {
            "training": False,
            "_parameters": OrderedDict((k, torch.nn.Parameter(v.clone(), requires_grad=False)) for k, v in params),
            "_buffers": OrderedDict((k, None if v is None else v.clone()) for k, v in buffers),
            "_non_persistent_buffers_set": set(),
            "_backward_hooks": OrderedDict(), "_forward_hooks": OrderedDict(), "_forward_pre_hooks": OrderedDict(),
            "_state_dict_hooks": OrderedDict(), "_load_state_dict_pre_hooks": OrderedDict(),
            "_modules": OrderedDict(children), "_init_args": (), "_init_kwargs": attrs.pop("init_kwargs", {}),
            **attrs,
        }
        return _Persistent(reconstruct, class_name, state)

    def fc(m: FullyConnected):
        return rec("FullyConnectedLayer", [("weight", m.weight), ("bias", m.bias)], activation=m.activation,
                   in_features=m.weight.shape[1], out_features=m.weight.shape[0], weight_gain=np.float64(m.weight_gain),
                   bias_gain=m.bias_gain)

    def mapping(m, z_dim):
        return rec("MappingNetwork", buffers=[("w_avg", m.w_avg)],
                   children=[(f"fc{i}", fc(getattr(m, f"fc{i}"))) for i in range(m.num_layers)],
                   z_dim=z_dim, c_dim=0, w_dim=m.w_avg.shape[0], num_ws=m.num_ws, num_layers=m.num_layers,
                   w_avg_beta=0.998)

    inp = G.synthesis.input
    layers = []
    for name in G.synthesis.layer_names:
        layer = getattr(G.synthesis, name)
        spec = layer.spec
        layers.append((name, rec(
            "SynthesisLayer", [("weight", layer.weight), ("bias", layer.bias)],
            [("magnitude_ema", layer.magnitude_ema), ("up_filter", layer.up_filter),
             ("down_filter", layer.down_filter)],
            [("affine", fc(layer.affine)), ("scale_affine", fc(layer.scale_affine))],
            is_torgb=spec.is_torgb, is_critically_sampled=spec.is_critically_sampled, use_fp16=False,
            in_channels=spec.in_channels, out_channels=spec.out_channels, in_size=np.array([spec.in_size] * 2),
            out_size=np.array([spec.out_size] * 2), in_sampling_rate=spec.in_sampling_rate,
            in_cutoff=np.float64(spec.in_cutoff), conv_kernel=layer.conv_kernel, conv_clamp=256,
            magnitude_ema_beta=cfg.magnitude_ema_beta, padding=list(layer.padding), down_radial=False)))
    synthesis = rec(
        "SynthesisNetwork",
        children=[("input", rec("SynthesisInput", [("weight", inp.weight)],
                                [("transform", torch.eye(3)), ("freqs", inp.freqs), ("phases", inp.phases)],
                                [("affine", fc(inp.affine))], w_dim=cfg.w_dim, channels=inp.channels,
                                size=np.array([inp.size] * 2), sampling_rate=inp.sampling_rate,
                                bandwidth=np.float64(inp.bandwidth), margin_size=cfg.margin_size))] + layers,
        w_dim=cfg.w_dim, num_ws=cfg.num_ws, img_resolution=cfg.img_resolution, img_channels=cfg.img_channels,
        num_layers=cfg.num_layers, num_critical=cfg.num_critical, margin_size=cfg.margin_size,
        output_scale=cfg.output_scale, num_fp16_res=4, layer_names=list(G.synthesis.layer_names))
    scale_kwargs = EasyDict(scale_mapping_min=cfg.scale_min, scale_mapping_max=cfg.scale_max,
                            scale_mapping_norm="positive")
    init_kwargs = {"z_dim": cfg.z_dim, "c_dim": 0, "w_dim": cfg.w_dim, "img_resolution": cfg.img_resolution,
                   "img_channels": 3, "mapping_kwargs": EasyDict(num_layers=cfg.mapping_layers),
                   "channel_base": cfg.channel_base, "channel_max": cfg.channel_max, "num_layers": cfg.num_layers,
                   "magnitude_ema_beta": cfg.magnitude_ema_beta, "training_mode": "patch",
                   "scale_mapping_kwargs": scale_kwargs}
    return rec(
        "Generator",
        children=[("synthesis", synthesis), ("mapping", mapping(G.mapping, cfg.z_dim)),
                  ("scale_norm", rec("ScaleNormalizePositive", scale_mapping_min=cfg.scale_min,
                                     scale_mapping_max=cfg.scale_max)),
                  ("scale_mapping", mapping(G.synthesis.scale_mapping, 1))],
        z_dim=cfg.z_dim, c_dim=0, w_dim=cfg.w_dim, img_resolution=cfg.img_resolution, img_channels=3,
        num_ws=cfg.num_ws, training_mode="patch", scale_mapping_kwargs=scale_kwargs, init_kwargs=init_kwargs)


def write_snapshot(path: Path, G: Generator, G_ema: Generator, zip_format: bool = False) -> Path:
    """A network-snapshot pickle in the StyleGAN3/AnyRes layout, written by plain pickle (or torch.save)."""
    with _upstream_modules() as (persistence, EasyDict):
        rec = persistence._reconstruct_persistent_obj
        D = _Persistent(rec, "Discriminator", {"_parameters": OrderedDict(b4=torch.nn.Parameter(torch.ones(2))),
                                               "_buffers": OrderedDict(), "_modules": OrderedDict()})
        data = {"G": snapshot_records(G, rec, EasyDict), "D": D, "G_ema": snapshot_records(G_ema, rec, EasyDict),
                "augment_pipe": None,
                "training_set_kwargs": {"class_name": "training.dataset.ImageFolderDataset", "resolution": 32}}
        if zip_format:
            torch.save(data, path)
        else:
            with open(path, "wb") as f:
                pickle.dump(data, f, protocol=4)
    return path


def _anyres_pair():
    G = _tiny(3, scale_norm="anyres-positive", scale_dim=32)
    G_ema = _tiny(4, scale_norm="anyres-positive", scale_dim=32)
    return G, G_ema


@pytest.mark.parametrize("zip_format", [False, True], ids=["pickle", "torch-zip"])
def test_snapshot_loads_without_executing_embedded_code_and_renders_identically(tmp_path, zip_format):
    G, G_ema = _anyres_pair()
    path = write_snapshot(tmp_path / "network-snapshot-000100.pkl", G, G_ema, zip_format)
    raw = path.read_bytes()
    assert b"torch_utils.persistence" in raw or zip_format
    loaded = load_generator(path)
    assert not hasattr(builtins, "UH_SNAPSHOT_CODE_RAN")
    assert "torch_utils" not in sys.modules and "dnnlib" not in sys.modules
    assert loaded.cfg.scale_norm == "anyres-positive" and loaded.cfg.scale_max == 8.0
    z = torch.randn(3, G.z_dim)
    t = patch_transforms([[0.3, 0.4], [0.5, 0.5], [0.6, 0.7]], [3.0, 1.0, 2.0])
    torch.testing.assert_close(loaded(z, t, truncation_psi=0.7), G_ema(z, t, truncation_psi=0.7), atol=1e-6, rtol=0)
    assert not torch.allclose(loaded(z, t), G(z, t))  # G_ema is the default, not G
    torch.testing.assert_close(load_generator(path, which="G")(z, t), G(z, t), atol=1e-6, rtol=0)


def test_snapshot_records_keep_module_source_as_text_only(tmp_path):
    path = write_snapshot(tmp_path / "snap.pkl", *_anyres_pair())
    snapshot = read_snapshot(path)
    assert snapshot["augment_pipe"] is None and snapshot["training_set_kwargs"]["resolution"] == 32
    assert snapshot["G_ema"].class_name == "Generator"
    assert "module_src was executed" in snapshot["G_ema"].module_src
    assert not hasattr(builtins, "UH_SNAPSHOT_CODE_RAN")


class _Evil:
    def __reduce__(self):
        return os.system, ("echo pwned",)


def test_restricted_unpickler_refuses_other_globals(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _Evil()}, protocol=4))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_generator(path)
    path.write_bytes(pickle.dumps({"G_ema": builtins.exec}, protocol=4))
    with pytest.raises(pickle.UnpicklingError, match="builtins.exec"):
        read_snapshot(path)


def test_snapshot_with_other_architecture_is_rejected_with_a_clear_error(tmp_path):
    G = _tiny(3, scale_norm="anyres-positive", scale_dim=32)
    path = write_snapshot(tmp_path / "snap.pkl", G, G)
    snapshot = read_snapshot(path)
    snapshot["G_ema"].state["_init_kwargs"]["channel_max"] = 32  # derived channels now disagree
    from uh_train.checkpoint import generator_from_snapshot

    with pytest.raises(ValueError, match="derived architecture"):
        generator_from_snapshot(snapshot["G_ema"])


def test_import_snapshot_writes_our_checkpoint(tmp_path):
    G, G_ema = _anyres_pair()
    pkl = write_snapshot(tmp_path / "network-snapshot.pkl", G, G_ema)
    cfg = import_snapshot(pkl, tmp_path / "out" / "G.safetensors")
    assert cfg.scale_norm == "anyres-positive"
    ckpt = load_checkpoint(tmp_path / "out" / "G.safetensors")
    assert ckpt.config["imported_from"]["file"] == "network-snapshot.pkl"
    z = torch.randn(2, G.z_dim)
    t = patch_transforms([[0.5, 0.2]] * 2, 4.0)
    torch.testing.assert_close(load_generator(tmp_path / "out" / "G.safetensors")(z, t), G_ema(z, t),
                               atol=1e-6, rtol=0)


# --- our format ----------------------------------------------------------------------------------


def test_checkpoint_round_trip_restores_networks_and_config(tmp_path):
    G, G_ema = _tiny(1), _tiny(2)
    torch.manual_seed(0)
    D = Discriminator(get_preset("tiny").discriminator)
    path = save_checkpoint(tmp_path / "ckpt.safetensors", {"G": G, "G_ema": G_ema, "D": D,
                                                           "opt": {"step": torch.tensor(7)}}, {"kimg": 12})
    ckpt = load_checkpoint(path)
    assert ckpt.config["kimg"] == 12 and ckpt.config["format"] == "unitedhuman-checkpoint/1"
    assert {k: v["kind"] for k, v in ckpt.config["networks"].items()} == {
        "G": "generator", "G_ema": "generator", "D": "discriminator"}
    assert ckpt.tensors["opt"]["step"].item() == 7
    for key, value in D.state_dict().items():
        assert torch.equal(ckpt.tensors["D"][key], value)
    z = torch.randn(2, G.z_dim)
    assert torch.equal(load_generator(path)(z), G_ema(z))
    assert torch.equal(load_generator(path, which="G")(z), G(z))
    assert load_generator(path).cfg == G_ema.cfg
    assert not torch.is_grad_enabled() or not any(p.requires_grad for p in load_generator(path).parameters())


def test_checkpoint_is_written_atomically(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "ckpt.safetensors", {"G": _tiny(1)})
    before = path.read_bytes()
    import safetensors.torch

    def broken(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"G": _tiny(2)})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.safetensors"]
