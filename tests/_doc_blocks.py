"""The code blocks of README.md and docs/*.md, and the files they name.

A block is a fenced ```python, ```bash, ```sh, ```shell or ```console block. HTML comments on the
lines directly above its fence tell the test how to run it:

- ``<!-- docs-test: skip (reason) -->``: not run; the test is skipped with that reason.
- ``<!-- docs-test: continue -->``: runs in the previous block's folder (it uses its output).
- ``<!-- docs-test: each-line -->``: a list of independent commands: every command (a line, with
  its ``\\`` continuations) runs alone, in a fresh folder.
- ``<!-- docs-test: skip-line "TEXT" (reason) -->``: with each-line, commands containing TEXT
  are not run (the reason is printed with the block's result).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LANGUAGES = {
    "python": "python",
    "bash": "shell",
    "sh": "shell",
    "shell": "shell",
    "console": "shell",
}
_FENCE = re.compile(r"^(\s*)```\s*([A-Za-z0-9_+-]*)\s*$")
_MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(.*?)\s*-->\s*$")
_SKIP = re.compile(r"^skip\s*\((.+)\)$")
_SKIP_LINE = re.compile(r'^skip-line\s+"([^"]+)"\s*\((.+)\)$')


@dataclass
class Block:
    file: str  # relative to the repository root
    line: int  # the opening fence's line, 1-based
    kind: str  # "python" or "shell"
    text: str
    skip: str | None = None
    cont: bool = False
    each_line: bool = False
    skip_lines: list[tuple[str, str]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.file}:L{self.line}"

    def commands(self) -> list[str]:
        """The block's commands: lines joined across ``\\`` continuations, comments-only and
        blank lines left out (a ``$ `` prompt of a console block removed)."""
        commands, pending = [], ""
        for raw in self.text.splitlines():
            line = raw[2:] if raw.startswith("$ ") else raw
            pending += line
            if pending.rstrip().endswith("\\"):
                pending = pending.rstrip()[:-1] + " "
                continue
            if pending.strip() and not pending.strip().startswith("#"):
                commands.append(pending.strip())
            pending = ""
        return commands


def parse(path: Path) -> list[Block]:
    """Every runnable block of one markdown file, with its markers."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start, language = i, match.group(2).lower()
        end = start + 1
        while end < len(lines) and not lines[end].strip().startswith("```"):
            end += 1
        if language in LANGUAGES:
            block = Block(
                file=str(path.relative_to(ROOT)),
                line=start + 1,
                kind=LANGUAGES[language],
                text="\n".join(lines[start + 1 : end]) + "\n",
            )
            above = start - 1
            while above >= 0 and _MARKER.match(lines[above]):
                _apply(block, _MARKER.match(lines[above]).group(1))
                above -= 1
            blocks.append(block)
        i = end + 1
    return blocks


def _apply(block: Block, marker: str) -> None:
    if marker == "continue":
        block.cont = True
    elif marker == "each-line":
        block.each_line = True
    elif _SKIP_LINE.match(marker):
        block.skip_lines.append(_SKIP_LINE.match(marker).groups())
    elif _SKIP.match(marker):
        block.skip = _SKIP.match(marker).group(1)
    else:
        raise ValueError(f"{block.id}: unknown docs-test marker {marker!r}")


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def all_blocks() -> list[Block]:
    return [block for path in markdown_files() for block in parse(path)]


def untagged_fences() -> list[str]:
    """``file:Lnn`` of every opening fence that names no language (``text``, ``yaml``... for
    what is not run), so that no shell or Python block escapes the test unnoticed."""
    found = []
    for path in markdown_files():
        inside = False
        for n, line in enumerate(path.read_text().splitlines(), 1):
            match = _FENCE.match(line)
            if not match:
                continue
            if not inside and not match.group(2):
                found.append(f"{path.relative_to(ROOT)}:L{n}")
            inside = not inside
    return found


# --- the files blocks name --------------------------------------------------------------------


def _write(path: Path, data: np.ndarray, chunks) -> None:
    import zarr

    array = zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=data.dtype)
    array[:] = data


def _image(rng, shape) -> np.ndarray:
    return rng.random(shape, dtype=np.float32) + np.float32(0.1)  # positive, never zeros


def _kernel(rng, size: int) -> np.ndarray:
    k = rng.random((size, size), dtype=np.float32) + np.float32(0.1)
    return k / k.sum()


def make_files(text: str, folder: Path, rng: np.random.Generator) -> set[str]:
    """Write into ``folder`` the inputs ``text`` names (tiny, random); returns the names of
    those an ``s3://lab/`` URL names, for the caller to upload."""
    for name in ("kernel.npy", "k.npy", "psf.npy"):
        if name in text:
            np.save(folder / name, _kernel(rng, 5))
    if "big.zarr/raw/0" in text:
        import zarr

        group = zarr.open_group(str(folder / "big.zarr"), mode="w")
        group.create_group("raw")
        _write(folder / "big.zarr" / "raw" / "0", _image(rng, (2, 64, 64)), (1, 32, 32))
    elif "big.zarr" in text:
        _write(folder / "big.zarr", _image(rng, (64, 64)), (32, 32))
    for name in ("beads.zarr", "img.zarr"):
        if name in text:
            _write(folder / name, _image(rng, (48, 48)), (24, 24))
    for name in ("a.zarr", "b.zarr"):
        if name in text:
            _write(folder / name, rng.standard_normal((32, 32)), (16, 16))
    if "rgb.zarr" in text:
        _write(folder / "rgb.zarr", _image(rng, (48, 48, 3)), (24, 24, 3))
    if "stack.zarr" in text:
        data = _image(rng, (20, 40, 40))  # larger than gaussian:sigma=1,2,2
        if "xarray=True" in text:
            import xarray as xr

            stack = xr.DataArray(data, dims=("z", "y", "x"), name="stack")
            stack = stack.assign_coords(z=np.arange(20) * 2.0)
            stack.chunk({"z": 10, "y": 20, "x": 20}).to_dataset().to_zarr(folder / "stack.zarr")
        else:
            _write(folder / "stack.zarr", data, (10, 20, 20))
    if "cells.ome.zarr" in text:
        from _images import write_ome_image

        write_ome_image(
            folder / "cells.ome.zarr", _image(rng, (1, 2, 64, 64)), "0.5", (1, 1, 32, 32)
        )
    for name in re.findall(r"distconv info ([\w.-]+\.zarr)", text):
        if f"-o {name}" not in text:  # an output of an earlier command: made here instead
            import distconv as dc

            _write(folder / "input.zarr", _image(rng, (64, 64)), (32, 32))
            dc.save(dc.convolve(dc.open(folder / "input.zarr"), _kernel(rng, 3)), folder / name)
    return set(re.findall(r"s3://lab/([\w.-]+)", text))
