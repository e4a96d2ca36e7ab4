"""Every local link and image in README.md and docs/ points at a file of the repository, and that
file is tracked by git (a link to an ignored file breaks on every clone)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent
# [text](target) and ![alt](target), plus HTML src="..."/href="..."
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|(?:src|href)=\"([^\"]+)\"")


def local_links(text: str) -> list[str]:
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks show commands, not links
    text = re.sub(r"`[^`\n]*`", "", text)
    found = []
    for match in LINK.finditer(text):
        target = match.group(1) or match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http:, mailto:, in-page anchors
        found.append(unquote(target.split("#")[0]))
    return [t for t in found if t]


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted(ROOT.glob("*/README.md"))]


def tracked() -> set[str] | None:
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None  # not a git checkout: existence alone is checked
    return set(out.splitlines())


def test_link_finder_sees_images_links_and_html_but_not_urls_or_code():
    text = ("a ![x](img/a.png) b [y](../c.md#part) `[z](no.md)` [u](https://x.org) <img src=\"d/e.png\">\n"
            "```\n[q](q.md)\n```")
    assert local_links(text) == ["img/a.png", "../c.md", "d/e.png"]


def test_every_local_link_in_readme_and_docs_resolves_to_a_file_git_keeps():
    files = tracked()
    broken = []
    for doc in documents():
        for target in local_links(doc.read_text()):
            path = (doc.parent / target).resolve()
            if not path.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target} (missing)")
            elif files is not None and path.is_file() and str(path.relative_to(ROOT)) not in files:
                broken.append(f"{doc.relative_to(ROOT)}: {target} (ignored by git: it will not be in a clone)")
    assert not broken, "\n".join(broken)
