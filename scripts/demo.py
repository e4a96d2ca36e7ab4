"""`just demo`: run the pipeline end to end on the embedded defaults and write demo/report.html.

The data are made here, with nothing to download: people rendered from the open body model (full
body, and upper-body and face views at higher pixel density, with their exact homographies),
synthetic hands, and the photographs of people that ship inside installed packages. The MST aligns
them (`mst space`, `mst fit-prior`, `mst align` per source), the trainer learns from the shards in
two stages, and the renderer and the metrics run on the result.

Each stage is a real CLI command (or a short step of this script, named as such in the report). A
stage whose outputs already exist is reused, so re-running the demo only does what is missing.
The report (one HTML page, demo/report.html) gives each stage its command, what to look for, and
its outputs as captioned figures and tables, with the raw JSON linked; it opens with what to look at
first (the shipped checkpoint's people, with links to the run's measurements) and what a run of a
few CPU minutes can and cannot show. `scripts/report_check.py` checks it in headless Chromium.

    python scripts/demo.py [--out DIR] [--small]
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stage_plan import (  # noqa: E402  (the plan `just learn` shares)
    BIN,
    ROOT,
    SMALL,
    VIEW_SOURCES,  # noqa: F401  (the demo's views, as the report's tests read them)
    ZOOMS,
    Figure,
    Size,
    Stage,
    clock,
    command_line,
    data_stages,
    run_stage,
    shown,
)

TRAIN_SAMPLES = ("The trainer's own sample grid at its last snapshot: one row per fixed latent z; columns: "
                 "the whole body (s = 1), the face (s = 4), a hand (s = 4) and the legs (s = 2), each rendered "
                 "at the training resolution through its T(v, s).")

# The generator `just learn` trained (shipped with the project; the demo renders it next to its own run).
LEARNED = ROOT / "checkpoints" / "learned-tiny.safetensors"

# ---------------------------------------------------------------------------------------------
# The stages


def stages(demo: Path, size: Size) -> list[Stage]:
    """Every stage of the demo: the data (`stage_plan.data_stages`), training, rendering, evaluation."""
    shards, runs = demo / "shards", demo / "runs"
    s1, s2 = runs / "stage1", runs / "stage2"
    train, gen, ev = (str(BIN / name) for name in ("uh-train", "uh-generate", "uh-eval"))
    out = data_stages(demo, size)
    out += [
        Stage("train stage 1", "uh-train, tiny preset: whole full-body images at r = 32 (T = identity).",
              [train, "--shards", str(shards), "--out", str(s1), "--stage", "1", "--preset", "tiny",
               "--kimg", str(size.kimg1), "--batch", str(size.batch), "--snapshot-kimg", str(size.kimg1 / 4),
               "--lpips", "off"],
              [s1 / "network-latest.safetensors", s1 / "done"], logs=[s1 / "log.jsonl"],
              figures=[Figure([], TRAIN_SAMPLES, "after so few images, a light figure-shaped blob on the white "
                              "background at best; the columns of one row should agree with each other.",
                              newest_in=s1)],
              look_for="losses that move and stay finite; no trend to read into them at this length."),
        Stage("train stage 2", "uh-train, stage 2: patches of every source at sampled (v, s), with CutMix, "
              "consistency and the stage-1 teacher's pixel loss.",
              [train, "--shards", str(shards), "--out", str(s2), "--stage", "2", "--preset", "tiny",
               "--teacher", str(s1 / "network-latest.safetensors"), "--kimg", str(size.kimg2), "--batch",
               str(size.batch), "--snapshot-kimg", str(size.kimg2 / 4), "--lpips", "auto"],
              [s2 / "network-latest.safetensors", s2 / "done"], logs=[s2 / "log.jsonl"],
              figures=[Figure([], TRAIN_SAMPLES, "the same as stage 1, started from its weights.", newest_in=s2)],
              look_for="the teacher's pixel loss present and finite, like the other terms."),
        Stage("generate 4r", "uh-generate: 128 px images stitched from 4 x 4 patches of 32 px.",
              [gen, "--ckpt", str(s2 / "network-latest.safetensors"), "--seeds", size.seeds, "--size", "128",
               "--out", str(demo / "gen128")], [demo / "gen128" / "grid.png"],
              figures=[Figure([demo / "gen128" / "grid.png"], "One 128 px image per seed, each stitched from "
                              "4 × 4 patches of 32 px rendered separately at s = 4.",
                              "no seams at the patch borders (every 32 px): the patches are views of one "
                              "continuous image.")]),
        Stage("generate 8r", "uh-generate: 256 px images rendered in one pass on an enlarged input grid.",
              [gen, "--ckpt", str(s2 / "network-latest.safetensors"), "--seeds", size.seeds, "--size", "256",
               "--mode", "single", "--out", str(demo / "gen256")], [demo / "gen256" / "grid.png"],
              figures=[Figure([demo / "gen256" / "grid.png"], "One 256 px image per seed (8 × the training "
                              "resolution), in one pass on an enlarged input grid.",
                              "the same figures as the 128 px grid, at twice the size; no new detail can "
                              "appear after this little training.")]),
    ]
    for name, ((vx, vy), scale) in ZOOMS.items():
        out.append(Stage(f"zoom: {name}", f"uh-generate --patch: the {name} region (centre ({vx}, {vy}), side "
                         f"1/{scale:g} of the square) rendered on its own, at the density of the 256 px image.",
                         [gen, "--ckpt", str(s2 / "network-latest.safetensors"), "--seeds", size.seeds, "--patch",
                          f"{vx},{vy}", "--scale", f"{scale:g}", "--out", str(demo / name)],
                         [demo / name / "grid.png"]))
    out[-1].extra = lambda: zoom_figure(demo, size.seeds, [c for c in out if c.name.startswith(
        ("generate 8r", "zoom: "))])
    if LEARNED.exists():
        out += learned_stages(demo, size)
    out += [
        Stage("evaluate", "uh-eval with small counts: FID, patch FID, keypoint FID, precision/recall.",
              [ev, "--ckpt", str(s2 / "network-latest.safetensors"), "--shards", str(shards), "--metrics",
               "fid,pfid,kfid,pr", "--n", str(size.eval_n), "--out", str(demo / "eval"), "--cache",
               str(demo / "eval-cache")],
              [demo / "eval" / "metrics.md"], tables=[demo / "eval" / "metrics.md"],
              look_for="that every metric is computed. The values are large and not comparable with the "
              "paper's: see \u201cWhat this run can and cannot show\u201d."),
    ]
    return out


def learned_stages(demo: Path, size: Size) -> list[Stage]:
    """The shipped generator (`just learn`'s final network) rendered like the demo's own: the whole image
    at 256 px and each zoom region on its own, then shown next to the demo's run."""
    gen = str(BIN / "uh-generate")
    ckpt = str(LEARNED.relative_to(ROOT)) if LEARNED.is_relative_to(ROOT) else str(LEARNED)
    out = [Stage("learned: generate r", "uh-generate with the shipped checkpoint (a longer CPU run of the same "
                 "preset on the same kind of data, made by `just learn`): the whole image at the training "
                 "resolution, 32 px.",
                 [gen, "--ckpt", ckpt, "--seeds", size.seeds, "--size", "32", "--out", str(demo / "learned-gen32")],
                 [demo / "learned-gen32" / "grid.png"]),
           Stage("learned: generate 8r", "uh-generate with the shipped checkpoint: 256 px images in one pass.",
                 [gen, "--ckpt", ckpt, "--seeds", size.seeds, "--size", "256", "--mode", "single", "--out",
                  str(demo / "learned-gen256")], [demo / "learned-gen256" / "grid.png"])]
    for name, ((vx, vy), scale) in ZOOMS.items():
        out.append(Stage(f"learned: zoom {name}", f"uh-generate --patch with the shipped checkpoint: the {name} "
                         f"region (centre ({vx}, {vy}), side 1/{scale:g}) rendered on its own.",
                         [gen, "--ckpt", ckpt, "--seeds", size.seeds, "--patch", f"{vx},{vy}", "--scale",
                          f"{scale:g}", "--out", str(demo / f"learned-{name}")],
                         [demo / f"learned-{name}" / "grid.png"]))
    out[-1].extra = lambda: learned_figures(demo, size.seeds, out)
    return out


def learned_provenance() -> dict:
    from uh_train.checkpoint import load_checkpoint

    return load_checkpoint(LEARNED).config.get("provenance") or {}


def learned_figures(demo: Path, seeds_text: str, made_by: list[Stage]) -> str:
    """The demo's own 256 px grid next to the shipped checkpoint's, its provenance, and its zooms."""
    info = learned_provenance()
    facts = ", ".join(f"{k.replace('_', ' ')}: {html.escape(str(v))}" for k, v in info.items()) or "not recorded"
    psnr = info.get("consistency_psnr_db") or {}
    if psnr:
        held = min(psnr.values()) >= 27.0
        dense = ("On the right the same figures rendered 8x denser in one pass " +
                 ("keep their figure" if held else "lose their shape") + ": rendered at " + " / ".join(psnr)
                 + " and reduced back to 32 px they match the 32 px render with PSNR "
                 + " / ".join(f"{v:.1f}" for v in psnr.values()) + " dB (uh-eval --metrics consistency)"
                 + ("." if held else "; this network has not learned to hold the figure at densities it rarely "
                    "saw (docs/training.md, \"What the runs showed\")."))
    else:
        dense = ("On the right the same figures rendered 8x denser: a checkpoint without a recorded scale "
                 "consistency (uh-eval --metrics consistency measures it).")
    pair = [demo / "gen256" / "grid.png", demo / "learned-gen32" / "grid.png", demo / "learned-gen256" / "grid.png"]
    images = [(rel(p, demo), 340, 340, png_size(p)[0] < 340) for p in pair if p.exists()]
    text = f"<p>Provenance of {html.escape(LEARNED.name)} (from the file's metadata): {facts}.</p>"
    text += figure_html(0, images, "Left: this demo's own short run (generate 8r above). Middle: the shipped "
                        "checkpoint at the training resolution (32 px, enlarged). Right: the shipped checkpoint, "
                        "the same seeds and the same 256 px single-pass render as on the left.",
                        "people in the middle (head, torso, arms, legs where a person's are, on the renders' "
                        "backgrounds) where the left shows blobs: the difference is training length alone. " + dense,
                        [command_line(s) for s in made_by[:2]])
    zoom = zoom_figure(demo, seeds_text, made_by, prefix="learned-", intro="The shipped checkpoint. ",
                       look_for="the rendered patch agreeing with the box; how much face or hand the zoom shows "
                                "at this training length (a 32 px network trained for about an hour on a CPU).")
    return text + zoom


# ---------------------------------------------------------------------------------------------
# Running and reporting


def stage_anchor(name: str) -> str:
    """The id of a stage's section in the report."""
    return "stage-" + "".join(c if c.isalnum() else "-" for c in name)


def off_terms(run: dict) -> dict[str, str]:
    """Loss terms a run logs but does not train on (their weight is 0, or their part is not used),
    from its run.json: name -> why."""
    cfg, pixel = run.get("config") or {}, str(run.get("pixel_loss") or "")
    out = {}
    if cfg.get("lambda_cr") == 0:
        out["D/consistency"] = "λ_cr = 0: logged, not trained on"
    if cfg.get("r1_gamma") == 0:
        out["D/r1"] = "R1 weight 0"
    if cfg.get("lambda_p") == 0:
        out["G/pixel_l1"] = out["G/pixel_lpips"] = "λ_p = 0: logged, not trained on"
    elif pixel and "LPIPS (" not in pixel.replace("LPIPS's", ""):
        out["G/pixel_lpips"] = f"LPIPS is not used in this run; its pixel loss: {pixel}"
    return out


def term_unit(name: str) -> str:
    """What a logged term's values are, for its plot's y axis."""
    if name.startswith(("D/", "G/")):
        return "loss"
    if "psnr" in name:
        return "PSNR (dB)"
    if "D_acc" in name:
        return "share of pixels"
    if name.endswith("teacher_l1"):
        return "L1 to teacher"
    return "value"


def loss_curves_svg(log: Path, off: dict[str, str] | None = None, width: int = 520, height: int = 190) -> str:
    """Every logged term that is on in this run against the step, one small inline SVG plot per term
    with labelled axes (x: step, and the kimg seen at its ends; y: the term's value). Terms that are
    off (`off`: their weight is 0 or their part unused; or 0 at every step) are listed, not drawn."""
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    if not rows:
        return ""
    names = sorted({k for r in rows for k in r if "/" in k})
    kimg = {r["step"]: r.get("kimg") for r in rows}
    off = dict(off or {})
    left, right, top, bottom = 62, 12, 24, 40  # plot margins: tick labels and axis titles
    plots = []
    for name in names:
        pts = [(r["step"], r[name]) for r in rows if name in r]
        if name not in off and pts and all(y == 0 for _, y in pts):
            off[name] = "0 at every step"
        if name in off or len(pts) < 2:
            continue
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
        span = (y1 - y0) or 1.0
        w, h = width - left - right, height - top - bottom

        def px(x, x0=x0, x1=x1, w=w):
            return left + (x - x0) / max(x1 - x0, 1) * w

        def py(y, y0=y0, span=span, h=h):
            return top + h - (y - y0) / span * h

        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        ticks = ""
        for y in (y0, (y0 + y1) / 2, y1) if y1 > y0 else (y0,):
            ticks += (f'<line x1="{left - 4}" y1="{py(y):.1f}" x2="{left}" y2="{py(y):.1f}" stroke="#666"/>'
                      f'<text x="{left - 6}" y="{py(y) + 4:.1f}" font-size="10" text-anchor="end">{y:.3g}</text>')
        for x in (x0, x1):
            k = kimg.get(x)
            label = f"{x}" + (f" ({k:g} kimg)" if isinstance(k, (int, float)) else "")
            anchor = "start" if x == x0 else "end"
            ticks += (f'<line x1="{px(x):.1f}" y1="{top + h}" x2="{px(x):.1f}" y2="{top + h + 4}" stroke="#666"/>'
                      f'<text x="{px(x):.1f}" y="{top + h + 15}" font-size="10" text-anchor="{anchor}">'
                      f"{html.escape(label)}</text>")
        plots.append(
            f'<svg width="{width}" height="{height}" style="border:1px solid #ddd;margin:2px" '
            f'role="img" aria-label="{html.escape(name)} against the step">'
            f'<text x="{left}" y="15" font-size="12">{html.escape(name)}: {ys[0]:.3g} → {ys[-1]:.3g}'
            f" (min {y0:.3g}, max {y1:.3g})</text>"
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + h}" stroke="#666"/>'
            f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}" stroke="#666"/>{ticks}'
            f'<text x="{left + w / 2:.1f}" y="{height - 6}" font-size="11" text-anchor="middle">step</text>'
            f'<text x="12" y="{top + h / 2:.1f}" font-size="11" text-anchor="middle" '
            f'transform="rotate(-90 12 {top + h / 2:.1f})">{html.escape(term_unit(name))}</text>'
            f'<polyline fill="none" stroke="#3366cc" stroke-width="1.5" points="{path}"/></svg>')
    listed = [f"<li>{html.escape(n)}: {html.escape(why)}</li>" for n, why in sorted(off.items()) if n in names]
    note = f"<p>Not drawn, off in this run:</p><ul>{''.join(listed)}</ul>" if listed else ""
    return "<div>" + "".join(plots) + "</div>" + note


def pr_note_html(metrics_md: str) -> str:
    """A sentence under the metrics table on what precision and recall measure, and why they are 0
    after a run this short."""
    lines = [ln.strip().strip("|").split("|") for ln in metrics_md.splitlines() if ln.strip().startswith("|")]
    if len(lines) < 3:
        return ""
    head, row = [c.strip() for c in lines[0]], [c.strip() for c in lines[2]]
    cols = {name: next((i for i, c in enumerate(head) if c.startswith(name)), None) for name in ("Precision", "Recall")}
    if None in cols.values():
        return ""
    try:
        values = {name: float(row[i]) for name, i in cols.items()}
    except (ValueError, IndexError):
        return ""  # not computed ('–')
    k = re.search(r"precision/recall: k = (\d+)", metrics_md)
    n = re.search(r"n = (\d+) per metric", metrics_md)
    k, n = (k.group(1) if k else "k"), (n.group(1) if n else "n")
    text = ("Precision is the share of generated images that fall inside the real images' neighbourhoods in "
            f"feature space (each real image's ball reaches its k-th nearest real neighbour, k = {k}), recall the "
            "share of real images inside the generated images' balls (Kynkäänniemi et al.).")
    if max(values.values()) < 0.0005:
        text += (f" Both are 0.000 here, as expected at this scale: with {n} images a side the balls are small, "
                 "and after a few thousand images of training every generated image lies farther from each real "
                 "image than that image's k-th nearest real neighbour, so none falls inside a real ball; nor does "
                 "any real image fall inside a generated image's ball. Both rise once the generated people resemble "
                 "the data (the paper measures 50,000 images of a fully trained network).")
    return f'<p id="precision-recall">{html.escape(text)}</p>'


def markdown_table_html(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("|")]
    if len(lines) < 2:
        return f"<pre>{html.escape(text)}</pre>"
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines if not set(ln) <= set("|-: ")]
    notes = [ln.strip()[2:] for ln in text.splitlines() if ln.strip().startswith(("* ", "- "))]
    listed = "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>" if notes else ""
    return html_table(cells[0], cells[1:]) + listed


def html_table(head: list[str], body: list[list[str]]) -> str:
    out = "<table><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in head) + "</tr>"
    for row in body:
        out += "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
    return out + "</table>"


def counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "–"


def validate_html(record: dict) -> str:
    """`mst validate --json` as a sentence and a table of sources x samples/shards/kinds/tiers/density."""
    defects = record.get("defects", [])
    verdict = "no defects" if record.get("ok") else f"{len(defects)} defect(s)"
    out = (f"<p><b>{record.get('samples', 0)} samples in {record.get('shards', 0)} shards, {verdict}.</b></p>")
    rows = []
    for name, src in record.get("sources", {}).items():
        density = src.get("density")
        dens = "–" if not density else (f"{density[0]:.0f}" if density[0] == density[1]
                                        else f"{density[0]:.0f}–{density[1]:.0f}")
        rows.append([name, src.get("samples", 0), src.get("shards", 0), counts_text(src.get("kinds", {})),
                     counts_text(src.get("tiers", {})), dens])
    out += html_table(["source", "samples", "shards", "kinds", "tiers", "density (px per full-body side)"], rows)
    if defects:
        out += "<p>First defects:</p>" + html_table(["shard", "sample", "problem"],
                                                    [[d["shard"], d["key"], d["problem"]] for d in defects[:20]])
    return out


def space_html(record: dict) -> str:
    """`mst space`'s JSON as a table of the average camera ᾱ, the mean pitch ô, the density."""
    cam = record.get("cam_bar") or [float("nan")] * 3
    pitch = float(record.get("pitch", float("nan")))
    spread = record.get("pitch_spread") or {}
    rows = [
        ["ᾱ: scale s", f"{cam[0]:.4f}", "scale of the average weak-perspective camera: how large the average "
         "body appears in the square"],
        ["ᾱ: translation (tx, ty)", f"({cam[1]:+.4f}, {cam[2]:+.4f})", "where the average camera places the body"],
        ["ô: mean pitch", f"{pitch:+.4f} rad ({math.degrees(pitch):+.2f}°)",
         "forward tilt of the body that SMPLify-P is pulled towards (λr term)"],
    ]
    if spread:
        rows.append(["ô: spread", f"std {spread.get('std', float('nan')):.4f} rad; 5–95 %: "
                     f"{spread.get('p5', float('nan')):+.4f} … {spread.get('p95', float('nan')):+.4f}",
                     f"measured from {spread.get('from', '?')} over {spread.get('count', '?')} images"])
    rows += [["density", f"{record.get('density', float('nan')):g} px", "pixels per side of the full-body square "
              "(sets each source's tier)"],
             ["images fitted", str(record.get("count", "?")), f"source: {record.get('source', '?')}"]]
    return html_table(["quantity", "value", "meaning"], rows)


def png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def figure_html(number: int, images: list[tuple[str, int, int, bool]], shows: str, look_for: str,
                made_by: list[str], rows: str = "", per_row: int | None = None) -> str:
    """One captioned figure: images as (src, display width, display height, enlarged), or pre-built ROWS of
    HTML. Enlarged images keep their pixels square and sharp."""
    imgs = ""
    for i, (src, w, h, enlarged) in enumerate(images):
        if per_row and i and i % per_row == 0:
            imgs += "<br>"
        imgs += (f'<img src="{html.escape(src)}" width="{w}" height="{h}" alt="{html.escape(src)}" '
                 f'title="{html.escape(src)}"{" class=enlarged" if enlarged else ""}>')
    cmds = "<br>".join(f"<code>{html.escape(c)}</code>" for c in made_by)
    return (f'<figure><div class="imgs">{imgs}{rows}</div><figcaption><b>Figure {number}.</b> {html.escape(shows)} '
            f"<b>Look for:</b> {html.escape(look_for)}<br><b>Made by:</b> {cmds}</figcaption></figure>")


def display_size(path: Path, height: int | None, page: int = 1040, tall: int = 1000) -> tuple[int, int]:
    """Display size: HEIGHT if given, else the largest whole enlargement that fits the page's width and
    TALL px of height (pixels stay square and sharp); an image wider than the page is shrunk to fit."""
    w, h = png_size(path)
    if height is not None:
        return round(w * height / h), height
    if w > page:
        return page, round(h * page / w)
    factor = max(1, min(page // w, tall // h))
    return w * factor, h * factor


def zoom_figure(demo: Path, seeds_text: str, made_by: list[Stage], number: int = 0, prefix: str = "",
                intro: str = "", look_for: str | None = None) -> str:
    """The 256 px images with each zoom region's box drawn on it, and per region: the box cut from the
    image and the patch rendered on its own, enlarged alike. Reads demo/PREFIXgen256/ and
    demo/PREFIXNAME/ per region; writes the annotated images to demo/PREFIXzoom/."""
    import numpy as np
    from PIL import Image, ImageDraw

    from uh_train.generate import parse_seeds

    colours = {"face": (230, 30, 30), "hand": (20, 90, 230)}
    folder = demo / f"{prefix}zoom"
    folder.mkdir(exist_ok=True)
    rows, diffs = [], {name: [] for name in ZOOMS}
    for seed in parse_seeds(seeds_text)[:4]:
        full = demo / f"{prefix}gen256" / f"seed{seed:04d}.png"
        if not full.exists():
            continue
        image = Image.open(full).convert("RGB")
        side = image.size[0]
        boxed = image.copy()
        draw = ImageDraw.Draw(boxed)
        cells = []
        for name, ((vx, vy), scale) in ZOOMS.items():
            box = zoom_box(side, (vx, vy), scale)
            draw.rectangle([box[0] - 2, box[1] - 2, box[2] + 1, box[3] + 1], outline=colours.get(name, (0, 0, 0)),
                           width=2)  # just outside the region
            crop = image.crop(box)
            crop_path = folder / f"seed{seed:04d}-{name}-crop.png"
            save_png(crop, crop_path)
            patch_path = demo / f"{prefix}{name}" / f"seed{seed:04d}.png"
            cells.append((name, crop_path, patch_path))
            if patch_path.exists():
                patch = Image.open(patch_path).convert("RGB").resize(crop.size, Image.LANCZOS)
                diffs[name].append(float(np.abs(np.asarray(patch, float) - np.asarray(crop, float)).mean()))
        boxed_path = folder / f"seed{seed:04d}-boxes.png"
        save_png(boxed, boxed_path)
        row = f'<div class="zoomrow"><div class="full"><img src="{rel(boxed_path, demo)}" width="256" height="256" ' \
              f'alt="seed {seed}"><br>seed {seed}: 256 px, boxes drawn</div>'
        for name, crop_path, patch_path in cells:
            colour = "#{:02x}{:02x}{:02x}".format(*colours.get(name, (0, 0, 0)))
            for what, path in ((f"{name}: the box, cut from the 256 px image", crop_path),
                               (f"{name}: rendered on its own", patch_path)):
                if path.exists():
                    row += (f'<div class="patch"><img src="{rel(path, demo)}" width="128" height="128" '
                            f'style="border:2px solid {colour}" alt="{html.escape(what)}"><br>'
                            f"{html.escape(what)}</div>")
        rows.append(row + "</div>")
    if not rows:
        return ""
    agreement = "; ".join(f"{name} {np.mean(d):.1f}" for name, d in diffs.items() if d)
    regions = ", ".join(f"{name} centre ({v[0]}, {v[1]}), side 1/{s:g}" for name, (v, s) in ZOOMS.items())
    shows = (f"{intro}Zoomed patches next to the region of the full image they come from ({regions}; red: face, blue: "
             "hand). For each seed: the 256 px image with the boxes drawn, then per region the box cut out of "
             "that image and the same region rendered by itself through T(v, s), both enlarged 4×. Mean absolute "
             f"difference between the two, in 0–255 grey levels: {agreement or '–'}.")
    look_for = look_for or ("the rendered patch showing the same content as the box (the generator is one "
                            "continuous image, whatever the zoom); at this training length neither shows a face or "
                            "a hand, only the colours of that part of the figure.")
    return figure_html(number, [], shows, look_for, [command_line(s) for s in made_by] +
                       ["scripts/demo.py: zoom_figure (the boxes and cut-outs)"], rows="".join(rows))


def zoom_box(side: int, centre: tuple[float, float], scale: float) -> tuple[int, int, int, int]:
    """The pixel box (left, top, right, bottom) of the region of side 1/scale around CENTRE of
    full-body space [0,1]^2 (y down) in a SIDE-px image."""
    half = side / scale / 2
    cx, cy = centre[0] * side, centre[1] * side
    return round(cx - half), round(cy - half), round(cx + half), round(cy + half)


def save_png(image, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def rel(path: Path, demo: Path) -> str:
    return html.escape(os.path.relpath(path, demo))


def training_numbers(demo: Path, all_stages: list[Stage], results: list[dict]) -> dict:
    """What the demo trained: kimg and wall time per stage, the generator's parameter count."""
    info = {"kimg": 0.0, "train_s": 0.0, "batch": None, "g_params": None}
    for stage, res in zip(all_stages, results, strict=False):
        if not stage.name.startswith("train"):
            continue
        for log in stage.logs:
            if log.exists():
                lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
                if lines:
                    info["kimg"] += float(json.loads(lines[-1]).get("kimg", 0.0))
        done = [p for p in stage.outputs if p.name == "done"]
        if done and done[0].exists():  # the training time of a reused stage is kept in its done file
            info["train_s"] += float(done[0].read_text().split()[0] or 0)
        elif res["status"] == "ok":
            info["train_s"] += res["seconds"]
        ckpt = stage.outputs[0]
        if ckpt.exists() and ckpt.suffix == ".safetensors":
            try:
                from safetensors import safe_open

                with safe_open(str(ckpt), "np") as f:
                    keys = [k for k in f.keys() if k.split(".")[0] in ("G_ema", "G")]
                    first = keys[0].split(".")[0] if keys else None
                    info["g_params"] = sum(math.prod(f.get_slice(k).get_shape()) for k in keys
                                           if k.split(".")[0] == first) or None
            except Exception:  # noqa: BLE001 - the count is a detail of the report
                pass
        if "--batch" in stage.command:
            info["batch"] = int(stage.command[stage.command.index("--batch") + 1])
    return info


# The paper's training, for the comparison (App. B, Tab. 4): 43 GPU-days in total, batch 32 on 8 GPUs,
# stage 1 at 256 px; images evaluated at 2048 px; G has 28 M parameters. The `paper` preset's length
# is StyleGAN3's default, 25,000 kimg per stage (the paper gives GPU-days, not kimg).
PAPER_GPU_DAYS = 43
PAPER_KIMG = 2 * 25_000
PAPER_G_PARAMS = 28e6


def can_and_cannot_html(numbers: dict, total_s: float) -> str:
    kimg, train_s = numbers["kimg"], numbers["train_s"]
    params = numbers["g_params"]
    share = kimg / PAPER_KIMG
    gpu_min = PAPER_GPU_DAYS * 24 * 60
    if params:
        count = f"{params / 1e6:.1f} M" if params >= 1e6 else f"{params / 1e3:.0f} thousand"
        param_text = (f"a generator of about {count} weights (the paper's has 28 M parameters, "
                      f"{PAPER_G_PARAMS / params:,.0f} times as many)")
    else:
        param_text = "the tiny preset's generator (the paper's has 28 M parameters)"
    text = f"""<h2 id="can-and-cannot">What this run can and cannot show</h2>
<p>This demo took {total_s / 60:.1f} minutes on this machine's CPU, {train_s / 60:.1f} of them training:
{kimg:.3g} thousand images (kimg) in two stages at batch {numbers['batch'] or '?'}, 32 × 32 px patches,
{param_text}. The paper trains for
{PAPER_GPU_DAYS} GPU-days (about {gpu_min:,} GPU-minutes; batch 32 on 8 GPUs, 256 px in stage 1, evaluation at
2048 px); this project's <code>paper</code> preset trains 25,000 kimg per stage, {PAPER_KIMG:,} kimg in all, so the demo
sees {share:.4%} of those images (1 in {1 / share if share else float('inf'):,.0f}).</p>
<p><b>It can show</b> that every stage runs as a user would run it, on data with a known answer: the MST's H
against the exact H of each render (the table under \u201cMST vs truth\u201d is a real measurement), the shards
pass the spec, the losses of both stages are finite, the renderer composes images of any size from patches,
and whether a zoomed patch rendered on its own agrees with the same region of the full image (measured under
the zoom figure).
<b>It cannot show</b> image quality: after {kimg:.3g} kimg the generated people are blurred figure-shaped blobs,
faces and hands are not formed, and the metrics (on {{eval_n}} generated and real images) are large numbers that say
nothing about the paper's FID 15.37, pFID 18.94 or kFID 19.56; nor the gain from each data source (the paper's
ablation needs its datasets and its full training). For those, train the <code>paper</code> preset on real data on
GPUs (docs/training.md, docs/cluster.md).{{learned}}</p>"""
    learned = ""
    if LEARNED.exists():
        info = learned_provenance()
        learned = (f" What a longer CPU run of the same preset reaches is shown under \u201clearned: zoom\u201d: "
                   f"the shipped checkpoint {LEARNED.name}, made by <code>just learn</code> "
                   f"({info.get('stage1_kimg', '?')} + {info.get('stage2_kimg', '?')} kimg on this project's own data; "
                   "its curves are in docs/benchmarks.md).")
    return " ".join(text.replace("{learned}", learned).split("\n"))


def start_here_html(demo: Path, all_stages: list[Stage]) -> tuple[str, int]:
    """What a newcomer should look at first, on top of the report: the people of the shipped checkpoint
    (Figure 1, when it was rendered) and links to the sections that hold the run's measurements.
    Returns the HTML and the number of figures it holds."""
    names = {s.name for s in all_stages}
    learned = [s for s in all_stages if s.name.startswith("learned")]
    items, figure = [], ""
    grids = [demo / "learned-gen32" / "grid.png", demo / "learned-gen256" / "grid.png"]
    if learned and all(p.exists() for p in grids):
        side_by_side = stage_anchor(learned[-1].name)  # its figures sit under the last learned stage
        items.append(f'<b>People</b>: Figure 1 below, the shipped checkpoint {html.escape(LEARNED.name)} (a longer '
                     f'CPU run of the same network); next to this demo\'s own blobs under <a href="#{side_by_side}">'
                     f"{html.escape(learned[-1].name)}</a>.")
        images = [(rel(p, demo), 340, 340, png_size(p)[0] < 340) for p in grids]
        command = learned[0].command
        seeds = command[command.index("--seeds") + 1] if "--seeds" in command else "?"
        figure = figure_html(1, images, f"The shipped checkpoint: seeds {seeds} at the training resolution (32 px, "
                             "left, enlarged) and rendered 8x denser in one pass (256 px, right).",
                             "a head, torso, arms and legs where a person's are on the left; on the right, how much "
                             "of that figure survives at a density the network rarely saw.",
                             [command_line(s) for s in learned[:2]])
    elif "generate 8r" in names:
        items.append(f'<b>Generated images</b>: <a href="#{stage_anchor("generate 8r")}">generate 8r</a>.')
    if "MST vs truth" in names:
        items.append(f'<b>The MST against the truth</b>: <a href="#{stage_anchor("MST vs truth")}">MST vs truth</a>, '
                     "the corner error of each aligned view's H against the render's exact H: a real measurement.")
    zooms = [s.name for s in all_stages if s.name.startswith("zoom: ")]
    if zooms:
        items.append(f'<b>Zooms</b>: <a href="#{stage_anchor(zooms[-1])}">{html.escape(zooms[-1])}</a>, a patch '
                     "rendered on its own next to the same region of the whole image.")
    items.append('<b>Limits</b>: <a href="#can-and-cannot">what this run can and cannot show</a>, just below.')
    text = ('<h2 id="start-here">Start here</h2><ol>' + "".join(f"<li>{i}</li>" for i in items) + "</ol>" + figure)
    return text, 1 if figure else 0


def write_report(demo: Path, all_stages: list[Stage], results: list[dict], eval_n: int = 0) -> Path:
    rows = []
    sections = []

    start_here, figure_no = start_here_html(demo, all_stages)
    for stage, res in zip(all_stages, results, strict=True):
        anchor = stage_anchor(stage.name)
        took = res.get("took")
        seconds = f"{res['seconds']:.1f}" if res["status"] != "reused" else (
            f"{took:.1f} (earlier run)" if took is not None else "–")
        rows.append(f'<tr><td><a href="#{anchor}">{html.escape(stage.name)}</a></td><td>{html.escape(res["status"])}'
                    f"</td><td>{seconds}</td><td><code>{html.escape(command_line(stage))}</code></td></tr>")
        body = (f'<h2 id="{anchor}">{html.escape(stage.name)}</h2><p>{html.escape(stage.what)}</p>'
                f"<p class=cmd><code>$ {html.escape(command_line(stage))}</code></p>")
        if stage.look_for:
            body += f"<p><b>Look for:</b> {html.escape(stage.look_for)}</p>"
        for fig in stage.figures:
            paths = fig.paths
            if fig.newest_in is not None:
                paths = sorted(fig.newest_in.glob("samples-*.png"))[-1:]
            images = []
            for p in paths:
                if p.exists():
                    w, h = display_size(p, fig.height)
                    images.append((rel(p, demo), w, h, w > png_size(p)[0]))
            if images:
                figure_no += 1
                body += figure_html(figure_no, images, fig.shows, fig.look_for, [command_line(stage)],
                                    per_row=fig.per_row)
        for log in stage.logs:
            run = log.with_name("run.json")  # how the run started and which pixel loss it used
            info = json.loads(run.read_text()) if run.exists() else {}
            if info:
                body += (f"<p>Started from: {html.escape(str(info.get('start')))}. Teacher pixel loss: "
                         f"{html.escape(str(info.get('pixel_loss')))}.</p>")
            curves = loss_curves_svg(log, off_terms(info)) if log.exists() else ""
            if curves:
                figure_no += 1
                body += figure_html(figure_no, [], "The loss terms the trainer logged, one plot per term: x axis the "
                                    "training step (with the thousands of images seen, kimg, at its ends), y axis "
                                    "the term's value (title: first → last value, range). Terms that are off in "
                                    "this run are listed under the plots instead of drawn as a flat line.",
                                    stage.look_for or "finite values.",
                                    [command_line(stage), f"its log: {rel(log, demo)}"], rows=curves)
        for table in stage.tables:
            if table.exists():
                body += markdown_table_html(table.read_text())
                if table.name == "metrics.md":
                    body += pr_note_html(table.read_text())
        if stage.name == "full-body space":
            for path in stage.outputs[:1]:
                if path.exists():
                    body += space_html(json.loads(path.read_text()))
                    body += f'<p><a href="{rel(path, demo)}">raw JSON ({html.escape(path.name)})</a></p>'
        if stage.stdout_to is not None and stage.stdout_to.exists():
            try:
                body += validate_html(json.loads(stage.stdout_to.read_text()))
            except ValueError:
                body += "<p>The validation output is not JSON; see the raw file.</p>"
            body += f'<p><a href="{rel(stage.stdout_to, demo)}">raw JSON ({html.escape(stage.stdout_to.name)})</a></p>'
        if stage.extra is not None and res["status"] in ("ok", "reused"):
            try:
                extra = stage.extra()
            except Exception as e:  # noqa: BLE001 - a figure that cannot be made is named, the report still written
                extra = f"<p>(figure not made: {html.escape(type(e).__name__)}: {html.escape(str(e))})</p>"
            while "<b>Figure 0.</b>" in extra:  # number the stage's figures in order
                figure_no += 1
                extra = extra.replace("<b>Figure 0.</b>", f"<b>Figure {figure_no}.</b>", 1)
            body += extra
        sections.append(f"<section>{body}</section>")
    total = sum(r["seconds"] if r["status"] != "reused" else (r.get("took") or 0.0) for r in results)
    numbers = training_numbers(demo, all_stages, results)
    can_cannot = can_and_cannot_html(numbers, total).replace("{eval_n}", str(eval_n or "a few dozen"))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>UnitedHuman demo</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.4}}
td,th{{padding:4px 10px;text-align:left;vertical-align:top}} table{{border-collapse:collapse;margin:0.5em 0}}
tr:nth-child(even){{background:#f3f3f3}} th{{background:#e4e8ef}}
figure{{margin:1em 0;padding:0.5em;border:1px solid #ddd;background:#fafafa}}
figure img{{margin:2px;vertical-align:top;max-width:100%;height:auto}}
img.enlarged,.zoomrow img{{image-rendering:pixelated}}
figcaption{{font-size:0.92em;margin-top:0.4em}}
code{{font-family:monospace,monospace;font-size:0.88em;word-break:break-all}}
.zoomrow{{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start;margin-bottom:8px;font-size:0.8em}}
.zoomrow .full{{width:260px}} .zoomrow .patch{{width:136px}} section{{border-top:1px solid #ccc;margin-top:1.5em}}
p.cmd{{color:#444}}</style></head><body>
<h1>UnitedHuman demo report</h1>
<p>The pipeline run on data made on this machine: people rendered from the open body model, synthetic
hands and the photographs that ship with installed packages. Each section below is one stage: what it does,
the command it ran, what to look for, and its figures and tables. Re-run <code>just demo</code> to redo missing
stages (the times of reused stages are those of the run that made them). In all: {total:.0f} s of work.</p>
{start_here}
{can_cannot}
<h2>Stages</h2>
<table><tr><th>stage</th><th>status</th><th>seconds</th><th>command</th></tr>{''.join(rows)}</table>
{''.join(sections)}
</body></html>"""
    out = demo / "report.html"
    tmp = out.with_name("report.html.tmp")
    tmp.write_text(page)
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "demo", help="demo folder (default: demo/)")
    parser.add_argument("--small", action="store_true", help="the smallest setting (a few minutes; for tests)")
    args = parser.parse_args(argv)
    demo = args.out.resolve()
    demo.mkdir(parents=True, exist_ok=True)
    size = SMALL if args.small else Size()
    all_stages = stages(demo, size)
    timings_path = demo / "timings.json"  # how long each stage took when it last ran (reused stages keep it)
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    results = []
    start = time.time()
    for number, stage in enumerate(all_stages, 1):
        res = run_stage(stage, f"[{number}/{len(all_stages)}, {clock(time.time() - start)}] ")
        if res["status"] == "ok":
            timings[stage.name] = res["seconds"]
            tmp = timings_path.with_name(timings_path.name + ".tmp")
            tmp.write_text(json.dumps(timings, indent=1))
            os.replace(tmp, timings_path)
        res["took"] = timings.get(stage.name)
        results.append(res)
        if res["status"] not in ("ok", "reused"):
            print(f"stage '{stage.name}' failed; fix the error above and re-run `just demo`", file=sys.stderr)
            write_report(demo, all_stages[: len(results)], results, size.eval_n)
            return 1
    out = write_report(demo, all_stages, results, size.eval_n)
    print(f"==> report: {shown(out)} (open it in a browser; `just report-check` checks it in headless Chromium)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
