"""README is the front door and docs/ holds the rest: the shape both promise, and no dead link between them."""

import itertools
import re

import pytest

from saltrun import REPO_ROOT

README = REPO_ROOT / "README.md"
PAGES = sorted((REPO_ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _headings(text):
    """``[(level, title)]`` outside fenced code blocks."""
    found, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"(#{1,6}) (.+)", line)):
            found.append((len(match.group(1)), match.group(2).strip()))
    return found


def _anchor(title):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def test_readme_is_a_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= 400
    assert "## Contents" in text
    for page in PAGES:
        assert f"(docs/{page.name}" in text, f"README does not link {page.name}"


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.name)
def test_heading_levels_do_not_skip(page):
    levels = [level for level, _ in _headings(page.read_text())]
    assert levels and levels[0] == 1 and levels.count(1) == 1
    for before, after in itertools.pairwise(levels):
        assert after <= before + 1, f"{page.name}: a level-{after} heading follows a level-{before} one"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_each_page_says_who_it_is_for(page):
    lines = [line for line in page.read_text().splitlines() if line.strip()]
    assert lines[1].startswith("For "), f"{page.name}: the line after the title says who the page is for"


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.name)
def test_relative_links_resolve(page):
    text = page.read_text()
    for target in LINK.findall(text):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: {target} does not exist"
        if anchor and dest.suffix == ".md":
            anchors = {_anchor(title) for _, title in _headings(dest.read_text())}
            assert anchor in anchors, f"{page.name}: no heading #{anchor} in {dest.name}"
