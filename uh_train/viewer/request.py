"""A view of a generated person: seed, truncation psi, the window T(v, s) of full-body space and the
size in pixels it is rendered at. Checked once where it enters (`parse_view`); a bad one raises
`BadView` with a one-line reason, which the server answers with a 400."""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from uh_train.format.geometry import SCALE_MAX

SEED_LIMIT = 2**32  # NumPy's RandomState takes seeds in [0, 2^32)
SCALE_RANGE = (0.25, 4 * SCALE_MAX)  # from a view four times wider than the space to 4x the training zoom
PSI_RANGE = (-2.0, 2.0)
MAX_VIEW_SIZE = 2048  # an interactive view; a saved one may be larger
MAX_SAVE_SIZE = 8192
PARAMETERS = ("seed", "psi", "v", "s", "size", "client")


class BadView(ValueError):
    """A view request that cannot be rendered; str() is the one-line reason."""


@dataclass(frozen=True)
class View:
    """seed, psi, the window's centre v in full-body space [0,1]^2 and zoom s (side 1/s), size in px."""

    seed: int
    psi: float
    v: tuple[float, float]
    s: float
    size: int

    def check(self, r: int, max_size: int = MAX_VIEW_SIZE) -> View:
        """Raise BadView unless the view can be rendered by a generator of patch resolution r."""
        if not 0 <= self.seed < SEED_LIMIT:
            raise BadView(f"seed {self.seed} is out of range: seeds are integers in [0, 2^32)")
        if not math.isfinite(self.psi) or not PSI_RANGE[0] <= self.psi <= PSI_RANGE[1]:
            raise BadView(f"psi {self.psi} is not a finite number in [{PSI_RANGE[0]:g}, {PSI_RANGE[1]:g}]")
        if not all(math.isfinite(c) for c in self.v):
            raise BadView(f"v {self.v} is not a finite point")
        if not all(0.0 <= c <= 1.0 for c in self.v):
            raise BadView(f"the window centred at v = {self.v[0]:g},{self.v[1]:g} is outside full-body space "
                          "(v must lie in [0,1]^2)")
        if not math.isfinite(self.s) or self.s <= 0:
            raise BadView(f"scale s = {self.s} must be a finite number > 0")
        if not SCALE_RANGE[0] <= self.s <= SCALE_RANGE[1]:
            raise BadView(f"scale s = {self.s:g} is outside [{SCALE_RANGE[0]:g}, {SCALE_RANGE[1]:g}]")
        if not r <= self.size <= max_size or self.size % r:
            raise BadView(f"size {self.size} px must be a multiple of the patch resolution {r} from {r} to {max_size}")
        return self

    def key(self) -> tuple:
        return (self.seed, self.psi, self.v, self.s, self.size)

    def query(self) -> str:
        """The URL query of this view (floats written so that they read back exactly)."""
        return f"seed={self.seed}&psi={self.psi!r}&v={self.v[0]!r},{self.v[1]!r}&s={self.s!r}&size={self.size}"

    def command(self, ckpt: Path, out: Path, mode: str, device: str, seeds: str | None = None) -> str:
        """The `uh-generate` command that writes this view (of SEEDS, default its seed) to OUT/seedNNNN.png."""
        args = ["uh-generate", "--ckpt", str(ckpt), "--seeds", seeds or str(self.seed), "--truncation", repr(self.psi),
                "--patch", f"{self.v[0]!r},{self.v[1]!r}", "--scale", repr(self.s), "--size", str(self.size),
                "--mode", mode, "--device", device, "--out", str(out)]
        return shlex.join(args)


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise BadView(f"parameter {name!r} is given {len(values)} times")
    if not values[0].strip():
        raise BadView(f"parameter {name!r} is empty")
    return values[0]


def _number(text: str, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise BadView(f"{name}={text[:40]!r} is not a number") from None


def parse_view(query: dict[str, list[str]], r: int, max_size: int = MAX_VIEW_SIZE) -> View:
    """A checked View from URL query parameters (each a list of strings, as web frameworks give them).
    Missing parameters take the whole body of seed 0 at psi 1 and 4r px."""
    unknown = sorted(set(query) - set(PARAMETERS))
    if unknown:
        raise BadView(f"unknown parameter {unknown[0][:40]!r}; expected {', '.join(PARAMETERS)}")
    seed_text = _one(query, "seed") or "0"
    if not re.fullmatch(r"\d{1,20}", seed_text.strip()):
        raise BadView(f"seed={seed_text[:40]!r} is not a non-negative integer")
    v_text = _one(query, "v") or "0.5,0.5"
    parts = v_text.split(",")
    if len(parts) != 2:
        raise BadView(f"v={v_text[:40]!r} is not a point VX,VY")
    size_text = _one(query, "size") or str(4 * r)
    if not re.fullmatch(r"\d{1,9}", size_text.strip()):
        raise BadView(f"size={size_text[:40]!r} is not a positive integer")
    view = View(seed=int(seed_text), psi=_number(_one(query, "psi") or "1", "psi"),
                v=(_number(parts[0], "v"), _number(parts[1], "v")), s=_number(_one(query, "s") or "1", "s"),
                size=int(size_text))
    return view.check(r, max_size)
