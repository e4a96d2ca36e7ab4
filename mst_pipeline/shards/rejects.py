"""The reject log: OUT/rejects.jsonl, one JSON line per input a step could not use, and why.

Every step that skips inputs (`mst align`, `mst derive-sr`, `mst render-hands`) appends here; a
line is flushed and synced when written, so a crash keeps it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

REJECTS = "rejects.jsonl"


def append_reject(out: Path, record: dict[str, Any]) -> None:
    """Append RECORD (plus the time) as one line to OUT/rejects.jsonl, flushed and synced."""
    record = {**record, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with open(Path(out) / REJECTS, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def reject_file(out: Path, key: str, rel: Path, reason: str, summary: Any) -> None:
    """Log input file REL (sample key KEY) as rejected for REASON and count it in SUMMARY (a step's
    summary with `rejected` and a `reasons` Counter, keyed by the reason without its details)."""
    append_reject(out, {"key": key, "path": rel.as_posix(), "reason": reason})
    summary.rejected += 1
    summary.reasons[reason.split(" (")[0]] += 1


def read_rejects(out: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(out) / REJECTS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
