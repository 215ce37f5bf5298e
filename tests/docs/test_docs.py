"""Runs every fenced Python block of `docs/**/*.md` and `README.md`, and checks the API pages.

A page reads as one script: its ```python blocks run in order, in one fresh namespace,
with the working directory set to a temporary folder of the page's own, so a block may
use what an earlier block of the same page defined. Each block is its own test id,
`<page>:<line>`, so the number of executed snippets shows in pytest's summary.

Conventions a page can rely on:

- Only blocks fenced as `python` or `py` run; `bash`, `text`, `console` and the rest
  are shown, not executed.
- A block that needs the real MNIST has the line `<!-- snippet: needs-mnist -->` right
  before its fence (blank lines between are allowed). It is skipped, with the reason
  shown, when `KERAS_BN_MNIST_DIR` is unset or not a folder; the page's later blocks are
  then skipped too, since they may use what it defined.
- A block fenced as ```` ```text title="Output" ```` right after a Python block (blank
  lines between are allowed) is what that block prints: the test compares the block's
  standard output with it, line by line, trailing spaces ignored. Readers see the
  output; the suite keeps it true.
- Each page starts from a clean Keras: `keras.utils.clear_session()`, the `float32`
  dtype policy and `keras.utils.set_random_seed(0)`. After the last page the dtype
  policy is reset to `float32` again, so a page that switches to mixed precision
  cannot leak it into the rest of the suite.

The file's own line numbers are kept: a traceback points at `docs/guide/maths.md`,
line 57, the line of the Markdown file that failed.
"""

import contextlib
import dataclasses
import io
import linecache
import os
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

import keras

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
MNIST_DIR_ENV = "KERAS_BN_MNIST_DIR"
NEEDS_MNIST = "<!-- snippet: needs-mnist -->"
_PYTHON_LANGS = {"python", "py", "python3"}
# An opening fence: indentation, three or more backticks or tildes, then the info
# string (language and optional attributes such as `title="..."`).
OUTPUT_TITLE = 'title="Output"'
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*?)[ \t]*$")


@dataclass(frozen=True)
class Block:
    """One fenced Python block: where it is, its code (dedented), and its markers."""

    path: Path
    line: int  # 1-based line of the first code line (just after the opening fence).
    index: int  # 0-based position among the page's Python blocks.
    code: str
    needs_mnist: bool
    expected_output: str | None = None  # What the block prints, from an Output block after it.

    @property
    def where(self):
        """`docs/guide/maths.md:57`, relative to the repository root."""
        return f"{self.path.relative_to(ROOT).as_posix()}:{self.line}"


def _language(info):
    """Returns the fence's language: the first word of its info string, lower-cased."""
    info = info.strip().lstrip("{").strip()
    word = info.split()[0] if info.split() else ""
    return word.lstrip(".").lower()


def parse_blocks(path):
    """Returns the page's Python blocks, in order, as `Block`s.

    Fences may be indented (inside an admonition or a list); the indentation of
    the opening fence is removed from every line of the block. An unclosed
    fence raises a `ValueError` naming the file and line.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    last_python_end = None  # Line index of the closing fence of the last Python block.
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence = match["indent"], match["fence"]
        opened_at = i
        body = []
        i += 1
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        while i < len(lines) and not closing.match(lines[i]):
            line = lines[i]
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
            i += 1
        if i == len(lines):
            raise ValueError(
                f"{path.relative_to(ROOT)}:{opened_at + 1}: the code fence opened here is "
                "never closed"
            )
        i += 1  # Past the closing fence.
        previous = opened_at - 1
        while previous >= 0 and not lines[previous].strip():
            previous -= 1
        if OUTPUT_TITLE in match["info"]:
            if not blocks or previous != last_python_end:
                raise ValueError(
                    f"{path.relative_to(ROOT)}:{opened_at + 1}: an Output block must come "
                    "right after a ```python block"
                )
            blocks[-1] = dataclasses.replace(blocks[-1], expected_output="\n".join(body))
            continue
        if _language(match["info"]) not in _PYTHON_LANGS:
            continue
        last_python_end = i - 1
        needs_mnist = previous >= 0 and lines[previous].strip() == NEEDS_MNIST
        blocks.append(
            Block(
                path=path,
                line=opened_at + 2,
                index=len(blocks),
                code="\n".join(body) + "\n",
                needs_mnist=needs_mnist,
            )
        )
    return blocks


def doc_pages():
    """Returns the Markdown pages whose snippets run: `docs/**/*.md`, then `README.md`."""
    pages = sorted(DOCS.rglob("*.md")) if DOCS.is_dir() else []
    return pages + [ROOT / "README.md"]


ALL_BLOCKS = [block for page in doc_pages() for block in parse_blocks(page)]


@dataclass
class _PageRun:
    """The state of one page's script: its namespace, folder and how far it got."""

    namespace: dict
    workdir: Path
    next_index: int = 0
    stopped_at: str | None = None  # Why the rest of the page cannot run, once it cannot.
    stop_is_skip: bool = False


_RUNS = {}


def _start_page(path, tmp_path_factory):
    """Returns a fresh `_PageRun` for `path`, with Keras reset to a known state."""
    keras.utils.clear_session()
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(0)
    name = re.sub(r"[^A-Za-z0-9]+", "_", path.relative_to(ROOT).as_posix())
    _install_source(path)
    return _PageRun(
        namespace={"__name__": "__main__", "__file__": str(path)},
        workdir=tmp_path_factory.mktemp(name),
    )


def _install_source(path):
    """Shows tracebacks the page as it runs: each Python block's lines dedented, in place.

    The Markdown file's own lines would put the `^^^` markers of an indented block
    (one inside an admonition) in the wrong columns.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    for block in (b for b in ALL_BLOCKS if b.path == path):
        code_lines = block.code.splitlines()
        lines[block.line - 1 : block.line - 1 + len(code_lines)] = code_lines
    text = [line + "\n" for line in lines]
    linecache.cache[str(path)] = (sum(map(len, text)), None, text, str(path))


def _run_block(block, run):
    """Executes `block` in the page's namespace, in the page's folder; raises on failure."""
    # Leading newlines keep the Markdown file's line numbers in tracebacks.
    source = "\n" * (block.line - 1) + block.code
    code = compile(source, str(block.path), "exec")
    cwd = os.getcwd()
    os.chdir(run.workdir)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            exec(code, run.namespace)
    finally:
        os.chdir(cwd)
    if block.expected_output is not None:
        _check_output(block, printed.getvalue())


def _normalized(text):
    """Returns `text`'s lines without trailing spaces, leading and trailing blank lines dropped."""
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()).strip("\n")


def _check_output(block, printed):
    """Raises an `AssertionError` showing both texts when `block` printed something else than its Output block."""
    expected, got = _normalized(block.expected_output), _normalized(printed)
    if expected != got:
        raise AssertionError(
            f"the block printed something else than its Output block says.\n"
            f"--- Output block:\n{expected}\n--- printed:\n{got}"
        )


def _snippet_traceback(error, path):
    """Returns the traceback of `error`, starting at the first frame in the Markdown file."""
    frames = traceback.extract_tb(error.__traceback__)
    start = next((k for k, f in enumerate(frames) if f.filename == str(path)), 0)
    lines = traceback.format_list(frames[start:])
    lines += traceback.format_exception_only(type(error), error)
    return "".join(lines)


@pytest.fixture(scope="module", autouse=True)
def _restore_keras_after_docs():
    """Leaves Keras in its default state after the last page, whatever the pages did."""
    yield
    keras.config.set_dtype_policy("float32")
    keras.utils.clear_session()


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[b.where for b in ALL_BLOCKS])
def test_snippet_runs(block, tmp_path_factory):
    """Runs `block` after the blocks before it on its page, as one script."""
    run = _RUNS.get(block.path)
    if run is None or run.next_index > block.index:
        # First block of the page, or a rerun: start the page's script over.
        run = _RUNS[block.path] = _start_page(block.path, tmp_path_factory)
    page_blocks = [b for b in ALL_BLOCKS if b.path == block.path]
    while run.next_index <= block.index:
        current = page_blocks[run.next_index]
        if run.stopped_at is not None:
            message = f"{block.where}: not run, because {run.stopped_at}"
            if run.stop_is_skip:
                pytest.skip(message)
            pytest.fail(message, pytrace=False)
        if current.needs_mnist:
            folder = os.environ.get(MNIST_DIR_ENV)
            if not folder or not Path(folder).is_dir():
                why = (
                    f"needs the real MNIST: set {MNIST_DIR_ENV} to a folder with the four "
                    "IDX files (see README)"
                )
                run.stopped_at, run.stop_is_skip = f"the block at {current.where} {why}", True
                if current is block:
                    pytest.skip(f"{block.where}: {why}")
                continue
        run.next_index += 1
        details = None
        try:
            _run_block(current, run)
        except Exception as error:  # noqa: BLE001 - reported below, with its place.
            details = _snippet_traceback(error, current.path)
        if details is not None:
            run.stopped_at = f"the block at {current.where} failed"
            prefix = "" if current is block else "an earlier block of the page failed. "
            pytest.fail(
                f"{prefix}Python block #{current.index + 1} of "
                f"{current.path.relative_to(ROOT).as_posix()}, at line {current.line}, "
                f"raised:\n{details}",
                pytrace=False,
            )


def test_docs_have_snippets():
    """Guards the collector itself: the docs hold Python blocks and every one is found."""
    assert ALL_BLOCKS, "no ```python block found in docs/ or README.md"
    for page in doc_pages():
        text = page.read_text(encoding="utf-8")
        fences = re.findall(r"^[ \t]*(?:```|~~~)[ \t]*(?:python|py|python3)\b", text, re.M)
        found = sum(1 for b in ALL_BLOCKS if b.path == page)
        assert found == len(fences), (
            f"{page.relative_to(ROOT)}: {len(fences)} python fences, but {found} collected"
        )
        markers = text.count(NEEDS_MNIST)
        marked = sum(1 for b in ALL_BLOCKS if b.path == page and b.needs_mnist)
        assert markers == marked, (
            f"{page.relative_to(ROOT)}: {markers} `{NEEDS_MNIST}` markers, but only {marked} "
            "sit right before a ```python fence"
        )


def _api_directives():
    """Returns `{name: page}` for every `::: keras_bn.<name>` directive under docs/api/."""
    found = {}
    for page in sorted((DOCS / "api").glob("*.md")):
        for match in re.finditer(r"^:::[ \t]+keras_bn(?:\.(\S+))?[ \t]*$", page.read_text(), re.M):
            found[match[1] or ""] = page.relative_to(ROOT).as_posix()
    return found


def test_api_pages_document_every_public_name():
    """Every name in `keras_bn.__all__` has a `::: keras_bn.<name>` directive, and only those."""
    import keras_bn

    directives = _api_directives()
    documented = {name for name in directives if name and "." not in name}  # Top level only.
    public = set(keras_bn.__all__)
    missing = sorted(public - documented)
    assert not missing, (
        f"public names without an API page: {missing}. Add `::: keras_bn.<name>` to a page "
        "under docs/api/ (and the page to the nav in mkdocs.yml)"
    )
    unknown = sorted(documented - public)
    assert not unknown, (
        f"API directives for names not in keras_bn.__all__: "
        f"{ {name: directives[name] for name in unknown} }. Export them or remove the directive"
    )


def test_api_pages_document_the_experiment_subpackage():
    """Every name in `keras_bn.experiment.__all__` has a directive; every dotted one resolves."""
    import importlib

    import keras_bn.experiment

    dotted = [name for name in _api_directives() if "." in name]
    for name in dotted:
        module, _, attribute = f"keras_bn.{name}".rpartition(".")
        assert hasattr(importlib.import_module(module), attribute), f"no {module}.{attribute}"
    missing = sorted(set(keras_bn.experiment.__all__) - {
        name.removeprefix("experiment.") for name in dotted})
    assert not missing, f"keras_bn.experiment names without an API page: {missing}"


def test_api_pages_hold_only_directives():
    """API pages are made only of `:::` directives (and their indented YAML options)."""
    for page in sorted((DOCS / "api").glob("*.md")):
        for number, line in enumerate(page.read_text().splitlines(), start=1):
            ok = not line.strip() or line.startswith(":::") or line.startswith((" ", "\t"))
            assert ok, (
                f"{page.relative_to(ROOT)}:{number}: API pages hold only `::: keras_bn.Name` "
                f"directives and their options. Received: {line!r}"
            )


def test_output_blocks_are_checked(tmp_path, monkeypatch):
    """An Output block that says something else than the block prints fails; a stray one is refused."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    page = tmp_path / "page.md"
    page.write_text('```python\nprint("one")\n```\n\n```text title="Output"\ntwo\n```\n')
    (block,) = parse_blocks(page)
    assert block.expected_output == "two"
    run = _PageRun(namespace={}, workdir=tmp_path)
    with pytest.raises(AssertionError, match=r"(?s)Output block:\ntwo\n--- printed:\none"):
        _run_block(block, run)
    page.write_text('```python\nprint("one")\n```\n\n```text title="Output"\none  \n```\n')
    _run_block(parse_blocks(page)[0], run)
    page.write_text('Text.\n\n```text title="Output"\none\n```\n')
    with pytest.raises(ValueError, match=r"page.md:3: an Output block must come right after"):
        parse_blocks(page)
