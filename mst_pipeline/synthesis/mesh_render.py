"""Which triangle of a mesh each pixel sees, rasterised by pyrender (OpenGL, headless).

`mst render-people` shades its people and `mst align --overlay` draws the fitted silhouette from
this visibility buffer: pyrender draws every triangle in a colour that encodes its index (unlit,
no multisampling, depth test on), and the barycentric weights of each pixel centre follow exactly
from its triangle's corners (the projection is orthographic, so they are linear in pixels).
Shading stays in numpy because the materials are per-pixel functions of the rest-pose surface
(`mst_pipeline.synthesis.people`), which pyrender's fixed shaders cannot express.

OpenGL runs in a worker process (`python -m mst_pipeline.synthesis.mesh_render`, started on first use and fed
arrays over a pipe): Mesa's software renderer loads its own LLVM, which crashes the process when
torch later imports triton (another LLVM), and PyOpenGL binds its platform at import, which a
fresh process can still choose. The platform is PYOPENGL_PLATFORM when set (egl or osmesa), else
EGL when an EGL display can be initialised, else OSMesa when its library is installed; otherwise
`RendererUnavailable` names the system packages to install.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import io
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

import numpy as np

HEADLESS_PLATFORMS = ("egl", "osmesa")
MISSING_HINT = ("no EGL or OSMesa for headless OpenGL: install libegl1 + libegl-mesa0 (EGL) or libosmesa6 "
                "(OSMesa), or set PYOPENGL_PLATFORM to the one the machine has")
TILE = 4096  # the largest framebuffer side rendered at once (images beyond it are drawn in tiles)
_EGL_PLATFORM_DEVICE_EXT = 0x313F

_platform: str | None = None  # chosen in the worker


class RendererUnavailable(RuntimeError):
    """No headless OpenGL platform could be set up for pyrender."""


def _egl_works() -> str | None:
    """None when an EGL device display initialises (what pyrender's EGL platform uses), else why not.

    Probed with ctypes so that PyOpenGL, which binds its platform at import, is not yet imported.
    """
    try:
        egl = ctypes.CDLL("libEGL.so.1")
    except OSError as e:
        return f"libEGL.so.1 not found ({e})"
    egl.eglGetProcAddress.restype = ctypes.c_void_p
    egl.eglGetProcAddress.argtypes = [ctypes.c_char_p]
    query = egl.eglGetProcAddress(b"eglQueryDevicesEXT")
    get_display = egl.eglGetProcAddress(b"eglGetPlatformDisplayEXT")
    if not query or not get_display:
        return "libEGL lacks EGL_EXT_device_enumeration / EGL_EXT_platform_device"
    query_devices = ctypes.CFUNCTYPE(ctypes.c_uint, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p),
                                     ctypes.POINTER(ctypes.c_int))(query)
    platform_display = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p)(get_display)
    count = ctypes.c_int(0)
    devices = (ctypes.c_void_p * 16)()
    if not query_devices(16, devices, ctypes.byref(count)) or count.value < 1:
        return "EGL reports no device (no GPU driver and no Mesa software device: libegl-mesa0)"
    egl.eglInitialize.restype = ctypes.c_uint
    egl.eglInitialize.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    egl.eglTerminate.argtypes = [ctypes.c_void_p]
    for device in devices[: count.value]:
        display = platform_display(_EGL_PLATFORM_DEVICE_EXT, device, None)
        if display and egl.eglInitialize(display, None, None):
            egl.eglTerminate(display)
            return None
    return "no EGL device display could be initialised"


def choose_platform() -> str:
    """The headless OpenGL platform for pyrender ("egl" or "osmesa"), set in PYOPENGL_PLATFORM.

    Runs in the worker before it imports OpenGL: PyOpenGL binds its platform at import.
    """
    global _platform
    if _platform is not None:
        return _platform
    chosen = os.environ.get("PYOPENGL_PLATFORM")
    if chosen is not None:
        if chosen not in HEADLESS_PLATFORMS:
            raise RendererUnavailable(f"PYOPENGL_PLATFORM={chosen!r}: off-screen rendering needs egl or osmesa")
    else:
        why_not_egl = _egl_works()
        if why_not_egl is None:
            chosen = "egl"
        elif ctypes.util.find_library("OSMesa"):
            chosen = "osmesa"
        else:
            raise RendererUnavailable(f"{MISSING_HINT} (EGL: {why_not_egl}; OSMesa: libOSMesa not found)")
        os.environ["PYOPENGL_PLATFORM"] = chosen
    _platform = chosen
    return chosen


def _open_renderer():
    """A pyrender off-screen renderer drawing with one sample per pixel (in the worker)."""
    platform = choose_platform()
    try:
        import pyrender
        from OpenGL.GL import GL_MULTISAMPLE, glDisable

        class SingleSampleRenderer(pyrender.Renderer):
            # pyrender always enables 4× multisampling, which would blend the colours that encode
            # triangle indices at edges; one sample at the pixel centre keeps them exact.
            def _bind_and_draw_primitive(self, *args, **kwargs):
                glDisable(GL_MULTISAMPLE)
                return super()._bind_and_draw_primitive(*args, **kwargs)

        renderer = pyrender.OffscreenRenderer(64, 64)
    except Exception as e:  # the library loads but gives no context: name the platform and the remedy
        raise RendererUnavailable(f"pyrender could not open an off-screen {platform} context ({e}); "
                                  f"{MISSING_HINT}") from e
    renderer._renderer.__class__ = SingleSampleRenderer
    return renderer


def _encode(index: np.ndarray) -> np.ndarray:
    """Triangle index -> RGBA uint8 (index + 1 in 24 bits; 0 is the background)."""
    code = index.astype(np.int64) + 1
    return np.stack([code & 255, (code >> 8) & 255, (code >> 16) & 255, np.full_like(code, 255)], -1).astype(np.uint8)


def _draw_ids(renderer, points: np.ndarray, faces: np.ndarray, width: int, height: int) -> np.ndarray:
    """`triangle_ids` drawn by pyrender (in the worker)."""
    import pyrender

    ids = np.full((height, width), -1, np.int64)
    corners = points[faces].reshape(-1, 3)  # each triangle its own three vertices, all in its colour
    colours = np.repeat(_encode(np.arange(len(faces))), 3, axis=0)
    z = corners[:, 2]
    near, far = float(z.min()), float(z.max())
    flags = pyrender.RenderFlags.FLAT | pyrender.RenderFlags.SKIP_CULL_FACES
    for top in range(0, height, TILE):
        for left in range(0, width, TILE):
            h, w = min(TILE, height - top), min(TILE, width - left)
            # The tile's centre on the camera's axis, world y up, nearer = larger z (OpenGL's camera looks along −z).
            xyz = np.stack([corners[:, 0] - left - w / 2, h / 2 - (corners[:, 1] - top), near - 1.0 - z], -1)
            x, y = xyz[:, 0].reshape(-1, 3), xyz[:, 1].reshape(-1, 3)
            seen = (x.max(1) > -w / 2) & (x.min(1) < w / 2) & (y.max(1) > -h / 2) & (y.min(1) < h / 2)
            if not seen.any():
                continue
            keep = np.repeat(seen, 3)
            primitive = pyrender.Primitive(positions=xyz[keep].astype(np.float32), color_0=colours[keep], mode=4)
            scene = pyrender.Scene(bg_color=np.zeros(4), ambient_light=np.zeros(3))
            scene.add(pyrender.Mesh([primitive]))
            scene.add(pyrender.OrthographicCamera(xmag=w / 2, ymag=h / 2, znear=0.5, zfar=far - near + 1.5))
            renderer.viewport_width, renderer.viewport_height = w, h
            rgb, _ = renderer.render(scene, flags=flags)
            code = rgb.astype(np.int64)
            ids[top:top + h, left:left + w] = (code[..., 0] | code[..., 1] << 8 | code[..., 2] << 16) - 1
    return ids


# ---------------------------------------------------------------------------------------------
# The worker process and its pipe: length-prefixed .npy arrays (no pickles), errors as text.


def _send(stream: IO[bytes], *arrays: np.ndarray) -> None:
    for array in arrays:
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
        stream.write(struct.pack("<Q", buf.tell()) + buf.getvalue())
    stream.flush()


def _receive(stream: IO[bytes]) -> np.ndarray | None:
    head = stream.read(8)
    if len(head) < 8:
        return None
    (size,) = struct.unpack("<Q", head)
    return np.lib.format.read_array(io.BytesIO(stream.read(size)), allow_pickle=False)


def _error_array(message: str) -> np.ndarray:
    return np.frombuffer(message.encode(), np.uint8)


def serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    """The worker's loop: (width, height), points, faces in; a status (0: the ids follow, 1: no
    renderer, 2: another error, its text follows) and the ids or text out; until the pipe closes."""
    try:
        renderer = _open_renderer()
    except RendererUnavailable as e:
        renderer, failure = None, str(e)
    while (size := _receive(requests)) is not None:
        points, faces = _receive(requests), _receive(requests)
        if renderer is None:
            _send(replies, np.array([1]), _error_array(failure))
            continue
        try:
            ids = _draw_ids(renderer, points, faces, int(size[0]), int(size[1]))
        except Exception as e:  # reported to the caller, the worker keeps serving
            _send(replies, np.array([2]), _error_array(f"{type(e).__name__}: {e}"))
        else:
            _send(replies, np.array([0]), ids.astype(np.int32))


class _Worker:
    def __init__(self):
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # this package importable in the worker
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.pid = os.getpid()
        self.process = subprocess.Popen([sys.executable, "-m", "mst_pipeline.synthesis.mesh_render"], env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.lock = threading.Lock()

    def draw(self, points: np.ndarray, faces: np.ndarray, width: int, height: int) -> np.ndarray:
        with self.lock:
            try:
                _send(self.process.stdin, np.array([width, height], np.int64), points, faces)
                status, reply = _receive(self.process.stdout), _receive(self.process.stdout)
            except (BrokenPipeError, OSError):
                status = reply = None
        if status is None or reply is None:
            code = self.process.poll()
            raise RendererUnavailable(f"the pyrender worker process stopped (exit status {code}); "
                                      "its error is printed above")
        if status[0] != 0:
            raise (RendererUnavailable if status[0] == 1 else RuntimeError)(bytes(reply).decode())
        return reply.astype(np.int64)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


_worker: _Worker | None = None
_worker_lock = threading.Lock()


def _get_worker() -> _Worker:
    global _worker
    with _worker_lock:
        if _worker is None or _worker.pid != os.getpid() or _worker.process.poll() is not None:
            _worker = _Worker()  # first use, or a forked child, or the last one died
            atexit.register(_worker.close)
        return _worker


def start() -> None:
    """Start the worker now (it imports pyrender and opens its context while the caller sets up)."""
    _get_worker()


def triangle_ids(points: np.ndarray, faces: np.ndarray, width: int, height: int) -> np.ndarray:
    """The nearest triangle at each pixel centre: int64 [height, width], -1 where none.

    points [V, 3]: pixel x, y (pixel centres at integer + 0.5, y down) and depth (smaller = nearer);
    faces [F, 3]. Both sides of every triangle are drawn. Deterministic for the same input on the
    same machine (and OpenGL driver).
    """
    points = np.asarray(points, np.float64)
    faces = np.asarray(faces, np.int64)
    if points.ndim != 2 or points.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"expected points [V, 3] and faces [F, 3], got {points.shape} and {faces.shape}")
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}×{height}")
    if len(faces) >= 2**24 - 1:
        raise ValueError(f"{len(faces)} triangles: at most {2**24 - 2} can be told apart")
    if len(faces) == 0:
        return np.full((height, width), -1, np.int64)
    return _get_worker().draw(points, faces, int(width), int(height))


def barycentrics(points: np.ndarray, faces: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Barycentric weights [height, width, 3] of each pixel centre in its triangle (zeros where ids < 0).

    Exact in float64: under an orthographic projection they are linear in the pixel position.
    """
    height, width = ids.shape
    weights = np.zeros((height, width, 3))
    hit = ids >= 0
    if not hit.any():
        return weights
    ys, xs = np.nonzero(hit)
    cx, cy = xs + 0.5, ys + 0.5
    t = np.asarray(points, np.float64)[np.asarray(faces, np.int64)[ids[hit]], :2]  # [N, 3, 2]
    area = (t[:, 1, 0] - t[:, 0, 0]) * (t[:, 2, 1] - t[:, 0, 1]) - (t[:, 1, 1] - t[:, 0, 1]) * (t[:, 2, 0] - t[:, 0, 0])
    area = np.where(area == 0, 1e-300, area)
    w0 = ((t[:, 1, 0] - cx) * (t[:, 2, 1] - cy) - (t[:, 1, 1] - cy) * (t[:, 2, 0] - cx)) / area
    w1 = ((t[:, 2, 0] - cx) * (t[:, 0, 1] - cy) - (t[:, 2, 1] - cy) * (t[:, 0, 0] - cx)) / area
    weights[hit] = np.clip(np.stack([w0, w1, 1.0 - w0 - w1], 1), 0.0, 1.0)
    weights[hit] /= weights[hit].sum(1, keepdims=True)
    return weights


if __name__ == "__main__":
    # The worker: protocol on the original stdout, anything else printed goes to stderr.
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    serve(sys.stdin.buffer, replies)
