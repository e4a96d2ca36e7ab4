"""README.md as a newcomer uses it: its Python example runs as written on the shipped checkpoint, the
scores of its model table are those of docs/benchmarks.md, its links into the docs name headings
that exist; CITATION.cff and LICENSE say what pyproject.toml and the paper say."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def section(text: str, heading: str) -> str:
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_the_python_example_renders_people_and_a_zoomed_face_from_the_shipped_checkpoint(tmp_path, monkeypatch):
    blocks = python_blocks(README)
    assert len(blocks) == 1
    code = blocks[0]
    assert len([ln for ln in code.splitlines() if ln.strip()]) <= 10
    assert "checkpoints/learned-tiny.safetensors" in code
    (tmp_path / "checkpoints").symlink_to(ROOT / "checkpoints")  # the example's paths, relative to the clone
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    for i in (0, 1):
        whole, face = Image.open(tmp_path / f"person{i}.png"), Image.open(tmp_path / f"person{i}-face.png")
        assert whole.size == (128, 128) and face.size == (32, 32)  # 4r and r of the tiny preset
        assert len(np.unique(np.asarray(whole).reshape(-1, 3), axis=0)) > 10  # a picture, not a flat fill
    assert Image.open(tmp_path / "person0.png").tobytes() != Image.open(tmp_path / "person1.png").tobytes()


def test_every_score_in_the_model_table_is_one_of_the_benchmarks():
    table = section(README, "Models")
    rows = [ln for ln in table.splitlines() if ln.startswith("| ")][1:]
    assert any("checkpoints/learned-tiny.safetensors" in r for r in rows)
    assert (ROOT / "checkpoints" / "learned-tiny.safetensors").is_file()
    benchmarks = (ROOT / "docs" / "benchmarks.md").read_text()
    for row in rows:
        scores = row.split(" | ")[2]
        for number in re.findall(r"\d+\.\d+", scores):
            assert number in benchmarks, (number, row)


def github_anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_to_a_part_of_a_doc_name_one_of_its_headings():
    links = re.findall(r"\]\(((?:docs/)?[\w./-]+\.md)#([^)]+)\)", README)
    assert links
    for doc, anchor in links:
        headings = re.findall(r"^#+ (.+)$", (ROOT / doc).read_text(), re.M)
        assert anchor in {github_anchor(h) for h in headings}, (doc, anchor)


def test_the_what_you_need_table_says_where_each_file_goes_and_what_needs_it():
    table = section(README, "What you need")
    rows = [ln for ln in table.splitlines() if ln.startswith("| ")][1:]  # below the header
    assert len(rows) == 7
    for name in ("SMPL", "VPoser", "PARE", "AlexNet", "Inception", "VGG16", "network-snapshot-v1.pkl"):
        row = next(r for r in rows if name in r.split(" | ")[0])
        assert len(row.strip("| ").split(" | ")) == 5, row
    from uh_train.training.models import ALEXNET_FILE

    assert ALEXNET_FILE in table and "required by `--preset paper`" in table


def test_the_licence_is_the_one_pyproject_declares():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text


def test_citation_cff_cites_the_paper_and_this_software():
    yaml = pytest.importorskip("yaml")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software" and cff["message"] and cff["authors"]
    assert cff["license"] == "Apache-2.0"
    assert str(cff["version"]) == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    paper = cff["preferred-citation"]
    assert paper["type"] == "conference-paper" and paper["year"] == 2023
    assert paper["title"] == "UnitedHuman: Harnessing Multi-Source Data for High-Resolution Human Generation"
    assert [f"{a['given-names']} {a['family-names']}" for a in paper["authors"]] == [
        "Jianglin Fu", "Shikai Li", "Yuming Jiang", "Kwan-Yee Lin", "Wayne Wu", "Ziwei Liu"]
    assert "ICCV" in paper["collection-title"]
