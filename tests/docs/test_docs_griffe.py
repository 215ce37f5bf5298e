"""The docs' griffe extension renders Keras-style sections as lists, as keras.io does."""

import importlib.util
from pathlib import Path

import griffe

_PATH = Path(__file__).resolve().parents[2] / "docs" / "_griffe" / "doctest_fences.py"
_SPEC = importlib.util.spec_from_file_location("doctest_fences", _PATH)
doctest_fences = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(doctest_fences)

DOCSTRING = '''Summary.

Args:
    axis: The axis. Defaults to `-1`.

Call arguments:
    inputs: A tensor.
    training: Whether to use the batch
        statistics.

Returns:
    A tensor of the input's shape.

Example:

>>> 1 + 1
2

Reference:
    - [Ioffe and Szegedy, 2015](https://arxiv.org/abs/1502.03167).
    - [Ioffe, 2017](https://arxiv.org/abs/1702.03275).
'''


def _sections(text):
    """Returns `text` parsed as griffe parses a Google docstring, then restyled."""
    docstring = griffe.Docstring(doctest_fences.fence_doctests(text), parser="google")
    return doctest_fences.restyle(docstring.parse(warnings=False))


def test_call_arguments_become_a_titled_list_of_arguments():
    """`Call arguments:` is a parameters section of its own, one item per argument."""
    sections = _sections(DOCSTRING)
    kinds = [(s.kind.value, s.title) for s in sections]
    assert ("parameters", "Arguments:") in kinds
    assert ("parameters", "Call arguments:") in kinds
    call = next(s for s in sections if s.title == "Call arguments:")
    assert [(p.name, p.description) for p in call.value] == [
        ("inputs", "A tensor."),
        ("training", "Whether to use the batch\nstatistics."),
    ]
    assert not [s for s in sections if s.kind.value == "admonition"]


def test_returns_example_and_reference_are_titled_sections():
    """Returns reads as prose; Example keeps its code; Reference keeps one item per line."""
    text = "\n\n".join(s.value for s in _sections(DOCSTRING) if s.kind.value == "text")
    assert '<span class="doc-section-title">Returns:</span></p>\n\nA tensor of' in text
    assert '<span class="doc-section-title">Example:</span>' in text
    assert "```pycon\n>>> 1 + 1\n2\n```" in text
    reference = text.split("Reference:</span></p>\n\n")[1].splitlines()
    assert reference == [
        "- [Ioffe and Szegedy, 2015](https://arxiv.org/abs/1502.03167).",
        "- [Ioffe, 2017](https://arxiv.org/abs/1702.03275).",
    ]


def test_a_reference_in_prose_is_one_item():
    """A `Reference:` written as a sentence, not a list, becomes a single list item."""
    text = "Summary.\n\nReference:\n    Wu and Johnson, 2021,\n    [arXiv:2105.07576](https://arxiv.org/abs/2105.07576).\n"
    (_, section) = _sections(text)
    assert section.value.endswith(
        "- Wu and Johnson, 2021, [arXiv:2105.07576](https://arxiv.org/abs/2105.07576)."
    )
