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


def stages() -> list[Stage]:
    shards = DEMO / "shards"
    return [
        Stage("synthetic data", "Render a small multi-source set of synthetic people (full body at 128 px, "
              "upper-body and face crops at higher density) with exact homographies.",
              [str(BIN / "mst"), "synthetic", str(shards), "--n", "24", "--res", "128"],
              [shards / "manifest.parquet"]),
        Stage("validate", "Check every shard against the shard spec and the manifest.",
              [str(BIN / "mst"), "validate", str(shards), "--json"], [DEMO / "validate.json"],
              stdout_to=DEMO / "validate.json"),
        Stage("alignment preview", "Warp every sample into the full-body canvas through its H.",
              [str(BIN / "mst"), "preview", str(shards), "--out", str(DEMO / "preview.png"), "--n", "24"],
              [DEMO / "preview.png"], images=[DEMO / "preview.png"]),
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
    print(f"    {status} in {seconds:.1f} s")
    return {"name": stage.name, "status": status, "seconds": seconds}


def write_report(all_stages: list[Stage], results: list[dict]) -> Path:
    rows = []
    sections = []
    for stage, res in zip(all_stages, results, strict=True):
        cmd = " ".join(shlex.quote(c.replace(str(ROOT) + "/", "").replace(str(BIN) + "/", ""))
                       for c in stage.command)
        rows.append(f"<tr><td>{html.escape(stage.name)}</td><td>{html.escape(res['status'])}</td>"
                    f"<td>{res['seconds']:.1f}</td><td><code>{html.escape(cmd)}</code></td></tr>")
        body = f"<h2>{html.escape(stage.name)}</h2><p>{html.escape(stage.what)}</p>"
        for img in stage.images:
            if img.exists():
                body += f'<p><img src="{html.escape(img.name)}" style="max-width:100%"></p>'
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
