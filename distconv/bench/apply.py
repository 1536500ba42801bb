"""``distconv bench apply``: a Keras U-Net over a Zarr image, tile by tile, against the model's
own whole-image ``predict`` and ``dask.array.map_overlap`` with ``predict`` per chunk.

One run, the same seeded random float32 size² Zarr store (size_chunk² chunks) and the same
model (a small 2-level U-Net, 1 channel in, 2 out, saved as ``.keras`` in the scratch folder):

* ``model.predict``, whole image in memory: the floor. The image is read from Zarr once
  before timing; the read is excluded from its seconds (it is reported in the notes);
* ``dc.save(dc.apply(model, store), out)``, Zarr → Zarr, the halo measured by distconv;
* ``dask.array.map_overlap`` over ``da.from_zarr`` with ``model.predict`` per stored chunk,
  ``depth`` = distconv's halo, ``boundary="none"``, written with ``da.to_zarr`` (reference).

Each contender is warmed up once, then timed ``repeats`` times alternating (median reported).
Each output is compared with whole-image predict (max |difference| / max |whole-image|). Peak
memory of each is measured in a fresh child process (one run after imports and the model load,
the kernel's high-water mark of the process tree), so one contender's heap does not inflate
the next one's; distconv apply is measured again at twice the side (4× the pixels) to show its
memory does not grow with the image.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from distconv.bench.common import (
    Contender,
    PeakMemory,
    Session,
    fresh,
    make_input,
    run_alternating,
    timed,
)
from distconv.bench.report import Result

PREDICT = "model.predict, whole image in memory"
DISTCONV = "distconv apply, Zarr → Zarr"
MAP_OVERLAP = "dask map_overlap + predict per chunk, Zarr → Zarr"


def build_model(path: str | os.PathLike, seed: int = 0) -> Path:
    """A small fully convolutional U-Net (two pooling levels, stride 4; 1 channel in, 2 out)
    saved as a ``.keras`` file at ``path``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    image = keras.Input((None, None, 1))
    level1 = layers.Conv2D(8, 3, padding="same", activation="relu")(image)
    level2 = layers.Conv2D(12, 3, padding="same", activation="relu")(layers.MaxPooling2D(2)(level1))
    bottom = layers.Conv2D(12, 3, padding="same", activation="relu")(layers.MaxPooling2D(2)(level2))
    merged2 = layers.Concatenate()([layers.UpSampling2D(2)(bottom), level2])
    back2 = layers.Conv2D(8, 3, padding="same", activation="relu")(merged2)
    merged1 = layers.Concatenate()([layers.UpSampling2D(2)(back2), level1])
    out = layers.Conv2D(2, 1, padding="same")(merged1)
    path = Path(path)
    keras.Model(image, out).save(path)
    return path


@functools.lru_cache(maxsize=4)
def load_model(path: str):
    """The Keras model at ``path``, loaded once per process (workers included)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    return keras.models.load_model(path)


def _predict_chunk(block: np.ndarray, model_path: str) -> np.ndarray:
    """``model.predict`` on one overlapped chunk: (h, w) → (h, w, channels)."""
    return load_model(model_path).predict(block[None, ..., None], verbose=0)[0]


def predict_whole(model_path: str, image: np.ndarray) -> np.ndarray:
    return load_model(model_path).predict(image[None, ..., None], verbose=0)[0]


def run_distconv(model_path: str, store: str, out: str) -> None:
    import distconv as dc

    dc.save(dc.apply(model_path, store), fresh(out), progress=False)


def run_map_overlap(model_path: str, store: str, out: str, halo, channels: int) -> None:
    import dask.array as da

    x = da.from_zarr(store)
    depth = dict(enumerate(int(h) for h in halo))
    # da.map_overlap(..., new_axis=2) trims the new channel axis wrongly (dask 2025), so its
    # three steps by hand: overlap, predict per block, trim.
    padded = da.overlap.overlap(x, depth=depth, boundary="none")
    y = padded.map_blocks(
        _predict_chunk,
        model_path,
        new_axis=2,
        chunks=(*padded.chunks, (channels,)),
        dtype=np.float32,
        meta=np.empty((0, 0, 0), np.float32),
    )
    y = da.overlap.trim_internal(y, {**depth, 2: 0}, boundary="none")
    y.to_zarr(fresh(out))


def difference(path: str, expected: np.ndarray) -> float:
    """max |stored - expected| / max |expected|."""
    import zarr

    got = zarr.open_array(path)[:]
    if got.shape != expected.shape:
        return float("inf")
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def bench_apply(
    size: int, session: Session, *, memory: bool = True, memory_cluster: str | None = None
) -> Result:
    """Time the three contenders at ``size``² (``session.chunk``² chunks); with ``memory``,
    measure each one's peak memory in a child process, and distconv apply's at (2·size)²."""
    import zarr

    import distconv as dc

    workdir, chunk = session.workdir, session.chunk
    store = str(workdir / "image.zarr")
    make_input(store, size, chunk, seed=1)
    model_path = str(build_model(workdir / "unet.keras"))
    plan = dc.plan_apply(model_path, store)
    halo = tuple(int(h) for h in plan.halo)
    channels = int(plan.facts.out_channels)

    read_seconds = timed(lambda: zarr.open_array(store)[:])
    image = zarr.open_array(store)[:]
    outputs = {DISTCONV: str(workdir / "distconv.zarr"), MAP_OVERLAP: str(workdir / "dask.zarr")}
    contenders = [
        Contender(PREDICT, lambda: predict_whole(model_path, image), kind="floor"),
        Contender(DISTCONV, lambda: run_distconv(model_path, store, outputs[DISTCONV])),
        Contender(
            MAP_OVERLAP,
            lambda: run_map_overlap(model_path, store, outputs[MAP_OVERLAP], halo, channels),
            kind="reference",
        ),
    ]
    run_alternating(contenders, session.repeats, log=session.log)
    expected = predict_whole(model_path, image)
    errors = {PREDICT: 0.0}
    for name, path in outputs.items():
        if os.path.exists(path):
            errors[name] = difference(path, expected)
    del expected

    result = Result(
        benchmark="apply",
        unit="Mpx/s",
        work=size * size / 1e6,
        setup=session.setup(
            size,
            [],
            model="U-Net, 2 pooling levels (stride 4), 1 → 2 channels, 6 conv layers",
            halo=list(halo),
            tile=list(plan.tile),
            batch=plan.batch,
            stride=int(plan.facts.stride),
            receptive_field=[int(r) for r in plan.facts.receptive_field],
            read_seconds=round(read_seconds, 4),
        ),
        floor_name="whole-image predict",
    )
    group = f"{size}²"
    result.add_group(group, contenders, contenders[2], errors)
    result.notes.append(
        f"Halo {halo} (distconv's measured receptive field rounded to the stride), used by both "
        f"tiled contenders; distconv tiles {tuple(plan.tile)} × batch {plan.batch}. "
        f"Whole-image predict's seconds exclude reading the image from Zarr "
        f"({read_seconds:.2f} s, done once before timing)."
    )
    if memory:
        cluster = memory_cluster or "threads"
        peaks = {
            PREDICT: peak_in_child("predict", model_path, store, workdir, cluster),
            DISTCONV: peak_in_child("distconv", model_path, store, workdir, cluster),
            MAP_OVERLAP: peak_in_child("map_overlap", model_path, store, workdir, cluster, halo),
        }
        big = str(workdir / "image-2x.zarr")
        make_input(big, 2 * size, chunk, seed=2)
        big_peak = peak_in_child("distconv", model_path, big, workdir, cluster)
        fresh(big)
        result.setup["peak_memory"] = {
            **{f"{group} {name}": peak for name, peak in peaks.items()},
            f"{2 * size}² {DISTCONV}": big_peak,
        }
        for row in result.rows:
            row.note = _join(row.note, _memory_text(peaks.get(row.contender)))
        big_contender = Contender(DISTCONV, None, skip=None)
        big_contender.runs = [big_peak["seconds"]]
        result.add_group(f"{2 * size}² (memory)", [big_contender], None, {})
        big_row = result.rows[-1]
        big_row.rate = 4 * result.work / big_peak["seconds"]
        big_row.vs_floor = None
        big_row.note = _join(
            "one cold run in the memory child (tracing included)", _memory_text(big_peak)
        )
        base = peaks[DISTCONV]["added"]
        result.notes.append(
            f"Peak memory: each contender once in a fresh child process ({cluster}), after "
            f"imports, the model load (and, for predict, reading the image); 'added' is the "
            f"peak RSS of the process tree above its RSS just before the run. distconv apply "
            f"at {2 * size}² (4× the pixels) adds {_mib(big_peak['added'])} vs "
            f"{_mib(base)} at {size}² ({big_peak['added'] / max(base, 1):.2f}×)."
        )
    for name in outputs.values():
        fresh(name)
    return result


def run(
    size: int = 2048,
    chunk: int = 256,
    *,
    repeats: int = 3,
    cluster: str | None = "threads",
    workers: int | None = None,
    threads_per_worker: int | None = None,
    workdir: str | os.PathLike | None = None,
    memory: bool = True,
    log=None,
) -> Result:
    """:func:`bench_apply` in a temporary folder (under ``workdir``) on ``cluster``."""
    import tempfile

    import distconv as dc
    from distconv.bench import cluster_text

    chunk = min(chunk, size)
    with (
        tempfile.TemporaryDirectory(prefix="distconv-bench-apply-", dir=workdir) as tmp,
        dc.cluster(
            cluster, workers=workers, threads_per_worker=threads_per_worker, quiet=True
        ) as client,
    ):
        session = Session(Path(tmp), chunk, repeats, client, True, log)
        result = bench_apply(size, session, memory=memory, memory_cluster=cluster)
        result.setup["cluster"] = cluster_text(client)
    return result


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _mib(value: float) -> str:
    return f"{value / 2**20:.0f} MiB"


def _memory_text(peak: dict | None) -> str:
    if not peak:
        return ""
    return f"peak RSS {_mib(peak['peak'])} (+{_mib(peak['added'])})"


def peak_in_child(
    kind: str, model_path: str, store: str, workdir: Path, cluster: str, halo=None
) -> dict:
    """Run one contender once in a new Python process; its peak memory and seconds."""
    args = {
        "kind": kind,
        "model": model_path,
        "store": store,
        "out": str(workdir / f"memory-{kind}.zarr"),
        "cluster": cluster,
        "halo": list(halo) if halo else None,
    }
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "DASK_DISTCONV__PROGRESS": "False"}
    done = subprocess.run(
        [sys.executable, "-m", "distconv.bench.apply", json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
    )
    fresh(args["out"])
    if done.returncode != 0:
        raise RuntimeError(f"memory child {kind} failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _child(args: dict) -> None:
    import psutil
    import zarr

    import distconv as dc

    with dc.cluster(args["cluster"], quiet=True):
        model_path, store, out = args["model"], args["store"], args["out"]
        load_model(model_path)
        if args["kind"] == "predict":
            image = zarr.open_array(store)[:]
            run = functools.partial(predict_whole, model_path, image)
        elif args["kind"] == "distconv":
            run = functools.partial(run_distconv, model_path, store, out)
        else:
            channels = 2
            run = functools.partial(run_map_overlap, model_path, store, out, args["halo"], channels)
        root = psutil.Process()
        before = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
        with PeakMemory() as peak:
            seconds = timed(run)
    top = peak.exact_total_bound or peak.peak_total
    print(json.dumps({"peak": top, "added": max(top - before, 0), "seconds": seconds}))


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
