"""The documentation holds together: every relative link in README.md and docs/*.md points at a
file that exists (and, for a link to a section of a Markdown file, at a heading or anchor that
exists), every citation of a docs/ file in the code resolves the same way, and the README stays
an introduction (under 200 lines) rather than a second copy of the reference in docs/."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 200

_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`+[^`\n]*`+")
_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)
_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"", re.IGNORECASE)
_CODE_CITATION = re.compile(r"\bdocs/[\w.-]+\.md(?:#[\w-]+)?")


def _prose(text: str) -> str:
    """Markdown without code blocks and code spans, where link-like text is not a link."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(document: Path) -> set[str]:
    text = document.read_text(encoding="utf-8")
    found: set[str] = set(_ANCHOR.findall(text))
    seen: dict[str, int] = {}
    for heading in _HEADING.findall(_FENCE.sub("", text)):
        base = slug(heading)
        count = seen.get(base, 0)
        found.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return found


def unresolved(target: str, base: Path) -> str | None:
    """Why a relative link or citation does not resolve, or None if it does."""
    path_part, _, fragment = target.partition("#")
    path = (base / path_part).resolve()
    if not path.exists():
        return f"{path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path} does not exist"
    if fragment and path.suffix == ".md" and fragment not in anchors(path):
        return f"no anchor #{fragment} in {path.name}"
    return None


def relative_links(document: Path) -> list[str]:
    links = _LINK.findall(_prose(document.read_text(encoding="utf-8")))
    return [link for link in links if not re.match(r"[a-z][a-z0-9+.-]*:", link, re.IGNORECASE)]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda d: d.relative_to(REPO_ROOT).as_posix())
def test_every_relative_link_resolves(document):
    problems = []
    for link in relative_links(document):
        problem = unresolved(document.name + link if link.startswith("#") else link, document.parent)
        if problem:
            problems.append(f"{link}: {problem}")
    assert not problems, f"{document.relative_to(REPO_ROOT)}:\n" + "\n".join(problems)


def code_files() -> list[Path]:
    """Python sources and build files, outside hidden and build directories (and the virtualenvs)."""
    found = []
    for root, dirs, files in os.walk(REPO_ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("build", "dist", "__pycache__")]
        found += [Path(root, name) for name in files
                  if name.endswith(".py") or name in ("Makefile", "setup.cfg", "pyproject.toml")]
    return found


def test_docs_cited_by_the_code_exist():
    sources = code_files()
    assert Path(__file__).resolve() in sources
    problems = []
    for source in sources:
        for citation in set(_CODE_CITATION.findall(source.read_text(encoding="utf-8", errors="replace"))):
            problem = unresolved(citation, REPO_ROOT)
            if problem:
                problems.append(f"{source.relative_to(REPO_ROOT)}: {citation}: {problem}")
    assert not problems, "\n".join(problems)


def test_the_readme_stays_an_introduction():
    lines = (REPO_ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines < README_MAX_LINES, f"README.md has {lines} lines; move reference material into docs/"
