"""A griffe extension that shows docstrings' `>>>` examples as Python console code blocks.

keras-bn writes examples the Keras way, `Example:` followed by unindented `>>>` lines.
Markdown would read those lines as nested block quotes and their output (`[0, 1]`) as
reference links, which `mkdocs build --strict` rejects. This wraps each doctest run (a
`>>>` line and the lines after it, up to a blank line) in a ```pycon fence instead.
It changes only what the docs render; pytest's doctests read the source docstrings.
"""

import re

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


class DoctestFences(griffe.Extension):
    """Wraps the doctest examples of every docstring in ```pycon fences."""

    def on_instance(self, *, obj, **kwargs):
        """Rewrites `obj`'s docstring, if it has doctest lines."""
        docstring = getattr(obj, "docstring", None)
        if docstring is not None and ">>>" in docstring.value:
            docstring.value = fence_doctests(docstring.value)
