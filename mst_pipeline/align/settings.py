"""`mst align`'s settings, checked once where they are made: the rules of a fitted run and of an
aligned full-body set (`--aligned`) are written here only; the command line and `align_folder`
both get them from `AlignSettings`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mst_pipeline.detect.pool import NO_DETECTOR
from mst_pipeline.fitting import FIT_BATCH
from mst_pipeline.fitting.smplify import SmplifyConfig

PERSON_CHOICES = ("best", "all")


@dataclass
class AlignSettings:
    kind: str | None = None  # None: inferred per image from its visible keypoints
    tier: str | None = None  # None: from the image's density relative to the space
    detector: str = "mediapipe"
    keypoints_dir: Path | None = None
    batch_size: int = FIT_BATCH
    device: str = "cpu"
    part: tuple[int, int] = (0, 1)
    max_count: int = 1000
    smplify: SmplifyConfig = field(default_factory=SmplifyConfig)
    overlay: Path | None = None  # folder for a check picture per newly aligned image
    workers: int = 0  # detection processes feeding the batched fits (0: detect inline, in the main process)
    pare: Path | None = None  # PARE checkpoint to start SMPLify-P from; None: the keypoint start
    prior: Path | None = None  # pose prior file the caller loads for the fits (`align_folder` takes it loaded)
    aligned: bool = False  # an aligned full-body set: padded-identity H, no fit (`mst_pipeline.align.folder`)
    person: str = "best"  # best: the most fully visible person of each image; all: every person
    # What aligned the samples, recorded in each one's meta (`aligned_with`): the space and prior by
    # hash, the keypoint convention; filled by `align_folder` from what it was given.
    provenance: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem is not None:
            raise ValueError(problem)

    def problem(self) -> str | None:
        """The first rule these settings break, in words that name the option; None when none."""
        if self.workers < 0:
            return f"--workers must be 0 (the main process) or more, got {self.workers}"
        if self.person not in PERSON_CHOICES:
            return f"--person must be one of {', '.join(PERSON_CHOICES)}, not {self.person!r}"
        if not self.aligned:
            if self.detector == NO_DETECTOR:
                return f"--detector {NO_DETECTOR} needs --aligned (the fits need keypoints)"
            return None
        # An aligned full-body set is full-body space itself: one person per image, nothing fitted.
        if (self.kind or "full") != "full":
            return f"an aligned full-body set (--aligned) holds kind 'full', not --kind {self.kind}"
        if self.person != "best":
            return "--person all: an aligned full-body set (--aligned) shows one person per image"
        for flag, value in (("--pare", self.pare), ("--prior", self.prior), ("--overlay", self.overlay)):
            if value is not None:
                return f"{flag} concerns the SMPLify-P fits; an aligned full-body set (--aligned) is not fitted"
        return None
