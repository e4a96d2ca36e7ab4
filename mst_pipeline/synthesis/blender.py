"""Blender render workers of `mst render-hands`: subprocesses speaking a line protocol.

Each worker runs `blender_scripts/render_hands.py --serve` (in this Python's `bpy`, or a Blender
executable) and renders one job per line; a crash or a timeout costs that sample only
(`RenderError`) and the next job starts a fresh worker.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the repository: blender_scripts/ lies beside mst_pipeline/
SCRIPT = ROOT / "blender_scripts" / "render_hands.py"


class RenderError(RuntimeError):
    """A sample that could not be rendered; the run records it in rejects.jsonl and goes on."""


SCRATCH_PREFIX = ".render-hands-"


def scratch_folder(out: Path) -> Path:
    """A fresh folder for Blender's frames inside OUT. Called while holding the writer's lock on the
    hands source, so any older scratch folder there is a killed run's leftover and is removed."""
    for stale in out.glob(SCRATCH_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=out))


def blender_command(blender: str | None = None) -> list[str]:
    """How to start a render worker: the `bpy` module in this Python, or a Blender executable."""
    if blender:
        return [blender, "-b", "--factory-startup", "-noaudio", "-P", str(SCRIPT), "--", "--serve"]
    return [sys.executable, str(SCRIPT), "--serve"]


def gpu_present() -> bool:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return False
    try:
        return subprocess.run([exe, "-L"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


class BlenderWorker:
    """One render subprocess speaking the line protocol of `render_hands.py --serve`.

    A crash or a timeout kills only this worker; the next job starts a fresh one.
    """

    def __init__(self, command: Sequence[str], log_path: Path, timeout: float) -> None:
        self.command, self.log_path, self.timeout = list(command), log_path, timeout
        self.proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                         text=True, bufsize=1)
        finally:
            log.close()
        return self.proc

    def render(self, job: dict[str, Any]) -> float:
        proc = self.proc if self.proc is not None and self.proc.poll() is None else self._start()
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(self.timeout, kill)
        timer.start()
        try:
            proc.stdin.write(json.dumps(job) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        finally:
            timer.cancel()
        if not line:
            code = proc.wait()
            self.proc = None
            if timed_out.is_set():
                raise RenderError(f"render timed out after {self.timeout:.0f} s")
            raise RenderError(f"render worker exited with code {code}: {self._log_tail()}")
        answer = json.loads(line)
        if not answer.get("ok"):
            raise RenderError(answer.get("error", "render failed"))
        return float(answer.get("seconds", 0.0))

    def _log_tail(self, n: int = 300) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip()
        except OSError:
            return ""
        return text[-n:].replace("\n", " | ")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
