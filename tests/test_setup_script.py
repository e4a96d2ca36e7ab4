"""scripts/setup.sh tells what it is doing: steps with elapsed time, pip's progress, and on failure the
end of the log plus what to do. Run against a stand-in environment whose `python -m pip` replays a log,
so nothing is installed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETUP = ROOT / "scripts" / "setup.sh"

PIP_LOG = """Looking in indexes: https://pypi.example/simple
Collecting pillow>=10 (from unitedhuman==0.1.0)
  Using cached pillow-11.0.0-cp311-cp311-manylinux_2_28_x86_64.whl (4.4 MB)
Collecting torch==2.14.1 (from unitedhuman==0.1.0)
  Downloading https://files.example/packages/torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl (865.2 MB)
"""
PIP_DONE = """Installing collected packages: pillow, torch, numpy
Successfully installed numpy-1.26.4 pillow-11.0.0 torch-2.14.1
"""
PIP_ERROR = "ERROR: Could not find a version that satisfies the requirement torch==2.14.1\n"


def fake_venv(tmp_path: Path) -> Path:
    """A folder with bin/python whose `-m pip install` prints $FAKE_LOG, waits, then exits $FAKE_RC."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text('#!/usr/bin/env bash\n'
                      'if [[ "$1 $2 $3" == "-m pip install" ]]; then\n'
                      '  cat "$FAKE_LOG"; sleep "${FAKE_SLEEP:-0}"; [[ -f "$FAKE_LOG.end" ]] && cat "$FAKE_LOG.end"\n'
                      '  exit "${FAKE_RC:-0}"\n'
                      'elif [[ "$1 $2 $3" == "-m pip list" ]]; then printf "a==1\\nb==2\\nc==3\\n"; fi\n')
    python.chmod(0o755)
    return venv


def run_setup(venv: Path, tmp_path: Path, log: str, end: str = "", rc: int = 0, sleep: float = 0):
    (tmp_path / "pip.log").write_text(log)
    (tmp_path / "pip.log.end").write_text(end)
    env = {**os.environ, "UNITEDHUMAN_VENV": str(venv), "PYTHON": sys.executable, "UNITEDHUMAN_SETUP_TICK": "1",
           "FAKE_LOG": str(tmp_path / "pip.log"), "FAKE_RC": str(rc), "FAKE_SLEEP": str(sleep)}
    return subprocess.run(["bash", str(SETUP)], env=env, capture_output=True, text=True, timeout=120)


def test_setup_prints_each_step_with_elapsed_time_and_what_pip_is_doing(tmp_path):
    venv = fake_venv(tmp_path)
    done = run_setup(venv, tmp_path, PIP_LOG, PIP_DONE, sleep=1.5)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"==> setting up {venv}" in out
    for step in ("upgrading pip", "installing the project and its dependencies", "upgrading PyOpenGL"):
        assert f"] {step}" in out, out
    # While pip runs, a line every tick says what it is doing (here: downloading torch, 2 collected).
    assert "... resolving: 2 packages so far; latest download: torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl " \
           "(865.2 MB)" in out, out
    assert out.count("done in") == 3 and "(3 packages installed or upgraded)" in out
    assert all(re.match(r"\[\d+:\d\d\] ", line) for line in out.splitlines()[1:]), out  # every line: [m:ss]
    assert f"{venv} ready (3 packages)" in out
    assert (venv / ".setup-stamp").is_file() and PIP_DONE in (venv / "setup.log").read_text()
    # A second run finds the stamp and says nothing.
    again = run_setup(venv, tmp_path, PIP_LOG, PIP_DONE)
    assert again.returncode == 0 and again.stdout == "" and again.stderr == ""


def test_setup_failure_shows_the_end_of_the_log_and_what_to_do(tmp_path):
    venv = fake_venv(tmp_path)
    failed = run_setup(venv, tmp_path, PIP_LOG + PIP_ERROR, rc=1)
    assert failed.returncode == 1
    err = failed.stderr
    assert "error: pip install --upgrade pip failed after 0:0" in err, err
    assert "    " + PIP_ERROR.strip() in err  # the log's last lines, indented
    assert f"full log: {venv}/setup.log" in err
    assert "what to do:" in err and "PIP_INDEX_URL" in err
    assert not (venv / ".setup-stamp").exists()  # the next run tries again


def test_pip_status_reads_the_phase_from_the_log(tmp_path):
    log = tmp_path / "log"

    def status(text: str) -> str:
        log.write_text(text)
        cmd = f'source "{SETUP}"; pip_status "{log}"'
        return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, check=True).stdout.strip()

    assert status("") == "resolving: 0 packages so far"
    assert status("Collecting a\nCollecting b\nCollecting c\n") == "resolving: 3 packages so far"
    assert status(PIP_LOG).startswith("resolving: 2 packages so far; latest download: torch-2.14.1")
    assert status(PIP_LOG + PIP_DONE) == "unpacking 3 packages into the environment"
