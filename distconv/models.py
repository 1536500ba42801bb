"""What :func:`distconv.apply` runs: a model file or a function, checked on the client, measured
by probing.

:func:`resolve_model` turns what the user named (a ``.keras`` file, a SavedModel folder,
``module:function``, a Python callable or a Keras model object) into a
:class:`~distconv.kernels.models.ModelPayload` and a record for provenance, without importing
TensorFlow: a Keras file's input shape is read from the ``config.json`` inside it. A pickle is
refused, never opened.

:func:`measure` runs the model on small random images (where the tiles will run, through the
scheduler) and finds what tiling needs:

* its **total stride**: the smallest ``d`` for which two input sizes ``d·m`` and ``d·(m+1)`` both
  give an output of the input's size (pooling and upsampling pairs, strided convolutions);
* its **receptive field**: how far a change of one input pixel reaches in the output, on a
  random background (an impulse on zeros can be hidden by trained ReLUs), at every phase of the
  stride, on two backgrounds; the probe grows until the change stays inside it.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from distconv.errors import DistconvError
from distconv.kernels.models import ModelPayload, predictor
from distconv.plan.apply import ModelFacts

__all__ = ["ModelFacts", "describe_signature", "measure", "resolve_model"]

_PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".pt", ".pth", ".sav")
#: Smallest probe side, per number of space axes (grown while the receptive field reaches it).
_PROBE_SIDE = {1: 256, 2: 64, 3: 32}
_LARGEST_PROBE = {1: 65536, 2: 1024, 3: 192}
_STRIDES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


def resolve_model(
    model: Any, engine: str | None, has_channel: bool
) -> tuple[ModelPayload, dict[str, Any]]:
    """The payload the workers load and the record provenance keeps.

    Parameters
    ----------
    model : str, os.PathLike, callable or keras.Model
        A ``.keras`` file, a SavedModel folder, ``"module:function"``, a callable, or a Keras
        model object (saved to ``.keras`` bytes here, once).
    engine : str, optional
        What a function receives (``numpy`` by default); models run on ``tensorflow``.
    has_channel : bool
        Whether the input has a channel axis (a function then receives it, last).

    Returns
    -------
    (ModelPayload, dict)
        The record holds ``kind``, ``name``, ``sha256`` and, for files, the input shape the
        file declares (``input_shape``, ``None`` for free sizes).

    Raises
    ------
    DistconvError
        A missing, corrupt or pickled file; an engine a model cannot run on; a bad
        ``module:function``.
    """
    if _is_keras_model(model):
        return _keras_object(model, engine)
    if isinstance(model, (str, os.PathLike)) and not _is_function_name(model):
        return _model_file(Path(model), engine)
    if isinstance(model, str):
        model = _import_function(model)
    if not callable(model):
        raise DistconvError(
            f"apply needs a .keras file, a SavedModel folder, module:function or a callable; "
            f"got {type(model).__name__}"
        )
    from dask.base import tokenize

    from distconv.kernels.registry import chunk_runner

    engine = engine or "numpy"
    chunk_runner(engine)  # an unknown or missing engine fails here, before any work
    try:
        token = tokenize(model, engine)
    except Exception:  # an object dask cannot hash: unique for this call
        token = tokenize(id(model), object())
    name = _function_name(model)
    payload = ModelPayload("function", token, fn=model, engine=engine, has_channel=has_channel)
    return payload, {"kind": "function", "name": name, "sha256": None, "engine": engine}


def measure(payload: ModelPayload, space: int, channels: int, dtype: np.dtype) -> ModelFacts:
    """Probe the model (see the module docstring); runs where it is called (a worker).

    Parameters
    ----------
    payload : ModelPayload
    space : int
        Number of space axes the model sees.
    channels : int
        Input channels.
    dtype : numpy.dtype
        The input's dtype (probe images are random values of it).

    Returns
    -------
    ModelFacts

    Raises
    ------
    DistconvError
        No stride found (a model of fixed input size), or a receptive field larger than the
        largest probe.
    """
    predict = predictor(payload)
    rng = np.random.default_rng(0)
    failures: list[str] = []

    def run(side: int, batch: np.ndarray | None = None) -> np.ndarray | None:
        data = batch if batch is not None else _background(rng, (1,) + (side,) * space, channels)
        try:
            out = predict(data.astype(dtype, copy=False))
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}".splitlines()[0][:200])
            return None
        if out.ndim != space + 2 or out.shape[1:-1] != data.shape[1:-1]:
            return None
        return out

    stride = next(
        (
            d
            for d in _STRIDES
            if run(d * _multiple(d)) is not None and run(d * (_multiple(d) + 1)) is not None
        ),
        None,
    )
    if stride is None:
        raise DistconvError(
            "the model does not return an output of its input's size for inputs of any "
            f"multiple of {', '.join(map(str, _STRIDES))} pixels: it is not fully "
            "convolutional (a model built with a fixed input size runs only at that size), "
            "or it fails on random input" + (f" (first failure: {failures[0]})" if failures else "")
        )
    side = -(-_PROBE_SIDE[space] // stride) * stride
    while True:
        field, out = _reach(run, rng, space, channels, side, stride)
        if all(f < side // 2 - stride for f in field):
            return ModelFacts(stride, field, int(out.shape[-1]), np.dtype(out.dtype))
        if side * 2 > _LARGEST_PROBE[space]:
            raise DistconvError(
                f"the model's receptive field reaches past a {side}-pixel probe; pass --halo "
                "(halo=) with the number of pixels each output depends on, per side"
            )
        side *= 2


def describe_signature(record: dict[str, Any], channels: int, facts: ModelFacts) -> dict:
    """The input/output signature provenance keeps: ``(batch, *space, channels)`` both ways."""
    space = len(facts.receptive_field)
    free = [None] * space
    return {
        "input": [None, *free, channels],
        "output": [None, *free, facts.out_channels],
        "declared_input": record.get("input_shape"),
        "dtype": str(facts.out_dtype),
    }


# --- the probe --------------------------------------------------------------------------------


def _multiple(d: int) -> int:
    """Probe sizes ``d·m`` and ``d·(m+1)``: at least 16 pixels, at least two strides."""
    return max(2, -(-16 // d))


def _background(rng: np.random.Generator, shape: tuple[int, ...], channels: int) -> np.ndarray:
    return rng.random(shape + (channels,), dtype=np.float64)


def _reach(run, rng, space: int, channels: int, side: int, stride: int):
    """How far a change of one pixel reaches, per axis, at every stride phase, on two
    backgrounds (uniform and normal); returns the reach and the unperturbed output."""
    centre = side // 2 - stride // 2
    backgrounds = [
        rng.random((side,) * space + (channels,)),
        rng.standard_normal((side,) * space + (channels,)) * 0.5 + 0.5,
    ]
    batch = []
    for background in backgrounds:
        batch.append(background)
        for phase in range(stride):
            changed = background.copy()
            changed[(centre + phase,) * space] += 1.0 + rng.random(channels)
            batch.append(changed)
    out = run(side, np.stack(batch))
    if out is None:
        raise DistconvError(f"the model failed on a {side}-pixel probe batch of {len(batch)}")
    reach = [0] * space
    per = stride + 1
    for b in range(len(backgrounds)):
        base = out[b * per].astype(np.float64)
        scale = float(np.abs(base).max()) or 1.0
        for phase in range(stride):
            diff = np.abs(out[b * per + 1 + phase].astype(np.float64) - base).max(axis=-1)
            where = np.argwhere(diff > 1e-7 * scale)
            if where.size:
                distance = np.abs(where - (centre + phase)).max(axis=0)
                reach = [max(r, int(d)) for r, d in zip(reach, distance)]
    return tuple(reach), out[0]


# --- naming a model ---------------------------------------------------------------------------


def _is_keras_model(model: Any) -> bool:
    return any(
        k.__module__.split(".")[0] in ("keras", "tf_keras") for k in type(model).__mro__
    ) and (hasattr(model, "save") and hasattr(model, "inputs"))


def _is_function_name(model: Any) -> bool:
    if not isinstance(model, str) or ":" not in model or os.path.exists(model):
        return False
    module, _, name = model.partition(":")
    return bool(module) and bool(name) and "/" not in module and "\\" not in module


def _import_function(spec: str) -> Callable:
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DistconvError(f"cannot import {module_name!r} for {spec}: {exc}") from None
    target: Any = module
    for part in attribute.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise DistconvError(f"{module_name} has no {attribute!r} (from {spec})")
    if not callable(target):
        raise DistconvError(f"{spec} is a {type(target).__name__}, not a function")
    return target


def _function_name(fn: Callable) -> str:
    module = getattr(fn, "__module__", "") or ""
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    return f"{module}:{name}" if module and module != "__main__" else name


def _model_engine(engine: str | None, name: str) -> None:
    if engine not in (None, "tensorflow"):
        raise DistconvError(
            f"{name} is a TensorFlow model: it runs on the tensorflow engine, not {engine!r} "
            "(--engine says what a module:function receives)"
        )
    from distconv.kernels.registry import chunk_runner

    chunk_runner("tensorflow")  # TensorFlow missing: one line naming the extra


def _model_file(path: Path, engine: str | None) -> tuple[ModelPayload, dict[str, Any]]:
    shown = str(path)
    if not path.exists():
        raise DistconvError(f"model {shown} not found")
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise DistconvError(
                f"model folder {shown} is not a TensorFlow SavedModel (no saved_model.pb)"
            )
        _model_engine(engine, shown)
        blob, digest = _zip_folder(path)
        payload = ModelPayload("savedmodel", digest, blob=blob)
        return payload, {"kind": "savedmodel", "name": shown, "sha256": digest}
    data = path.read_bytes()
    if path.suffix.lower() in _PICKLE_SUFFIXES or data[:1] == b"\x80":
        raise DistconvError(
            f"model {shown} is a pickle; distconv never unpickles a model (it can run any "
            "code): save it with model.save('model.keras') or model.export('folder')"
        )
    if path.suffix.lower() != ".keras":
        raise DistconvError(
            f"model {shown} is neither a .keras file nor a SavedModel folder (an .h5 file: "
            "load it in Keras and save it as .keras)"
        )
    declared = _keras_input_shape(data, shown)
    _model_engine(engine, shown)
    digest = hashlib.sha256(data).hexdigest()
    payload = ModelPayload("keras", digest, blob=data)
    return payload, {"kind": "keras", "name": shown, "sha256": digest, "input_shape": declared}


def _keras_object(model: Any, engine: str | None) -> tuple[ModelPayload, dict[str, Any]]:
    import tempfile

    _model_engine(engine, f"the Keras model {getattr(model, 'name', '')!r}")
    with tempfile.TemporaryDirectory(prefix="distconv-model-") as folder:
        path = os.path.join(folder, "model.keras")
        model.save(path)
        data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    name = f"keras.Model {getattr(model, 'name', '')}".strip()
    declared = _keras_input_shape(data, name)
    payload = ModelPayload("keras", digest, blob=data)
    return payload, {"kind": "keras", "name": name, "sha256": digest, "input_shape": declared}


def _keras_input_shape(data: bytes, shown: str) -> list | None:
    """The input shape a ``.keras`` file declares (``[None, None, None, 1]``), read from its
    ``config.json`` without Keras; None where the config does not say."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise DistconvError(
            f"model {shown} is not a readable Keras file ({type(exc).__name__}: {exc})"
        ) from None
    found = _find_key(config, "batch_shape") or _find_key(config, "batch_input_shape")
    return list(found) if isinstance(found, (list, tuple)) else None


def _find_key(tree: Any, key: str) -> Any:
    if isinstance(tree, dict):
        if key in tree and isinstance(tree[key], (list, tuple)):
            return tree[key]
        values = tree.values()
    elif isinstance(tree, list):
        values = tree
    else:
        return None
    for value in values:
        found = _find_key(value, key)
        if found is not None:
            return found
    return None


def _zip_folder(folder: Path) -> tuple[bytes, str]:
    """The folder as a zip archive (stable order and times) and the SHA-256 of its files."""
    digest = hashlib.sha256()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            relative = path.relative_to(folder).as_posix()
            data = path.read_bytes()
            digest.update(relative.encode() + b"\0" + hashlib.sha256(data).digest())
            info = zipfile.ZipInfo(relative, date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(info, data)
    return buffer.getvalue(), digest.hexdigest()
