"""scipy.ndimage's contract, checked against scipy.ndimage itself: signature, output dtype,
integer casts, and the builtin type of every error, for NumPy and Dask inputs.

Values use integer data and weights in quarters, so float32 and float64 arithmetic are both
exact and integer outputs can be compared with scipy's sample for sample: equal where the value
fits the dtype, saturated (distconv) where scipy wraps. Small arrays and the threaded scheduler
keep the file quick.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from conftest import MODES
from scipy import ndimage

import distconv as dc
from distconv.plan import compute_dtype_for

SHAPE, CHUNKS, WEIGHTS_SHAPE = (11, 9), (4, 5), (3, 4)
DTYPES = ["uint8", "int16", "int32", "float32", "float64"]
# Scalar and per-axis origins, inside a 3×4 kernel (axis 0: -1..1, axis 1: -2..1).
ORIGINS = [0, -1, (1, -2)]
# Data ranges that keep every sum exact in float32 (< 2**24) yet overflow int16 and uint8.
RANGES = {"uint8": (0, 256), "int16": (-3000, 3000), "int32": (-100_000, 100_000)}
CVAL = 2.5  # kept as a float by scipy (not cast to the input's dtype), exact in float32


def quarters(rng: np.random.Generator, shape=WEIGHTS_SHAPE) -> np.ndarray:
    """Signed weights in quarters, none zero: sums of integer data stay exact in float32."""
    values = rng.integers(1, 9, shape) * rng.choice([-1, 1], shape)
    return values / 4.0


def data(rng: np.random.Generator, dtype: str, shape=SHAPE) -> np.ndarray:
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    low, high = RANGES[dtype]
    return rng.integers(low, high, shape).astype(dtype)


def filtered(function: str, x, weights, *args, **kwargs):
    """distconv's result, computed on threads."""
    return getattr(dc, function)(x, weights, *args, **kwargs).compute(scheduler="threads")


def as_input(x: np.ndarray, kind: str):
    return da.from_array(x, chunks=CHUNKS) if kind == "dask" else x


def check_against_scipy(ours: np.ndarray, x, weights, function: str, output=None, **kwargs):
    """Compare with scipy.ndimage on the same arguments: dtype, and values (integers: equal
    where the float64 result fits the dtype, saturated where it does not)."""
    scipy_function = getattr(ndimage, function)
    theirs = scipy_function(x, weights, output, **kwargs)
    assert ours.dtype == theirs.dtype
    exact = scipy_function(np.asarray(x, dtype=np.float64), weights, **kwargs)
    if ours.dtype.kind in "iu":
        info = np.iinfo(ours.dtype)
        fits = (exact >= info.min) & (exact <= info.max)
        np.testing.assert_array_equal(ours[fits], theirs[fits])
        np.testing.assert_array_equal(
            ours, np.clip(np.trunc(exact), info.min, info.max).astype(ours.dtype)
        )
        return fits
    if ours.dtype == np.bool_:
        # scipy casts through an 8-bit integer: 0.5 is False, and 256 wraps to False; distconv
        # gives |value| >= 1, the same wherever |value| < 256.
        fits = np.abs(exact) < 256
        np.testing.assert_array_equal(ours[fits], theirs[fits])
        np.testing.assert_array_equal(ours, np.abs(exact) >= 1)
        return fits
    # The compute dtype follows the input (float32 unless float64), whatever the output.
    tolerance = 1e-12 if compute_dtype_for(np.asarray(x).dtype) == np.float64 else 1e-5
    scale = np.abs(weights).sum() * max(float(np.abs(exact).max()), 1.0)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=tolerance * scale)
    return None


# Values and output dtype --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["numpy", "dask"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("function", ["correlate", "convolve"])
def test_values_and_dtype_as_scipy(kind, dtype, mode, function):
    rng = np.random.default_rng([MODES.index(mode), DTYPES.index(dtype), len(function)])
    x, weights = data(rng, dtype), quarters(rng)
    for origin in ORIGINS:
        ours = filtered(function, as_input(x, kind), weights, mode=mode, cval=CVAL, origin=origin)
        check_against_scipy(ours, x, weights, function, mode=mode, cval=CVAL, origin=origin)


@pytest.mark.parametrize("kind", ["numpy", "dask"])
@pytest.mark.parametrize(
    "output", [None, np.float32, "float64", np.uint8, "int16", "int32", bool, "bool", np.int64]
)
@pytest.mark.parametrize("dtype", ["uint8", "int16", "float32"])
def test_output_dtype_positional_as_scipy(kind, output, dtype):
    """``output`` is the third positional argument, as scipy's; a dtype or its name."""
    rng = np.random.default_rng([DTYPES.index(dtype), 7])
    x, weights = data(rng, dtype), quarters(rng)
    if dtype == "float32" and np.dtype(output or dtype).kind in "iu":
        x = np.round(x * 100)  # integers as floats: the truncated sums stay exact
    # scipy takes the type bool but refuses the name "bool" (not a number); distconv takes both.
    theirs = np.dtype(output) if isinstance(output, str) else output
    for function in ("correlate", "convolve"):
        ours = filtered(function, as_input(x, kind), weights, output, "nearest", 0.0, (1, 0))
        check_against_scipy(ours, x, weights, function, theirs, mode="nearest", origin=(1, 0))


def test_truncation_toward_zero_as_scipy():
    """scipy's own example: [9, -9] · 0.25 in int32 is [2, -2] (truncated, not rounded)."""
    x = np.array([9, -9, 7, -7, 10, -10], np.int32)
    for weights in ([0.25], [0.5], [0.75]):
        ours = filtered("correlate", x, weights)
        np.testing.assert_array_equal(ours, ndimage.correlate(x, weights))
    np.testing.assert_array_equal(filtered("correlate", x[:2], [0.25]), [2, -2])


@pytest.mark.parametrize("kind", ["numpy", "dask"])
def test_bool_input_gives_bool_output_as_scipy(kind):
    rng = np.random.default_rng(5)
    x = rng.random(SHAPE) > 0.5
    weights = quarters(rng)
    for output in (None, bool, np.uint8, np.float32):
        ours = filtered("correlate", as_input(x, kind), weights, output, mode="wrap")
        check_against_scipy(ours, x, weights, "correlate", output, mode="wrap")


def test_float16_input_is_computed_in_float32_and_returned_as_float16():
    """scipy.ndimage refuses float16; distconv computes it in float32 and returns float16."""
    rng = np.random.default_rng(6)
    x, weights = rng.standard_normal(SHAPE).astype(np.float16), quarters(rng)
    with pytest.raises(RuntimeError):
        ndimage.correlate(x, weights)
    ours = filtered("correlate", x, weights)
    assert ours.dtype == np.float16
    expected = ndimage.correlate(x.astype(np.float64), weights).astype(np.float16)
    np.testing.assert_allclose(ours.astype(float), expected.astype(float), rtol=2e-3, atol=1e-2)


# Integer overflow: saturation where scipy wraps ----------------------------------------------


@pytest.mark.parametrize("kind", ["numpy", "dask"])
def test_uint8_overflow_saturates_where_scipy_wraps(kind):
    x = np.full((4, 6), 200, np.uint8)
    weights = np.ones((1, 3))
    theirs = ndimage.correlate(x, weights)
    assert (theirs == 88).all()  # 600 wrapped modulo 256: scipy's behaviour, checked here
    ours = filtered("correlate", as_input(x, kind), weights)
    assert ours.dtype == np.uint8 and (ours == 255).all()
    negative = filtered("correlate", as_input(x, kind), -weights)
    assert (negative == 0).all()  # -600 saturates at 0


@pytest.mark.parametrize("dtype", ["uint8", "int16", "int32"])
@pytest.mark.parametrize("kind", ["numpy", "dask"])
def test_overflow_is_the_clipped_float64_result(kind, dtype):
    """Sums far outside the dtype: equal to np.clip of scipy's float64 result, truncated."""
    rng = np.random.default_rng([DTYPES.index(dtype), 11])
    info = np.iinfo(dtype)
    x = rng.integers(info.min // 2, info.max // 2, SHAPE, endpoint=True).astype(dtype)
    weights = np.full(WEIGHTS_SHAPE, 1.5) * rng.choice([-1, 1], WEIGHTS_SHAPE)
    ours = filtered("correlate", as_input(x, kind), weights, mode="mirror")
    exact = ndimage.correlate(x.astype(np.float64), weights, mode="mirror")
    assert (exact > info.max).any() and (exact < info.min).any()  # both ends are reached
    expected = np.clip(np.trunc(exact), info.min, info.max)
    # int32 sums reach 2**33: float32 holds them to 2**-24 relative, which may move the
    # in-range ones by a few units (never across the saturation: they are clipped there).
    slack = 0 if dtype != "int32" else 2.0**-23 * np.abs(exact).max()
    assert np.abs(ours.astype(np.float64) - expected).max() <= slack
    assert ((ours == info.max) == (exact >= info.max)).all()
    assert ((ours == info.min) == (exact <= info.min)).all()


# Error types: what scipy raises, for the same mistake ----------------------------------------

ERROR_CASES = [
    ("origin sequence too long", {"origin": (0, 0, 0)}, None),
    ("origin sequence too short", {"origin": (0,)}, None),
    ("float origin", {"origin": 0.5}, None),
    ("integral float origin", {"origin": 1.0}, None),
    ("float origin in a sequence", {"origin": (0, 0.5)}, None),
    ("complex origin", {"origin": 1j}, None),
    ("bool origin", {"origin": True}, None),
    ("string origin", {"origin": "1"}, None),
    ("origin beyond the kernel", {"origin": 2}, None),
    ("origin before the kernel", {"origin": (0, -3)}, None),
    ("unknown mode", {"mode": "bogus"}, None),
    ("mode not a string", {"mode": 3}, None),
    ("sequence of modes", {"mode": ["reflect", "wrap"]}, None),
    ("repeated axes", {"axes": (0, 0)}, None),
    ("axis out of range", {"axes": (0, 5)}, None),
    ("negative axis out of range", {"axes": (-3, 1)}, None),
    ("float axes", {"axes": (0.0, 1.0)}, None),
    ("axes fewer than the weights' rank", {"axes": (0,)}, None),
    ("weights of lower rank", {}, np.ones(3)),
    ("weights of higher rank", {}, np.ones((3, 3, 3))),
    ("0-d weights", {}, np.float64(1.0)),
    ("unknown dtype name", {"output": "float7"}, None),
    ("string output dtype", {"output": "U3"}, None),
    ("object output dtype", {"output": object}, None),
    ("complex output dtype", {"output": np.complex64}, None),
    ("string cval", {"cval": "a"}, None),
    ("complex cval", {"cval": 1j}, None),
    ("cval None", {"cval": None}, None),
]


ERROR_PARAMS = [
    pytest.param(function, *case, id=f"{function}-{case[0]}")
    for function in ("correlate", "convolve")
    for case in ERROR_CASES
    # scipy's convolve negates the origin before checking it, so it takes True as 1; its
    # correlate, and distconv's both, refuse a bool.
    if not (function == "convolve" and case[0] == "bool origin")
]


@pytest.mark.parametrize("kind", ["numpy", "dask"])
@pytest.mark.parametrize("function, name, kwargs, weights", ERROR_PARAMS)
def test_errors_are_scipys_builtin(kind, function, name, kwargs, weights):
    rng = np.random.default_rng(9)
    x = rng.random((8, 7))
    weights = np.ones((3, 4)) if weights is None else weights
    with pytest.raises(Exception) as theirs:
        getattr(ndimage, function)(x, weights, **kwargs)
    with pytest.raises(dc.DistconvError) as ours:  # so the CLI prints one line and exits 2
        getattr(dc, function)(as_input(x, kind), weights, **kwargs)
    assert isinstance(ours.value, type(theirs.value)), (theirs.value, ours.value)
    assert "\n" not in str(ours.value)


@pytest.mark.parametrize("weights", [np.ones(3), np.ones((3, 3, 3))])
def test_weights_of_the_wrong_rank_are_both_runtime_and_value_errors(weights):
    """scipy.ndimage raises RuntimeError, dask-image ValueError: except clauses for either."""
    with pytest.raises(RuntimeError) as raised:
        dc.correlate(np.ones((6, 5)), weights)
    assert isinstance(raised.value, ValueError)
    assert isinstance(raised.value, dc.WeightsRankError)


def test_accepted_origins_as_scipy():
    """NumPy integers and 0-d or 1-d integer arrays are origins, as in scipy.ndimage."""
    rng = np.random.default_rng(10)
    x, weights = data(rng, "int16"), quarters(rng)
    for origin in (np.int64(1), np.array(-1), np.array([1, -2]), [np.int8(0), 1]):
        ours = filtered("correlate", x, weights, origin=origin)
        check_against_scipy(ours, x, weights, "correlate", origin=origin)


@pytest.mark.parametrize("kind", ["numpy", "dask"])
def test_an_array_as_output_is_a_type_error_with_a_hint(kind):
    """Results are lazy: scipy's fill-this-array form of ``output`` is refused, clearly."""
    x = np.ones((6, 5), np.float32)
    for output in (np.empty((6, 5)), da.zeros((6, 5))):
        with pytest.raises(TypeError, match="lazy") as raised:
            dc.correlate(as_input(x, kind), np.ones((3, 3)), output)
        assert isinstance(raised.value, dc.DistconvError)


def test_dtype_is_a_second_name_for_output():
    x = np.arange(30, dtype=np.uint8).reshape(6, 5)
    weights = np.ones((3, 3)) / 4
    by_dtype = filtered("correlate", x, weights, dtype="float32")
    np.testing.assert_array_equal(by_dtype, filtered("correlate", x, weights, np.float32))
    assert by_dtype.dtype == np.float32
    same = filtered("convolve", x, weights, "int16", dtype=np.int16)
    assert same.dtype == np.int16
    with pytest.raises(TypeError, match="disagree") as raised:
        dc.convolve(x, weights, "int16", dtype="float32")
    assert isinstance(raised.value, dc.DistconvError)
