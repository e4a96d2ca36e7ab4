"""`just demo` timed stage by stage, into a temporary folder (the body model's and anny's caches
as they are), with the MST-vs-truth table the demo writes."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run() -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_demo import demo_module

    demo = demo_module()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo"
        out.mkdir()
        results = [demo.run_stage(stage) for stage in demo.stages(out, demo.Size())]
        truth = (out / "mst_vs_truth.md").read_text() if (out / "mst_vs_truth.md").exists() else ""
    failed = [r["name"] for r in results if r["status"] not in ("ok", "reused")]
    total = sum(r["seconds"] for r in results)
    lines = [
        "## The demo",
        "",
        "`.venv/bin/python scripts/bench.py demo` — every stage of `just demo` at its default size into a "
        "fresh folder; the body model comes from the cache when it is there (its build is in the "
        "body-model section).",
        "",
        "| stage | seconds |",
        "|---|---|",
        *(f"| {r['name']} | {r['seconds']:.1f}{' (reused from the cache)' if r['status'] == 'reused' else ''} |"
          for r in results),
        f"| **total** | **{total:.0f}** ({total / 60:.1f} min{'; failed: ' + ', '.join(failed) if failed else ''}) |",
        "",
        "MST's H against the renders' true H (corner error, % of full-body space):",
        "",
        truth.strip(),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run())
