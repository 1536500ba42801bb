"""Weights (filter kernels) from files or from named specs, loaded safely.

Files never unpickle (``allow_pickle=False``), and named kernels are parsed, never evaluated.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable

import numpy as np
from scipy import ndimage

from distconv.errors import DistconvError
from distconv.plan import check_weights

_SPEC = re.compile(r"^(?P<name>[a-z_]+)(?::(?P<params>.*))?$")


def load_weights(source, ndim: int | None = None) -> np.ndarray:
    """Load a kernel from a file or build a named one.

    Parameters
    ----------
    source : str, os.PathLike or array_like
        ``.npy`` (never unpickled), ``.npz`` holding exactly one array, ``.txt``/``.csv``
        (2-D at most), or a named kernel: ``gaussian:sigma=S[,truncate=T]`` (one sigma per
        axis for an anisotropic Gaussian: ``gaussian:sigma=1,2,2``), ``box:size=N``,
        ``sobel:axis=A``, ``laplace``. An array is validated and returned.
    ndim : int, optional
        Dimensions of a named kernel (the number of filtered axes). Required for named kernels.

    Returns
    -------
    numpy.ndarray
        Finite, non-empty float64 weights.
    """
    if not isinstance(source, (str, os.PathLike)):
        return check_weights(source)
    text = os.fspath(source)
    if os.path.exists(text) or os.sep in text or re.search(r"\.(npy|npz|txt|csv)$", text):
        return check_weights(_load_file(text))
    return named_kernel(text, ndim)


def load_npy(path: str, mmap: bool = False) -> np.ndarray:
    """Read a .npy file without ever unpickling; object arrays and pickles are refused."""
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "object" in str(exc).lower():
            raise DistconvError(
                f"{path} holds pickled or object data, which distconv never "
                "loads; save plain numbers with numpy.save"
            ) from None
        raise DistconvError(f"{path} is not a valid .npy file ({exc})") from None
    except OSError as exc:
        raise DistconvError(f"{path} cannot be read ({exc})") from None
    if not isinstance(array, np.ndarray):
        raise DistconvError(f"{path} is not a .npy array file")
    return array


def _load_file(path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise DistconvError(f"{path}: no such weights file")
    lower = path.lower()
    if lower.endswith(".npy"):
        return load_npy(path)
    if lower.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as archive:
                names = list(archive.files)
                if len(names) != 1:
                    raise DistconvError(
                        f"{path} holds {len(names)} arrays ({', '.join(names)}); "
                        "weights need exactly one"
                    )
                return archive[names[0]]
        except DistconvError:
            raise
        except (ValueError, OSError) as exc:
            raise DistconvError(f"{path} is not a readable .npz of plain numbers ({exc})") from None
    if lower.endswith((".txt", ".csv")):
        try:
            return np.loadtxt(
                path, delimiter="," if lower.endswith(".csv") else None, ndmin=1, dtype=np.float64
            )
        except ValueError as exc:
            raise DistconvError(f"{path} is not a table of numbers ({exc})") from None
    raise DistconvError(f"{path}: unknown weights format; use .npy, .npz, .txt or .csv")


def weights_digest(weights: np.ndarray) -> str:
    """SHA-256 of the weights' shape, dtype and bytes (recorded in the output's provenance)."""
    array = np.ascontiguousarray(weights)
    digest = hashlib.sha256(f"{array.shape}{array.dtype.str}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


# --- named kernels ------------------------------------------------------------------------------


def _gaussian(ndim: int, sigma, truncate: float = 4.0) -> np.ndarray:
    sigmas = tuple(sigma) if isinstance(sigma, tuple) else (sigma,) * ndim
    if len(sigmas) != ndim:
        raise DistconvError(
            f"gaussian sigma has {len(sigmas)} values for {ndim} dimension(s); give one, "
            "or one per axis"
        )
    if truncate <= 0:
        raise DistconvError(f"gaussian truncate must be positive, got {truncate}")
    lines = []
    for value in sigmas:
        if value <= 0:
            raise DistconvError(f"gaussian sigma must be positive, got {value}")
        # scipy.ndimage.gaussian_filter's radius and normalisation, so results agree with it.
        radius = int(truncate * value + 0.5)
        impulse = np.zeros(2 * radius + 1)
        impulse[radius] = 1.0
        lines.append(ndimage.gaussian_filter1d(impulse, value, truncate=truncate, mode="constant"))
    return _outer(lines)


def _box(ndim: int, size: int) -> np.ndarray:
    if size < 1:
        raise DistconvError(f"box size must be at least 1, got {size}")
    return np.full((size,) * ndim, 1.0 / size**ndim)


def _sobel(ndim: int, axis: int) -> np.ndarray:
    if not -ndim <= axis < ndim:
        raise DistconvError(f"sobel axis {axis} is out of range for {ndim} dimension(s)")
    lines = [np.array([1.0, 2.0, 1.0])] * ndim
    lines[axis % ndim] = np.array([-1.0, 0.0, 1.0])
    return _outer(lines)


def _laplace(ndim: int) -> np.ndarray:
    kernel = np.zeros((3,) * ndim)
    centre = (1,) * ndim
    kernel[centre] = -2.0 * ndim
    for axis in range(ndim):
        for offset in (0, 2):
            index = list(centre)
            index[axis] = offset
            kernel[tuple(index)] = 1.0
    return kernel


def _outer(lines: list[np.ndarray]) -> np.ndarray:
    out = lines[0]
    for line in lines[1:]:
        out = np.multiply.outer(out, line)
    return out


# name → (builder, {parameter: (type, required)})
NAMED_KERNELS: dict[str, tuple[Callable[..., np.ndarray], dict[str, tuple[type, bool]]]] = {
    "gaussian": (_gaussian, {"sigma": (float, True), "truncate": (float, False)}),
    "box": (_box, {"size": (int, True)}),
    "sobel": (_sobel, {"axis": (int, True)}),
    "laplace": (_laplace, {}),
}
NAMED_FORMS = "gaussian:sigma=S[,truncate=T], box:size=N, sobel:axis=A, laplace"
# Parameters that take one value per axis (gaussian:sigma=1,2,2 for an anisotropic PSF).
PER_AXIS = {("gaussian", "sigma")}


def named_kernel(spec: str, ndim: int | None) -> np.ndarray:
    """Build a kernel from a spec such as ``gaussian:sigma=4`` or ``gaussian:sigma=1,2,2``;
    strictly parsed, never evaluated."""
    match = _SPEC.match(spec.strip())
    if not match or match["name"] not in NAMED_KERNELS:
        raise DistconvError(
            f"{spec!r} is neither a weights file nor a named kernel ({NAMED_FORMS})"
        )
    name = match["name"]
    builder, schema = NAMED_KERNELS[name]
    params: dict[str, float | int | tuple] = {}
    key = None
    for item in filter(None, (match["params"] or "").split(",")):
        name_part, sep, value = item.partition("=")
        if not sep and (name, key) in PER_AXIS:  # one more value of a per-axis parameter
            value = item
        else:
            key = name_part.strip()
            if not sep or key not in schema:
                allowed = ", ".join(schema) or "none"
                raise DistconvError(f"bad parameter {item!r} in {spec!r}; {name} takes: {allowed}")
            if key in params:
                raise DistconvError(f"parameter {key!r} repeats in {spec!r}")
        kind = schema[key][0]
        try:
            number = float(value) if kind is float else int(value, 10)
        except ValueError:
            raise DistconvError(
                f"{key}={value!r} in {spec!r} is not a valid "
                f"{'number' if kind is float else 'integer'}"
            ) from None
        if kind is float and not np.isfinite(number):
            raise DistconvError(f"{key}={value!r} in {spec!r} must be finite")
        if key in params:
            previous = params[key]
            params[key] = (*(previous if isinstance(previous, tuple) else (previous,)), number)
        else:
            params[key] = number
    missing = [k for k, (_, required) in schema.items() if required and k not in params]
    if missing:
        raise DistconvError(f"{spec!r} needs {', '.join(missing)} (forms: {NAMED_FORMS})")
    if ndim is None or ndim < 1:
        raise DistconvError(f"named kernel {spec!r} needs the number of dimensions to filter")
    return builder(ndim, **params)
