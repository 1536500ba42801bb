"""Notebook display: plans and ``dc.info`` as HTML tables, the progress bar in Jupyter.

The tables are rendered with ``_repr_html_()`` and parsed back with the standard library's
``html.parser``; the rows must hold the objects' own values. The progress bar runs a real job
with a rich console forced into Jupyter mode and a stand-in ``IPython.display`` (IPython is not
a dependency), which records what the notebook would show.
"""

from __future__ import annotations

import json
import sys
import types
from html.parser import HTMLParser

import dask.array as da
import numpy as np
import pytest
import scipy.ndimage as ndi
import zarr
from dask.utils import format_bytes
from rich.console import Console

import distconv as dc
from distconv._html import cell_text, html_table
from distconv.executor import ProgressBar
from distconv.ops.deconvolve import plan_for as plan_deconvolution
from distconv.ops.matmul import plan_for as plan_matmul_of


class _Table(HTMLParser):
    """The caption and the (th, td) rows of one ``<table>``, entities unescaped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.caption: str | None = None
        self.rows: list[tuple[str, str]] = []
        self.tables = 0
        self._cell: str | None = None
        self._text: list[str] = []
        self._row: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table":
            self.tables += 1
        elif tag in ("th", "td", "caption"):
            self._cell, self._text = tag, []
        elif tag == "tr":
            self._row = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "caption":
            self.caption = "".join(self._text)
        elif tag in ("th", "td"):
            self._row.append("".join(self._text))
        elif tag == "tr":
            assert len(self._row) == 2, self._row
            self.rows.append((self._row[0], self._row[1]))
        if tag == self._cell:
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._text.append(data)


def parse_table(html: str) -> tuple[str | None, dict[str, str]]:
    parser = _Table()
    parser.feed(html)
    parser.close()
    assert parser.tables == 1
    fields = [field for field, _ in parser.rows]
    assert len(fields) == len(set(fields)), fields  # one row per field
    return parser.caption, dict(parser.rows)


def shape(values) -> str:
    return "×".join(str(int(v)) for v in values)


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "in.zarr"
    data = np.random.default_rng(7).random((96, 80)).astype("float32")
    z = zarr.create_array(path, shape=data.shape, chunks=(32, 16), dtype=data.dtype)
    z[:] = data
    return path, data


def test_html_table_escapes_every_cell():
    nasty = '<script>alert("x")</script> & <b>'
    html = html_table([("a<&>", nasty), ("shape", (3, 4)), ("none", None)], title="t<&>")
    assert "<script>" not in html and "<b>" not in html
    assert "&lt;script&gt;" in html and "&amp;" in html
    caption, rows = parse_table(html)
    assert caption == "t<&>"
    assert rows == {"a<&>": nasty, "shape": "3×4", "none": "none"}


def test_filter_plan_table_holds_the_plan(store):
    path, _ = store
    weights = dc.load_weights("gaussian:sigma=1.5", ndim=2)
    plan = dc.plan_convolve(dc.open(path), weights)
    caption, rows = parse_table(plan._repr_html_())
    assert caption == "convolve plan"
    assert rows["operation"] == plan.operation == "convolve"
    assert rows["source"] == plan.source
    assert rows["input shape"] == shape(plan.input_shape) == shape(zarr.open_array(path).shape)
    assert rows["input dtype"] == str(plan.input_dtype)
    assert rows["weights shape"] == shape(np.shape(weights))
    assert rows["output dtype"] == str(plan.correlation.out_dtype)
    assert rows["compute dtype"] == str(plan.correlation.compute_dtype)
    assert rows["mode"] == plan.correlation.mode
    # The stored chunks are the tiles' units; the tile is a whole number of them.
    assert rows["units"] == f"{plan.tiles.unit_kind} {shape(zarr.open_array(path).chunks)}"
    assert rows["tile"].startswith(f"{shape(plan.tile_shape)} = {plan.tiles.units_per_tile} x ")
    assert rows["tasks"].startswith(f"{plan.tasks:,} tile(s)")
    assert rows["tasks at once"] == str(plan.tiles.resources.parallel_tasks)
    assert shape(plan.correlation.depth) in rows["halo"]
    engines = {engine for *_, engine in plan.per_tile()}
    assert rows["engine"] == ", ".join(sorted(engines))
    for tile, count, method, engine in plan.per_tile():
        assert f"{shape(tile)} x{count}: {method} on {engine}" in rows["method per tile"]
    # Every value of the table is a fact the text form prints too.
    assert plan.describe().count(rows["tile chosen by"]) == 1
    assert repr(plan).startswith("<FilterPlan convolve") and len(repr(plan)) < 300


def test_tile_plan_table(store):
    path, _ = store
    tiles = dc.plan_convolve(dc.open(path), np.ones((3, 3))).tiles
    caption, rows = parse_table(tiles._repr_html_())
    assert caption == "tile plan"
    assert rows["shape"] == shape(tiles.shape)
    assert rows["dtype"] == str(tiles.dtype)
    assert rows["peak memory/task"].startswith(format_bytes(tiles.peak_task_bytes) + " of a ")
    assert rows["tasks"].startswith(f"{tiles.tasks:,} tile(s)")
    assert repr(tiles).startswith("<TilePlan")


def test_matmul_plan_table():
    a = da.ones((64, 48), chunks=16, dtype="float32")
    b = da.ones((48, 32), chunks=16, dtype="float32")
    plan = plan_matmul_of(a, b)
    caption, rows = parse_table(plan._repr_html_())
    assert caption == "matmul plan"
    assert rows["A"] == f"{shape(a.shape)} {a.dtype}"
    assert rows["B"] == f"{shape(b.shape)} {b.dtype}"
    assert rows["output shape"] == shape(plan.out_shape) == "64×32"
    assert rows["output dtype"] == str(plan.dtype)
    assert rows["engine"] == plan.engine
    assert rows["blocks"].endswith(f"n {plan.block_n}, k {plan.block_k}, m {plan.block_m}")
    assert rows["tasks"] == f"{plan.matmul_tasks} matmul + {plan.sum_tasks} tree-sum"
    assert rows["output chunks"].startswith(shape(plan.output_chunks))
    assert "MatmulPlan" in repr(plan) and len(repr(plan)) < 300


def test_deconvolution_plan_table():
    x = da.zeros((256, 256), chunks=64, dtype="float32")
    psf = np.ones((5, 5)) / 25
    plan = plan_deconvolution(x, psf, "richardson-lucy", iterations=3)
    caption, rows = parse_table(plan._repr_html_())
    assert caption == "richardson-lucy plan"
    assert rows["PSF shape"] == shape(psf.shape)
    assert rows["iterations"] == str(plan.iterations)
    assert rows["strategy"].startswith(plan.strategy)
    assert rows["halo per axis"].startswith(shape(plan.halo))
    assert rows["tasks"].startswith(str(plan.layout.tasks))
    assert rows["engine"] == ", ".join(plan.engines_used())
    chosen = [field for field, value in rows.items() if value.endswith("(chosen)")]
    assert len(chosen) == 1
    assert "array(" not in repr(plan) and len(repr(plan)) < 300  # not the PSF's values


def test_info_table_and_dict_unchanged(store, tmp_path):
    path, data = store
    dc.save(dc.convolve(dc.open(path), np.ones((3, 3))), tmp_path / "out.zarr", progress=False)
    for target in (path, tmp_path / "out.zarr"):
        described = dc.info(target)
        assert isinstance(described, dict)
        # JSON (``distconv info --json``) and dict equality see the plain dict.
        assert json.dumps(described, default=str) == json.dumps(dict(described), default=str)
        assert described == dict(described)
        caption, rows = parse_table(described._repr_html_())
        assert caption == "distconv.info"
        stored = zarr.open_array(target)
        assert rows["path"] == described["path"]
        assert rows["shape"] == shape(stored.shape) == cell_text(described["shape"])
        assert rows["chunks"] == shape(stored.chunks)
        assert rows["dtype"] == str(stored.dtype)
        assert rows["zarr_format"] == str(stored.metadata.zarr_format)
        assert rows["codecs"] == ", ".join(described["codecs"])
        assert rows["bytes"].startswith(f"{stored.nbytes:,}")
        assert rows["chunks written"] == f"{stored.nchunks_initialized:,} of {stored.nchunks:,}"
    assert rows["status"] == "complete"
    step = described["provenance"]["steps"][-1]
    assert f"engine {step['engine']}" in rows["operation"]
    assert rows["version"] == str(described["provenance"]["version"])


def test_info_table_escapes_store_text(store):
    path, _ = store
    described = dc.info(path)
    described["path"] = "a<b>&c"
    described["provenance"] = {"complete": True, "command": "<img src=x onerror=alert(1)>"}
    html = described._repr_html_()
    assert "<img" not in html and "<b>" not in html
    _, rows = parse_table(html)
    assert rows["path"] == "a<b>&c"
    assert rows["command"] == "<img src=x onerror=alert(1)>"


class _FakeDisplay:
    """``IPython.display`` as a notebook kernel has it: display(..., display_id=True) and the
    handle's update()."""

    def __init__(self) -> None:
        self.shown: list = []
        self.handles = 0

    def display(self, obj, display_id=None):
        assert display_id is True
        self.handles += 1
        self.shown.append(obj)
        return types.SimpleNamespace(update=self.shown.append)


def test_progress_in_a_notebook(store, tmp_path, monkeypatch):
    _, data = store
    path = tmp_path / "in64.zarr"
    data = data.astype("float64")  # the job in float64, as scipy.ndimage computes
    zarr.create_array(path, shape=data.shape, chunks=(32, 16), dtype=data.dtype)[:] = data
    fake = _FakeDisplay()
    module = types.ModuleType("IPython.display")
    module.display = fake.display
    package = types.ModuleType("IPython")
    package.display = module
    monkeypatch.setitem(sys.modules, "IPython", package)
    monkeypatch.setitem(sys.modules, "IPython.display", module)
    monkeypatch.setattr(ProgressBar, "console", Console(force_jupyter=True))
    monkeypatch.setattr(ProgressBar, "NOTEBOOK_REFRESH", 1e9)  # every tile redraws
    assert ProgressBar.where() == "jupyter"  # stderr is not a terminal under pytest

    weights = np.random.default_rng(1).random((5, 3))
    x = dc.open(path)
    dc.save(dc.convolve(x, weights), tmp_path / "out.zarr", progress=True)

    result = zarr.open_array(tmp_path / "out.zarr")[:]
    assert result.dtype == np.float64
    expected = ndi.convolve(data, weights)
    np.testing.assert_allclose(result, expected, rtol=1e-12, atol=1e-12)

    assert fake.handles == 1  # one output of the cell, updated in place
    assert len(fake.shown) >= 2
    bundles = [obj._repr_mimebundle_(include=(), exclude=()) for obj in fake.shown]
    assert all(set(b) == {"text/html", "text/plain"} for b in bundles)
    blocks = zarr.open_array(tmp_path / "out.zarr").nchunks_initialized
    last = bundles[-1]["text/plain"]
    assert "tiles" in last
    total = int(last.split("/")[1].split()[0])
    assert last.split("/")[0].split()[-1] == str(total)  # the bar ends full
    assert 0 < total <= blocks
    assert "<pre" in bundles[-1]["text/html"] and f"{total}/{total}" in bundles[-1]["text/html"]


def test_no_notebook_and_no_terminal_draws_nothing(store, tmp_path, monkeypatch):
    path, _ = store
    monkeypatch.setattr(ProgressBar, "console", None)
    monkeypatch.delattr("builtins.get_ipython", raising=False)
    assert ProgressBar.where() is None  # pytest's stderr is captured, not a terminal
    started = []
    monkeypatch.setattr(ProgressBar, "_new_progress", classmethod(lambda *a: started.append(a)))
    dc.save(dc.convolve(dc.open(path), np.ones((3, 3))), tmp_path / "out.zarr", progress=True)
    assert not started
