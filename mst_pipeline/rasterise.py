"""Z-buffer rasterisation of a triangle mesh in numpy (identical bytes on every machine).

Used by `mst render-people` to render and by the alignment overlays to draw the fitted silhouette.
"""

from __future__ import annotations

import numpy as np

MAX_CANDIDATES = 2_000_000  # pixel-triangle pairs rasterised at once (bounds the memory)


def rasterise(points: np.ndarray, faces: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Z-buffer rasterisation of a triangle mesh, sampled at pixel centres.

    points [V, 3]: pixel x, y (pixel centres at integer + 0.5) and depth (smaller = nearer);
    faces [F, 3]. Returns (triangle index [height, width] int64, -1 where no triangle covers the
    centre; barycentric weights [height, width, 3]). Ties go to the lower triangle index.
    """
    tri = points[faces]  # [F, 3, 3]
    xy = tri[..., :2]
    x0 = np.maximum(np.ceil(xy[..., 0].min(1) - 0.5), 0).astype(np.int64)
    x1 = np.minimum(np.floor(xy[..., 0].max(1) - 0.5), width - 1).astype(np.int64)
    y0 = np.maximum(np.ceil(xy[..., 1].min(1) - 0.5), 0).astype(np.int64)
    y1 = np.minimum(np.floor(xy[..., 1].max(1) - 0.5), height - 1).astype(np.int64)
    area = ((xy[:, 1, 0] - xy[:, 0, 0]) * (xy[:, 2, 1] - xy[:, 0, 1])
            - (xy[:, 1, 1] - xy[:, 0, 1]) * (xy[:, 2, 0] - xy[:, 0, 0]))
    keep = np.flatnonzero((x1 >= x0) & (y1 >= y0) & (np.abs(area) > 1e-12))
    nx, ny = x1[keep] - x0[keep] + 1, y1[keep] - y0[keep] + 1
    counts = nx * ny
    zbuf = np.full(width * height, np.inf)
    fbuf = np.full(width * height, -1, dtype=np.int64)
    wbuf = np.zeros((width * height, 3))
    ends = np.cumsum(counts)
    start = 0
    while start < len(keep):
        # A chunk of triangles whose pixel candidates fit in MAX_CANDIDATES (at least one triangle).
        base = ends[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, base + MAX_CANDIDATES, side="right")))
        sel = keep[start:stop]
        c = counts[start:stop]
        owner = np.repeat(np.arange(len(sel)), c)
        offset = np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c)
        px = x0[sel][owner] + offset % nx[start:stop][owner]
        py = y0[sel][owner] + offset // nx[start:stop][owner]
        t = tri[sel][owner]  # [N, 3, 3]
        cx, cy = px + 0.5, py + 0.5
        a = area[sel][owner]
        w0 = ((t[:, 1, 0] - cx) * (t[:, 2, 1] - cy) - (t[:, 1, 1] - cy) * (t[:, 2, 0] - cx)) / a
        w1 = ((t[:, 2, 0] - cx) * (t[:, 0, 1] - cy) - (t[:, 2, 1] - cy) * (t[:, 0, 0] - cx)) / a
        w2 = 1.0 - w0 - w1
        inside = (w0 >= -1e-9) & (w1 >= -1e-9) & (w2 >= -1e-9)
        w = np.stack([w0, w1, w2], axis=1)[inside]
        pix = (py * width + px)[inside]
        z = (w * t[inside][:, :, 2]).sum(1)
        fid = sel[owner[inside]]
        order = np.lexsort((fid, z, pix))  # per pixel: nearest first, then lowest triangle index
        pix, z, fid, w = pix[order], z[order], fid[order], w[order]
        first = np.ones(len(pix), dtype=bool)
        first[1:] = pix[1:] != pix[:-1]
        pix, z, fid, w = pix[first], z[first], fid[first], w[first]
        better = (z < zbuf[pix]) | ((z == zbuf[pix]) & (fid < fbuf[pix]))
        pix, z, fid, w = pix[better], z[better], fid[better], w[better]
        zbuf[pix], fbuf[pix], wbuf[pix] = z, fid, w
        start = stop
    return fbuf.reshape(height, width), wbuf.reshape(height, width, 3)
