"""A griffe extension that renders keras-bn's Keras-style docstrings the way keras.io reads.

Doctest examples. keras-bn writes examples the Keras way, `Example:` followed by
unindented `>>>` lines. Markdown would read those lines as nested block quotes and
their output (`[0, 1]`) as reference links, which `mkdocs build --strict` rejects.
This wraps each doctest run (a `>>>` line and the lines after it, up to a blank
line) in a ```pycon fence instead.

Sections griffe does not know. Google style as griffe reads it has no `Call
arguments:`, `Example:` or `Reference:` section: each would become a boxed
admonition, `Call arguments:` one run-on paragraph. Here `Call arguments:` becomes a
list of arguments like `Args:` (titled "Call arguments:"), and `Example:` and
`Reference:` become titled sections, the references one list item each.

It changes only what the docs render; pytest's doctests and `help()` read the source
docstrings.

"""

import functools
import re
import textwrap

import griffe

_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")


def fence_doctests(text):
    """Returns `text` with each run of doctest lines wrapped in a ```pycon fence."""
    lines = text.splitlines()
    out = []
    in_fence = None
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        if in_fence is not None:
            out.append(line)
            if fence and fence.group(1)[0] == in_fence[0] and len(fence.group(1)) >= len(in_fence):
                in_fence = None
            i += 1
            continue
        if fence:
            in_fence = fence.group(1)
            out.append(line)
            i += 1
            continue
        if line.lstrip().startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i])
                i += 1
            if out and out[-1].strip():
                out.append("")
            out += [f"{indent}```pycon", *block, f"{indent}```", ""]
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


_SECTION_TITLE = '<p><span class="doc-section-title">{}</span></p>'
# Admonition kinds (griffe's name for an unknown `Title:` section) shown as plain titled sections.
_TITLED = {"example": "Example:", "examples": "Examples:", "reference": "Reference:",
           "references": "References:"}
_EXAMPLE = re.compile(r"^(Examples?):[ \t]*$", re.M)
_ITEM = re.compile(r"^[-*]\s+")


def _call_arguments(text):
    """Returns the `Call arguments:` section's text parsed as a titled parameters section."""
    # A summary line first: griffe dedents every line after the first by their common indent.
    source = "Call arguments.\n\nArgs:\n" + textwrap.indent(text, "    ")
    sections = griffe.Docstring(source).parse("google", warnings=False)
    (section,) = [s for s in sections if s.kind.value == "parameters"]
    section.title = "Call arguments:"
    return section


def _references(text):
    """Returns Markdown for a `Reference:` section: one list item per reference.

    A section already written as a list (`- [Author, year](url)`, as Keras writes
    it) keeps its items; a section of prose is one reference.
    """
    lines = text.strip().splitlines()
    if not lines or not _ITEM.match(lines[0]):
        return "- " + " ".join(line.strip() for line in lines)
    return "\n".join(lines)


def restyle(sections):
    """Returns `sections` with `Call arguments:`, `Example:` and `Reference:` restyled.

    `Args:` sections get the title keras.io uses, "Arguments:", and a `Returns:` of
    prose alone (no name, no type) is shown as prose.
    """
    out = []
    for section in sections:
        kind = section.kind.value
        if kind == "parameters" and section.title is None:
            section.title = "Arguments:"
        if kind == "returns" and not any(item.name or item.annotation for item in section.value):
            # Prose, as keras.io writes it, rather than a list item that starts with a dash.
            text = "\n\n".join(item.description for item in section.value)
            out.append(griffe.DocstringSectionText(f"{_SECTION_TITLE.format('Returns:')}\n\n{text}"))
            continue
        if kind == "text":
            # `Example:` followed by a blank line and `>>>` lines is text to griffe.
            section.value = _EXAMPLE.sub(
                lambda m: _SECTION_TITLE.format(m[1] + ":"), section.value
            )
        if kind != "admonition":
            out.append(section)
            continue
        admonition = section.value.kind
        contents = section.value.contents
        if admonition == "call-arguments":
            out.append(_call_arguments(contents))
        elif admonition in _TITLED:
            if admonition.startswith("reference"):
                contents = _references(contents)
            title = _SECTION_TITLE.format(_TITLED[admonition])
            out.append(griffe.DocstringSectionText(f"{title}\n\n{contents}"))
        else:
            out.append(section)
    return out


class _KerasStyleDocstring(griffe.Docstring):
    """A docstring whose parsed sections go through `restyle`."""

    @functools.cached_property
    def parsed(self):
        """The docstring's sections, restyled."""
        return restyle(self.parse())


class DoctestFences(griffe.Extension):
    """Wraps the doctest examples of every docstring in ```pycon fences and restyles its sections."""

    def on_instance(self, *, obj, **kwargs):
        """Rewrites `obj`'s docstring, if it has doctest lines, and restyles its sections."""
        docstring = getattr(obj, "docstring", None)
        if docstring is None:
            return
        if ">>>" in docstring.value:
            docstring.value = fence_doctests(docstring.value)
        # Parsing stays lazy (at render time, when every member is loaded); only
        # what `parsed` returns changes.
        docstring.__class__ = _KerasStyleDocstring
