"""The `uh-view` server: a Bokeh server (Tornado) with the viewer page at `/`, and beside it

    GET /view.png?seed=&psi=&v=VX,VY&s=&size=[&client=]   the view as PNG, or 4xx with a one-line reason
    GET /status.json                                     the render queue and cache

Both go through one `Viewer`: the generator, its render queue and the cache of views."""

from __future__ import annotations

import asyncio
import io
import json
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tornado.web

from uh_train.format.atomic import atomic_write_bytes
from uh_train.render import DEFAULT_MAX_BYTES, render_seed

from .queue import QueueFull, RenderQueue, Superseded, ViewCache
from .real import RealSamples
from .request import MAX_SAVE_SIZE, BadView, View, parse_view


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


@dataclass
class Viewer:
    """What the page and the HTTP endpoint share. `ckpt`, `mode` and `device` make the `uh-generate` command."""

    G: object
    ckpt: Path
    device: str
    mode: str
    save_dir: Path
    size: int  # the panels' side in px
    cache: ViewCache
    real: RealSamples | None = None
    queue: RenderQueue = field(init=False)
    render_seconds: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.queue = RenderQueue(self.device)

    @property
    def r(self) -> int:
        return self.G.img_resolution

    def _render_now(self, view: View) -> np.ndarray:
        """On the device's worker: the view from the cache, else rendered as `uh-generate` renders it."""
        array = self.cache.get(("gen", view.key()))
        if array is None:
            start = time.perf_counter()
            array = render_seed(self.G, view.seed, view.psi, view.size, center=view.v, scale=view.s,
                                mode=self.mode, max_bytes=DEFAULT_MAX_BYTES)
            self.render_seconds = (self.render_seconds + [time.perf_counter() - start])[-100:]
            self.cache.put(("gen", view.key()), array)
        return array

    def render(self, view: View, client=None) -> Future:
        """A future of the view's uint8 [size, size, 3] image. Raises QueueFull; the future may raise Superseded."""
        array = self.cache.get(("gen", view.key()))
        if array is not None:
            done: Future = Future()
            done.set_result(array)
            return done
        return self.queue.submit(lambda: self._render_now(view), client)

    def render_real(self, view: View, client=None) -> Future:
        """A future of (sample key, uint8 image) of the real sample in the view's window, or None."""
        return self.queue.submit(lambda: self.real.render(view) if self.real else None, client)

    def save(self, view: View, seeds: list[int]) -> Future:
        """Render the view for each seed at view.size and write OUT/seedNNNN.png with OUT/command.txt, where
        OUT is a new folder of save_dir; the future gives (OUT, command)."""
        view.check(self.r, MAX_SAVE_SIZE)
        name = (f"seed{seeds[0]}-{len(seeds)}-v{view.v[0]:.4f},{view.v[1]:.4f}-s{view.s:.4g}-psi{view.psi:g}"
                f"-{view.size}px")
        out = self.save_dir / name
        seed_text = ",".join(str(s) for s in seeds)
        command = view.command(self.ckpt, out, self.mode, self.device, seeds=seed_text)

        def job():
            for seed in seeds:
                array = render_seed(self.G, seed, view.psi, view.size, center=view.v, scale=view.s, mode=self.mode,
                                    max_bytes=DEFAULT_MAX_BYTES)
                out.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(out / f"seed{seed:04d}.png", png_bytes(array))
            atomic_write_bytes(out / "command.txt", (command + "\n").encode())
            return out, command

        return self.queue.submit(job)

    def status(self) -> dict:
        times = sorted(self.render_seconds)
        return {"device": self.device, "mode": self.mode, "r": self.r, "waiting": self.queue.waiting(),
                "rendered": self.queue.done, "dropped": self.queue.dropped, "cache_views": len(self.cache),
                "cache_bytes": self.cache.bytes, "cache_max_bytes": self.cache.max_bytes, "cache_hits": self.cache.hits,
                "render_p50_s": times[len(times) // 2] if times else None}


class _OneLineErrors(tornado.web.RequestHandler):
    def write_error(self, status_code: int, **kwargs) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{status_code} {self._reason}\n")

    def fail(self, status: int, reason: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(reason.replace("\n", " ") + "\n")


class ViewHandler(_OneLineErrors):
    def initialize(self, viewer: Viewer) -> None:
        self.viewer = viewer

    async def get(self) -> None:
        query = {k: [v.decode("utf-8", "replace") for v in vs] for k, vs in self.request.query_arguments.items()}
        try:
            view = parse_view(query, self.viewer.r)
            client = query.get("client", [None])[0]
            if client is not None and len(client) > 64:
                raise BadView("client is longer than 64 characters")
            array = await asyncio.wrap_future(self.viewer.render(view, client=client))
        except BadView as e:
            return self.fail(400, str(e))
        except Superseded as e:
            return self.fail(409, str(e))
        except QueueFull as e:
            return self.fail(503, str(e))
        self.set_header("Content-Type", "image/png")
        self.set_header("Cache-Control", "max-age=86400")
        self.finish(png_bytes(array))


class StatusHandler(_OneLineErrors):
    def initialize(self, viewer: Viewer) -> None:
        self.viewer = viewer

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(self.viewer.status()))


def make_server(viewer: Viewer, host: str, port: int):
    """The Bokeh server (not yet started) with the page at / and the view endpoint beside it."""
    from bokeh.application import Application
    from bokeh.application.handlers.function import FunctionHandler
    from bokeh.server.server import Server

    from .page import build_document

    app = Application(FunctionHandler(lambda doc: build_document(doc, viewer)))
    if host in ("0.0.0.0", "::"):
        origins = ["*"]  # every address of the machine: the page may be opened under any of its names
    else:
        origins = [f"{host}:{port}"] + ([f"localhost:{port}"] if host == "127.0.0.1" else [])
    return Server({"/": app}, address=host, port=port, allow_websocket_origin=origins, num_procs=1,
                  extra_patterns=[(r"/view\.png", ViewHandler, {"viewer": viewer}),
                                  (r"/status\.json", StatusHandler, {"viewer": viewer})])
