"""The trainer's input, in two parts: `patches` (pure patch geometry: where a patch lies and its
pixels) and `streams` (shards per source, mixed by weight, batched; resumable). The names the
trainer, the metrics and the tests use are importable from here."""

from .patches import (
    PAD_VALUE,
    Patch,
    PatchConfig,
    ViewSettings,
    bilinear_sample_uint8,
    make_patch,
    mirror_record,
    parse_view,
    resample_patch,
    sample_scale,
    sample_view,
    scale_limits,
)
from .streams import PatchBatches, StreamState, shards_by_source, source_stream

__all__ = [
    "PAD_VALUE",
    "Patch",
    "PatchBatches",
    "PatchConfig",
    "StreamState",
    "ViewSettings",
    "bilinear_sample_uint8",
    "make_patch",
    "mirror_record",
    "parse_view",
    "resample_patch",
    "sample_scale",
    "sample_view",
    "scale_limits",
    "shards_by_source",
    "source_stream",
]
