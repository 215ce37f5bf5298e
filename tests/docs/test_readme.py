"""The README is the PyPI page: it renders without warnings and every link works off GitHub.

PyPI renders a `text/markdown` long description with `readme_renderer` (GitHub
Flavored Markdown); this test renders `README.md` the same way. Links must be
absolute (`https://...`) or in-page anchors: a relative link such as `docs/api.md`
works on GitHub and is a dead link on PyPI.
"""

import io
import re
import tomllib
import warnings
from html.parser import HTMLParser
from pathlib import Path

import readme_renderer.markdown as readme_markdown

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS_SITE = "https://keras-bn.github.io/keras-bn/"


class _Links(HTMLParser):
    """Collects the `href` of links and the `src` of images of an HTML fragment."""

    def __init__(self):
        super().__init__()
        self.urls = []

    def handle_starttag(self, tag, attrs):
        """Records where a link or an image points."""
        for key, value in attrs:
            if (tag, key) in {("a", "href"), ("img", "src")} and value is not None:
                self.urls.append(value)


def _render(text):
    """Returns `(html, warnings)` of `text` rendered as PyPI renders a Markdown README."""
    stream = io.StringIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        html = readme_markdown.render(text, variant="GFM", stream=stream)
    messages = [str(w.message) for w in caught] + stream.getvalue().splitlines()
    return html, messages


def relative_links(html):
    """Returns the links and image sources of `html` that are neither absolute nor in-page."""
    parser = _Links()
    parser.feed(html)
    return [url for url in parser.urls if not re.match(r"^(https?:|mailto:|#)", url)]


def test_pyproject_declares_the_readme_as_markdown():
    """PyPI reads `readme = "README.md"` as `text/markdown`, the renderer used below."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["readme"] == "README.md"


def test_readme_renders_like_pypi_without_warnings():
    """The README renders, with no warning, and links only to absolute URLs."""
    html, messages = _render(README.read_text(encoding="utf-8"))
    assert html, "readme_renderer could not render README.md"
    assert not messages, f"readme_renderer warned: {messages}"
    relative = relative_links(html)
    assert not relative, (
        f"README.md has relative links, dead on PyPI: {relative}. Use absolute URLs "
        f"({DOCS_SITE}...)"
    )


def test_readme_stands_alone():
    """The README links the docs site and names no path of a development checkout."""
    text = README.read_text(encoding="utf-8")
    assert DOCS_SITE in text
    for path in ("../shared", "/work/", "docs/guide/", "docs/api/"):
        assert path not in text, f"README.md names {path!r}, which a pip user does not have"


def test_relative_links_are_caught():
    """The check itself: a relative link and a relative image are reported."""
    html, messages = _render("[api](docs/api.md) ![x](img.png) [site](https://a.org) [top](#top)")
    assert not messages
    assert relative_links(html) == ["docs/api.md", "img.png"]
