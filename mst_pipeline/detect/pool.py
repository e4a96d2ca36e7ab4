"""Keypoints of input images, inline or in a pool of detection processes (`--workers N`).

`detect_image` reads one image and detects its people (`mst_pipeline.detect`), the most fully
visible first (`mst_pipeline.detect.persons`); `detections`
yields the result of each image in order, a `DetectedImage` or the `Rejected` reason, whether
detection runs inline or in worker processes. Used by `mst align` and `mst space`.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import signal
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import numpy as np

from mst_pipeline.body.keypoints import PersonKeypoints
from mst_pipeline.detect import BackendUnavailable, DetectionError, make_detector
from mst_pipeline.detect.images import Rejected, aligned_shape_defect, read_image_and_alpha
from mst_pipeline.detect.persons import SEEN, SeenPerson, rank_people, why_no_person
from mst_pipeline.space import pixels_to_normalised


@dataclass
class DetectedImage:
    """One input image after detection: its pixels, and the keypoints and fitting targets of the
    person it is fitted for, `people[person]`."""

    path: Path
    stem: str
    key: str
    image: np.ndarray
    keypoints: PersonKeypoints | None  # None: an aligned image where none were found
    targets: np.ndarray | None  # fitting targets (None for aligned images: nothing is fitted)
    confidence: np.ndarray | None
    people: list[SeenPerson] = field(default_factory=list)  # every person seen, most fully visible first
    person: int = 0
    mask: np.ndarray | None = None  # the image's alpha (uint8 [h, w]; None: every pixel opaque)

    def people_meta(self) -> dict:
        """The sample's `person` (this one) and `other_people` (the rest) records; {} without people."""
        if not self.people:
            return {}
        return {"person": self.people[self.person].record(self.person),
                "other_people": [p.record(i) for i, p in enumerate(self.people) if i != self.person]}

    def as_person(self, index: int, stem: str, key: str) -> DetectedImage:
        """This image as the sample of its INDEX-th person (`mst align --person all`); Rejected when
        that person has too few keypoints to fit."""
        h, w = self.image.shape[:2]
        kp = self.people[index].keypoints
        targets, conf = fitting_input(kp, w, h)
        _check_enough(conf)
        return DetectedImage(self.path, stem, key, self.image, kp, targets, conf, self.people, index, self.mask)



def fitting_input(kp: PersonKeypoints, width: int, height: int,
                  kind: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(targets [37,2] in normalised coordinates, confidence [37]) with points outside the image
    (incl. the padding of non-square images) given confidence 0, as a fit of view kind KIND reads
    them (`PersonKeypoints.targets`)."""
    t = kp.targets(kind)
    xy, conf = t[:, :2], t[:, 2].copy()
    inside = (xy[:, 0] >= 0) & (xy[:, 0] <= width) & (xy[:, 1] >= 0) & (xy[:, 1] <= height)
    conf[~inside | ~np.all(np.isfinite(xy), axis=1)] = 0.0
    return pixels_to_normalised(np.nan_to_num(xy), width, height), conf


def batches(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), max(1, n)):
        yield items[i:i + max(1, n)]


NO_DETECTOR = "none"  # aligned sets only: store no keypoints


def image_detector(name: str, keypoints_dir: Path | None, root: Path):
    return None if name == NO_DETECTOR else make_detector(name, keypoints_dir, root)


def _check_enough(conf: np.ndarray) -> None:
    if (conf >= SEEN).sum() < 3:
        raise Rejected(f"too few keypoints ({int((conf >= SEEN).sum())} visible, need 3)")


def people_in(detector, image: np.ndarray, path: Path) -> list[SeenPerson]:
    """The people DETECTOR finds in IMAGE, most fully visible first; Rejected when there are none
    ("no person": nothing found, or only hands or feet)."""
    h, w = image.shape[:2]
    try:
        found = detector(image, path)
    except DetectionError as e:
        raise Rejected(str(e)) from None
    except BackendUnavailable:
        raise
    except Exception as e:  # noqa: BLE001 - a detector crash on one image must not end the run
        raise Rejected(f"keypoint detection failed ({type(e).__name__}: {e})") from None
    people = rank_people(found, w, h)
    if not people:
        raise Rejected(why_no_person(found))
    return people


def detect_image(path: Path, stem: str, key: str, detector, aligned: bool = False) -> DetectedImage:
    """IMAGE read and its people found; the result is fitted for the most fully visible one."""
    if aligned:
        return read_aligned(path, stem, key, detector)
    image, alpha = read_image_and_alpha(path)
    h, w = image.shape[:2]
    people = people_in(detector, image, path)
    targets, conf = fitting_input(people[0].keypoints, w, h)
    _check_enough(conf)
    return DetectedImage(path, stem, key, image, people[0].keypoints, targets, conf, people, mask=alpha)



def read_aligned(path: Path, stem: str, key: str, detector) -> DetectedImage:
    """An aligned full-body image and, when the detector finds them, its keypoints; nothing here
    rejects an image except an unreadable file or a landscape shape (no fit depends on them)."""
    image, alpha = read_image_and_alpha(path)
    h, w = image.shape[:2]
    if (defect := aligned_shape_defect(w, h)) is not None:
        raise Rejected(defect)
    people = []
    if detector is not None:
        try:
            people = people_in(detector, image, path)
        except BackendUnavailable:
            raise
        except Rejected:  # no person found, a malformed JSON: the image is kept without keypoints
            people = []
    kp = people[0].keypoints if people else None
    return DetectedImage(path, stem, key, image, kp, None, None, people, mask=alpha)


WORKER_QUEUE = 2  # tasks queued per worker, so it never waits for the next one


def detections(tasks: list[tuple[Path, str, str, bool]], workers: int, detector, spec: tuple[str, Path | None, Path],
               batch_size: int) -> Iterator[DetectedImage | Rejected]:
    """The detection result of each (path, stem, key, aligned) task, in task order.

    DETECTOR is used inline with 0 workers (in this process); with one or more, each worker process
    unpickles DETECTOR or, when it is None, builds its own from SPEC (backend name, keypoints folder,
    image root).
    """
    if workers == 0:
        for path, stem, key, aligned in tasks:
            try:
                found: DetectedImage | Rejected = detect_image(path, stem, key, detector, aligned)
            except Rejected as e:
                found = e
            except BackendUnavailable:
                raise
            except Exception as e:  # noqa: BLE001 - as in a worker: this image's reason, the run goes on
                found = Rejected(f"detection failed ({type(e).__name__}: {e})")
            yield found
        return
    spec = detector if detector is not None else spec
    # Read ahead by two batches so the workers keep decoding while the main process fits.
    window = max(2 * batch_size, 2 * WORKER_QUEUE * workers)
    yield from _DetectionPool(workers, spec, window).results(tasks)


def _worker_main(conn, spec) -> None:
    """A detection process: builds its detector once, then answers tasks (index, path, stem, key, aligned)
    in the order received with (index, (status, payload)); a task of None ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    try:
        detector = image_detector(*spec) if isinstance(spec, tuple) else spec
    except BackendUnavailable as e:
        conn.send((None, ("unavailable", str(e))))
        return
    conn.send((None, ("ready", None)))
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the main process is gone
            return
        if task is None:
            return
        index, path, stem, key, aligned = task
        try:
            result = ("item", detect_image(path, stem, key, detector, aligned))
        except Rejected as e:
            result = ("rejected", str(e))
        except BackendUnavailable as e:
            result = ("unavailable", str(e))
        except Exception as e:  # noqa: BLE001 - reported as this image's reason, the worker goes on
            result = ("rejected", f"detection failed in a worker ({type(e).__name__}: {e})")
        conn.send((index, result))


@dataclass
class _Worker:
    process: Any
    conn: Any
    queued: deque = field(default_factory=deque)  # task indices sent and not yet answered, in order
    ready: bool = False


class _DetectionPool:
    """N detection processes fed by a dispatch thread of the main process.

    Each worker answers its tasks in order, so when one dies (a crash in native code, the OOM
    killer) the oldest unanswered task is the image that killed it: that image is rejected, the
    rest of its queue goes back to the front of the line and a fresh worker takes its place.
    'forkserver' (or 'spawn') starts workers from a clean process: mediapipe and torch do not
    survive a fork after they have started threads.
    """

    def __init__(self, workers: int, spec, window: int) -> None:
        methods = mp.get_all_start_methods()
        self.ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
        if self.ctx.get_start_method() == "forkserver":
            # The server imports this module (numpy, the detection code) once; each worker then starts in a fork
            # of it, before any detector or thread exists.
            self.ctx.set_forkserver_preload([__name__])
        self.n, self.spec, self.window = workers, spec, window
        self.cond = threading.Condition()
        self.answers: dict[int, DetectedImage | Rejected] = {}
        self.consumed = 0  # next task index the consumer waits for
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def results(self, tasks: list[tuple[Path, str, str, bool]]) -> Iterator[DetectedImage | Rejected]:
        thread = threading.Thread(target=self._dispatch, args=(tasks,), name="align-detection", daemon=True)
        thread.start()
        try:
            for i in range(len(tasks)):
                with self.cond:
                    while i not in self.answers and self.error is None:
                        self.cond.wait()
                    if i not in self.answers:
                        raise self.error
                    found = self.answers.pop(i)
                    self.consumed = i + 1
                yield found
        finally:
            self.stop.set()
            thread.join()

    def _dispatch(self, tasks: list[tuple[Path, str, str, bool]]) -> None:
        pending = deque(range(len(tasks)))
        workers: list[_Worker] = []
        try:
            workers = [self._start() for _ in range(min(self.n, len(tasks)))]
            while not self.stop.is_set() and (pending or any(w.queued for w in workers)):
                for w in workers:
                    while (pending and len(w.queued) < WORKER_QUEUE
                           and pending[0] < self.consumed + self.window):
                        i = pending.popleft()
                        w.conn.send((i, *tasks[i]))
                        w.queued.append(i)
                ready = set(wait([w.conn for w in workers] + [w.process.sentinel for w in workers], timeout=0.1))
                for k, w in enumerate(workers):
                    if w.conn in ready or w.process.sentinel in ready:
                        if not self._receive(w):
                            workers[k] = self._replace(w, tasks, pending)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            with self.cond:
                self.error = e
                self.cond.notify_all()
        finally:
            for w in workers:
                self._shut(w)

    def _start(self) -> _Worker:
        parent, child = self.ctx.Pipe()
        process = self.ctx.Process(target=_worker_main, args=(child, self.spec), daemon=True)
        process.start()
        child.close()  # the worker holds the only other end: its death reads as EOF here
        return _Worker(process, parent)

    def _receive(self, w: _Worker) -> bool:
        """Take every answer waiting from W; False when W has died."""
        try:
            while w.conn.poll():
                index, (status, payload) = w.conn.recv()
                if status == "unavailable":
                    raise BackendUnavailable(payload)
                if index is None:
                    w.ready = True
                    continue
                assert index == w.queued[0], (index, list(w.queued))
                w.queued.popleft()
                with self.cond:
                    self.answers[index] = Rejected(payload) if status == "rejected" else payload
                    self.cond.notify_all()
        except (EOFError, OSError):
            return False
        return w.process.is_alive()

    def _replace(self, w: _Worker, tasks: list, pending: deque) -> _Worker:
        w.process.join(5)
        code = w.process.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        if not w.ready:
            raise RuntimeError(f"a detection worker exited while starting ({how}); "
                               "run with --workers 0 to see the error")
        culprit = w.queued.popleft() if w.queued else None
        pending.extendleft(reversed(w.queued))  # the rest of its queue goes first to the next worker
        self._shut(w)
        if culprit is not None:
            with self.cond:
                self.answers[culprit] = Rejected(f"detection worker crashed on this image ({how})")
                self.cond.notify_all()
        return self._start()

    @staticmethod
    def _shut(w: _Worker) -> None:
        if not w.queued:  # idle: let it exit; a busy one (an interrupted run) is stopped at once
            with contextlib.suppress(OSError, ValueError):
                w.conn.send(None)
            w.process.join(5)
        if w.process.is_alive():
            w.process.terminate()
            w.process.join(5)
        w.conn.close()
