"""The camera's pitch from the posture of standing people's keypoints, as a detector reports them.

Seen from a camera pitched by o, a standing body's points shift vertically by their depth times
sin o: the face (in front of the ears), the knees (softly bent forward) and the shoulders move
relative to the hips, by a few tenths of a percent of the body's height per degree. One person's
points say little (how each person stands varies as much), but over a set the shift is measurable:

* `features`: per image, the heights of the nose, eyes, ears, shoulders and knees above the hips
  and the widths of the eyes, ears, shoulders, hips, knees and ankles, all in units of the body's
  height (ankles to nose), so that neither the image's scale nor its position matters. No foot
  point is read, so raised heels (fashion photos) do not move the result.
* `fit_response` (run by `mst body-model calibrate` on renders of the body model at known pitches,
  with the detector that will be used): each feature as a linear function of the pitch, f = a + b o,
  and the covariance S of what the pitch does not explain.
* `estimate`: per image, the pitch that best explains its features under that model (generalised
  least squares, o = bᵀS⁻¹(f − a) / bᵀS⁻¹b). It is unbiased per image, so the mean over a set is
  the set's pitch; a regression of o on f would pull every estimate towards the calibration's
  middle pitch instead.

What this reads is how the body model's population stands (`mst render-people`'s poses), as the
detector sees it: a set of people who all lean, or a detector other than the calibrated one, moves
the estimate. With mediapipe on renders at 256 px one image's estimate scatters by about 5° and the
mean of 24 by about 1° (docs/benchmarks.md, "How the default detector's keypoints see the camera's
pitch"). A known pitch (`mst space --pitch`) or PARE replaces it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mst_pipeline.body.layout import BODY25_NAMES

_B = {n: i for i, n in enumerate(BODY25_NAMES)}
# (right, left) BODY_25 pairs whose mean height above the hips is read, and whose width is read.
HEIGHTS = ("Nose", ("REye", "LEye"), ("REar", "LEar"), ("RShoulder", "LShoulder"), ("RKnee", "LKnee"))
WIDTHS = (("REye", "LEye"), ("REar", "LEar"), ("RShoulder", "LShoulder"), ("RHip", "LHip"),
          ("RKnee", "LKnee"), ("RAnkle", "LAnkle"))
FEATURES = tuple(f"height {n if isinstance(n, str) else n[0][1:]}" for n in HEIGHTS) + tuple(
    f"width {a[1:]}" for a, _ in WIDTHS)
NEEDED = tuple(sorted({_B[n] for n in ("Nose", "RHip", "LHip", "RAnkle", "LAnkle")}
                      | {_B[n] for pair in HEIGHTS[1:] + WIDTHS for n in pair}))
SHRINK = 0.1  # the residual covariance is pulled this far towards its diagonal (a few hundred images fit it)


def features(targets: np.ndarray, confidence: np.ndarray, threshold: float = 0.3) -> np.ndarray:
    """Posture features [B, F] (`FEATURES`) of keypoints TARGETS [B, ≥25, 2] (any coordinates with
    the same scale on both axes, y down) with CONFIDENCE [B, ≥25]; a row is NaN where a point it
    needs is below THRESHOLD or the body has no height."""
    u = np.asarray(targets, dtype=np.float64)[:, :25]
    c = np.asarray(confidence, dtype=np.float64)[:, :25]

    def mid(spec) -> np.ndarray:
        return u[:, _B[spec]] if isinstance(spec, str) else (u[:, _B[spec[0]]] + u[:, _B[spec[1]]]) / 2

    hip, ankle = mid(("RHip", "LHip")), mid(("RAnkle", "LAnkle"))
    height = ankle[:, 1] - u[:, _B["Nose"], 1]
    ok = (c[:, list(NEEDED)] >= threshold).all(1) & (height > 0)
    height = np.where(ok, height, 1.0)
    cols = [(hip[:, 1] - mid(spec)[:, 1]) / height for spec in HEIGHTS]
    cols += [np.abs(u[:, _B[a], 0] - u[:, _B[b], 0]) / height for a, b in WIDTHS]
    out = np.stack(cols, axis=1)
    out[~ok] = np.nan
    return out


def fit_response(feats: np.ndarray, pitches: np.ndarray) -> dict[str, Any]:
    """The features' linear response to the pitch, from FEATS [N, F] of images with known PITCHES [N]
    (radians; rows with NaN are left out): {"features", "a", "b", "precision" (S⁻¹), "count",
    "sd_deg" (one image's estimate's scatter about its pitch)}, as `estimate` reads it."""
    f = np.asarray(feats, dtype=np.float64)
    p = np.asarray(pitches, dtype=np.float64)
    keep = np.isfinite(f).all(1) & np.isfinite(p)
    f, p = f[keep], p[keep]
    if len(f) < 3 * f.shape[1] or np.ptp(p) <= 0:
        raise ValueError(f"a pitch response needs images at several pitches and at least {3 * f.shape[1]} "
                         f"with every posture point seen; got {len(f)} over {len(np.unique(p))} pitch(es)")
    design = np.stack([np.ones_like(p), p], axis=1)
    coef, *_ = np.linalg.lstsq(design, f, rcond=None)  # [2, F]
    resid = f - design @ coef
    cov = np.cov(resid.T)
    cov = (1 - SHRINK) * cov + SHRINK * np.diag(np.diag(cov))
    doc = {"features": list(FEATURES), "a": coef[0].tolist(), "b": coef[1].tolist(),
           "precision": np.linalg.inv(cov).tolist(), "count": int(len(f))}
    doc["sd_deg"] = float(np.degrees(np.std(estimate(doc, f) - p)))
    return doc


def estimate(doc: dict[str, Any], feats: np.ndarray) -> np.ndarray:
    """Per image, the pitch (radians) that explains its features FEATS [B, F] best under the
    response DOC (`fit_response`); NaN where a feature is missing."""
    a, b = np.asarray(doc["a"]), np.asarray(doc["b"])
    P = np.asarray(doc["precision"])
    f = np.asarray(feats, dtype=np.float64)
    return ((f - a) @ P @ b) / float(b @ P @ b)


def check_response(doc: Any) -> None:
    """Raise ValueError unless DOC is a pitch response `estimate` can read."""
    try:
        n = len(doc["features"])
        a, b, P = np.asarray(doc["a"], float), np.asarray(doc["b"], float), np.asarray(doc["precision"], float)
    except (TypeError, KeyError, ValueError) as e:
        raise ValueError(f"pitch response: {e}") from None
    if list(doc["features"]) != list(FEATURES) or a.shape != (n,) or b.shape != (n,) or P.shape != (n, n):
        raise ValueError(f"pitch response: features {doc['features']} with shapes a {a.shape}, b {b.shape}, "
                         f"precision {P.shape}; this version reads {list(FEATURES)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all() and np.isfinite(P).all()) or float(b @ P @ b) <= 0:
        raise ValueError("pitch response: not finite, or the features do not respond to the pitch")
