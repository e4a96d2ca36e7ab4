"""Training data streams: shard streams per source, mixed by weight, cut into patches and batched.

    per source: shards -> tar samples -> shuffle -> (skip consumed) -> decode      (shard_reader)
    mix sources by weight -> patch sampler (`uh_train.data.patches.make_patch`) -> batches

Bad data never ends or stalls a run: at start-up every source must yield a usable sample (else an
error names it); afterwards an unusable sample is skipped and counted, and a source that yields
nothing usable for `max_unusable` draws in a row (or whose shards yield no sample in a whole pass)
stops the run with the source and its last problems.

Resuming: every random choice is derived from (seed, sample index), and each source stream counts
the raw samples it consumed. A resumed run fast-forwards each stream by its count without decoding,
so with one loader process it sees exactly the samples the uninterrupted run would have seen.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from uh_train import shard_reader
from uh_train.format.spec import SHARD_NAME, ShardRecord

from .patches import Patch, PatchConfig, make_patch


def shards_by_source(folders: Sequence[str | Path]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for url in shard_reader.list_shards(folders):
        out.setdefault(SHARD_NAME.match(Path(url).name)["source"], []).append(url)
    return out


def loader_slot() -> tuple[int, int]:
    """(slot, number of slots) of this process: one slot per (rank, DataLoader worker)."""
    from webdataset.utils import pytorch_worker_info

    rank, world, worker, workers = pytorch_worker_info()
    return rank * workers + worker, world * workers


@dataclass(frozen=True)
class Unusable:
    """A raw sample that was drawn (and counts as consumed) but cannot be trained on."""

    reason: str


def source_stream(urls: list[str], seed: int, skip: int, shuffle_buffer: int) -> Iterator[ShardRecord | Unusable]:
    """Endless, deterministic stream of one source's records for this loader slot.

    Shards are split across slots (ranks x workers) when there are enough of them; a source with
    fewer shards than slots is read whole by every slot, each with its own shuffling seed. The
    first `skip` raw samples are passed over without decoding (resume). Undecodable samples yield
    Unusable (they still count as consumed). Raises NoSamples when a whole pass over the shards
    yields no sample.
    """
    import webdataset as wds

    slot, slots = loader_slot()
    if len(urls) >= slots:
        urls = urls[slot::slots]
    seed = seed * 1009 + slot
    shard_list = shard_reader.ShardList(urls, seed=seed, shuffle=True, repeat=True)
    pipe = wds.DataPipeline(
        shard_list,
        wds.tarfile_to_samples(handler=shard_reader.warn_and_skip),
        shard_list.count_samples,
        wds.shuffle(shuffle_buffer, initial=min(100, shuffle_buffer), rng=random.Random(seed)),
    )
    it = iter(pipe)
    for _ in range(skip):  # fast-forward without decoding
        next(it)
    for sample in it:
        try:
            yield shard_reader.decode_sample(sample)
        except Exception as e:  # a corrupt sample must not end a long run
            shard_reader.warn_and_skip(e)
            yield Unusable(str(e))


PROBE_LIMIT = 1000  # samples read per source at start-up looking for a usable one
MAX_UNUSABLE = 10_000  # unusable draws in a row after which a source is declared dead


def probe_source(name: str, urls: list[str], usable: Callable[[ShardRecord], bool],
                 limit: int = PROBE_LIMIT) -> None:
    """Start-up check: one of the source's first `limit` samples (shards in order) must be usable;
    otherwise a ValueError names the source and says what its samples are."""
    import webdataset as wds

    problems: list[str] = []

    def unreadable(exn: Exception) -> bool:
        problems.append(f"{type(exn).__name__}: {exn}")
        return True

    reasons: Counter[str] = Counter()
    read = 0
    pipe = wds.DataPipeline(shard_reader.ShardList(urls, shuffle=False, handler=unreadable),
                            wds.tarfile_to_samples(handler=unreadable))
    for sample in pipe:
        read += 1
        try:
            record = shard_reader.decode_sample(sample)
        except shard_reader.SampleDefect as e:
            reasons[e.reasons[0]] += 1
        except Exception as e:  # anything else a broken sample can raise
            reasons[f"{type(e).__name__}: {e}"] += 1
        else:
            if usable(record):
                return
            reasons[f"kind {record.kind!r} is not used in this stage"] += 1
        if read >= limit:
            break
    what = f"its {len(urls)} shard(s) hold no readable sample" if read == 0 else \
        f"{'none of the first' if read >= limit else 'none of its'} {read} sample(s) is usable"
    detail = "; ".join(f"{n}x {r}" for r, n in reasons.most_common(3))
    if problems:
        detail += ("; " if detail else "") + "unreadable: " + " | ".join(problems[:3])
    raise ValueError(f"source {name!r} has no usable sample: {what}" + (f" ({detail})" if detail else "")
                     + "; run `mst validate` on its folder")


@dataclass
class StreamState:
    """Where the data stands, per loader slot: raw samples consumed per source, batches produced.

    Keys are "slot/source" and "slot"; with the same number of loader workers a resumed run sees
    exactly the samples and patches the uninterrupted run would have seen.
    """

    consumed: dict[str, int] = field(default_factory=dict)
    batches: dict[str, int] = field(default_factory=dict)

    def update(self, other: StreamState) -> None:
        self.consumed.update(other.consumed)
        self.batches.update(other.batches)


class PatchBatches(torch.utils.data.IterableDataset):
    """Batches of real patches mixed from several sources, as dicts of tensors plus `state` (the
    StreamState of the producing slot after the batch, for checkpoints).

    `weights`: per-source mixing weights (unnormalised); sources without a weight get 1.
    Stage 1 reads only sources that hold full-body samples, and of them only `full` samples.
    """

    def __init__(self, folders: Sequence[str | Path], batch: int, cfg: PatchConfig, seed: int = 0,
                 weights: dict[str, float] | None = None, state: StreamState | None = None,
                 shuffle_buffer: int = 256, max_unusable: int = MAX_UNUSABLE) -> None:
        super().__init__()
        self.sources = shards_by_source(folders)
        unknown = set(weights or {}) - set(self.sources)
        if unknown:
            raise ValueError(f"mixing weights name unknown sources: {', '.join(sorted(unknown))} "
                             f"(sources: {', '.join(sorted(self.sources))})")
        unknown = set(cfg.views) - set(self.sources)
        if unknown:
            raise ValueError(f"--view names unknown sources: {', '.join(sorted(unknown))} "
                             f"(sources: {', '.join(sorted(self.sources))})")
        self.batch, self.cfg, self.seed = batch, cfg, seed
        self.weights = {s: float((weights or {}).get(s, 1.0)) for s in self.sources}
        if cfg.stage == 1:
            kinds = _source_kinds(folders)
            self.weights = {s: w for s, w in self.weights.items() if "full" in kinds.get(s, set())}
            if not self.weights:
                raise ValueError("stage 1 needs a full-body source (kind 'full'); none of the shard folders has one")
        self.weights = {s: w for s, w in self.weights.items() if w > 0}
        if not self.weights:
            raise ValueError("--mix leaves no source with a positive weight (sources: "
                             f"{', '.join(sorted(self.sources))})")
        self.state = state or StreamState()
        self.shuffle_buffer = shuffle_buffer
        self.max_unusable = max_unusable
        for name in sorted(self.weights):
            probe_source(name, self.sources[name], self.usable)

    def usable(self, record: ShardRecord) -> bool:
        return self.cfg.stage != 1 or record.kind == "full"

    def __iter__(self) -> Iterator[dict]:
        slot, _ = loader_slot()
        names = sorted(self.weights)
        probs = np.array([self.weights[n] for n in names])
        probs = probs / probs.sum()
        consumed = {n: self.state.consumed.get(f"{slot}/{n}", 0) for n in names}
        streams = {n: source_stream(self.sources[n], self.seed + i, consumed[n], self.shuffle_buffer)
                   for i, n in enumerate(names)}
        batch_index = self.state.batches.get(str(slot), 0)
        unusable = dict.fromkeys(names, 0)  # unusable draws in a row, per source
        while True:
            rng = np.random.default_rng([self.seed, slot, batch_index])
            patches: list[Patch] = []
            skipped = 0
            while len(patches) < self.batch:
                name = names[rng.choice(len(names), p=probs)]
                try:
                    record = next(streams[name])
                except shard_reader.NoSamples as e:
                    raise RuntimeError(f"source {name!r} stopped yielding samples: {e}") from None
                consumed[name] += 1
                patch = None
                if isinstance(record, ShardRecord) and self.usable(record):
                    try:
                        patch = make_patch(record, self.cfg, rng)
                    except (ValueError, ArithmeticError, np.linalg.LinAlgError) as e:  # never end a run
                        shard_reader.skips.record(f"sample {record.key}", f"no patch ({type(e).__name__}: {e})")
                        skipped += 1
                else:
                    skipped += isinstance(record, Unusable)
                if patch is None:
                    unusable[name] += 1
                    if unusable[name] >= self.max_unusable:
                        raise RuntimeError(
                            f"source {name!r} yielded no usable sample in {unusable[name]} draws in a row; "
                            f"last problems: {' | '.join(shard_reader.skips.last) or 'none (wrong kinds)'}")
                    continue
                unusable[name] = 0
                patches.append(patch)
            batch_index += 1
            yield {
                "image": torch.from_numpy(np.stack([p.image for p in patches])),
                "mask": torch.from_numpy(np.stack([p.mask for p in patches])),
                "transform": torch.from_numpy(np.stack([p.transform for p in patches])),
                "whole": torch.tensor([p.whole for p in patches]),
                "source": [p.source for p in patches],
                "key": [p.key for p in patches],
                "skipped": skipped,
                "state": StreamState(consumed={f"{slot}/{n}": c for n, c in consumed.items()},
                                     batches={str(slot): batch_index}),
            }


def _source_kinds(folders: Sequence[str | Path]) -> dict[str, set[str]]:
    table = shard_reader.read_manifests(folders)
    out: dict[str, set[str]] = {}
    for source, kind in zip(table.column("source").to_pylist(), table.column("kind").to_pylist(), strict=True):
        out.setdefault(source, set()).add(kind)
    return out
