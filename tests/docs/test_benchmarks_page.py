"""docs/benchmarks.md and benchmarks/make_page.py agree, and the generator keeps the prose.

Nothing here times anything: the tables are rendered from results a quick run of
`make_page.py` kept (`benchmark_results/`, taken on a busy machine, which is what
the busy-machine tests need), never from a fresh run.
"""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

import test_docs_width as width

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "benchmarks.md"
RESULTS = Path(__file__).resolve().parent / "benchmark_results"


def _make_page():
    """Imports benchmarks/make_page.py, which imports no framework."""
    spec = importlib.util.spec_from_file_location("make_page", ROOT / "benchmarks" / "make_page.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_page = _make_page()


def _results(tmp_path, busy):
    """Copies the kept results to `tmp_path`, every run and figure marked busy or idle; returns the folder."""
    folder = tmp_path / "results"
    shutil.copytree(RESULTS, folder)
    for path in folder.glob("*.json"):
        run = json.loads(path.read_text())
        if "figures" in run:
            run["busy"] = run["before"]["busy"] = busy
            run["before"]["reasons"] = ["other processes used 85% of a core (python 4242 85%)"] if busy else []
            for figure in run["figures"]:
                figure["idle"]["busy"] = busy
                figure["idle"]["reasons"] = list(run["before"]["reasons"])
        path.write_text(json.dumps(run))
    return folder


def test_every_marked_table_has_a_renderer_and_every_renderer_a_table():
    """The page marks each table once, and `make_page.TABLES` renders exactly those."""
    names = make_page.marked_tables(PAGE.read_text(encoding="utf-8"))
    assert len(names) == len(set(names))
    assert sorted(names) == sorted(make_page.TABLES)


def test_every_run_has_results_kept_for_these_tests():
    """The kept results are those of `make_page.RUNS`, so the renderers below see every run."""
    assert sorted(path.stem for path in RESULTS.glob("*.json")) == sorted(make_page.RUNS)


@pytest.mark.parametrize("name", sorted(make_page.TABLES))
def test_a_rendered_table_fits_the_page_and_says_how_it_was_made(name, tmp_path):
    """Each renderer gives one compact table that fits the column, with its command, machine and date."""
    results = make_page.load(_results(tmp_path, busy=False))
    text = make_page.TABLES[name](results)
    page = tmp_path / "table.md"
    page.write_text(text)
    (_, style, rows), = width.tables(page)
    assert style == "compact"
    assert width.table_px(style, rows) <= width.TABLE_PX
    assert len({len(row) for row in rows}) == 1, "every row has as many cells as the header"
    machine = next(iter(results.values()))["machine"]
    assert "python benchmarks/" in text
    assert machine["cpu"] in text and machine["date"] in text
    assert "not to be trusted" not in text


@pytest.mark.parametrize("name", ["train", "bn", "predict", "experiment"])
def test_a_table_measured_on_a_busy_machine_says_so(name, tmp_path):
    """A timing table from a busy run names the reason; the large-offset table times nothing."""
    text = make_page.TABLES[name](make_page.load(_results(tmp_path, busy=True)))
    assert text.startswith("**Measured on a busy machine, not to be trusted**")
    assert "85% of a core" in text


def test_replace_tables_rewrites_between_the_markers_and_keeps_the_rest():
    """What lies between a pair of markers is replaced; every other character stays."""
    page = ("# Title\n\nProse.\n\n<!-- table: a -->\nold\nrows\n<!-- /table -->\n\nMore prose.\n"
            "<!-- table: b -->\n<!-- /table -->\nEnd.\n")
    assert make_page.replace_tables(page, {"a": "A1\nA2\n", "b": "B"}) == (
        "# Title\n\nProse.\n\n<!-- table: a -->\nA1\nA2\n<!-- /table -->\n\nMore prose.\n"
        "<!-- table: b -->\nB\n<!-- /table -->\nEnd.\n")


@pytest.mark.parametrize("page, message", [
    ("<!-- table: a -->\nx\n", "'a' is never closed"),
    ("<!-- table: a -->\n<!-- table: b -->\n<!-- /table -->\n", "'b' opens inside 'a'"),
    ("x\n<!-- /table -->\n", "closes no table"),
    ("<!-- table: a -->\n<!-- /table -->\n<!-- table: a -->\n<!-- /table -->\n", "a second 'a'"),
])
def test_markers_out_of_place_are_refused(page, message):
    """An unclosed, nested, stray or repeated marker is an error that says which."""
    with pytest.raises(ValueError, match=message):
        make_page.marked_tables(page)


def test_replace_tables_refuses_a_table_without_a_renderer_and_the_reverse():
    """The page's tables and the rendered ones must be the same set."""
    page = "<!-- table: a -->\n<!-- /table -->\n"
    with pytest.raises(ValueError, match=r"only on the page \[\], only rendered \['b'\]"):
        make_page.replace_tables(page, {"a": "A", "b": "B"})
    with pytest.raises(ValueError, match=r"only on the page \['a'\], only rendered \[\]"):
        make_page.replace_tables(page, {})


def _main(monkeypatch, *arguments):
    """Runs `make_page.main()` with `arguments` on the command line."""
    monkeypatch.setattr(sys, "argv", ["make_page.py", *map(str, arguments)])
    make_page.main()


def test_the_page_is_not_written_from_a_busy_machine_unless_asked(tmp_path, monkeypatch):
    """`--from` a busy run stops and names the way out; `--busy-ok` writes every table, the prose kept."""
    folder, out = _results(tmp_path, busy=True), tmp_path / "benchmarks.md"
    with pytest.raises(SystemExit, match="the machine was busy during .*--busy-ok"):
        _main(monkeypatch, "--from", folder, "--out", out)
    assert not out.exists()
    _main(monkeypatch, "--from", folder, "--out", out, "--busy-ok")
    before, after = PAGE.read_text(encoding="utf-8"), out.read_text(encoding="utf-8")
    assert after.count("**Measured on a busy machine, not to be trusted**") == 4  # the timing tables
    # The prose, what lies outside the marked tables, is the page's to the character.
    emptied = {name: "" for name in make_page.TABLES}
    assert make_page.replace_tables(after, emptied) == make_page.replace_tables(before, emptied)
    assert after != before
