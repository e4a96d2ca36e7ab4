"""Where the project installs: the README's quick start needs no system pip (so it works from a PEP 668
Python), CI runs its test line as written and then the trainer alone; the package metadata admits the
trainer on Python 3.10-3.13 with NumPy 1 or 2 and keeps NumPy 1 and Python 3.11 to the MST's extras."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
TRAINER_EXTRAS = ("train", "eval", "view")


def quick_start_lines() -> list[str]:
    section = (ROOT / "README.md").read_text().split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


def requirements(extra: str | None = None) -> list[Requirement]:
    return [Requirement(r) for r in (PROJECT["dependencies"] if extra is None else
                                     PROJECT["optional-dependencies"][extra])]


def applies(req: Requirement, python: str, extra: str = "") -> bool:
    return req.marker is None or req.marker.evaluate({"python_version": python, "extra": extra})


def test_the_quick_start_installs_nothing_outside_the_project_environment():
    lines = quick_start_lines()
    assert [line.split("&&")[-1].strip() for line in lines] == [".venv/bin/just demo", ".venv/bin/just test"]
    for line in lines:
        assert line.startswith("bash scripts/setup.sh && "), line
        assert "pip" not in shlex.split(line), line  # no pip of the system's Python (PEP 668 refuses it)
    # `.venv/bin/just` exists because setup installs the dev extra, which holds the task runner.
    assert any(r.name == "rust-just" for r in requirements("dev"))
    assert "'.[all,dev]'" in (ROOT / "scripts" / "setup.sh").read_text()


def test_ci_runs_the_readme_test_line_as_written_then_the_demo_and_the_trainer_alone():
    ci = [line.split("#", 1)[0].strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    test_line = quick_start_lines()[1]
    assert test_line in ci
    order = [ci.index(test_line), ci.index(".venv/bin/just test-demo"), ci.index("bash scripts/ci_trainer_alone.sh")]
    assert order == sorted(order)


def test_the_trainer_alone_script_names_test_files_that_exist_and_installs_no_mst_extra():
    script = (ROOT / "scripts" / "ci_trainer_alone.sh").read_text()
    files = re.findall(r"tests/\w+\.py", script.split("TESTS=(", 1)[1].split(")", 1)[0])
    assert len(files) >= 15 and len(set(files)) == len(files)
    assert all((ROOT / f).is_file() for f in files), [f for f in files if not (ROOT / f).is_file()]
    assert "-e '.[train,eval]'" in script and "'numpy>=2'" in script
    assert not re.search(r"\[[^]]*\b(mst|render|all)\b", script)


def test_python_3_10_to_3_13_admitted_and_the_trainer_needs_neither_numpy_1_nor_python_3_11():
    spec = SpecifierSet(PROJECT["requires-python"])
    assert all(v in spec for v in ("3.10", "3.11", "3.12", "3.13")) and "3.9" not in spec
    trainer = [(r, "") for r in requirements()] + [(r, e) for e in TRAINER_EXTRAS for r in requirements(e)]
    for req, extra in trainer:
        assert all(applies(req, python, extra) for python in ("3.10", "3.11", "3.12", "3.13")), req
        if req.name == "numpy":
            assert req.specifier.contains("1.26.4") and req.specifier.contains("2.2.6"), req


def test_numpy_1_and_python_3_11_are_the_mst_extras_own():
    for extra in ("mst", "render"):
        assert any(r.name == "numpy" and not r.specifier.contains("2.0.0") for r in requirements(extra)), extra
    bpy = next(r for r in requirements("render") if r.name == "bpy")
    assert bpy.marker == Marker('python_version == "3.11"')
    assert not applies(bpy, "3.12") and applies(bpy, "3.11")
