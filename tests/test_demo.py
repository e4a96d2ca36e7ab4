"""`just demo` end to end in its smallest setting (about two minutes on 2 CPU cores)."""

from __future__ import annotations

import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "demo.py"


def demo_module():
    spec = importlib.util.spec_from_file_location("demo_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def run_demo(out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    return subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--small"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)


@pytest.mark.slow
def test_small_demo_runs_every_stage_and_reports_it(tmp_path):
    demo = demo_module()
    out = tmp_path / "demo"
    first = run_demo(out)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    report = (out / "report.html").read_text()
    names = [stage.name for stage in demo.stages(out, demo.SMALL)]
    assert {"body model", "render people", "full-body space", "pose prior", "align full", "align upper",
            "align face", "render hands", "validate", "MST vs truth", "alignment preview", "train stage 1",
            "train stage 2", "generate 4r", "evaluate"} <= set(names)
    for name in names:
        row = re.search(rf'<tr><td><a href="#[\w-]+">{re.escape(html.escape(name))}</a></td><td>(\w+)</td>', report)
        assert row is not None and row.group(1) in ("ok", "reused"), name
        assert re.search(rf'<h2 id="[\w-]+">{re.escape(html.escape(name))}</h2>', report), name
    # Every image the report shows exists next to it.
    for src in re.findall(r'<img src="([^"]+)"', report):
        assert (out / src).is_file(), src
    # The MST recovers the renders' H: every render source aligned, corner errors of a few %.
    table = (out / "mst_vs_truth.md").read_text()
    for source in demo.VIEW_SOURCES.values():
        row = re.search(rf"\| {source} \| \w+ \| (\d+) / (\d+) \| ([\d.]+) %", table)
        assert row is not None, table
        assert int(row.group(1)) == int(row.group(2)) == demo.SMALL.people
        assert float(row.group(3)) < 5.0
    assert "FID" in (out / "eval" / "metrics.md").read_text()
    # The report as tables and captioned figures, with its limits; in a browser where there is one.
    assert '<a href="validate.json">raw JSON' in report and "<td>ᾱ: scale s</td>" in report
    assert report.count("<figcaption>") >= 8 and 'id="can-and-cannot"' in report
    assert (out / "zoom" / "seed0000-boxes.png").is_file()
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "report_check.py"), str(out / "report.html")],
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "report check: ok" in check.stdout or "report check skipped: no Chromium found" in check.stdout
    # A second run reuses every stage.
    again = run_demo(out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already done") == len(names)
