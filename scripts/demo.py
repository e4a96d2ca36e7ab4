"""`just demo`: run the pipeline end to end on the embedded defaults and write demo/report.html.

Each stage is a real CLI command. A stage whose outputs already exist is reused, so re-running the
demo only does what is missing. Stage timings and outputs go into one HTML page.
"""

from __future__ import annotations

import html
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo"
BIN = Path(sys.executable).parent


@dataclass
class Stage:
    name: str
    what: str
    command: list[str]
    outputs: list[Path]
    images: list[Path] = field(default_factory=list)
    stdout_to: Path | None = None
    ok_codes: tuple[int, ...] = (0,)
    logs: list[Path] = field(default_factory=list)  # log.jsonl files: loss curves in the report
    tables: list[Path] = field(default_factory=list)  # Markdown tables shown in the report
    latest_samples: Path | None = None  # run folder whose newest samples-*.png is shown


def stages() -> list[Stage]:
    shards = DEMO / "shards"
    runs = DEMO / "runs"
    s1, s2 = runs / "stage1", runs / "stage2"
    mst, train, gen, ev = (str(BIN / name) for name in ("mst", "uh-train", "uh-generate", "uh-eval"))
    return [
        Stage("synthetic data", "Render a small multi-source set of synthetic people (full body at 128 px, "
              "upper-body and face crops at higher density) with exact homographies.",
              [mst, "synthetic", str(shards), "--n", "24", "--res", "128"],
              [shards / "manifest.parquet"]),
        Stage("validate", "Check every shard against the shard spec and the manifest.",
              [mst, "validate", str(shards), "--json"], [DEMO / "validate.json"],
              stdout_to=DEMO / "validate.json"),
        Stage("alignment preview", "Warp every sample into the full-body canvas through its H.",
              [mst, "preview", str(shards), "--out", str(DEMO / "preview.png"), "--n", "24"],
              [DEMO / "preview.png"], images=[DEMO / "preview.png"]),
        Stage("train stage 1", "uh-train, tiny preset: whole full-body images at r = 32 (T = identity).",
              [train, "--shards", str(shards), "--out", str(s1), "--stage", "1", "--preset", "tiny",
               "--kimg", "2", "--batch", "8", "--snapshot-kimg", "0.5", "--lpips", "off"],
              [s1 / "network-latest.safetensors", s1 / "done"], logs=[s1 / "log.jsonl"], latest_samples=s1),
        Stage("train stage 2", "uh-train, stage 2: patches of every source at sampled (v, s), with CutMix, "
              "consistency and the stage-1 teacher's pixel loss.",
              [train, "--shards", str(shards), "--out", str(s2), "--stage", "2", "--preset", "tiny",
               "--teacher", str(s1 / "network-latest.safetensors"), "--kimg", "1", "--batch", "8",
               "--snapshot-kimg", "0.25", "--lpips", "auto"],
              [s2 / "network-latest.safetensors", s2 / "done"], logs=[s2 / "log.jsonl"], latest_samples=s2),
        Stage("generate 4r", "uh-generate: 128 px images stitched from 4 x 4 patches of 32 px.",
              [gen, "--ckpt", str(s2 / "network-latest.safetensors"), "--seeds", "0-7", "--size", "128",
               "--out", str(DEMO / "gen128")], [DEMO / "gen128" / "grid.png"], images=[DEMO / "gen128" / "grid.png"]),
        Stage("generate 8r", "uh-generate: 256 px images rendered in one pass on an enlarged input grid.",
              [gen, "--ckpt", str(s2 / "network-latest.safetensors"), "--seeds", "0-3", "--size", "256",
               "--mode", "single", "--out", str(DEMO / "gen256")], [DEMO / "gen256" / "grid.png"],
              images=[DEMO / "gen256" / "grid.png"]),
        Stage("zoom: face", "uh-generate --patch: the face region at the 256 px scale.",
              [gen, "--ckpt", str(s2 / "network-latest.safetensors"), "--seeds", "0-7", "--patch", "0.5,0.1",
               "--scale", "8", "--out", str(DEMO / "face")], [DEMO / "face" / "grid.png"],
              images=[DEMO / "face" / "grid.png"]),
        Stage("zoom: hand", "uh-generate --patch: a hand region at the 256 px scale.",
              [gen, "--ckpt", str(s2 / "network-latest.safetensors"), "--seeds", "0-7", "--patch", "0.33,0.45",
               "--scale", "8", "--out", str(DEMO / "hand")], [DEMO / "hand" / "grid.png"],
              images=[DEMO / "hand" / "grid.png"]),
        Stage("evaluate", "uh-eval with small counts: FID, patch FID, keypoint FID, precision/recall.",
              [ev, "--ckpt", str(s2 / "network-latest.safetensors"), "--shards", str(shards), "--metrics",
               "fid,pfid,kfid,pr", "--n", "32", "--out", str(DEMO / "eval"), "--cache", str(DEMO / "eval-cache")],
              [DEMO / "eval" / "metrics.md"], tables=[DEMO / "eval" / "metrics.md"]),
    ]


def run_stage(stage: Stage, log) -> dict:
    if all(p.exists() for p in stage.outputs):
        print(f"==> {stage.name}: already done, reusing {', '.join(str(p.relative_to(ROOT)) for p in stage.outputs)}")
        return {"name": stage.name, "status": "reused", "seconds": 0.0}
    print(f"==> {stage.name}: {stage.what}")
    print("    $ " + " ".join(shlex.quote(c.replace(str(ROOT) + "/", "")) for c in stage.command))
    start = time.time()
    if stage.stdout_to is not None:
        tmp = stage.stdout_to.with_name(stage.stdout_to.name + ".tmp")
        with open(tmp, "w") as out:
            proc = subprocess.run(stage.command, stdout=out, cwd=ROOT)
        if proc.returncode in stage.ok_codes:
            os.replace(tmp, stage.stdout_to)
    else:
        proc = subprocess.run(stage.command, cwd=ROOT)
    seconds = time.time() - start
    status = "ok" if proc.returncode in stage.ok_codes else f"failed (exit {proc.returncode})"
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


def write_report(all_stages: list[Stage], results: list[dict]) -> Path:
    rows = []
    sections = []
    for stage, res in zip(all_stages, results, strict=True):
        cmd = " ".join(shlex.quote(c.replace(str(ROOT) + "/", "").replace(str(BIN) + "/", ""))
                       for c in stage.command)
        rows.append(f"<tr><td>{html.escape(stage.name)}</td><td>{html.escape(res['status'])}</td>"
                    f"<td>{res['seconds']:.1f}</td><td><code>{html.escape(cmd)}</code></td></tr>")
        body = f"<h2>{html.escape(stage.name)}</h2><p>{html.escape(stage.what)}</p>"
        images = list(stage.images)
        if stage.latest_samples is not None:
            images += sorted(stage.latest_samples.glob("samples-*.png"))[-1:]
        for img in images:
            if img.exists():
                rel = img.relative_to(DEMO).as_posix()
                body += f'<p><img src="{html.escape(rel)}" style="max-width:100%;image-rendering:pixelated"></p>'
        for log in stage.logs:
            if log.exists():
                body += loss_curves_svg(log)
        for table in stage.tables:
            if table.exists():
                body += markdown_table_html(table.read_text())
        if stage.stdout_to is not None and stage.stdout_to.exists():
            try:
                summary = json.loads(stage.stdout_to.read_text())
                brief = {k: summary[k] for k in ("ok", "shards", "samples", "sources") if k in summary}
                body += "<pre>" + html.escape(json.dumps(brief, indent=1)) + "</pre>"
            except ValueError:
                pass
        sections.append(body)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>UnitedHuman demo</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}td,th{{padding:4px 10px;text-align:left}}
tr:nth-child(even){{background:#f3f3f3}}</style></head><body>
<h1>UnitedHuman demo report</h1>
<p>The pipeline run on the embedded defaults. Re-run <code>just demo</code> to redo missing stages.</p>
<table><tr><th>stage</th><th>status</th><th>seconds</th><th>command</th></tr>{''.join(rows)}</table>
{''.join(sections)}
</body></html>"""
    out = DEMO / "report.html"
    tmp = out.with_name("report.html.tmp")
    tmp.write_text(page)
    os.replace(tmp, out)
    return out


def main() -> int:
    DEMO.mkdir(exist_ok=True)
    all_stages = stages()
    results = []
    for stage in all_stages:
        res = run_stage(stage, None)
        results.append(res)
        if res["status"] not in ("ok", "reused"):
            print(f"stage '{stage.name}' failed; fix the error above and re-run `just demo`", file=sys.stderr)
            write_report(all_stages[: len(results)], results)
            return 1
    out = write_report(all_stages, results)
    print(f"==> report: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
