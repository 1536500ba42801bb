"""Shared by the benchmark scripts: machine description and sections of benchmarks/RESULTS.md."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from distconv.bench.common import machine as _machine
from distconv.bench.common import machine_text

# DISTCONV_BENCH_RESULTS points the scripts at another file (a trial run, the smoke test).
RESULTS = Path(os.environ.get("DISTCONV_BENCH_RESULTS") or Path(__file__).with_name("RESULTS.md"))


def machine() -> str:
    """One line: cores, CPU, memory, OS, Python and library versions, GPU, load, date."""
    return machine_text(_machine())


# Options several scripts share, by keyword: their flags, type and help.
_OPTIONS = {
    "size": (("--size",), int, None),
    "chunk": (("--chunk",), int, None),
    "kernels": (("--kernel-sizes", "--kernels"), str, None),
    "engine": (("--engine",), str, None),
    "repeats": (("--repeats",), int, None),
    "max_seconds": (
        ("--max-seconds",),
        float,
        "list a cell as skipped when its estimated time is longer",
    ),
}


def add_options(parser: argparse.ArgumentParser, **defaults: object) -> None:
    """Add the shared options ``defaults`` names (size, chunk, kernels, engine, repeats,
    max_seconds), in its order, each with its default; ``args.<keyword>`` holds the value."""
    for name, default in defaults.items():
        flags, kind, help = _OPTIONS[name]
        parser.add_argument(*flags, dest=name, type=kind, default=default, help=help)


def publish(name: str, text: str, write: bool) -> None:
    """Print a section and, when ``write``, put it into RESULTS.md (:func:`write_section`)."""
    print(text)
    if write:
        write_section(name, text)


def _section_pattern(name: str) -> re.Pattern:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    return re.compile(re.escape(start) + "\n?(.*?)\n?" + re.escape(end), re.S)


def read_section(name: str, path: Path | None = None) -> str | None:
    """The text of section ``name`` in RESULTS.md (None when it has none)."""
    path = path or RESULTS
    found = _section_pattern(name).search(path.read_text()) if path.exists() else None
    return found.group(1) if found else None


def write_section(name: str, markdown: str, path: Path | None = None) -> None:
    """Replace (or append) the section between ``<!-- name:start -->`` and ``<!-- name:end -->``."""
    path = path or RESULTS
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{markdown.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = _section_pattern(name)
    text = (
        pattern.sub(lambda _: block, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + block + "\n"
    )
    path.write_text(text)
