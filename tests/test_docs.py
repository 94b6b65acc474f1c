"""The documentation's relative links resolve: every file exists and every anchor is a heading.

Anchors follow GitHub's rule for headings (lower case; characters other than letters,
digits, spaces, ``-`` and ``_`` dropped; spaces become ``-``; a repeated heading gets
``-1``, ``-2``, ...) or an explicit ``<a id="...">``.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!\\)\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} +(.+?) *#*$")
FENCE = re.compile(r"^\s*```")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading's text."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors a markdown file defines (headings outside code blocks, ``<a id>``)."""
    found: set[str] = set()
    seen: Counter[str] = Counter()
    fenced = False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        found.update(re.findall(r'<a id="([^"]+)"', line))
        if m := HEADING.match(line):
            base = slug(m.group(1))
            found.add(base if seen[base] == 0 else f"{base}-{seen[base]}")
            seen[base] += 1
    return found


def links(path: Path) -> list[str]:
    """A markdown file's relative link targets outside code blocks (text may span lines)."""
    kept, fenced = [], False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            kept.append(line)
    return [t for t in LINK.findall("\n".join(kept)) if not re.match(r"[a-z]+:", t)]


def test_slug_follows_githubs_rule():
    assert slug("A second, independent family (`--family b`)") == (
        "a-second-independent-family---family-b"
    )
    assert slug("What P(FP) means") == "what-pfp-means"
    assert slug("Is a difference real? Confidence intervals") == (
        "is-a-difference-real-confidence-intervals"
    )


def test_links_are_found_across_lines_and_outside_code_only(tmp_path):
    doc = tmp_path / "a.md"
    doc.write_text(
        "See [the\ntable](#t) and [site](https://x.org), ![img](images/a.png).\n"
        "```\n[code](#not-a-link)\n```\n"
    )
    assert links(doc) == ["#t", "images/a.png"]


def test_anchors_number_repeated_headings_and_skip_code(tmp_path):
    doc = tmp_path / "a.md"
    doc.write_text('# Notes\n\n## Notes\n\n```\n# not a heading\n```\n<a id="x-y"></a>\n')
    assert anchors(doc) == {"notes", "notes-1", "x-y"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_relative_link_resolves(doc):
    broken = []
    for target in links(doc):
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        if not dest.exists():
            broken.append(f"{target} (no file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{doc.name}: {broken}"
