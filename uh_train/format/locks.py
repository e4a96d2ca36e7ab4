"""Locks that keep two runs off one output: `uh-train --out`, `uh-eval --out`, and the shard writers
of `mst` (one per slice of a source's keys).

A lock is an exclusive `flock` on a file, taken without waiting: a second run is refused at once with
a message naming the process that holds it (its pid and command line, written into the lock file).
The lock belongs to the open file, so a killed run's lock goes with it; a lock file left behind is
harmless and reused.
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


class Busy(RuntimeError):
    """Another live process holds the lock; the message names it."""


def holder(path: str | os.PathLike) -> str:
    """Who holds (or last held) the lock file at PATH, as written by `take_lock`: 'pid N (command)'."""
    try:
        text = Path(path).read_text(errors="replace").strip()
    except OSError:
        text = ""
    return text.splitlines()[0][:200] if text else "another process"


def take_lock(path: str | os.PathLike, note: str = "") -> IO[str] | None:
    """The open, exclusively locked file at PATH (created when missing), with this process's pid,
    command line and NOTE written into it; None when a live process holds it."""
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:150]
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} ({command or 'python'}){' ' + note if note else ''}\n")
    handle.flush()
    return handle


def is_held(path: str | os.PathLike) -> bool:
    """True when a live process holds the lock file at PATH (nothing is written to it)."""
    try:
        handle = open(path, "a+")
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


@contextmanager
def run_lock(folder: str | os.PathLike, program: str) -> Iterator[None]:
    """Hold FOLDER/.lock while the block runs (FOLDER is created); Busy, naming the other process,
    when another run of any program holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    handle = take_lock(path, program)
    if handle is None:
        raise Busy(f"{folder} is in use by another run ({holder(path)}); wait for it to finish or choose "
                   f"another --out")
    try:
        yield
    finally:
        handle.close()
