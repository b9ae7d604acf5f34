"""The documentation: the MkDocs site builds with `--strict`, and every relative link in
README.md and docs/ reaches a file that exists (and a heading that exists, when it names
one), so a page that is moved or a heading that is renamed breaks the build, not a reader.

Links are checked with GitHub's heading anchors because README.md and the docs pages are
read on GitHub too; MkDocs checks its own anchors inside the site (`validation.links.anchors`
in mkdocs.yml). Links to files outside docs/ (benchmarks/README.md, deploy/README.md) are
checked here only: the site does not hold them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

FENCE = re.compile(r"^(```|~~~)")
INLINE_CODE = re.compile(r"`[^`]*`")
MD_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_LINK = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)=\"([^\"]+)\"", re.IGNORECASE)
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: link syntax reduced to its text, lower case,
    everything but letters, digits, `_`, `-` and spaces dropped, spaces made hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def prose_lines(text: str, keep_code: bool = False) -> list[str]:
    """The lines of a Markdown file outside fenced code blocks, inline code removed unless
    `keep_code`: a link written inside code is an example, not a link (but a heading's code
    is part of its anchor)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line if keep_code else INLINE_CODE.sub("", line))
    return lines


def anchors(path: Path) -> set[str]:
    """Every anchor of a Markdown file's headings, with GitHub's -1, -2 for repeats."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(path.read_text(encoding="utf-8"), keep_code=True):
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(path: Path) -> list[str]:
    """Relative links and image sources of a Markdown file (URLs with a scheme left out)."""
    out = []
    for line in prose_lines(path.read_text(encoding="utf-8")):
        for target in [*MD_LINK.findall(line), *HTML_LINK.findall(line)]:
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("//"):
                continue
            out.append(target)
    return out


def broken_links(path: Path) -> list[str]:
    """`file: link (why)` for each relative link of `path` that reaches nothing."""
    problems = []
    for link in links(path):
        target, _, anchor = link.partition("#")
        dest = (path.parent / unquote(target)).resolve() if target else path
        if not dest.exists():
            problems.append(f"{path.name}: {link} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{path.name}: {link} (no heading with that anchor)")
    return problems


def nav_pages(config: dict) -> list[str]:
    """Every page file named in mkdocs.yml's nav, however deeply nested."""
    pages: list[str] = []

    def walk(item: object) -> None:
        if isinstance(item, str):
            pages.append(item)
        elif isinstance(item, list):
            for entry in item:
                walk(entry)
        elif isinstance(item, dict):
            for value in item.values():
                walk(value)

    walk(config["nav"])
    return pages


def load_config() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))


def mkdocs_build(config_file: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            str(config_file),
            "-d",
            str(site),
        ],
        capture_output=True,
        text=True,
        cwd=config_file.parent,
        timeout=300,
    )


def test_site_builds_strict(tmp_path: Path) -> None:
    result = mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    for page in nav_pages(load_config()):
        html = (
            tmp_path
            / "site"
            / ("index.html" if page == "index.md" else Path(page).with_suffix("") / "index.html")
        )
        assert html.is_file(), f"{page} was not rendered"
    index = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert "make demo" in index and 'href="data/"' in index


def test_strict_build_fails_on_a_broken_anchor(tmp_path: Path) -> None:
    """The strict build is a real check: the same configuration refuses a page whose link
    names a heading that does not exist."""
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs, ignore=shutil.ignore_patterns("*.png"))
    (docs / "index.md").write_text("# Home\n\nSee [the data page](data.md#no-such-heading).\n")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    result = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-heading" in result.stdout + result.stderr


def test_every_nav_page_exists() -> None:
    pages = nav_pages(load_config())
    assert len(pages) == len(set(pages))
    for page in pages:
        assert (DOCS / page).is_file(), f"mkdocs.yml names {page}, which is not in docs/"
    assert "index.md" in pages


PAGES = [
    "README.md",
    "benchmarks/README.md",
    "deploy/README.md",
    *sorted(f"docs/{p.name}" for p in DOCS.glob("*.md")),
]


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_reach_files_and_headings(page: str) -> None:
    assert broken_links(ROOT / page) == []


def test_readme_links_every_stage_page() -> None:
    """The README's stage sections each link their page: every page of the site's nav is
    reachable from the front page."""
    linked = {
        Path(link.partition("#")[0]).name
        for link in links(ROOT / "README.md")
        if link.startswith("docs/")
    }
    missing = [p for p in nav_pages(load_config()) if p != "index.md" and p not in linked]
    assert missing == []


def test_link_checker_finds_what_is_broken(tmp_path: Path) -> None:
    """Known inputs, known answers: the checker itself, on a small tree of pages."""
    (tmp_path / "other.md").write_text(
        "# Other page\n\n## Speed (issue 2)\n\n## Speed (issue 2)\n\n```\n# not a heading\n```\n"
    )
    (tmp_path / "pic.png").write_bytes(b"\x89PNG")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n## A `code` heading: here\n\n"
        "[ok](other.md) [ok anchor](other.md#speed-issue-2) [repeat](other.md#speed-issue-2-1)\n"
        '[self](#a-code-heading-here) ![pic](pic.png) <img src="pic.png" width="5">\n'
        "[web](https://example.org/x.md) [mail](mailto:a@b.c) `[code](missing.md)`\n"
        "[gone](missing.md) [bad anchor](other.md#not-a-heading) [again](other.md#not-a-heading)\n"
        '<img src="missing.png">\n'
        "```\n[in a fence](missing-too.md)\n```\n"
    )
    assert github_slug("What the pipeline costs (`results/pipeline.json`)") == (
        "what-the-pipeline-costs-resultspipelinejson"
    )
    assert github_slug("A shared server (PostgreSQL + S3)") == "a-shared-server-postgresql--s3"
    assert anchors(tmp_path / "other.md") == {"other-page", "speed-issue-2", "speed-issue-2-1"}
    assert broken_links(page) == [
        "page.md: missing.md (no such file)",
        "page.md: other.md#not-a-heading (no heading with that anchor)",
        "page.md: other.md#not-a-heading (no heading with that anchor)",
        "page.md: missing.png (no such file)",
    ]
