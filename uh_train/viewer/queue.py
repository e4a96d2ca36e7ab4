"""Rendering off the event loop: one worker thread per device runs jobs in order; a job waiting for
the device is dropped when the same client asks for a newer view (a pan or zoom moved on), and the
number of waiting jobs is bounded. Finished views go into a cache bounded in bytes."""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any

import numpy as np


class Superseded(RuntimeError):
    """The job was dropped before it ran: its client asked for a newer view."""


class QueueFull(RuntimeError):
    """Too many jobs are waiting for the device."""


class RenderQueue:
    """Jobs (callables) run one at a time on a worker thread that owns the device."""

    def __init__(self, name: str, max_waiting: int = 64):
        self.name = name
        self.max_waiting = max_waiting
        self.dropped = 0
        self.done = 0
        self._jobs: deque[tuple[Hashable | None, Callable[[], Any], Future]] = deque()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._work, name=f"render-{name}", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], Any], client: Hashable | None = None) -> Future:
        """Queue JOB; a waiting job of the same CLIENT is dropped (its future raises Superseded)."""
        future: Future = Future()
        with self._cond:
            if client is not None:
                for item in [item for item in self._jobs if item[0] == client]:
                    self._jobs.remove(item)
                    self.dropped += 1
                    item[2].set_exception(Superseded("superseded by a newer view from the same client"))
            if len(self._jobs) >= self.max_waiting:
                raise QueueFull(f"{len(self._jobs)} views are waiting for {self.name}; try again shortly")
            self._jobs.append((client, job, future))
            self._cond.notify()
        return future

    def waiting(self) -> int:
        with self._cond:
            return len(self._jobs)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._jobs:
                    self._cond.wait()
                _, job, future = self._jobs.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except BaseException as e:  # handed to the waiting request, which answers with it
                future.set_exception(e)
            self.done += 1


class ViewCache:
    """Least-recently-used arrays, at most `max_bytes` in all (an array larger than that is not kept)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> np.ndarray | None:
        with self._lock:
            array = self._items.get(key)
            if array is not None:
                self._items.move_to_end(key)
                self.hits += 1
            return array

    def put(self, key: Hashable, array: np.ndarray) -> None:
        with self._lock:
            if key in self._items:
                self.bytes -= self._items.pop(key).nbytes
            if array.nbytes > self.max_bytes:
                return
            self._items[key] = array
            self.bytes += array.nbytes
            while self.bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self.bytes -= old.nbytes

    def __len__(self) -> int:
        return len(self._items)
