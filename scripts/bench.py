"""`just bench`: run every benchmarks/bench_*.py and write docs/benchmarks.md.

Each benchmark module exposes `run() -> str`, a Markdown section with the command, the machine and
the numbers. `just bench NAME` runs only the benchmark called NAME, or where there is none, those
whose name contains NAME, and keeps the other sections of the current file.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "benchmarks.md"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPU cores ({cpu}), Python {platform.python_version()}, {platform.system()}"


def read_sections() -> dict[str, str]:
    old = OUT.read_text() if OUT.exists() else ""
    return dict(re.findall(r"<!-- bench:(\w+) -->\n(.*?)<!-- /bench -->\n", old, re.S))


def write_sections(sections: dict[str, str]) -> None:
    text = ("# Benchmarks\n\nWritten by `just bench` (`.venv/bin/python scripts/bench.py [NAME]`); the section "
            "\"Does training learn people?\" by `just learn`.\n\n")
    for name in sorted(sections):
        text += f"<!-- bench:{name} -->\n{sections[name]}<!-- /bench -->\n\n"
    OUT.parent.mkdir(exist_ok=True)
    tmp = OUT.with_name(OUT.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, OUT)


def stamped(body: str, seconds: float) -> str:
    body = body.rstrip() + "\n"
    return body + f"\n_Machine: {machine()}; run on {time.strftime('%Y-%m-%d')}, took {seconds:.0f} s._\n"


def write_section(name: str, body: str, seconds: float) -> None:
    """Replace (or add) one section of docs/benchmarks.md, keeping the others."""
    sections = read_sections()
    sections[name] = stamped(body, seconds)
    write_sections(sections)


def main() -> int:
    wanted = sys.argv[1] if len(sys.argv) > 1 else ""
    sections = read_sections()
    paths = sorted((ROOT / "benchmarks").glob("bench_*.py"))
    exact = any(path.stem == f"bench_{wanted}" for path in paths)  # `train` runs train, not train_speedup
    for path in paths:
        name = path.stem.removeprefix("bench_")
        if wanted and (name != wanted if exact else wanted not in name):
            continue
        print(f"==> benchmark {name}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        start = time.time()
        body = module.run()
        if body is None:  # the benchmark cannot run here (it said why); its section stays as it is
            continue
        sections[name] = stamped(body, time.time() - start)
    write_sections(sections)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
