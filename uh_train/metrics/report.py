"""Evaluation results as JSON (`metrics.json`) and a Markdown table (`metrics.md`) in the layout of
the paper's Table 1: FID, pFID, kFID per keypoint group and their mean, then precision/recall."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from uh_train.format.atomic import atomic_write_text

from .patches import KFID_GROUPS

FORMAT = "unitedhuman-eval/1"


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(result: dict[str, Any], method: str) -> str:
    """Table 1 layout: one row for `method`; '–' where a metric was not computed."""
    kfid = result.get("kfid") or {}
    groups = kfid.get("groups") or {}
    pr = result.get("pr") or {}
    head = ["Method", "FID ↓", "pFID ↓", *(f"kFID {g} ↓" for g in KFID_GROUPS), "kFID mean ↓",
            "Precision ↑", "Recall ↑"]
    row = [method, _fmt((result.get("fid") or {}).get("value")), _fmt((result.get("pfid") or {}).get("value")),
           *(_fmt((groups.get(g) or {}).get("value")) for g in KFID_GROUPS), _fmt(kfid.get("mean")),
           _fmt(pr.get("precision"), 3), _fmt(pr.get("recall"), 3)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
             "| " + " | ".join(row) + " |"]
    cfg = result.get("config", {})
    inception = result.get("inception", {})
    protocol = result.get("protocol", {})
    r = result.get("resolution")
    if protocol.get("name") == "paper":
        sizes = (f"protocol: paper (r = {r}): full images rendered in one pass at {protocol.get('render_size')} px, "
                 f"downsampled to {protocol.get('fid_size')} px for FID and P&R, against full-body images at least "
                 f"{protocol.get('hr_min_density'):g} px dense; pFID and kFID patches at s = "
                 f"{protocol.get('patch_scale'):g}, fakes downsampled to sparse reals' size")
    else:
        sizes = (f"protocol: quick (r = {r}): FID/P&R at {cfg.get('fid_res')} px stitched from patches; "
                 f"kFID patches at s = {cfg.get('kfid_scale')}")
    short = result.get("fewer_than_n") or []
    counts = f"n = {cfg.get('n')} per metric (per group for kFID)"
    if short:
        counts += "; fewer real samples existed, so these were computed from what there was: " + "; ".join(short)
    notes = [sizes, counts,
             f"Inception: {inception.get('file')} (sha256 {str(inception.get('sha256', ''))[:16]}…)",
             f"shards: manifest sha256 {str(result.get('manifest_sha256', ''))[:16]}…"]
    if pr:
        net = pr.get("features") or {}
        notes.append(f"precision/recall: k = {pr.get('k')}, {net.get('network', 'inception')} features "
                     f"({net.get('file')}, sha256 {str(net.get('sha256', ''))[:16]}…)")
    consistency = result.get("consistency")
    if consistency:
        per_k = consistency["factors"]
        parts = [f"k = {k}: PSNR {v['psnr']:.2f} dB" + (f", LPIPS {v['lpips']:.3f}" if v.get("lpips") is not None
                                                        else "") for k, v in per_k.items()]
        notes.append(f"scale consistency ({consistency['n']} latents; the render at k·r reduced to r (Lanczos) "
                     "against the render at r): " + ", ".join(parts))
    if groups:
        notes.append("real kFID patches per group: " + ", ".join(f"{g} {groups[g]['n']}" for g in groups))
    return "\n".join(lines) + "\n\n" + "\n".join(f"* {n}" for n in notes) + "\n"


def write_report(out: str | Path, result: dict[str, Any], method: str) -> tuple[Path, Path]:
    """Write `metrics.json` and `metrics.md` into `out` (atomically); returns both paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"format": FORMAT, "method": method, **result}
    json_path, md_path = out / "metrics.json", out / "metrics.md"
    atomic_write_text(json_path, json.dumps(record, indent=2, sort_keys=False) + "\n")
    atomic_write_text(md_path, f"# Evaluation: {method}\n\n" + markdown_table(result, method))
    return json_path, md_path
