"""Regenerate benchmarks/RESULTS.md: every benchmark of the suite, one after the other.

Each section runs in its own Python process (fresh interpreter and cluster, so peak memory and
imports do not carry over) and rewrites its own section of RESULTS.md; the header records the
machine, the date, the versions and how long each section took. Sized to finish within 20
minutes on the 2-core machine; ``--quick`` runs the same suite on small inputs (a minute or two)
to check that it works and to show the format.

    python benchmarks/run_all.py [--quick] [--only convolve,memory] [--skip gpu] [--with stores]
    python benchmarks/run_all.py --only deconvolve   # optional: not part of the 20 minutes
    make bench
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from results import RESULTS, machine, write_section  # noqa: E402

# section → script and arguments, full size (the targets are stated for these sizes).
FULL = {
    "engines": "engines.py --size 1024 --kernel-sizes 3,9,31,127 --repeats 2 --max-seconds 4",
    "convolve": "convolve.py --size 8192 --chunk 2048 --kernel-sizes 3,9,31,127 "
    "--engines scipy,numba,tensorflow --repeats 3",
    # Small stored chunks (issue 14): one image in four chunkings, a uint16 volume in two.
    "convolve-chunks": "convolve.py --size 16384 --chunks 256,512,1024,2048 --kernel-sizes 5,31 "
    "--engines auto --repeats 2 --section convolve-chunks",
    "convolve-3d": "convolve.py --size 512 --ndim 3 --dtype uint16 --chunks 64,128 "
    "--kernel-sizes 5 --engines auto --repeats 2 --section convolve-3d",
    "profile": "profile_convolve.py --size 8192 --chunk 2048 --kernel-sizes 3,9,31,127",
    "linalg": "linalg.py --size 8192 --chunk 1024 --repeats 3 --peak-size 16384",
    # 9×9 (direct/numba, near the copy's speed) keeps the 32768² run to about a minute; the
    # memory a task needs does not depend on the image size for any kernel.
    "memory": "memory.py --sizes 8192,16384,32768 --kernel 9 --chunk 2048",
    "scaling": "scaling.py --size 8192 --chunk 2048 --kernel-sizes 3,31 --repeats 3",
    "gpu": "gpu.py --size 8192 --kernel-sizes 3,9,31,127 --repeats 3",
    "apply": "apply.py --size 2048 --chunk 256 --repeats 3",
    # Optional (scikit-image alone takes several minutes at these sizes): --only deconvolve.
    "deconvolve": "deconvolve.py",
    "stores": "stores.py --size 16384 --chunk 256 --levels 4 --repeats 2",
}
# --quick: the same suite on small inputs; these values replace the full-size ones.
QUICK = {
    "engines": "--size 256 --kernel-sizes 3,9,31 --max-seconds 1",
    "convolve": "--size 1024 --chunk 256 --kernel-sizes 3,9,31",
    "convolve-chunks": "--size 1024 --chunks 128,256 --kernel-sizes 5 --repeats 1",
    "convolve-3d": "--size 96 --chunks 16,32 --repeats 1",
    "profile": "--size 1024 --chunk 512 --kernel-sizes 3,31",
    "linalg": "--size 1024 --chunk 256 --repeats 2 --peak-size 2048",
    "memory": "--sizes 1024,2048,4096 --kernel 31 --chunk 512",
    "scaling": "--size 2048 --chunk 512 --repeats 2",
    "gpu": "--size 1024 --kernel-sizes 3,31 --repeats 2",
    "apply": "--size 256 --chunk 64 --repeats 1",
    "deconvolve": "--size 1024 --chunk 256 --iterations 10 --size3d 64 --chunk3d 32 "
    "--iterations3d 5",
    "stores": "--size 2048 --repeats 1",
}


def arguments(section: str, quick: bool) -> list[str]:
    """The script of ``section`` and its arguments: :data:`FULL`'s, or with :data:`QUICK`'s
    values in their place (every option takes one value, and keeps its place)."""
    script, *words = FULL[section].split()
    values = dict(zip(words[::2], words[1::2]))
    if quick:
        words = QUICK[section].split()
        values.update(zip(words[::2], words[1::2]))
    return [script, *(word for pair in values.items() for word in pair)]


# Sections run only when named (--only, --with): deconvolve (scikit-image alone takes several
# minutes at these sizes) and stores (it starts an S3 server and needs the test extras: moto,
# s3fs, ome-zarr; its full size adds minutes to the 20-minute suite).
OPTIONAL = {"deconvolve", "stores"}

QUICK_NOTE = "QUICK RUN on small inputs: it shows the format, not the targets. "


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small inputs: check the suite")
    parser.add_argument("--only", default=None, help="comma list of sections to run")
    parser.add_argument("--skip", default="", help="comma list of sections to leave as they are")
    parser.add_argument(
        "--with", dest="extra", default="", help=f"optional sections to add: {', '.join(OPTIONAL)}"
    )
    parser.add_argument(
        "--output-dir", default="distconv-bench", help="where the JSON and PNG files of the runs go"
    )
    args = parser.parse_args(argv)
    added = [s for s in args.extra.split(",") if s]
    chosen = args.only.split(",") if args.only else [s for s in FULL if s not in OPTIONAL] + added
    unknown = [s for s in (*chosen, *filter(None, args.skip.split(","))) if s not in FULL]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(FULL)}")
    chosen = [s for s in chosen if s not in args.skip.split(",")]

    env = {**os.environ, "DASK_DISTCONV__PROGRESS": "False"}
    spent: dict[str, str] = {}
    started = time.perf_counter()
    failed = []
    for section in chosen:
        script, *rest = arguments(section, args.quick)
        command = [sys.executable, str(HERE / script), *rest]
        if section.startswith("convolve"):
            command += ["--output-dir", args.output_dir]
        print(f"== {section}: {' '.join(command[1:])}", flush=True)
        start = time.perf_counter()
        done = subprocess.run(command, env=env)
        spent[section] = f"{time.perf_counter() - start:.0f} s" + (
            "" if done.returncode == 0 else f" (FAILED, exit {done.returncode})"
        )
        if done.returncode != 0:
            failed.append(section)
    total = time.perf_counter() - started
    header = "\n".join(
        [
            f"Regenerated by `python benchmarks/run_all.py{' --quick' if args.quick else ''}` "
            f"(or `make bench`){'' if not args.only else f' --only {args.only}'}; "
            f"{QUICK_NOTE if args.quick else ''}"
            f"Machine: {machine()}.",
            "",
            "Time per section: "
            + ", ".join(f"{s} {t}" for s, t in spent.items())
            + f"; total {total / 60:.1f} min. Sections not run this time keep their earlier "
            "numbers (each records its own machine line and date). The machine is shared unless "
            "the line "
            "above says otherwise (load average): compare ratios within one run.",
        ]
    )
    write_section("about", header)
    print(f"RESULTS.md updated ({RESULTS}); total {total / 60:.1f} min", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
