"""SMPL-format body models: file loading without chumpy, linear blend skinning, joint layouts, and
the open default model built from `anny`.

`load_body_model(path)` is the one way the pipeline gets its body model: the user's SMPL-format
file when given (or named by $UNITEDHUMAN_BODY_MODEL), else the open default, built on first use.
With `detector`, its BODY_25 follows that keypoint backend's calibrated convention
(`mst_pipeline.body.conventions`): the points the fits compare with the detector's.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mst_pipeline.body.model import BodyModel

BODY_MODEL_ENV = "UNITEDHUMAN_BODY_MODEL"


def _stderr(message: str) -> None:
    print(f"[body model] {message}", file=sys.stderr, flush=True)


def load_body_model(path: str | os.PathLike | None = None, log: Callable[[str], None] | None = _stderr,
                    detector: str | None = None) -> BodyModel:
    """The body model for the pipeline: PATH, else $UNITEDHUMAN_BODY_MODEL, else the open default
    (built from anny and cached the first time; LOG receives progress lines). DETECTOR: a keypoint
    backend (`mst_pipeline.detect.BACKENDS`) whose convention BODY_25 follows (`use_convention`)."""
    from mst_pipeline.body.model import BodyModel
    from mst_pipeline.body.open_model import open_model_data

    path = path or os.environ.get(BODY_MODEL_ENV) or None
    model = BodyModel.from_file(path) if path is not None else BodyModel(open_model_data(log=log))
    if detector is not None:
        use_convention(model, detector, log)
    return model


def use_convention(model: BodyModel, detector: str, log: Callable[[str], None] | None = _stderr) -> BodyModel:
    """Make MODEL's BODY_25 follow the calibrated convention of keypoint backend DETECTOR; without a
    calibration for this model, LOG says so and how to make one, and the model keeps its own points."""
    from mst_pipeline.body.conventions import BACKEND_CONVENTION, CONVENTIONS, find_calibration

    convention = BACKEND_CONVENTION.get(detector)
    if convention is None:
        return model.use_keypoints(None)
    regressor = find_calibration(convention, model.hash)
    if regressor is None and log is not None:
        runs = CONVENTIONS[convention].calibrated_by  # the backend actually run on the renders
        backend = next(b for b, c in BACKEND_CONVENTION.items() if c == runs)
        log(f"no {convention} keypoint calibration for this body model ({model.hash}): fitting with the "
            f"model's own keypoints, which sit elsewhere than the detector's (face crops can come out 1.7x too "
            f"large); run `mst body-model calibrate --detector {backend}` once to make one")
    return model.use_keypoints(regressor)


def use_view(model: BodyModel, kind: str | None) -> tuple[int, ...]:
    """Make MODEL's calibrated BODY_25 follow its detector's placement in images of view kind KIND
    ("full", "upper", "face"; None: the fit over every view) and return the BODY_25 indices unused in
    that kind (`KeypointRegressor.for_view`), whose detections a fit must drop. Without a calibration
    nothing changes and nothing is unused."""
    if model.keypoints is None:
        return ()
    regressor, unused = model.keypoints.for_view(kind)
    if regressor.view != model.keypoints.view:  # already following this kind: keep its reduced model
        model.use_keypoints(regressor)
    return unused


def view_confidence(model: BodyModel, kind: str | None, confidence: np.ndarray) -> np.ndarray:
    """`use_view(model, kind)`, then CONFIDENCE ([..., 37]) as a fit of that kind must see it: a copy with
    the detections of the slots unused in that kind set to 0."""
    out = np.array(confidence, dtype=np.float64, copy=True)
    out[..., list(use_view(model, kind))] = 0.0
    return out


__all__ = ["BODY_MODEL_ENV", "load_body_model", "use_convention", "use_view", "view_confidence"]
