"""Third-party output kept off the terminal: mediapipe's C++ (glog, absl, TFLite) writes its
warnings straight to file descriptor 2, where no Python logging filter reaches them.

`DivertedStderr(log)` points descriptor 2 away from the terminal for the duration of a command
(worker processes started meanwhile inherit it), keeps what arrives in a log file, and hands back
a stream on the real terminal for the command's own progress and summary.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO


class DivertedStderr:
    """Within `with DivertedStderr(log) as terminal:`, everything written to descriptor 2 (C++
    libraries, Python's sys.stderr, child processes started meanwhile) is captured, and appended
    to LOG at the end when there was any (so a run that loads no library creates no log);
    `terminal` is a text stream on the original stderr, for the command's own output."""

    def __init__(self, log: Path) -> None:
        self.log = Path(log)
        self.kept = 0  # lines appended to LOG at the end

    def __enter__(self) -> TextIO:
        sys.stderr.flush()
        try:  # sys.stderr is the process's descriptor 2, not a capture (a test runner's)
            on_fd2 = sys.stderr.fileno() == 2
        except (AttributeError, OSError, ValueError):
            on_fd2 = False
        self.saved = os.dup(2)
        self.terminal = os.fdopen(os.dup(self.saved), "w", buffering=1) if on_fd2 else sys.stderr
        self.capture = tempfile.TemporaryFile()
        os.dup2(self.capture.fileno(), 2)
        return self.terminal

    def captured(self) -> list[str]:
        """The lines captured so far."""
        sys.stderr.flush()
        self.capture.seek(0)
        return self.capture.read().decode(errors="replace").splitlines()

    def __exit__(self, *exc) -> None:
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.terminal.flush()
        if self.terminal is not sys.stderr:
            self.terminal.close()
        lines = self.captured()
        self.capture.close()
        self.kept = len(lines)
        if lines:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log, "a") as f:
                f.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} pid {os.getpid()}\n" + "\n".join(lines) + "\n")
