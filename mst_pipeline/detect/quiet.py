"""Third-party output kept off the terminal: mediapipe's C++ (glog, absl, TFLite) writes its
warnings straight to file descriptor 2, where no Python logging filter reaches them.

`DivertedStderr(log)` points descriptor 2 at a log file for the duration of a command (worker
processes started meanwhile inherit it) and hands back a stream on the real terminal for the
command's own progress and summary.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TextIO


class DivertedStderr:
    """Within `with DivertedStderr(log) as terminal:`, everything written to descriptor 2 (C++
    libraries, Python's sys.stderr, child processes started meanwhile) is appended to LOG, on disk
    as it comes (so a native crash leaves its last words there); `terminal` is a text stream on the
    original stderr, for the command's own output. A run that wrote nothing there leaves no trace:
    the log, and the folders made for it, are removed again (`kept` is then 0)."""

    def __init__(self, log: Path) -> None:
        self.log = Path(log)
        self.kept = 0  # lines this run appended to LOG

    def __enter__(self) -> TextIO:
        made = [p for p in (self.log.parent.parent, self.log.parent) if not p.exists()]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.made, self.existed = made, self.log.exists()
        sys.stderr.flush()
        try:  # sys.stderr is the process's descriptor 2, not a capture (a test runner's)
            on_fd2 = sys.stderr.fileno() == 2
        except (AttributeError, OSError, ValueError):
            on_fd2 = False
        self.saved = os.dup(2)
        self.terminal = os.fdopen(os.dup(self.saved), "w", buffering=1) if on_fd2 else sys.stderr
        self.fd = os.open(self.log, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self.start = os.fstat(self.fd).st_size
        os.write(self.fd, f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} pid {os.getpid()}\n".encode())
        self.body = os.fstat(self.fd).st_size
        os.dup2(self.fd, 2)
        return self.terminal

    def captured(self) -> list[str]:
        """The lines this run wrote so far."""
        sys.stderr.flush()
        return os.pread(self.fd, max(0, os.fstat(self.fd).st_size - self.body), self.body).decode(
            errors="replace").splitlines()

    def __exit__(self, *exc) -> None:
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.terminal.flush()
        if self.terminal is not sys.stderr:
            self.terminal.close()
        self.kept = len(self.captured())
        # Nothing came: take back the header (unless another run appends to the log meanwhile), and
        # the log and the folders made for it.
        untouched = self.kept == 0 and os.fstat(self.fd).st_size == self.body
        if untouched:
            os.ftruncate(self.fd, self.start)
        os.close(self.fd)
        if untouched and not self.existed:
            self.log.unlink(missing_ok=True)
            for folder in reversed(self.made):
                try:
                    folder.rmdir()
                except OSError:  # not empty: the run wrote there
                    break
