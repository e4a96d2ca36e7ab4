"""`just report-check`: open the demo report in headless Chromium, check what a reader sees, take a screenshot.

Checks, in the browser: every image loads, every figure has a caption, tables are present, no image
is shown narrower than 96 px, the page does not overflow sideways; then a full-page screenshot (PNG)
that must not be blank. Without a Chromium binary it prints what to install and exits 0 (skipped).

    python scripts/report_check.py [REPORT] [--png OUT.png]
"""

from __future__ import annotations

import argparse
import glob
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIDTH = 1280  # browser window width in px
MAX_HEIGHT = 32000  # a taller page is shown down to here
MIN_SHOWN = 96  # an image shown narrower than this cannot be inspected
INSTALL_HINT = ("no Chromium found; install one to check the report in a browser: `apt-get install chromium` "
                "(Debian; Ubuntu: chromium-browser), or `pip install playwright && playwright install chromium`, "
                "or point UNITEDHUMAN_CHROMIUM at a Chrome/Chromium binary")

# Runs in the page after every image has loaded; writes its findings into the DOM as JSON.
PROBE = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  const figs = [...document.querySelectorAll('figure')];
  const r = {images: imgs.length,
    broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src')),
    small: imgs.filter(i => i.naturalWidth > 0 && i.getBoundingClientRect().width < MIN_SHOWN)
      .map(i => i.getAttribute('src')),
    figures: figs.length, uncaptioned: figs.filter(f => !f.querySelector('figcaption')).length,
    tables: document.querySelectorAll('table').length,
    width: document.documentElement.scrollWidth, height: document.documentElement.scrollHeight};
  const pre = document.createElement('pre'); pre.id = 'uh-probe'; pre.textContent = JSON.stringify(r);
  document.body.appendChild(pre);
});</script>"""


def find_chromium() -> str | None:
    """A Chrome/Chromium binary: $UNITEDHUMAN_CHROMIUM, one on PATH, or one installed by playwright."""
    env = os.environ.get("UNITEDHUMAN_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome",
                 "headless_shell"):
        found = shutil.which(name)
        if found:
            return found
    cache = Path(os.environ.get("PLAYWRIGHT_BROWSERS_PATH", Path.home() / ".cache" / "ms-playwright"))
    for pattern in ("chromium-*/chrome-linux*/chrome", "chromium_headless_shell-*/chrome-linux*/headless_shell"):
        hits = sorted(glob.glob(str(cache / pattern)))
        if hits:
            return hits[-1]
    return None


def _chromium(binary: str, args: list[str], profile: str, timeout: float = 120) -> subprocess.CompletedProcess:
    base = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
            "--force-device-scale-factor=1", "--allow-file-access-from-files", "--no-first-run",
            f"--user-data-dir={profile}", "--virtual-time-budget=10000"]
    return subprocess.run(base + args, capture_output=True, text=True, timeout=timeout)


def probe(binary: str, report: Path, profile: str) -> dict:
    """Load REPORT (with the probe script added, its images resolved next to it) and return the probe's findings."""
    page = report.read_text()
    base = f'<base href="{report.parent.resolve().as_uri()}/">'
    injected = page.replace("<head>", "<head>" + base, 1).replace(
        "</body>", PROBE.replace("MIN_SHOWN", str(MIN_SHOWN)) + "</body>", 1)
    with tempfile.NamedTemporaryFile("w", suffix=".html", delete=False) as f:
        f.write(injected)
        probe_page = Path(f.name)
    try:
        done = _chromium(binary, [f"--window-size={WIDTH},1000", "--dump-dom", probe_page.as_uri()], profile)
    finally:
        probe_page.unlink()
    found = re.search(r'<pre id="uh-probe">(.*?)</pre>', done.stdout, re.S)
    if found is None:
        raise RuntimeError(f"the browser did not run the page's check (exit {done.returncode}): "
                           f"{done.stderr.strip()[-600:]}")
    return json.loads(html.unescape(found.group(1)))


def screenshot(binary: str, report: Path, png: Path, height: int, profile: str) -> None:
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(png.name + ".tmp.png")
    _chromium(binary, [f"--window-size={WIDTH},{min(max(height, 600), MAX_HEIGHT)}", f"--screenshot={tmp}",
                       report.resolve().as_uri()], profile)
    if not tmp.is_file():
        raise RuntimeError("the browser wrote no screenshot")
    os.replace(tmp, png)


def blank_problems(png: Path) -> list[str]:
    """A screenshot of a page that rendered: not one flat colour, and not mostly empty."""
    import numpy as np
    from PIL import Image

    grey = np.asarray(Image.open(png).convert("L"), dtype=np.float32)
    if grey.std() < 5:
        return [f"the screenshot {png} is blank (one flat colour)"]
    rows_with_ink = float((grey.min(axis=1) < 200).mean())
    if rows_with_ink < 0.2:
        return [f"the screenshot {png} is mostly empty ({rows_with_ink:.0%} of its rows show anything)"]
    return []


def check_report(report: Path, png: Path, binary: str) -> tuple[dict, list[str]]:
    """The probe's findings and the problems a reader would meet."""
    with tempfile.TemporaryDirectory(prefix="uh-chromium-") as profile:
        found = probe(binary, report, profile)
        screenshot(binary, report, png, found["height"], profile)
    problems = [f"image does not load: {src}" for src in found["broken"]]
    problems += [f"image shown narrower than {MIN_SHOWN} px: {src}" for src in found["small"]]
    if found["uncaptioned"]:
        problems.append(f"{found['uncaptioned']} figure(s) without a caption")
    if found["figures"] == 0 or found["tables"] == 0:
        problems.append(f"{found['figures']} figures and {found['tables']} tables: the report is missing its content")
    if found["width"] > WIDTH + 1:
        problems.append(f"the page is {found['width']} px wide in a {WIDTH} px window (scrolls sideways)")
    problems += blank_problems(png)
    return found, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, nargs="?", default=ROOT / "demo" / "report.html")
    parser.add_argument("--png", type=Path, default=None, help="screenshot (default: next to the report)")
    args = parser.parse_args(argv)
    if not args.report.is_file():
        print(f"error: {args.report} does not exist; run `just demo` first", file=sys.stderr)
        return 2
    binary = find_chromium()
    if binary is None:
        print(f"report check skipped: {INSTALL_HINT}")
        return 0
    png = args.png or args.report.with_name("report-screenshot.png")
    found, problems = check_report(args.report, png, binary)
    cut = f" (its first {MAX_HEIGHT} px)" if found["height"] > MAX_HEIGHT else ""
    print(f"{args.report}: {found['images']} images, {found['figures']} figures, {found['tables']} tables, "
          f"page {found['width']} x {found['height']} px; screenshot{cut}: {png}")
    for problem in problems:
        print(f"  problem: {problem}")
    print("report check: " + ("ok" if not problems else f"{len(problems)} problem(s)"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
