"""What every keypoint backend shares: the detector interface and its two errors.

Backends import these from here (not from the package), so the package's `make_detector`, which
imports the backends, and the backends never import each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from mst_pipeline.body.keypoints import PersonKeypoints


class DetectionError(ValueError):
    """No usable keypoints for an image (no person, malformed file); the image is rejected."""


class BackendUnavailable(RuntimeError):
    """A backend whose package or model is not installed; the message says how to get it."""


class Detector(Protocol):
    def __call__(self, image: np.ndarray, path: Path) -> list[PersonKeypoints]:
        """Every detection of the image (one per person found, in no particular order; which of them
        are people and which is fitted is decided by `mst_pipeline.detect.persons`).

        image: RGB uint8 [h, w, 3]; path: the image file (backends reading side files use it).
        DetectionError when nothing at all is found."""
