"""Fixed-seed fingerprint of training: SHA-256 of each run's log.jsonl and final network.

Writes a few synthetic shards, trains stage 1 (4 steps: R1 at step 0), stage 2 from it (teacher,
consistency at snapshots), and stage 2 again with the D step rendering its own fakes
(--no-share-fakes), all on one CPU thread; prints the hash of each run's log and of its final
generator file. A refactor of the trainer must leave every hash as it was: run it before and after
and compare.

    python scripts/train_fingerprint.py [WORKDIR]
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch


def write_shards(out: Path) -> None:
    from mst_pipeline.synthesis.synthetic import write_synthetic

    write_synthetic(out, n=8, res=64, seed=0, max_count=4)


def fingerprint(work: Path) -> dict[str, str]:
    from uh_train.train import TrainConfig, train

    torch.set_num_threads(1)
    shards = work / "shards"
    write_shards(shards)
    base = dict(shards=[str(shards)], preset="tiny", kimg=0.016, batch=4, snapshot_kimg=0.008, lpips="off", seed=1)
    runs = {
        "stage1": dict(out=str(work / "s1")),
        "stage2": dict(out=str(work / "s2"), stage=2, teacher=str(work / "s1"), consistency_n=2),
        "stage2-no-share-fakes": dict(out=str(work / "s2n"), stage=2, teacher=str(work / "s1"), consistency_n=2,
                                      share_fakes=False),
    }
    hashes = {}
    for name, over in runs.items():
        train(TrainConfig(**{**base, **over}))
        run = Path(over["out"])
        hashes[name] = hashlib.sha256((run / "log.jsonl").read_bytes()).hexdigest()
        hashes[name + " network"] = hashlib.sha256((run / "network-latest.safetensors").read_bytes()).hexdigest()
    return hashes


def main() -> None:
    if len(sys.argv) > 1:
        work = Path(sys.argv[1])
        work.mkdir(parents=True, exist_ok=False)
        print(json.dumps(fingerprint(work), indent=2))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(fingerprint(Path(tmp)), indent=2))


if __name__ == "__main__":
    main()
