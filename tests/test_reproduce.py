"""docs/reproduce.md as a user follows it: its `bash reproduce` blocks run in order, as written, on
stand-in folders laid out as the raw datasets are (people rendered by `mst render-people`, their
OpenPose JSON beside each image), with the tiny settings of step 0's variables. A command of the page
that stops working, or a folder no earlier step makes, fails here. The README's commands are held to
the same rule: every shard folder a command reads is one an earlier command wrote."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from metrics_helpers import save_nvidia_like, save_nvidia_like_vgg16
from PIL import Image

from uh_train.format.manifest import read_manifest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "reproduce.md"
README = ROOT / "README.md"
BIN = Path(sys.executable).parent  # mst, uh-train, uh-generate, uh-eval, torchrun of this environment

SOURCES = ("shhq", "shhq_sr", "deepfashion", "celeba", "hands")
PEOPLE = 6  # rendered people: 0-4 are SHHQ, 5 a full-body DeepFashion photo; all give upper and face views
SHHQ = 5
SIZE = 128  # full renders; SHHQ's stand-ins are their 64 x 128 centre strips: 4r dense for `tiny` (r = 32)

# Step 0's variables, set for a run of minutes: tiny networks, few hands, few samples per metric.
TINY = {"DETECTOR": "openpose-json", "HANDS": "2", "HAND_SIZE": "64", "GPUS": "1", "PRESET": "tiny",
        "KIMG": "0.016", "EVAL_N": "8"}

# The renders' keypoint files give each hand its wrist and five fingertips (OpenPose gives all 21), so
# `mst fit-hands` is told to fit hands with 6 points; every other command runs as the page writes it.
PRELUDE = """
mst() {
  if [ "$1" = fit-hands ]; then command mst "$@" --min-points 6; else command mst "$@"; fi
}
"""


def reproduce_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash reproduce\n(.*?)^```", text, re.S | re.M)


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash[^\n]*\n(.*?)^```", text, re.S | re.M)


def commands(block: str) -> list[str]:
    """The command lines of a block: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [ln.split(" #")[0].strip() for ln in joined.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def shard_folder_order(lines: list[str]) -> list[str]:
    """Shard folders read before any earlier line wrote them (`--out shards/X`, `mst synthetic --out`)."""
    written: set[str] = set()
    missing = []
    for line in lines:
        words = shlex.split(line.replace("$", ""), comments=True)
        outs = {words[i + 1].rstrip("/") for i, w in enumerate(words[:-1]) if w in ("--out", "-o")}
        used = {w.rstrip("/") for i, w in enumerate(words) if re.fullmatch(r"shards/[\w-]+/?", w)
                and (i == 0 or words[i - 1] not in ("--out", "-o"))}
        missing += [f"{u}: {line}" for u in sorted(used - written)]
        written |= {o for o in outs if o.startswith("shards/")}
    return missing


# ---------------------------------------------------------------------------------------------
# The page and the README, read


def test_the_page_is_step_0_settings_then_numbered_steps_and_the_readme_links_it_near_the_top():
    blocks = reproduce_blocks(DOC.read_text())
    assert len(blocks) >= 8
    settings = dict(re.findall(r"^(\w+)=\$\{\1:-([^}]*)\}", blocks[0], re.M))
    for name in TINY:  # a variable the test sets that the page renamed would leave the paper's default
        assert name in settings, name
    assert settings["PRESET"] == "paper" and settings["KIMG"] == "25000" and settings["EVAL_N"] == "50000"
    headings = re.findall(r"^### (\d+)\. ", DOC.read_text(), re.M)
    assert headings == [str(i) for i in range(len(headings))] and len(headings) == len(blocks)
    first_screen = README.read_text().split("\n## Models\n")[0]
    assert "(docs/reproduce.md)" in first_screen


def github_anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_to_a_part_of_a_page_name_one_of_its_headings():
    links = re.findall(r"\]\(((?:\.\./)?[\w./-]*\.md)?#([^)]+)\)", DOC.read_text())
    assert len(links) > 10
    for page, anchor in links:
        target = (DOC.parent / page).resolve() if page else DOC
        headings = re.findall(r"^#+ (.+)$", target.read_text(), re.M)
        assert anchor in {github_anchor(h) for h in headings}, (page, anchor)


def test_every_shard_folder_is_written_before_it_is_read_on_the_page_and_in_the_readme():
    page = [c for b in reproduce_blocks(DOC.read_text()) for c in commands(b)]
    assert not shard_folder_order(page)
    readme = [c for b in bash_blocks(README.read_text()) for c in commands(b)]
    assert any("shards/shhq" in c for c in readme)
    assert not shard_folder_order(readme), shard_folder_order(readme)
    # The checker sees a folder read before it is written.
    assert shard_folder_order(["mst fit-hands shards/a --out x.npz", "mst align a/ --out shards/a"])


def test_the_table_1_rows_are_the_columns_uh_eval_reports():
    from uh_train.metrics.report import markdown_table

    columns = markdown_table({}, "x").splitlines()[0].strip("| ").split(" | ")[1:]
    table = DOC.read_text().split("\n## Table 1\n", 1)[1]
    rows = [ln.split(" | ")[0].strip("| ") for ln in table.splitlines() if ln.startswith("| ")][1:]  # below the header
    assert rows == columns
    assert all(ln.rstrip().endswith("| – |") for ln in table.splitlines() if ln.startswith("| ") and "Table 1 |" in ln)


# ---------------------------------------------------------------------------------------------
# Stand-in datasets


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value))


def portrait(src: Path, dst: Path) -> None:
    """A square full-body render -> its centre strip, a 1:2 portrait as SHHQ's; keypoints moved with it
    (points outside the strip are undetected, as OpenPose writes them)."""
    image = np.asarray(Image.open(src))
    x0 = image.shape[1] // 4
    Image.fromarray(image[:, x0 : image.shape[1] - x0]).save(dst)
    data = json.loads(src.with_name(src.stem + "_keypoints.json").read_text())
    for person in data["people"]:
        for key, flat in person.items():
            if key.endswith("_2d") and flat:
                kp = np.asarray(flat, float).reshape(-1, 3)
                kp[:, 0] -= x0
                kp[(kp[:, 0] < 0) | (kp[:, 0] >= image.shape[1] - 2 * x0) | (kp[:, 2] == 0)] = 0
                person[key] = kp.ravel().tolist()
    write_json(dst.with_name(dst.stem + "_keypoints.json"), data)


def copy_view(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())
    key = src.with_name(src.stem + "_keypoints.json")
    dst.with_name(dst.stem + "_keypoints.json").write_bytes(key.read_bytes())


def stand_in_datasets(data: Path, scratch: Path) -> None:
    """$DATA as docs/reproduce.md lays it out: shhq/ (1:2 aligned portraits), deepfashion/ (upper-body
    and full-body photos in nested folders), celeba/ (face crops), dart/ (skin textures)."""
    people = scratch / "people"
    run([BIN / "mst", "render-people", "--out", people, "--n", PEOPLE, "--size", SIZE])
    (data / "shhq").mkdir(parents=True)
    for i in range(PEOPLE):
        name = f"person{i:06d}.png"
        if i < SHHQ:
            portrait(people / "full" / name, data / "shhq" / name)
        else:
            copy_view(people / "full" / name, data / "deepfashion" / "WOMEN" / "full" / name)
        copy_view(people / "upper" / name, data / "deepfashion" / "MEN" / "upper" / name)
        copy_view(people / "face" / name, data / "celeba" / f"{i:06d}.png")
    rng = np.random.default_rng(0)
    (data / "dart").mkdir()
    for i in range(2):
        skin = np.array([200, 150, 120]) + rng.normal(0, 12, (64, 64, 3))
        Image.fromarray(np.clip(skin, 0, 255).astype(np.uint8)).save(data / "dart" / f"texture{i}.png")


# ---------------------------------------------------------------------------------------------
# The road


def test_the_commands_of_docs_reproduce_run_from_raw_folders_to_table_1(tmp_path):
    blocks = reproduce_blocks(DOC.read_text())
    data, work = tmp_path / "data", tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(tmp_path / "cache"), **TINY,
           "DATA": str(data), "TEXTURES": str(data / "dart"),
           "INCEPTION": str(save_nvidia_like(tmp_path / "inception-2015-12-05.pt")),
           "VGG16": str(save_nvidia_like_vgg16(tmp_path / "vgg16.pt"))}
    stand_in_datasets(data, tmp_path)
    times = []
    for step, block in enumerate(blocks[1:], start=1):
        script = "set -euo pipefail\n" + PRELUDE + blocks[0] + block
        start = time.time()
        done = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=600)
        times.append(f"step {step}: {time.time() - start:.0f} s")
        assert done.returncode == 0, f"step {step} failed:\n{block}\n" + done.stdout[-3000:] + done.stderr[-3000:]
    print(", ".join(times))

    shards = work / "shards"
    expected = {"shhq": ({"full"}, {"HR"}, SHHQ), "shhq_sr": ({"lower"}, {"SR"}, SHHQ),
                "deepfashion": ({"upper", "full"}, None, PEOPLE + 1), "celeba": ({"face"}, None, PEOPLE),
                "hands": ({"hand"}, {"HR"}, int(TINY["HANDS"]))}
    for source, (kinds, tiers, count) in expected.items():
        rows = read_manifest(shards / source).to_pylist()
        assert {r["source"] for r in rows} == {source}
        assert {r["kind"] for r in rows} == kinds, source
        assert tiers is None or {r["tier"] for r in rows} == tiers, source
        assert len(rows) == count, (source, len(rows))  # every stand-in image aligned, none rejected
    for stage in (1, 2):
        run_json = json.loads((work / "runs" / f"s{stage}" / "run.json").read_text())
        assert run_json["config"]["stage"] == stage and run_json["config"]["preset"] == "tiny"
        assert (work / "runs" / f"s{stage}" / "network-latest.safetensors").is_file()
    assert Image.open(work / "gen" / "seed0000.png").size == (128, 128)  # 4r
    assert Image.open(work / "gen" / "face" / "seed0000.png").size == (32, 32)  # r
    metrics = json.loads((work / "eval" / "metrics.json").read_text())
    assert metrics["protocol"]["name"] == "paper"
    assert metrics["inception"]["file"] == "inception-2015-12-05.pt"
    assert metrics["pr"]["features"]["file"] == "vgg16.pt"
    assert np.isfinite(metrics["fid"]["value"]) and np.isfinite(metrics["kfid"]["mean"])
    assert "| FID ↓ | pFID ↓ |" in (work / "eval" / "metrics.md").read_text()
