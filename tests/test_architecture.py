"""docs/architecture.md stays true: every dotted name of ours it mentions imports, and every folder
its tables list exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
NAME = re.compile(r"`((?:mst_pipeline|uh_train)(?:\.[A-Za-z_][A-Za-z0-9_]*)+)`")


def named_objects() -> list[str]:
    return sorted(set(NAME.findall(DOC.read_text())))


def resolve(dotted: str):
    """The object DOTTED names: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:n]))
        except ModuleNotFoundError:
            continue
        for attr in parts[n:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def test_the_map_names_every_equation_of_the_paper():
    section = DOC.read_text().split("## The paper's equations", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \|", section, re.M)
    assert sorted(map(int, rows)) == list(range(1, 11))
    for row in re.findall(r"^\| \d+ \|.*$", section, re.M):
        assert NAME.search(row), row  # each equation names where it lives


@pytest.mark.parametrize("dotted", named_objects())
def test_every_named_function_exists(dotted):
    obj = resolve(dotted)
    assert obj is not None


def test_resolve_fails_on_a_name_that_is_not_there():
    with pytest.raises(AttributeError):
        resolve("uh_train.losses.no_such_loss")


def test_every_listed_folder_exists():
    text = DOC.read_text()
    for package in ("mst_pipeline", "uh_train"):
        table = text.split(f"| `{package}` |", 1)[1].split("\n\n", 1)[0]
        for folder in re.findall(r"`([a-z_]+)/`", table):
            assert any(p.is_dir() for p in (ROOT / package).rglob(folder)), (package, folder)
