"""docs/cluster.md as users run it: the job-array file aligns disjoint parts into one shard folder that
`mst validate` passes, and the documented torchrun command lines are ones torchrun accepts."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SBATCH = ROOT / "examples" / "align.sbatch"
DOC = ROOT / "docs" / "cluster.md"
BIN = Path(sys.prefix) / "bin"


def run_part(dataset: Path, out: Path, task: int, parts: int) -> subprocess.CompletedProcess:
    """One array task of examples/align.sbatch, with the variables SLURM and the user set."""
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_COUNT": str(parts),
           "PARTS": str(parts), "DATASET": str(dataset), "OUT": str(out), "UNITEDHUMAN_VENV": sys.prefix,
           "SLURM_CPUS_PER_TASK": "1", "ALIGN_ARGS": "--aligned --detector none --source people"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.run(["bash", str(SBATCH)], env=env, capture_output=True, text=True, timeout=300)


def test_align_job_array_parts_write_one_valid_folder(tmp_path):
    dataset, out = tmp_path / "people", tmp_path / "shards"
    dataset.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):  # portraits of an aligned full-body set; names that fall into both parts of 2
        Image.fromarray(rng.integers(0, 256, (64, 32, 3), dtype=np.uint8)).save(dataset / f"{7 * i + 3:06d}.png")
    for task in (0, 1):
        done = run_part(dataset, out, task, 2)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"part {task}/2 of {dataset} -> {out}" in done.stdout and "(cpu)" in done.stdout
    shards = sorted(p.name for p in out.glob("*.tar"))
    assert shards == ["people-000-000000.tar", "people-001-000000.tar"]  # disjoint names, one folder
    check = subprocess.run([str(BIN / "mst"), "validate", str(out), "--json"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert '"samples": 8' in check.stdout  # the manifest lists both parts' samples
    # An array index outside the parts is refused before anything runs.
    wrong = run_part(dataset, out, 2, 2)
    assert wrong.returncode == 2 and "array index 2 is not a part of 0..1" in wrong.stderr


def documented_torchrun_lines() -> list[list[str]]:
    text = DOC.read_text().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines()]
    commands = []
    for line in lines:
        m = re.search(r"(?:^|srun \S+/)(torchrun .*)", line)
        if m:
            cmd = m.group(1).split("#")[0]
            cmd = re.sub(r"\$\{?(\w+)\}?", "X", cmd).replace('"', "")  # shell variables
            commands.append(shlex.split(cmd))
    return commands


def test_documented_torchrun_lines_are_accepted_by_torchrun():
    from torch.distributed.run import get_args_parser

    commands = documented_torchrun_lines()
    assert len(commands) >= 5
    multi_node = 0
    for argv in commands:
        args = get_args_parser().parse_args(argv[1:])
        assert args.module and args.training_script == "uh_train.train", argv
        if args.nnodes != "1":
            multi_node += 1
            assert args.rdzv_backend == "c10d" or args.node_rank in (0, 1), argv
    assert multi_node >= 4  # c10d, two static ranks, SLURM


@pytest.mark.parametrize("name", ["README.md", "docs/cluster.md"])
def test_docs_link_the_sbatch_file(name):
    assert "examples/align.sbatch" in (ROOT / name).read_text()
    assert SBATCH.is_file()
