"""Keypoint conventions: where each detector puts a keypoint on a body, and the body model's
calibrated regressor for it (J of paper Eq. 1 as the detector would report it).

A keypoint is defined by where a detector puts it, not by a geometric extreme of the mesh: the
open model's "ears" are its widest head vertices, while detectors put the ears 0.58× as far apart.
Each backend therefore declares the `Convention` it reports, and the body model produces each
BODY_25 keypoint of that convention through a `KeypointRegressor`: sparse, non-negative weights
over a few mesh vertices (summing to 1, so the point moves with the surface through every shape
and pose), fitted on renders of the model by `mst body-model calibrate`
(`mst_pipeline.synthesis.calibrate`). Points a convention derives (Neck, MidHip as the midpoints of
the shoulders and hips) are derived from the calibrated points the same way.

A detector also places some points differently by framing (mediapipe's shoulders sit wider in an
upper-body crop than in a full view; its eyes wider in a face crop), so a calibration holds, besides
the fit over every view, one fit per view kind (full, upper, face) and the slots too unreliable to use
in a kind (a face crop's guessed shoulders); `KeypointRegressor.for_view` gives the regressor and the
unused slots for images of one kind, which is what the MST fits with. It also holds how the
detector's full-view keypoints respond to the camera's pitch (`pitch`, `mst_pipeline.body.posture`),
from which `mst space` measures ô.

Calibrations are versioned (`CALIBRATION_VERSION`) and tied to one body model by `model_hash`; they
are cached beside the body model (`calibration_path`), and the open model's ships with the package.
Pure numpy and JSON; applied in `mst_pipeline.body.model.BodyModel`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mst_pipeline.body.layout import BODY25_NAMES
from mst_pipeline.body.open_model import cache_root

CALIBRATION_VERSION = 3  # 2: per-view fits and unused slots (`KeypointRegressor.for_view`); 3: the pitch response
SHIPPED = Path(__file__).with_name("calibrations")
_B = {n: i for i, n in enumerate(BODY25_NAMES)}
_MIDPOINTS = {"Neck": ("RShoulder", "LShoulder"), "MidHip": ("RHip", "LHip")}
_COCO17 = ("Nose", "REye", "LEye", "REar", "LEar", "RShoulder", "LShoulder", "RElbow", "LElbow", "RWrist",
           "LWrist", "RHip", "LHip", "RKnee", "LKnee", "RAnkle", "LAnkle")  # fmt: skip


@dataclass(frozen=True)
class Convention:
    """Which BODY_25 points a detector places itself (`reported`), which it derives from others
    (`derived`: slot -> the two slots it is the midpoint of), and which calibration gives the body
    model's points (`calibrated_by`: a convention actually run on renders, possibly this one)."""

    name: str
    reported: tuple[str, ...]
    derived: tuple[str, ...]
    calibrated_by: str
    about: str

    def derived_pairs(self) -> dict[int, tuple[int, int]]:
        return {_B[n]: (_B[_MIDPOINTS[n][0]], _B[_MIDPOINTS[n][1]]) for n in self.derived}


CONVENTIONS: dict[str, Convention] = {
    "mediapipe": Convention(
        "mediapipe",
        _COCO17 + ("LBigToe", "LHeel", "RBigToe", "RHeel"), ("Neck", "MidHip"), "mediapipe",
        "BlazePose's 33 landmarks (toe = tip of the second toe, eyes at the pupils, ears at the "
        "tragus), the face mesh's nose tip and pupils where the pose misses the face, and in face and "
        "upper-body crops the ears where the mesh's jaw line meets them; calibrated by running the detector "
        "on renders"),
    "openpose-body25": Convention(
        "openpose-body25",
        _COCO17 + ("LBigToe", "LHeel", "RBigToe", "RHeel"), ("Neck", "MidHip"), "mediapipe",
        "OpenPose BODY_25 (COCO's annotation of face and limbs, plus feet); OpenPose does not run "
        "offline, so its points shared with mediapipe take mediapipe's calibration (both follow "
        "COCO's annotation of eyes, ears and joints), the small toes the model's own vertices"),
    "coco-wholebody": Convention(
        "coco-wholebody",
        _COCO17 + ("LBigToe", "LHeel", "RBigToe", "RHeel"), ("Neck", "MidHip"), "mediapipe",
        "COCO-WholeBody through mmpose (COCO-17 plus six foot points); calibrated by proxy as "
        "openpose-body25 until mmpose is run on renders (`mst body-model calibrate --detector mmpose`)"),
}
# The convention each backend reports.
BACKEND_CONVENTION = {"mediapipe": "mediapipe", "openpose-json": "openpose-body25", "mmpose": "coco-wholebody"}


class CalibrationError(ValueError):
    """A calibration file that is not one, or is for another model or version."""


@dataclass
class KeypointRegressor:
    """A calibrated convention on one body model: per calibrated BODY_25 slot, vertex ids [K] and
    non-negative weights [K] summing to 1; `residual_px` the slot's mean gap on the calibration
    renders (pixels of the render it was measured on) and `count` the detections it was fitted to."""

    convention: str
    model_hash: str
    slots: dict[str, dict[str, Any]]
    version: int = CALIBRATION_VERSION
    settings: dict[str, Any] = field(default_factory=dict)
    # Per view kind: {"slots": {name: slot}, "unused": [names]} (`synthesis.calibrate.fit_views`).
    views: dict[str, dict[str, Any]] = field(default_factory=dict)
    view: str | None = None  # the view kind this regressor was specialised to (`for_view`), if any
    overall: dict[str, dict[str, Any]] | None = None  # the fit over every view, kept by `for_view`
    # How the detector's full-view posture responds to the camera's pitch (`posture.fit_response`);
    # None for a convention calibrated by proxy, whose detector was not run on pitched renders.
    pitch: dict[str, Any] | None = None

    def arrays(self, max_k: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(use [25] bool, ids [25, K] int, weights [25, K]) with unused entries 0."""
        k = max_k or max((len(s["ids"]) for s in self.slots.values()), default=1)
        use, ids, w = np.zeros(25, bool), np.zeros((25, k), np.int64), np.zeros((25, k))
        for name, slot in self.slots.items():
            i = _B[name]
            n = len(slot["ids"])
            use[i], ids[i, :n], w[i, :n] = True, slot["ids"], slot["weights"]
        return use, ids, w

    def derived_pairs(self) -> dict[int, tuple[int, int]]:
        return CONVENTIONS[self.convention].derived_pairs()

    def for_view(self, kind: str | None) -> tuple[KeypointRegressor, tuple[int, ...]]:
        """The regressor for images of view kind KIND ("full", "upper", "face"; None or a kind without
        its own fit: the fit over every view) and the BODY_25 indices unused for that kind, whose
        detections the fit must not see. A slot's own fit in the view replaces the overall one; a
        derived point (Neck) is unused where a point it derives from is."""
        base = self.overall if self.overall is not None else self.slots
        doc = self.views.get(kind or "")
        if not doc:
            if self.overall is None:
                return self, ()
            return KeypointRegressor(self.convention, self.model_hash, base, self.version, self.settings,
                                     self.views, pitch=self.pitch), ()
        slots = dict(base)
        slots.update({n: s for n, s in doc["slots"].items() if n in base})
        unused = {_B[n] for n in doc.get("unused", ()) if n in _B}
        for slot, (a, b) in self.derived_pairs().items():
            if a in unused or b in unused:
                unused.add(slot)
        reg = KeypointRegressor(self.convention, self.model_hash, slots, self.version, self.settings,
                                self.views, kind, base, self.pitch)
        return reg, tuple(sorted(unused))

    def slot_weights(self) -> np.ndarray:
        """[25] weights of the BODY_25 slots in a fit of this regressor's view kind: how tightly the
        detector places each point there, (median gap / the slot's gap)² over the view's calibrated
        slots, at most 1 (the measured gaps as noise scales: a weighted least squares), so that the
        detector's loosest points in a view (mediapipe's elbows, wrists and hips in upper-body
        crops, 6-7 px where its shoulders, eyes and ears are 2-4 px) count for less. All ones for the
        fit over every view, a derived point (Neck, MidHip), or a convention calibrated by proxy,
        whose gaps are another detector's."""
        w = np.ones(25)
        if self.view is None or "proxy_of" in self.settings:
            return w
        gaps = {}
        for name, slot in self.slots.items():
            r = slot.get("residual_px")
            r = r.get(self.view) if isinstance(r, dict) else r
            if r is not None and r > 0:
                gaps[name] = float(r)
        if gaps:
            median = float(np.median(list(gaps.values())))
            for name, gap in gaps.items():
                w[_B[name]] = min(1.0, (median / gap) ** 2)
        return w

    def as_convention(self, name: str) -> KeypointRegressor:
        """This calibration serving convention NAME (whose `calibrated_by` is this one): its reported
        slots only, and no pitch response (another detector's posture is not this one's)."""
        conv = CONVENTIONS[name]
        slots = {n: s for n, s in self.slots.items() if n in conv.reported}
        views = {k: {"slots": {n: s for n, s in d["slots"].items() if n in conv.reported},
                     "unused": [n for n in d.get("unused", ()) if n in conv.reported]} for k, d in self.views.items()}
        return KeypointRegressor(name, self.model_hash, slots, self.version,
                                 {**self.settings, "proxy_of": self.convention}, views)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        return {"format": "unitedhuman-keypoints", "version": self.version, "convention": self.convention,
                "model_hash": self.model_hash, "settings": self.settings,
                "slots": self.overall if self.overall is not None else self.slots, "views": self.views,
                **({"pitch": self.pitch} if self.pitch is not None else {})}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> KeypointRegressor:
        if doc.get("format") != "unitedhuman-keypoints":
            raise CalibrationError("not a keypoint calibration (format is not unitedhuman-keypoints)")
        if doc.get("version") != CALIBRATION_VERSION:
            raise CalibrationError(f"calibration version {doc.get('version')}, this version reads "
                                   f"{CALIBRATION_VERSION}: run `mst body-model calibrate` again")
        slots = doc["slots"]
        views = doc.get("views") or {}
        every = [(name, s) for name, s in slots.items()]
        for kind, view in views.items():
            if not isinstance(view, dict) or not isinstance(view.get("slots"), dict):
                raise CalibrationError(f"calibration view {kind!r} has no slots")
            every += list(view["slots"].items())
        for name, s in every:
            w = np.asarray(s["weights"], float)
            if name not in _B or len(s["ids"]) != len(w) or (w < 0).any() or abs(w.sum() - 1) > 1e-6:
                raise CalibrationError(f"calibration slot {name!r} is not a convex vertex combination")
        pitch = doc.get("pitch")
        if pitch is not None:
            from mst_pipeline.body.posture import check_response

            try:
                check_response(pitch)
            except ValueError as e:
                raise CalibrationError(str(e)) from None
        return cls(doc["convention"], doc["model_hash"], slots, doc["version"], doc.get("settings", {}), views,
                   pitch=pitch)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        os.replace(tmp, path)
        return path


def model_hash(v_template: np.ndarray, faces: np.ndarray, shapedirs: np.ndarray) -> str:
    """A body model's identity for its calibrations: its mesh, rest shape and shape space. Vertices and
    shape directions are rounded to 1e-6 first: two builds of the same model differ by float noise
    (1e-14), which must not make a shipped calibration look foreign."""
    h = hashlib.sha256()
    for a in (np.round(np.asarray(v_template, np.float64), 6), np.asarray(faces, np.int64),
              np.round(np.asarray(shapedirs, np.float64), 6)):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def cache_folder() -> Path:
    """Where calibrations are cached: beside the open body model ($UNITEDHUMAN_CACHE/body/keypoints)."""
    return cache_root() / "body" / "keypoints"


def calibration_path(convention: str, mhash: str, folder: Path | None = None) -> Path:
    return (folder or cache_folder()) / f"{convention}-v{CALIBRATION_VERSION}-{mhash}.json"


def find_calibration(convention: str, mhash: str) -> KeypointRegressor | None:
    """The calibration of CONVENTION for the model with hash MHASH: the cached one, else the one
    shipped with the package, else (a proxy convention) its `calibrated_by`'s; None when there is none."""
    conv = CONVENTIONS[convention]
    source = conv.calibrated_by
    for folder in (cache_folder(), SHIPPED):
        path = calibration_path(source, mhash, folder)
        if path.is_file():
            reg = KeypointRegressor.from_json(json.loads(path.read_text()))
            if reg.model_hash != mhash:
                raise CalibrationError(f"{path.name} is for another body model ({reg.model_hash})")
            return reg if source == convention else reg.as_convention(convention)
    return None
