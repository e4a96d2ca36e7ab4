"""The viewer page, a Bokeh document per browser tab.

Panels of one size share their x and y ranges, so Bokeh's pan and wheel-zoom tools move them
together; the ranges are the window of full-body space (y down). When they change, the page asks
the `Viewer` for the window T(v, s) at the panel's pixel size; until the new image arrives the old
one stays where it was in full-body space, so it is shown enlarged (or shrunk). The page's state
(seed, psi, v, s, panels, overlays) is mirrored into the URL."""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import numpy as np
from bokeh.document import Document
from bokeh.layouts import column, row
from bokeh.models import (
    Button,
    CheckboxGroup,
    ColumnDataSource,
    CustomJS,
    Div,
    PanTool,
    RadioButtonGroup,
    Range1d,
    ResetTool,
    Slider,
    Spinner,
    WheelZoomTool,
)
from bokeh.plotting import figure

from uh_train.format.geometry import SCALE_MAX, PatchView

from .queue import QueueFull, Superseded
from .request import MAX_SAVE_SIZE, PSI_RANGE, SCALE_RANGE, SEED_LIMIT, BadView, View, parse_view

if TYPE_CHECKING:  # the server builds pages; a page only uses the Viewer it is given
    from .server import Viewer

MAX_PANELS = 4
OVERLAYS = ["scale grid", "real sample"]
PAGE_PARAMETERS = ("panels", "grid", "real")


def rgba(array: np.ndarray) -> np.ndarray:
    """uint8 [h, w, 3] -> the uint32 [h, w] RGBA image Bokeh draws (row 0 at the window's top)."""
    h, w = array.shape[:2]
    out = np.empty((h, w, 4), dtype=np.uint8)
    out[..., :3] = array
    out[..., 3] = 255
    return out.view(np.uint32).reshape(h, w)


def scale_grid() -> dict[str, list]:
    """Segments of the windows of scale s = 2, 4, 8 tiling full-body space (coarser: wider lines)."""
    data: dict[str, list] = {k: [] for k in ("x0", "y0", "x1", "y1", "width")}
    levels = int(math.log2(SCALE_MAX))
    for level in range(1, levels + 1):
        n = 2**level
        for i in range(1, n):
            if level > 1 and i % 2 == 0:
                continue  # drawn by a coarser level
            for x0, y0, x1, y1 in ((i / n, 0, i / n, 1), (0, i / n, 1, i / n)):
                for key, value in zip(("x0", "y0", "x1", "y1"), (x0, y0, x1, y1), strict=True):
                    data[key].append(value)
                data["width"].append(levels + 1 - level)
    return data


def window_of(x0: float, x1: float, y0: float, y1: float) -> tuple[tuple[float, float], float]:
    """(v, s) of the ranges: the centre, and the zoom from the narrower side."""
    side = min(abs(x1 - x0), abs(y1 - y0))
    return ((x0 + x1) / 2, (y0 + y1) / 2), 1.0 / side


def build_document(doc: Document, viewer: Viewer) -> None:
    r, size = viewer.r, viewer.size
    query = {k: [v.decode("utf-8", "replace") for v in vs]
             for k, vs in doc.session_context.request.arguments.items()}
    page = {k: query.pop(k)[0] for k in PAGE_PARAMETERS if k in query}
    query.pop("size", None)
    note = ""
    try:
        start = parse_view(query, r, max_size=max(size, 4 * r))
    except BadView as e:
        start, note = View(0, 1.0, (0.5, 0.5), 1.0, size), f"ignored the URL's view: {e}"
    s0 = max(start.s, 1.0)
    panels0 = int(page["panels"]) if page.get("panels", "").isdigit() and 1 <= int(page["panels"]) <= MAX_PANELS else 1
    overlays0 = [i for i, name in enumerate(("grid", "real")) if page.get(name) == "1"]
    if viewer.real is None:
        overlays0 = [i for i in overlays0 if i != 1]

    x0, y0, x1, y1 = PatchView(start.v, s0).moved_inside((0.0, 0.0, 1.0, 1.0)).square()
    x_range = Range1d(x0, x1, bounds=(0, 1), min_interval=1 / SCALE_RANGE[1], max_interval=1, name="x_range")
    y_range = Range1d(y1, y0, bounds=(0, 1), min_interval=1 / SCALE_RANGE[1], max_interval=1,
                      name="y_range")  # start at the bottom: full-body space's y points down
    grid_data = scale_grid()

    def panel(title: str, name: str, visible: bool):
        fig = figure(frame_width=size, frame_height=size, x_range=x_range, y_range=y_range, title=title,
                     tools=[PanTool(), WheelZoomTool(zoom_on_axis=False), ResetTool()], toolbar_location="above",
                     name=f"figure-{name}", visible=visible, min_border=4, outline_line_color=None)
        fig.toolbar.active_scroll = fig.select_one(WheelZoomTool)
        fig.axis.visible = False
        fig.grid.visible = False
        fig.toolbar.logo = None
        source = ColumnDataSource({"image": [np.zeros((1, 1), np.uint32)], "x": [0.0], "y": [0.0], "dw": [1.0],
                                   "dh": [1.0]}, name=f"source-{name}")
        # Row 0 at the smallest y, which the flipped y range puts at the top of the panel.
        fig.image_rgba(image="image", x="x", y="y", dw="dw", dh="dh", source=source, origin="bottom_left",
                       anchor="bottom_left")
        lines = fig.segment("x0", "y0", "x1", "y1", source=ColumnDataSource(grid_data), line_width="width",
                            line_color="#0a7d5a", line_alpha=0.6, visible=0 in overlays0, name=f"grid-{name}")
        return fig, source, lines

    gen = [panel(f"seed {start.seed + i}", str(i), i < panels0) for i in range(MAX_PANELS)]
    real = panel("real sample", "real", 1 in overlays0)

    seed = Spinner(title="seed", low=0, high=SEED_LIMIT - 1, step=1, value=start.seed, width=130, name="seed")
    prev_seed = Button(label="◀ previous", width=90)
    next_seed = Button(label="next ▶", width=90)
    psi = Slider(title="truncation ψ", start=0.0, end=min(PSI_RANGE[1], 1.5), step=0.05, value=start.psi,
                 width=200, name="psi")
    panels = RadioButtonGroup(labels=[str(i) for i in range(1, MAX_PANELS + 1)], active=panels0 - 1,
                              name="panels")
    overlays = CheckboxGroup(labels=OVERLAYS, active=overlays0, disabled=False, name="overlays")
    save_size = Spinner(title="save at N px", low=r, high=MAX_SAVE_SIZE, step=r, value=4 * size if 4 * size <= 2048
                        else size, width=120, name="save_size")
    save = Button(label="save this view", button_type="primary", width=120, name="save")
    status = Div(text=note, width=4 * size, name="status")
    shown = Div(text="", visible=False, name="shown")  # the query of the view panel 0 shows (tests wait on it)
    url = Div(text="", visible=False, name="url")
    url.js_on_change("text", CustomJS(code="window.history.replaceState(null, '', '?' + cb_obj.text)"))
    real_note = "" if viewer.real else " (start uh-view with --shards DIR for the real sample)"
    help_text = Div(text=f"Drag to pan, wheel to zoom. Grid lines: the windows of s = 2, 4, 8.{real_note}",
                    width=4 * size, height=24)

    latest = {"token": 0, "scheduled": False}

    def current() -> View:
        (v, s) = window_of(x_range.start, x_range.end, y_range.end, y_range.start)
        return View(seed=int(seed.value), psi=float(psi.value), v=v, s=s, size=size)

    def show(index: int, view: View, token: int, future) -> None:
        if token != latest["token"]:
            return  # the view moved on while this one rendered
        try:
            result = future.result()
        except Superseded:
            return
        except Exception as e:  # a failed render is reported on the page, the server goes on
            status.text = f"render failed: {type(e).__name__}: {e}"
            return
        fig, source, _ = real if index < 0 else gen[index]
        if index < 0:
            if result is None:
                fig.title.text = "real sample: none covers this window"
                source.data = {"image": [], "x": [], "y": [], "dw": [], "dh": []}
                return
            key, result = result
            fig.title.text = f"real sample {key}"
        side = 1.0 / view.s
        source.data = {"image": [rgba(result)], "x": [view.v[0] - side / 2], "y": [view.v[1] - side / 2],
                       "dw": [side], "dh": [side]}
        if index == 0:
            shown.text = view.query()
            status.text = (f"v = ({view.v[0]:.4f}, {view.v[1]:.4f}), s = {view.s:.3g}, seed {view.seed}, "
                           f"ψ = {view.psi:g}, {size} px on {viewer.device}")

    def submit(index: int, view: View, token: int) -> None:
        client = (doc.session_context.id, index)
        try:
            future = viewer.render_real(view, client) if index < 0 else viewer.render(view, client)
        except QueueFull as e:
            status.text = str(e)
            return
        future.add_done_callback(lambda f: doc.add_next_tick_callback(partial(show, index, view, token, f)))

    def rerender() -> None:
        latest["scheduled"] = False
        try:
            view = current().check(r, size)
        except BadView as e:
            status.text = str(e)
            return
        latest["token"] += 1
        n = panels.active + 1
        for i, (fig, _, lines) in enumerate(gen):
            fig.visible = i < n
            fig.title.text = f"seed {view.seed + i}"
            lines.visible = 0 in overlays.active
            if i < n and view.seed + i < SEED_LIMIT:
                submit(i, replace(view, seed=view.seed + i), latest["token"])
        real[0].visible = viewer.real is not None and 1 in overlays.active
        real[2].visible = 0 in overlays.active
        if real[0].visible:
            submit(-1, view, latest["token"])
        extra = {"panels": n} | {name: 1 for i, name in enumerate(("grid", "real")) if i in overlays.active}
        url.text = view.query().rsplit("&size=", 1)[0] + ("&" + urlencode(extra) if extra else "")

    def schedule(attr, old, new) -> None:
        if not latest["scheduled"]:
            latest["scheduled"] = True
            doc.add_next_tick_callback(rerender)

    def saved(future) -> None:
        try:
            out, command = future.result()
        except Exception as e:  # reported on the page
            status.text = f"save failed: {type(e).__name__}: {e}"
            return
        status.text = f"wrote {out}/ — the same images: <code>{command}</code>"

    def on_save() -> None:
        view = replace(current(), size=int(save_size.value))
        seeds = [view.seed + i for i in range(panels.active + 1) if view.seed + i < SEED_LIMIT]
        try:
            future = viewer.save(view, seeds)
        except (BadView, QueueFull) as e:
            status.text = f"cannot save: {e}"
            return
        status.text = f"saving {len(seeds)} image(s) at {view.size} px…"
        future.add_done_callback(lambda f: doc.add_next_tick_callback(partial(saved, f)))

    def step_seed(delta: int) -> None:
        seed.value = min(max(int(seed.value) + delta, 0), SEED_LIMIT - 1)

    for rng in (x_range, y_range):
        rng.on_change("start", schedule)
        rng.on_change("end", schedule)
    seed.on_change("value", schedule)
    psi.on_change("value_throttled", schedule)
    panels.on_change("active", schedule)
    overlays.on_change("active", schedule)
    prev_seed.on_click(lambda: step_seed(-1))
    next_seed.on_click(lambda: step_seed(1))
    save.on_click(on_save)

    controls = row(seed, column(Div(text=""), row(prev_seed, next_seed)), psi,
                   column(Div(text="seeds side by side"), panels), overlays, save_size,
                   column(Div(text=""), save), height=72)
    # Whole-pixel heights above the panels, so that each view's pixels land on the screen's pixels.
    doc.add_root(column(controls, help_text, row(*[g[0] for g in gen], real[0]), status, shown, url))
    doc.title = f"uh-view {viewer.ckpt.name}"
    schedule(None, None, None)
