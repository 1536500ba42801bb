"""The documentation runs as written: every Python and shell block of README.md and docs/*.md,
in a folder holding the tiny random inputs it names (tests/_doc_blocks.py).

Object-store URLs of ``s3://lab/`` are served by a local S3 server (tests/_s3.py, through
``AWS_ENDPOINT_URL``); ``tcp://127.0.0.1:8786`` by a local scheduler started for the command.
What cannot run here (a GPU, another host's scheduler or endpoint, ``make``/``pip``, minutes of
benchmark) is marked in the markdown with ``<!-- docs-test: skip (reason) -->`` above the block,
and reported as skipped with that reason.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _doc_blocks import Block, all_blocks, make_files, untagged_fences

BLOCKS = all_blocks()
BIN = Path(sys.executable).parent
TIMEOUT = 120
_folders: dict[str, Path] = {}  # file → the folder its last block ran in (for `continue`)


@pytest.fixture(scope="module")
def s3_server():
    servers = []

    def start():
        if not servers:
            from _s3 import S3Server

            servers.append(S3Server())
        return servers[0]

    yield start
    for server in servers:
        server.stop()


def test_blocks_found():
    """The parser sees the README's blocks (a renamed fence would silently drop them)."""
    assert any(b.file == "README.md" and b.kind == "python" for b in BLOCKS)
    assert any(b.file == "README.md" and b.kind == "shell" for b in BLOCKS)


def test_every_fence_names_its_language():
    """A block without a language would be neither run nor skipped: name it (```bash,
    ```python, or ```text / ```yaml for what is not run)."""
    assert untagged_fences() == []


@contextlib.contextmanager
def _scheduler_if_named(text: str):
    """A scheduler on 127.0.0.1:8786 with one worker while a command that names it runs."""
    if "tcp://127.0.0.1:8786" not in text:
        yield
        return
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 8786)) == 0:
            pytest.skip("port 8786 is taken here: cannot stand in for the block's scheduler")
    from distributed import LocalCluster

    with LocalCluster(
        scheduler_port=8786,
        host="127.0.0.1",
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        dashboard_address=None,
    ):
        yield


def _environment(folder: Path, s3) -> dict:
    env = dict(os.environ)
    if s3 is not None:
        from _s3 import s3_environment

        home = folder.parent / (folder.name + "-home")
        home.mkdir(exist_ok=True)
        env = s3_environment(home, endpoint=s3.endpoint)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["DASK_DISTCONV__PROGRESS"] = "False"
    return env


def _upload(s3, folder: Path, names: set[str]):
    """Bucket ``lab`` emptied (public read), then holding the local inputs the block names under s3://lab/."""
    fs = s3.filesystem()
    if fs.exists("lab"):
        fs.rm("lab", recursive=True)
    fs.mkdir("lab", acl="public-read")  # anon=True reads it too
    for name in sorted(names):
        if (folder / name).exists():
            fs.put(str(folder / name), f"lab/{name}", recursive=True)


def _run(kind: str, text: str, folder: Path, s3_server, rng) -> None:
    urls = make_files(text, folder, rng)
    s3 = s3_server() if urls else None
    if s3 is not None:
        _upload(s3, folder, urls)
    if kind == "python":
        script = folder / "block.py"
        script.write_text(text)
        argv = [sys.executable, str(script)]
    else:
        argv = ["bash", "-e", "-o", "pipefail", "-c", text]
    with _scheduler_if_named(text):
        done = subprocess.run(
            argv,
            cwd=folder,
            env=_environment(folder, s3),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    assert done.returncode == 0, (
        f"exit {done.returncode}\n--- block ---\n{text}\n--- stdout ---\n{done.stdout[-4000:]}"
        f"\n--- stderr ---\n{done.stderr[-6000:]}"
    )


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_block_runs(block: Block, tmp_path, s3_server):
    if block.skip:
        pytest.skip(block.skip)
    rng = np.random.default_rng(block.line)
    if block.cont and block.file in _folders:
        folder = _folders[block.file]
    else:
        folder = tmp_path / "work"
        folder.mkdir()
    _folders[block.file] = folder
    if not block.each_line:
        _run(block.kind, block.text, folder, s3_server, rng)
        return
    skipped = []
    for n, command in enumerate(block.commands()):
        reasons = [reason for text, reason in block.skip_lines if text in command]
        if reasons:
            skipped.append(f"{command.split('#')[0].strip()}: {reasons[0]}")
            continue
        own = tmp_path / f"command-{n}"
        own.mkdir()
        _run("shell", command, own, s3_server, rng)
    if skipped:
        print("not run:\n" + "\n".join(skipped))
