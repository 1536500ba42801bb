"""Trained models and chunk functions on a worker: loaded once per process, called on batches.

A model travels in the graph once, as the bytes of its file (a ``.keras`` file, or a
SavedModel folder zipped), in one :class:`ModelPayload` that every tile task depends on: Dask
sends it to each worker once, and :func:`predictor` loads it once per worker process (keyed by
its SHA-256), however many tiles the worker computes. A model is never pickled: ``.keras``
files load with Keras' safe mode, SavedModels with ``tf.saved_model.load``.

Every predictor takes a batch shaped ``(n, *space, channels)`` and returns
``(n, *space, out_channels)`` as NumPy; a plain function (``module:function``) is called once
per tile through its engine's runner (:func:`distconv.kernels.registry.chunk_runner`), with the
tile in the input's own layout (no batch axis, no channel axis it did not have).
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from distconv.kernels._cache import KeyedCache

__all__ = ["MODEL_KINDS", "ModelPayload", "predictor"]

#: What a model can be: a Keras file, a SavedModel folder, or a Python function.
MODEL_KINDS = ("keras", "savedmodel", "function")

# One loaded model per (kind, SHA-256) and process; a job uses one, a session a few.
_LOADED: KeyedCache[Callable[[np.ndarray], np.ndarray]] = KeyedCache(4, compute_under_lock=True)


@dataclass(frozen=True)
class ModelPayload:
    """What a worker needs to run a model: its bytes (or function) and how to call it.

    Parameters
    ----------
    kind : {'keras', 'savedmodel', 'function'}
    sha256 : str
        Of the file, the SavedModel folder's files, or the function's token.
    blob : bytes, optional
        The ``.keras`` file, or the SavedModel folder as a zip archive.
    fn : callable, optional
        The function (kind ``function``).
    engine : str
        What the function receives (``numpy``, ``tensorflow``, ``cupy``, ``numba-cuda``);
        ``tensorflow`` for the model kinds.
    has_channel : bool
        Whether the input carries a channel axis (a function then gets it, last).
    """

    kind: str
    sha256: str
    blob: bytes | None = field(default=None, repr=False)
    fn: Callable | None = field(default=None, repr=False)
    engine: str = "tensorflow"
    has_channel: bool = True


def predictor(payload: ModelPayload) -> Callable[[np.ndarray], np.ndarray]:
    """The callable that runs ``payload`` on a batch, built once per worker process.

    Parameters
    ----------
    payload : ModelPayload

    Returns
    -------
    callable
        ``predict(batch)``: ``(n, *space, c)`` NumPy in, ``(n, *space, k)`` NumPy out.
    """
    if payload.kind == "function":  # cheap to build; the engine's runner caches its own work
        return _function_predictor(payload)
    return _LOADED.get((payload.kind, payload.sha256), lambda: _load(payload))


def _load(payload: ModelPayload) -> Callable[[np.ndarray], np.ndarray]:
    # The engine module sets TensorFlow's threads to the worker's and imports it quietly.
    from distconv.kernels import tensorflow as tf_engine

    tf = tf_engine.tf
    if payload.kind == "keras":
        call, input_dtype = _load_keras(payload.blob)
    elif payload.kind == "savedmodel":
        call, input_dtype = _load_savedmodel(payload.blob, tf)
    else:
        raise ValueError(f"unknown model kind {payload.kind!r}")
    # One trace per input rank, of any batch and image size: interior, edge and corner tiles and
    # partial batches all reuse it (a trace per shape cost about 0.4 s each, per worker).
    traced: dict[int, Callable] = {}

    def predict(batch: np.ndarray) -> np.ndarray:
        rank = batch.ndim
        if rank not in traced:
            spec = tf.TensorSpec([None] * rank, tf.as_dtype(input_dtype))
            traced[rank] = tf.function(call, input_signature=[spec])
        with tf.device(tf_engine._compute_device()):
            out = traced[rank](tf.constant(np.asarray(batch, dtype=input_dtype)))
        return np.asarray(out.numpy() if hasattr(out, "numpy") else out)

    return predict


def _load_keras(blob: bytes) -> tuple[Callable, str]:
    import keras

    with tempfile.TemporaryDirectory(prefix="distconv-model-") as folder:
        path = os.path.join(folder, "model.keras")
        with open(path, "wb") as file:
            file.write(blob)
        # safe_mode refuses Lambda layers that would unpickle code.
        model = keras.models.load_model(path, compile=False, safe_mode=True)
    if len(model.outputs) != 1:
        raise ValueError(f"the model has {len(model.outputs)} outputs; apply runs one")
    dtype = str(getattr(model.inputs[0], "dtype", "float32") or "float32")

    def call(tensor):
        return model(tensor, training=False)

    return call, dtype


def _load_savedmodel(blob: bytes, tf) -> tuple[Callable, str]:
    # Variables are read at load; assets may be read later, so the folder lives as long as
    # the process (one per model, in the system's temporary folder).
    folder = tempfile.mkdtemp(prefix="distconv-savedmodel-")
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        archive.extractall(folder)
    loaded = tf.saved_model.load(folder)
    signature = loaded.signatures.get("serving_default") if hasattr(loaded, "signatures") else None
    if signature is None:
        return (lambda tensor: loaded(tensor)), "float32"
    _, inputs = signature.structured_input_signature
    if len(inputs) != 1 or len(signature.structured_outputs) != 1:
        raise ValueError(
            f"the SavedModel's serving signature has {len(inputs)} inputs and "
            f"{len(signature.structured_outputs)} outputs; apply runs one of each"
        )
    (name, spec), (output,) = next(iter(inputs.items())), signature.structured_outputs

    def call(tensor):
        # The loaded object owns the variables the signature reads: keep it alive with it.
        return loaded.signatures["serving_default"](**{name: tensor})[output]

    return call, spec.dtype.name


def _function_predictor(payload: ModelPayload) -> Callable[[np.ndarray], np.ndarray]:
    from distconv.backend import to_numpy
    from distconv.kernels.registry import chunk_runner

    runner = chunk_runner(payload.engine)

    def predict(batch: np.ndarray) -> np.ndarray:
        outs = []
        for tile in batch:
            given = tile if payload.has_channel else tile[..., 0]
            out = np.asarray(to_numpy(runner(payload.fn, payload.sha256, {}, (given,))))
            if out.ndim == tile.ndim - 1:
                out = out[..., None]  # space axes only: one output channel
            outs.append(out)
        return np.stack(outs)

    return predict
