"""Where data lives: a convolve from and to a local S3 server vs the local disk, and a pyramid
written in the same pass vs a convolve followed by ome-zarr-py's pyramid builder.

A seeded random float32 image (16384² in 256² chunks by default) is written to a local Zarr
store and copied to a moto S3 server started on 127.0.0.1 in its own process. On one
LocalCluster (one single-threaded worker per core) each route runs ``--repeats`` times, the
output removed between runs:

- ``disk → disk``: ``dc.save(dc.convolve(dc.open(local)), local)``
- ``S3 → S3``: the same with ``s3://`` URLs and ``storage_options``
- ``one-pass pyramid``: ``dc.save(..., pyramid=LEVELS)`` on disk (an OME-Zarr image)
- ``convolve, then ome-zarr-py``: the disk convolve, then ``ome_zarr.writer.write_image`` of
  the result with ``scale_factors`` 2, 4, 8 and the local mean (a second read of the result)

Targets (issue #17): the one-pass pyramid costs ≤ 1.3× the plain convolve and beats the
two-step route. Section "stores" of benchmarks/RESULTS.md.

    python benchmarks/stores.py [--size 16384] [--chunk 256] [--levels 4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import add_options, machine, write_section

import distconv as dc
from distconv.bench import cluster_text
from distconv.bench.common import fresh, make_input

KEY, SECRET = "bench-key", "bench-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def s3_server():
    """moto's S3 server in its own process on 127.0.0.1; yields its endpoint URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the moto S3 server did not start")
            time.sleep(0.2)
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=30)


def two_step_pyramid(result: str, target: str, levels: int, chunk: int) -> None:
    """ome-zarr-py's builder on a finished result: reads it again, writes every level."""
    import dask.array as da
    import zarr
    from ome_zarr.scale import Methods
    from ome_zarr.writer import write_image

    image = da.from_zarr(result)
    root = zarr.open_group(target, mode="w")
    write_image(
        image,
        root,
        scale_factors=[2**k for k in range(1, levels)],
        method=Methods.LOCAL_MEAN,
        axes="yx",
        storage_options={"chunks": (chunk, chunk)},
    )


def run(args) -> list[dict]:
    import s3fs

    workdir = Path(tempfile.mkdtemp(prefix="distconv-stores-", dir=args.workdir))
    source = workdir / "in.zarr"
    make_input(source, args.size, args.chunk, seed=args.size)
    weights = dc.load_weights(f"gaussian:sigma={args.sigma}", ndim=2)
    rows = []
    with s3_server() as endpoint:
        options = {"endpoint_url": endpoint, "key": KEY, "secret": SECRET}
        fs = s3fs.S3FileSystem(**options)
        fs.mkdir("bench")
        start = time.perf_counter()
        fs.put(str(source), "bench/in.zarr", recursive=True)
        upload = time.perf_counter() - start

        def clean() -> None:  # outputs of the previous run, removed outside the timings
            for name in ("out.zarr", "pyramid.ome.zarr", "two.ome.zarr"):
                fresh(workdir / name)
            with contextlib.suppress(FileNotFoundError):
                fs.rm("bench/out.zarr", recursive=True)

        def disk() -> None:
            dc.save(dc.convolve(dc.open(source), weights), workdir / "out.zarr")

        def s3() -> None:
            x = dc.open("s3://bench/in.zarr", storage_options=options)
            dc.save(dc.convolve(x, weights), "s3://bench/out.zarr", storage_options=options)

        def pyramid() -> None:
            y = dc.convolve(dc.open(source), weights)
            dc.save(y, workdir / "pyramid.ome.zarr", pyramid=args.levels)

        def two_step() -> None:
            disk()
            two_step_pyramid(
                str(workdir / "out.zarr"), str(workdir / "two.ome.zarr"), args.levels, args.chunk
            )

        routes = [
            ("disk → disk", disk),
            ("S3 → S3", s3),
            (f"one-pass pyramid ({args.levels} levels)", pyramid),
            (f"convolve, then ome-zarr-py ({args.levels} levels)", two_step),
        ]
        with dc.cluster("local", quiet=True) as client:
            workers = cluster_text(client)
            for name, function in routes:
                clean()
                function()  # warm-up: imports, compiled kernels, connections
                times = []
                for _ in range(args.repeats):
                    clean()
                    start = time.perf_counter()
                    function()
                    times.append(time.perf_counter() - start)
                rows.append({"route": name, "seconds": statistics.median(times)})
                print(f"{name}: {rows[-1]['seconds']:.2f} s", flush=True)
    for row in rows:
        row["workers"] = workers
    rows.append({"route": "upload to S3 (not compared)", "seconds": upload, "workers": ""})
    fresh(workdir)
    return rows


def report(rows: list[dict], args) -> str:
    by = {row["route"]: row["seconds"] for row in rows}
    plain, remote = by["disk → disk"], by["S3 → S3"]
    one_pass = next(v for k, v in by.items() if k.startswith("one-pass"))
    two_step = next(v for k, v in by.items() if k.startswith("convolve, then"))
    pixels = args.size**2
    lines = [
        f"Convolve a {args.size}² float32 image in {args.chunk}² chunks with "
        f"gaussian:sigma={args.sigma} ({rows[0]['workers']}); median of {args.repeats} runs "
        "after a warm-up. Machine: " + machine() + ".",
        "",
        "| route | seconds | Mpx/s | × disk → disk |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        seconds = row["seconds"]
        lines.append(
            f"| {row['route']} | {seconds:.2f} | {pixels / seconds / 1e6:.1f} | "
            f"{seconds / plain:.2f} |"
        )
    lines += [
        "",
        f"S3 → S3 costs {remote / plain:.2f}× the disk. One-pass pyramid: {one_pass / plain:.2f}× "
        f"the plain convolve (target ≤ 1.3×: {'met' if one_pass <= 1.3 * plain else 'not met'}); "
        f"{two_step / one_pass:.2f}× faster than the two-step route (target > 1: "
        f"{'met' if two_step > one_pass else 'not met'}).",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_options(parser, size=16384, chunk=256)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--sigma", type=float, default=2.0)
    add_options(parser, repeats=2)
    parser.add_argument("--workdir", default=None, help="where the stores go (default: tmp)")
    parser.add_argument("--no-write", action="store_true", help="print only, keep RESULTS.md")
    args = parser.parse_args(argv)
    os.environ.setdefault("DASK_DISTCONV__PROGRESS", "False")
    rows = run(args)
    text = report(rows, args)
    print(text)
    if not args.no_write:
        write_section("stores", "## Where data lives: object stores and pyramids\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
