"""Checks the internal links of a built site: every local page linked exists, every #anchor too.

    python scripts/check_links.py SITE_DIR

`mkdocs build --strict` checks the links written in Markdown; this checks what the
reader clicks in the built HTML, including the links mkdocstrings and the theme
generate (cross-references in docstrings, the navigation, the table of contents).
External links (http, https, mailto) are not followed: the check stays offline and
fast. Exits with status 1 and one line per broken link, or 0 with a count.
"""

import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

# Pages the theme writes that are not reached by a reader's click.
_SKIPPED_PAGES = {"404.html"}


class _Page(HTMLParser):
    """Collects the ids (anchors) of one HTML page and the hrefs it links to."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids = set()
        self.hrefs = []

    def handle_starttag(self, tag, attrs):
        """Records `id`/`name` anchors and the `href` of links."""
        attributes = dict(attrs)
        for key in ("id", "name"):
            if attributes.get(key):
                self.ids.add(attributes[key])
        if tag == "a" and attributes.get("href") is not None:
            self.hrefs.append(attributes["href"])


def _parse(path):
    """Returns the `_Page` of the HTML file at `path`."""
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _target(site, page_path, href):
    """Returns `(file, fragment)` that a local `href` on `page_path` points to, or None if external."""
    parts = urlsplit(href)
    if parts.scheme or parts.netloc:
        return None
    if not parts.path:
        return page_path, unquote(parts.fragment)
    if parts.path.startswith("/"):
        return None  # Absolute paths depend on where the site is served; mkdocs warns on them.
    target = (page_path.parent / unquote(parts.path)).resolve()
    if parts.path.endswith("/") or target.is_dir():
        target = target / "index.html"
    return target, unquote(parts.fragment)


def broken_links(site):
    """Returns a list of `"page: href (why)"` for every broken internal link of the site at `site`."""
    site = Path(site).resolve()
    pages = {path.resolve(): None for path in site.rglob("*.html")}
    problems = []
    for path in sorted(pages):
        if path.name in _SKIPPED_PAGES and path.parent == site:
            continue
        page = pages[path] or _parse(path)
        pages[path] = page
        for href in page.hrefs:
            target = _target(site, path, href)
            if target is None:
                continue
            file, fragment = target
            where = f"{path.relative_to(site).as_posix()}: {href}"
            if not file.is_file():
                problems.append(f"{where} (no such file)")
                continue
            if not fragment or file.suffix != ".html":
                continue
            linked = pages.get(file)
            if linked is None:
                linked = pages[file] = _parse(file)
            if fragment not in linked.ids:
                problems.append(f"{where} (no #{fragment} on that page)")
    return problems, len(pages)


def main(argv=None):
    """Checks the site folder given on the command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python scripts/check_links.py SITE_DIR (a built mkdocs site)", file=sys.stderr)
        return 2
    problems, count = broken_links(argv[0])
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} broken internal link(s) in {count} pages", file=sys.stderr)
        return 1
    print(f"internal links and anchors of {count} pages: all found")
    return 0


if __name__ == "__main__":
    sys.exit(main())
