"""Fails when a line of a fenced code block in `docs/` or `README.md` is wider than the page shows.

The theme (mkdocs-material) gives code blocks a fixed column: a longer line scrolls
sideways, and whatever sits at its end (an expected value, the closing bracket) is
hidden off-screen. How wide the column is was measured, not guessed: a local build
(`mkdocs build`), opened in headless Chromium 156, with a script that divides the
inner width of a `pre > code` block of the page "Beyond Keras" by the width of one
character of its font (13.6 px monospace, 8.18 px a character):

    window width (px)   1220  1280  1440  1600  1920  2560
    columns              78.3  80.2  80.2  80.2  80.2  80.2

At 1220 px and wider the page has both sidebars, and the theme scales the font with
the window, so the column stays at 78 to 80 characters; 1220 px (the narrowest
window that still shows the table of contents) is the tightest, 78 characters.
Narrower windows drop a sidebar and the column widens again (86 at 1024 px). So a
code line may be at most `WIDTH = 78` characters.

A fence indented inside a list or an admonition is narrower by its indentation, so
its lines are held to `WIDTH` minus the fence's indentation (a close, slightly
generous estimate: an admonition's padding is about four characters).
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WIDTH = 78
# Pages whose lines are not wrapped yet: expected to fail until they are. `strict`
# makes a fixed page fail here until it is taken off this list. None left.
PENDING = set()
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})")


def _pages():
    """Returns the Markdown pages readers see: `docs/**/*.md` and `README.md`."""
    return sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]


def wide_lines(path, width=WIDTH):
    """Returns `(line number, length, limit)` for each fenced code line of `path` over its limit."""
    found = []
    fence = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        match = _FENCE.match(line)
        if fence is None:
            if match:
                fence = (match["fence"], len(match["indent"].expandtabs(4)))
            continue
        if match and match["fence"][0] == fence[0][0] and len(match["fence"]) >= len(fence[0]):
            if not line.strip().strip(fence[0][0]):
                fence = None
                continue
        limit = width - fence[1]
        text = line[fence[1]:].rstrip() if line[: fence[1]].strip() == "" else line.rstrip()
        if len(text) > limit:
            found.append((number, len(text), limit))
    return found


def _page_params():
    """Returns the pages as pytest params, the `PENDING` ones marked as strict xfails."""
    params = []
    for page in _pages():
        where = page.relative_to(ROOT).as_posix()
        marks = [pytest.mark.xfail(strict=True, reason="lines not wrapped yet")] if (
            where in PENDING) else []
        params.append(pytest.param(page, id=where, marks=marks))
    return params


@pytest.mark.parametrize("page", _page_params())
def test_code_lines_fit_the_column(page):
    """Every fenced code line of `page` fits the theme's code column."""
    wide = wide_lines(page)
    where = page.relative_to(ROOT).as_posix()
    assert not wide, (
        f"{len(wide)} code line(s) of {where} are wider than the {WIDTH}-character column "
        "the docs show (the rest scrolls out of sight); wrap them: "
        + ", ".join(f"line {n} ({length} > {limit})" for n, length, limit in wide)
    )


def test_wide_lines_finds_what_overflows(tmp_path):
    """The check sees a long line in a fence, ignores prose, and narrows indented fences."""
    page = tmp_path / "page.md"
    long_prose = "word " * 40
    page.write_text(
        f"{long_prose}\n\n```python\nx = 1\n{'y' * 79}\n{'z' * 78}\n```\n\n"
        f"- item\n\n    ```text\n    {'w' * 75}\n    ```\n"
    )
    assert wide_lines(page) == [(5, 79, 78), (12, 75, 74)]
