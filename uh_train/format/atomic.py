"""Atomic file writes, the one way both packages write a file that a reader may see half-done.

The data goes to a temporary file in the target's folder (same file system, so the rename is
atomic) that is renamed over the target only when complete; on any error the temporary file is
removed and the target is untouched. A killed process leaves at most a stray `*.tmp` file.
The finished file gets the mode a plain `open()` would give it (0666 less the umask, so 0644
under the usual 022), not the owner-only mode of the temporary file: lab-mates on a shared
machine can read checkpoints, samples and shards.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def _umask() -> int:
    """The process's umask, read without changing it where /proc tells it (Linux), else by setting and
    restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to PATH; on success it replaces PATH. For writers that want a
    file name (torch.save, safetensors, PIL)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call WRITE with a binary file object whose content replaces PATH once WRITE returns."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))
