"""The two evaluation protocols of `uh-eval`: `quick` (small, fast runs) and `paper` (§4.1).

The paper measures everything at 2048 px for its r = 256 generator, that is at s = 8: full images
are rendered at 2048 px and compared at 1024 px with the HR full-body set (SHHQ-HR, 1024 px), and
patches are taken at s = 8. `paper` keeps these ratios for any patch resolution r:

| quantity | paper (r = 256) | any r |
|---|---|---|
| rendered full image (one generator pass) | 2048 px | RENDER_SCALE * r |
| FID / precision-recall image (antialiased downsample) | 1024 px | FID_SCALE * r |
| HR full-body set: full-body images at least this dense | 1024 px | FID_SCALE * r |
| pFID / kFID patch scale s | 8 | PATCH_SCALE |

`quick` is the protocol of small runs: full images stitched from patches at `--fid-size` (default
r) against every full-body image, pFID patches from the trainer's sampler over all sources, kFID
patches at s = 8 magnified where their source is too sparse, Inception features throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

PROTOCOLS = ("quick", "paper")
PAPER_RESOLUTION = 256  # r of the paper's generator
PAPER_RENDER_SIZE = 2048  # §4.1: every metric at 2048 x 2048
PAPER_FID_SIZE = 1024  # the HR full-body set's resolution, at which FID is computed
RENDER_SCALE = PAPER_RENDER_SIZE // PAPER_RESOLUTION  # 8
FID_SCALE = PAPER_FID_SIZE // PAPER_RESOLUTION  # 4
PATCH_SCALE = float(RENDER_SCALE)  # s = 8 of pFID and kFID patches


@dataclass(frozen=True)
class PaperSizes:
    """The paper protocol's sizes for a generator of patch resolution r."""

    r: int
    render_size: int  # full images are rendered in one pass at this size ...
    fid_size: int  # ... and downsampled (antialiased) to this one, the size of the real images
    hr_min_density: float  # real full-body images must be at least this dense (px per full-body unit)
    patch_scale: float  # s of pFID and kFID patches

    def describe(self) -> dict:
        return {"name": "paper", "r": self.r, "render_size": self.render_size, "fid_size": self.fid_size,
                "hr_min_density": self.hr_min_density, "patch_scale": self.patch_scale,
                "paper_r": PAPER_RESOLUTION, "paper_render_size": PAPER_RENDER_SIZE,
                "paper_fid_size": PAPER_FID_SIZE}


def paper_sizes(r: int) -> PaperSizes:
    """The paper's 2048 / 1024 px at r = 256, scaled to a generator of patch resolution r."""
    if r <= 0:
        raise ValueError(f"patch resolution must be positive, got {r}")
    return PaperSizes(r=r, render_size=RENDER_SCALE * r, fid_size=FID_SCALE * r,
                      hr_min_density=float(FID_SCALE * r), patch_scale=PATCH_SCALE)


def native_size(density: float, scale: float, res: int) -> int:
    """Pixels of a real patch at scale s: r, or the source's own pixel count across the patch
    (density / s) when that is smaller, so that real patches are never magnified."""
    return int(min(res, max(1, round(density / scale))))
