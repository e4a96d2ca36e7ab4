"""Time training steps of the `uh_train` found first on PYTHONPATH (this tree, or an older one).

    PYTHONPATH=TREE python benchmarks/train_steps.py --shards DIR --out DIR --preset small --stage 2 \
        --teacher RUN --steps 4 --batch 8

Prints one JSON line: the wall time of every step (from one real batch reaching the loop to the next)
and each step's logged losses. It uses only what every version of the trainer has (`TrainConfig`,
`train`, `PatchBatches`), so an old commit's trainer can be timed by the same code, interleaved with
the new one (`bench_train_speedup.py`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--stage", type=int, default=1)
    ap.add_argument("--teacher", default=None)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                    help="another TrainConfig field (only where that version has it)")
    args = ap.parse_args()

    import torch

    import uh_train.train as tr

    if args.threads:
        torch.set_num_threads(args.threads)
    stamps: list[float] = []
    base = tr.PatchBatches

    class Stamped(base):  # a time stamp whenever a batch reaches the training loop
        def __iter__(self):
            for batch in super().__iter__():
                stamps.append(time.perf_counter())
                yield batch

    tr.PatchBatches = Stamped
    cfg = tr.TrainConfig(shards=[args.shards], out=args.out, stage=args.stage, teacher=args.teacher,
                         preset=args.preset, batch=args.batch, kimg=args.batch * args.steps / 1000,
                         snapshot_kimg=1e9, seed=args.seed, lpips="auto",
                         **{k: json.loads(v) for k, _, v in (item.partition("=") for item in args.set)})
    tr.train(cfg)
    end = time.perf_counter()
    stamps.append(end)
    # stamps[i] .. stamps[i+1]: step i after its data, plus the data of step i + 1 (the last: to the end,
    # which includes writing the final snapshot, so it is dropped)
    times = [b - a for a, b in zip(stamps[:-2], stamps[1:-1], strict=True)]
    logged = [json.loads(line) for line in (Path(args.out) / "log.jsonl").read_text().splitlines()]
    print(json.dumps({"step_s": times, "losses": logged}))


if __name__ == "__main__":
    main()
