"""VGG16 features (4096-d, the fc2 layer) for improved precision/recall, as Kynkäänniemi et al.
(2019) and StyleGAN's `pr50k3` use them. No VGG16 file ships with any installed package: the user
passes one with `uh-eval --vgg16 FILE`, and precision/recall falls back to Inception features
without it. Two files are understood, neither of which runs code when loaded:

* NVIDIA's `vgg16.pt` (TorchScript, the StyleGAN2-ADA metrics file; `forward(img,
  return_features=True)` takes uint8-valued images of any size and resizes them itself), loaded
  with `torch.jit.load` like the Inception file. NVIDIA's `vgg16.pkl` (StyleGAN3) is a Python
  pickle of the same network and is refused: use the `.pt` file.
* torchvision's ImageNet weights `vgg16-397923af.pth` (a state dict), loaded with
  `torch.load(weights_only=True)` into torchvision's VGG16; images are resized to 224 px
  (bilinear, antialiased) and normalised with ImageNet's mean and std.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from uh_train.format.spec import sha256_file

from .inception import MetricsError, batched_features

FEATURE_DIM = 4096
INPUT_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _first_line(exc: Exception) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with a `code/` folder; torch.save files have none."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def torchvision_vgg16() -> torch.nn.Module:
    """torchvision's VGG16 architecture without weights (on the meta device: nothing is allocated
    until the state dict is assigned)."""
    from torchvision.models import vgg16

    with torch.device("meta"):
        return vgg16(weights=None)


class VGG16Features:
    """Callable: uint8 images [N, 3, H, W] -> float64 fc2 features [N, 4096]."""

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu", batch: int = 32) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise MetricsError(f"VGG16 file {self.path} does not exist")
        self.sha256 = sha256_file(self.path)
        self.device = torch.device(device)
        self.batch = batch
        if _is_torchscript(self.path):
            self._load_torchscript()
        else:
            self._load_state_dict()

    def _load_torchscript(self) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
                self.net = torch.jit.load(str(self.path), map_location=self.device).eval()
        except Exception as exc:  # torch raises RuntimeError/ValueError for damaged archives
            raise MetricsError(f"cannot read {self.path} as a TorchScript VGG16 file ({_first_line(exc)})") from None
        if "return_features" not in str(self.net.forward.schema):
            raise MetricsError(f"{self.path} is TorchScript but not NVIDIA's vgg16.pt (its forward has no "
                               "return_features argument)")
        self.kind = "nvidia-vgg16"

    def _load_state_dict(self) -> None:
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError for pickles with code or classes, others for junk
            raise MetricsError(
                f"cannot read {self.path} as VGG16 weights without running code ({_first_line(exc)}); pass "
                "NVIDIA's vgg16.pt (TorchScript) or torchvision's vgg16-397923af.pth (a state dict); "
                "NVIDIA's vgg16.pkl is a Python pickle and is not loaded") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise MetricsError(f"{self.path} is not a state dict of tensors (torchvision's vgg16-397923af.pth)")
        net = torchvision_vgg16()
        try:
            net.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            raise MetricsError(f"{self.path} does not hold torchvision's VGG16 weights "
                               f"({str(exc).splitlines()[0]} ...)") from None
        self.net = net.eval().to(self.device)
        self.kind = "torchvision-vgg16"

    def describe(self) -> dict:
        return {"network": "vgg16", "file": self.path.name, "sha256": self.sha256, "kind": self.kind}

    def __call__(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        return batched_features(self._forward, images, self.batch, self.device, FEATURE_DIM, self.path.name)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "nvidia-vgg16":
            return self.net(x, return_features=True)
        x = F.interpolate(x.float() / 255, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True,
                          align_corners=False)
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        x = self.net.avgpool(self.net.features(x)).flatten(1)
        return self.net.classifier[:5](x)  # fc1, ReLU, dropout (off in eval), fc2, ReLU: the fc2 features
