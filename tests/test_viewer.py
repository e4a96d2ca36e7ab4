"""`uh-view`: view requests checked once, the render queue and cache, and the running server driven
over HTTP and in headless Chromium (skipped, saying what to install, where there is none)."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uh_train.viewer.queue import RenderQueue, Superseded, ViewCache
from uh_train.viewer.real import window_homography
from uh_train.viewer.request import BadView, View, parse_view

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "checkpoints" / "learned-tiny.safetensors"
R = 32  # the tiny preset's patch resolution
CHROMIUM = os.environ.get("UNITEDHUMAN_CHROMIUM", "/usr/bin/chromium")
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]
FACE = (0.5, 0.1)  # where the face of an aligned full-body person lies


def q(text: str) -> dict[str, list[str]]:
    from urllib.parse import parse_qs

    return parse_qs(text, keep_blank_values=True)


# --- a view, checked where it enters -------------------------------------------------------------------------------

@pytest.mark.parametrize("query, reason", [
    ("s=0", "s = 0.0 must be a finite number > 0"),
    ("s=-2", "must be a finite number > 0"),
    ("s=nan", "must be a finite number > 0"),
    ("s=inf", "must be a finite number > 0"),
    ("s=1000", "is outside"),
    ("psi=nan", "psi nan is not a finite number"),
    ("v=1.5,0.5", "outside full-body space"),
    ("v=0.5,-0.1", "outside full-body space"),
    ("v=nan,0.5", "not a finite point"),
    ("v=0.5", "not a point VX,VY"),
    ("seed=-1", "not a non-negative integer"),
    ("seed=4294967296", "out of range"),
    ("size=100000", "must be a multiple of the patch resolution 32"),
    ("size=100", "must be a multiple of the patch resolution 32"),
    ("size=0", "must be a multiple"),
    ("seed=1&seed=2", "given 2 times"),
    ("zoom=3", "unknown parameter 'zoom'"),
])
def test_bad_views_are_refused_with_one_line_reason(query, reason):
    with pytest.raises(BadView) as e:
        parse_view(q(query), R)
    assert reason in str(e.value)
    assert "\n" not in str(e.value)


def test_view_query_and_command_carry_the_exact_floats():
    view = View(seed=7, psi=0.7, v=(0.1 + 0.2, 1 / 3), s=8 / 3, size=256)
    back = parse_view(q(view.query()), R)
    assert back == view  # the URL reads back to the same floats, so the same pixels
    args = shlex.split(view.command(Path("ck pt.safetensors"), Path("out"), "single", "cpu"))
    assert args[args.index("--patch") + 1] == f"{0.1 + 0.2!r},{1 / 3!r}"
    assert float(args[args.index("--scale") + 1]) == 8 / 3
    assert args[args.index("--ckpt") + 1] == "ck pt.safetensors"


def test_window_homography_maps_the_window_onto_the_unit_square():
    view = View(seed=0, psi=1.0, v=(0.3, 0.6), s=4.0, size=64)
    H = window_homography(view)
    corners = np.array([[0.3 - 0.125, 0.6 - 0.125, 1], [0.3 + 0.125, 0.6 + 0.125, 1]])
    mapped = corners @ H.T
    np.testing.assert_allclose(mapped[:, :2] / mapped[:, 2:], [[0, 0], [1, 1]], atol=1e-12)


# --- the render queue and the cache --------------------------------------------------------------------------------

def test_waiting_view_is_dropped_when_its_client_asks_for_a_newer_one():
    queue = RenderQueue("test")
    gate = threading.Event()
    busy = queue.submit(gate.wait)  # holds the worker
    old = queue.submit(lambda: "old", client="tab-1")
    other = queue.submit(lambda: "other", client="tab-2")
    new = queue.submit(lambda: "new", client="tab-1")
    gate.set()
    assert busy.result(5) is True
    with pytest.raises(Superseded):
        old.result(5)
    assert new.result(5) == "new" and other.result(5) == "other"
    assert queue.dropped == 1


def test_cache_keeps_recent_views_within_its_bytes():
    cache = ViewCache(max_bytes=3 * 100)
    for i in range(5):
        cache.put(i, np.zeros(100, np.uint8))
        assert cache.bytes <= 300
    assert [cache.get(i) is not None for i in range(5)] == [False, False, True, True, True]
    cache.put("huge", np.zeros(1000, np.uint8))
    assert cache.get("huge") is None and cache.bytes == 300


# --- the running server --------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 120) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """uh-view on the shipped tiny checkpoint, on CPU, with a 2 MiB cache; yields (base URL, process, save dir)."""
    port = free_port()
    saves = tmp_path_factory.mktemp("views")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "uh_train.viewer.cli", str(CKPT), "--port", str(port),
                             "--device", "cpu", "--save-dir", str(saves), "--cache-mb", "2"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            if get(base + "/status.json", timeout=5)[0] == 200:
                break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"uh-view did not start: {proc.stdout.read()[-2000:]}")
        time.sleep(0.5)
    yield base, proc, saves
    proc.terminate()
    proc.wait(30)


def test_view_endpoint_renders_what_uh_generate_renders(server):
    import torch

    from uh_train.checkpoint import load_generator
    from uh_train.render import render_seed

    base, _, _ = server
    status, kind, body = get(base + "/view.png?seed=3&psi=0.7&v=0.5,0.1&s=8&size=64")
    assert status == 200 and kind == "image/png"
    torch.set_num_threads(1)
    expected = render_seed(load_generator(CKPT), 3, 0.7, 64, center=(0.5, 0.1), scale=8.0, mode="single")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(body)).convert("RGB")), expected)


def test_fifty_concurrent_requests_malformed_ones_get_their_reason_server_keeps_answering(server):
    base, proc, _ = server
    get(base + "/view.png?seed=0&size=64")
    before = rss_mib(proc.pid)
    bad = ["s=0", "s=-1", "s=nan", "v=2,2", "v=0.5,nan", "seed=-3", "seed=99999999999", "size=999999",
           "size=33", "psi=inf", "bogus=1", "v=a,b", "s=", "seed=1&seed=2", "size=-64", "v=0.5,0.5,0.5",
           "s=1e309", "psi=abc", "seed=1.5", "v=-0.01,0.5"]
    good = [f"seed={i}&v=0.5,{0.1 + 0.01 * i}&s={1 + i % 8}&size={64 * (1 + i % 3)}" for i in range(30)]
    queries = [x for pair in zip(good, bad + [None] * 10, strict=True) for x in pair if x is not None]
    assert len(queries) == 50
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda query: get(f"{base}/view.png?{query}"), queries))
    for query, (status, kind, body) in zip(queries, answers, strict=True):
        if query in bad:
            text = body.decode()
            assert 400 <= status < 500, (query, status)
            assert kind.startswith("text/plain") and text.endswith("\n") and text.count("\n") == 1, (query, text)
            assert "Traceback" not in text and len(text) > 10
        else:
            assert status == 200 and kind == "image/png", (query, status, body[:200])
    assert get(base + "/view.png?seed=123&size=32")[0] == 200  # still answering
    info = json.loads(get(base + "/status.json")[2])
    assert info["cache_bytes"] <= info["cache_max_bytes"] == 2 * 2**20
    assert info["waiting"] == 0
    assert rss_mib(proc.pid) - before < 300, "memory grew with the requests"


def test_newer_view_from_the_same_client_drops_the_waiting_ones(server):
    base, _, _ = server
    queries = [f"seed={1000 + i}&v=0.5,0.5&s=1&size=512&client=tab" for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        statuses = [a[0] for a in pool.map(lambda query: get(f"{base}/view.png?{query}"), queries)]
    assert set(statuses) <= {200, 409}
    assert 409 in statuses and 200 in statuses


# --- in the browser ------------------------------------------------------------------------------------------------

READ_IMAGE = """(name) => { const a = Bokeh.documents[0].get_model_by_name(name).data.image[0];
  const u = new Uint8Array(a.buffer, a.byteOffset, a.byteLength); let s = '';
  for (let i = 0; i < u.length; i += 8192) s += String.fromCharCode.apply(null, u.subarray(i, i + 8192));
  return [btoa(s), a.shape]; }"""
FRAME_BOX = """(name) => { const v = Bokeh.index.find_one(Bokeh.documents[0].get_model_by_name(name));
  const r = v.el.getBoundingClientRect(); const f = v.frame.bbox; return [r.left + f.left, r.top + f.top]; }"""
SHOWN = "() => window.Bokeh && Bokeh.documents.length > 0 && Bokeh.documents[0].get_model_by_name('shown').text"


def shown_image(page, name: str = "source-0") -> np.ndarray:
    data, shape = page.evaluate(READ_IMAGE, name)
    return np.frombuffer(base64.b64decode(data), np.uint8).reshape(*shape, 4)[..., :3]


def wait_for_view(page, fragment: str) -> str:
    page.wait_for_function(f"() => ({SHOWN})() && ({SHOWN})().includes({json.dumps(fragment)})", timeout=120_000)
    return page.evaluate(SHOWN)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: install one (`apt-get install chromium`) or set UNITEDHUMAN_CHROMIUM")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield browser
        browser.close()


def test_zoom_to_the_face_shows_uh_generate_pixels_and_saves_its_command(server, browser):
    from typer.testing import CliRunner

    from uh_train.generate import app as generate_app

    base, _, saves = server
    page = browser.new_page(viewport={"width": 1300, "height": 800}, device_scale_factor=1)
    page.goto(base + "/?seed=5&psi=0.8")
    wait_for_view(page, "seed=5&psi=0.8&v=0.5,0.5&s=1.0")

    # The wheel zooms like a map: over the panel, it narrows the window (s grows).
    x, y = page.evaluate(FRAME_BOX, "figure-0")
    page.mouse.move(x + 256, y + 60)
    page.mouse.wheel(0, -400)
    page.wait_for_function("() => Bokeh.documents[0].get_model_by_name('x_range').end - "
                           "Bokeh.documents[0].get_model_by_name('x_range').start < 0.99", timeout=30_000)

    # Zoom programmatically to s = 8 on the face.
    half = 1 / 16
    page.evaluate(f"""() => {{ const d = Bokeh.documents[0];
      d.get_model_by_name('x_range').setv({{start: {FACE[0] - half}, end: {FACE[0] + half}}});
      d.get_model_by_name('y_range').setv({{start: {FACE[1] + half}, end: {FACE[1] - half}}}); }}""")
    query = wait_for_view(page, "v=0.5,0.1&s=8.0")
    assert "s=8.0" in page.url and "seed=5" in page.url  # the view is in the URL
    view = parse_view(q(query), R)
    assert view == View(seed=5, psi=0.8, v=FACE, s=8.0, size=512)
    shown = shown_image(page)

    png = page.screenshot()
    screen = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert screen.std() > 5, "the screenshot is blank"
    # On screen: the view's pixels, one for one (the last row and column meet the frame's edge half a pixel on).
    x, y = (int(round(c)) + 1 for c in page.evaluate(FRAME_BOX, "figure-0"))
    np.testing.assert_array_equal(screen[y:y + 511, x:x + 511], shown[:511, :511])

    # Save this view at 512 px: a PNG and the uh-generate command that writes the same PNG.
    page.evaluate("() => Bokeh.documents[0].get_model_by_name('save_size').setv({value: 512})")
    page.get_by_role("button", name="save this view").click()
    page.wait_for_function("() => Bokeh.documents[0].get_model_by_name('status').text.includes('wrote')",
                           timeout=120_000)
    (folder,) = saves.iterdir()
    command = shlex.split((folder / "command.txt").read_text())
    assert command[0] == "uh-generate"
    out = folder.parent / "rerun"
    command[command.index("--out") + 1] = str(out)
    result = CliRunner().invoke(generate_app, command[1:])
    assert result.exit_code == 0, result.output
    generated = np.asarray(Image.open(out / "seed0005.png").convert("RGB"))
    np.testing.assert_array_equal(shown, generated)
    np.testing.assert_array_equal(np.asarray(Image.open(folder / "seed0005.png").convert("RGB")), generated)

    # The URL alone brings back the same view.
    again = browser.new_page(viewport={"width": 1300, "height": 800})
    again.goto(page.url)
    assert wait_for_view(again, "s=8.0") == query
    np.testing.assert_array_equal(shown_image(again), shown)
    again.close()
    page.close()


def test_panels_side_by_side_show_consecutive_seeds(server, browser):
    base, _, _ = server
    page = browser.new_page(viewport={"width": 2200, "height": 800})
    page.goto(base + "/?seed=9&v=0.5,0.5&s=2&panels=2&grid=1")
    wait_for_view(page, "seed=9")
    page.wait_for_function("() => Bokeh.documents[0].get_model_by_name('source-1').data.image[0].shape[0] == 512",
                           timeout=120_000)
    left, right = shown_image(page, "source-0"), shown_image(page, "source-1")
    base_url = f"{base}/view.png?psi=1.0&v=0.5,0.5&s=2.0&size=512"
    for seed, shown in ((9, left), (10, right)):
        png = get(f"{base_url}&seed={seed}")[2]
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), shown)
    assert page.evaluate("() => Bokeh.documents[0].get_model_by_name('grid-0').visible")
    page.close()


# --- a real sample in the same window (--shards) -------------------------------------------------------------------

def test_real_sample_is_the_densest_covering_one_warped_into_the_window(tmp_path):
    from mst_pipeline.synthesis.synthetic import write_synthetic
    from uh_train.format.geometry import warp_to_canvas
    from uh_train.viewer.real import RealSamples

    write_synthetic(tmp_path, n=2, res=64, seed=3)
    real = RealSamples(tmp_path)
    assert len(real) == 6  # full, upper and face of two figures

    whole = View(seed=0, psi=1.0, v=(0.5, 0.5), s=1.0, size=64)
    index = real.best(whole)
    assert real.keys[index].startswith("synth_full")  # only a full view covers the whole space
    key, image = real.render(whole)
    rec = real.record(index)
    canvas, alpha = warp_to_canvas(rec.image, rec.H, 64, rec.mask)
    inside = alpha == 1
    np.testing.assert_array_equal(image[inside], np.round(canvas[inside]).astype(np.uint8))

    x0, y0, x1, y1 = real.bbox[[i for i, k in enumerate(real.keys) if k.startswith("synth_face")][0]]
    face = View(seed=0, psi=1.0, v=((x0 + x1) / 2, (y0 + y1) / 2), s=2 / (x1 - x0), size=64)
    chosen = real.best(face)
    covering = [i for i in range(len(real)) if real.bbox[i, 0] <= face.v[0] - 0.5 / face.s
                and real.bbox[i, 2] >= face.v[0] + 0.5 / face.s and real.bbox[i, 1] <= face.v[1] - 0.5 / face.s
                and real.bbox[i, 3] >= face.v[1] + 0.5 / face.s]
    assert chosen in covering
    assert real.density[chosen] == max(real.density[i] for i in covering)
    assert real.keys[chosen].startswith("synth_face")


def test_cli_refuses_a_missing_checkpoint_and_a_size_off_the_patch_grid(tmp_path):
    from typer.testing import CliRunner

    from uh_train.viewer.cli import app

    missing = CliRunner().invoke(app, [str(tmp_path / "none.safetensors")])
    assert missing.exit_code == 2 and "not found" in missing.output
    off_grid = CliRunner().invoke(app, [str(CKPT), "--size", "500", "--device", "cpu"])
    assert off_grid.exit_code == 2 and "multiple of the patch resolution 32" in off_grid.output
