"""scripts/check_links.py finds the broken internal links and anchors of a built site."""

import importlib.util
from pathlib import Path

_PATH = Path(__file__).resolve().parents[2] / "scripts" / "check_links.py"
_SPEC = importlib.util.spec_from_file_location("check_links", _PATH)
check_links = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(check_links)


def _site(tmp_path, links):
    """Writes a two-page site whose home page holds `links`; returns its folder."""
    (tmp_path / "guide").mkdir()
    (tmp_path / "guide" / "index.html").write_text(
        '<h2 id="masking">Masking</h2><a name="old-anchor"></a>'
    )
    body = "".join(f'<a href="{href}">x</a>' for href in links)
    (tmp_path / "index.html").write_text(f'<h1 id="top">Home</h1>{body}')
    return tmp_path


def test_good_links_pass(tmp_path):
    """Pages, anchors (id or name), the page's own anchors and external links are accepted."""
    site = _site(tmp_path, ["guide/", "guide/#masking", "guide/index.html#old-anchor", "#top",
                            "https://example.org/missing#nowhere", "mailto:a@b.c"])
    assert check_links.broken_links(site) == ([], 2)
    assert check_links.main([str(site)]) == 0


def test_missing_pages_and_anchors_are_reported(tmp_path):
    """A link to no page, or to an anchor the page lacks, is reported with its page and why."""
    site = _site(tmp_path, ["guide/#batch-size", "tutorial/", "#nowhere"])
    problems, _ = check_links.broken_links(site)
    assert problems == [
        "index.html: guide/#batch-size (no #batch-size on that page)",
        "index.html: tutorial/ (no such file)",
        "index.html: #nowhere (no #nowhere on that page)",
    ]
    assert check_links.main([str(site)]) == 1
