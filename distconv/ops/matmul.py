"""The matrix product of chunked arrays as a Dask graph, built from a :class:`MatmulPlan`.

:func:`numpy.matmul` semantics; each block product runs in an engine from
:mod:`distconv.kernels`, and partial products (when the plan splits k) are tree-summed on the
chunk type the engine returned (on the device for GPU engines). When both operands were opened
from Zarr by :func:`distconv.open`, every task reads its own A and B panels from the stores (a
CPU task may stream k in steps), so no panel is held between tasks or copied between workers;
other operands are rechunked into the planned panels and shared through Dask.
"""

from __future__ import annotations

import os
from typing import Any

import dask.array as da
import numpy as np
from dask.array.reductions import reduction
from dask.highlevelgraph import HighLevelGraph

from distconv import kernels
from distconv.backend import array_module, device_arrays_available, is_gpu_array, to_numpy
from distconv.clusters.resources import current_client
from distconv.config import get_default
from distconv.errors import InputReadError
from distconv.io import as_dask_array, open_zarr_array
from distconv.ops._blas import limit_blas_threads
from distconv.plan.matmul import MATMUL_OP, MatmulPlan, plan_matmul
from distconv.provenance import (
    remember_layout,
    remember_provenance,
    remember_source,
    source_of,
)

__all__ = ["matmul", "matmul_block", "matmul_stores_block", "matmul_with_plan", "plan_for"]


def matmul(a, b, *, engine: str | None = None, memory_budget: int | str | None = None) -> da.Array:
    """Matrix product with :func:`numpy.matmul` semantics, planned against a memory budget.

    Parameters
    ----------
    a, b : str, zarr.Array, dask.array.Array or numpy.ndarray
        Operands; a path is opened with :func:`distconv.open`. 1-D operands and stacks of
        matrices (batch axes broadcast) behave as in NumPy.
    engine : str, optional
        Engine computing each block product; default from config ``distconv.engine``.
    memory_budget : int or str, optional
        Bytes one task may use, e.g. ``"2GiB"``. Default: from the current Dask client's
        workers (call this inside ``with distconv.cluster():``), else this machine.

    Returns
    -------
    dask.array.Array
        Lazy product in ``numpy.result_type(a, b)``; save it with :func:`distconv.save`.

    Raises
    ------
    DistconvError
        Shapes that NumPy would refuse, with NumPy's message.

    Examples
    --------
    >>> import distconv as dc
    >>> with dc.cluster():                                    # doctest: +SKIP
    ...     dc.save(dc.matmul("a.zarr", "b.zarr"), "c.zarr")
    """
    x, y = as_dask_array(a), as_dask_array(b)
    plan = plan_for(x, y, engine=engine, memory_budget=memory_budget)
    result = matmul_with_plan(x, y, plan)
    # Written in the planned output chunks (the inputs' n and m chunks where they divide the
    # blocks), not in a same-shaped input's layout.
    remember_layout(result, {"shape": plan.out_shape, "chunks": plan.output_chunks})
    return remember_provenance(
        result,
        {
            "operation": "matmul",
            "parameters": {"engine": engine or get_default("engine")},
            "engine": plan.engine,
            "method": (
                f"k streamed in {plan.stream_steps} steps per task"
                if plan.stream_steps > 1
                else "one k panel"
                if plan.k_panels == 1
                else f"{plan.k_panels} k panels, tree sum"
            ),
            # The budget only changes how blocks are computed (like the engine), so a resumed save
            # may use another; the chunks written, which must match, are checked by save().
            "plan": {**plan.summary(), "memory_budget_given": memory_budget},
            "input_shapes": [list(x.shape), list(y.shape)],
            "input_dtypes": [str(x.dtype), str(y.dtype)],
        },
    )


def plan_for(
    a: da.Array, b: da.Array, *, engine: str | None = None, memory_budget: int | str | None = None
) -> MatmulPlan:
    """:func:`~distconv.plan.matmul.plan_matmul` for two dask arrays (their chunks and sources
    taken into account).

    Parameters
    ----------
    a, b : dask.array.Array
        The operands; arrays opened by :func:`distconv.open` have their panels read from Zarr.
    engine : str, optional
        Engine for the blocks; default from config ``distconv.engine``.
    memory_budget : int or str, optional
        Bytes one task may use; default from the current client's workers, else this machine.

    Returns
    -------
    MatmulPlan
    """
    return plan_matmul(
        a.shape,
        b.shape,
        a.dtype,
        b.dtype,
        engine=engine,
        memory_budget=memory_budget,
        a_chunks=a.chunks,
        b_chunks=b.chunks,
        panels_from_zarr=(_zarr_source(a) is not None, _zarr_source(b) is not None),
        gpu_chunks=is_gpu_array(a) or is_gpu_array(b),
    )


def matmul_with_plan(a: da.Array, b: da.Array, plan: MatmulPlan) -> da.Array:
    """Build the graph for a plan: panels, one engine call per block pair, tree sum, chunks.

    Parameters
    ----------
    a, b : dask.array.Array
        The operands the plan was made for.
    plan : MatmulPlan
        From :func:`plan_for` (or :func:`~distconv.plan.matmul.plan_matmul`).

    Returns
    -------
    dask.array.Array
        The lazy product, in ``plan.output_chunks``.
    """
    batch_ndim = len(plan.batch_shape)
    batch_ind = tuple(f"b{i}" for i in range(batch_ndim))
    a_ind = batch_ind[batch_ndim - (a.ndim - 2) :] + ("n", "k") if a.ndim > 1 else ("k",)
    b_ind = batch_ind[batch_ndim - (b.ndim - 2) :] + ("k", "m") if b.ndim > 1 else ("k",)
    core_ind = (() if plan.vector_a else ("n",)) + (() if plan.vector_b else ("m",))
    meta = array_module(a._meta).empty((0,) * len(plan.out_shape), dtype=plan.dtype)
    if plan.reads_in_tasks and _zarr_source(a) and _zarr_source(b):
        product = _product_reading_stores(a, b, plan, meta)
        return _as_output_chunks(product, plan)
    a_panels = _as_panels(a, _panel_chunks(a, a_ind, plan))
    b_panels = _as_panels(b, _panel_chunks(b, b_ind, plan))

    if plan.k_panels == 1:
        product = da.blockwise(
            matmul_block,
            batch_ind + core_ind,
            a_panels,
            a_ind,
            b_panels,
            b_ind,
            concatenate=True,
            dtype=plan.dtype,
            meta=meta,
            engine=plan.engine,
            dtype_=plan.dtype,
            blas_threads=plan.blas_threads,
            partial_axis=None,
        )
    else:
        on_device = _partials_on_device(plan, a)
        xp = _device_module() if on_device else array_module(a._meta)
        partials = da.blockwise(
            matmul_block,
            batch_ind + ("k",) + core_ind,
            a_panels,
            a_ind,
            b_panels,
            b_ind,
            adjust_chunks={"k": 1},
            dtype=plan.dtype,
            meta=xp.empty((0,) * (len(plan.out_shape) + 1), dtype=plan.dtype),
            engine=plan.engine,
            dtype_=plan.dtype,
            blas_threads=plan.blas_threads,
            partial_axis=batch_ndim,
            on_device=on_device,
        )
        product = _sum_partials(
            partials, plan, xp.empty((0,) * len(plan.out_shape), dtype=plan.dtype)
        )
        if on_device:
            product = product.map_blocks(to_numpy, dtype=plan.dtype, meta=meta)
    return _as_output_chunks(product, plan)


def _as_output_chunks(product: da.Array, plan: MatmulPlan) -> da.Array:
    """Split computed blocks into the chunks the result is written with (slicing, no copy)."""
    written = tuple(
        _regular(size, chunk) for size, chunk in zip(plan.out_shape, plan.output_chunks)
    )
    return product if product.chunks == written else product.rechunk(written)


def _sum_partials(partials: da.Array, plan: MatmulPlan, meta) -> da.Array:
    """Tree-sum the length-1 partial-product axis (just after the batch axes) away."""
    axis = len(plan.batch_shape)
    return reduction(
        partials,
        _keep_partial,
        _add_partials,
        combine=_add_partials,
        axis=axis,
        dtype=plan.dtype,
        split_every={axis: plan.fan_in},
        concatenate=False,
        meta=meta,
        name="distconv-matmul-sum",
    )


def _product_reading_stores(a: da.Array, b: da.Array, plan: MatmulPlan, meta) -> da.Array:
    """Blocks (or partial products) whose tasks read their own panels from the Zarr stores.

    No panel is held by the scheduler between tasks or copied between workers, so a worker's
    memory stays at its running tasks' panels however large the arrays are.
    """
    chunks = tuple(
        _regular(size, chunk) for size, chunk in zip(plan.batch_shape, plan.batch_chunks)
    )
    partial = plan.k_panels > 1
    if partial:
        chunks += ((1,) * plan.k_panels,)
    chunks += (() if plan.vector_a else (_regular(plan.n, plan.block_n),)) + (
        () if plan.vector_b else (_regular(plan.m, plan.block_m),)
    )
    on_device = partial and _partials_on_device(plan, a)
    xp = _device_module() if on_device else np
    product = da.map_blocks(
        matmul_stores_block,
        chunks=chunks,
        dtype=plan.dtype,
        meta=xp.empty((0,) * len(chunks), dtype=plan.dtype),
        a_store=open_zarr_array(_zarr_source(a)["path"]),
        b_store=open_zarr_array(_zarr_source(b)["path"]),
        plan=plan,
        on_device=on_device,
        token="distconv-matmul-read",
    )
    # Carry the inputs' layers: save() finds the source stores (provenance, and its refusal to
    # overwrite an input) by their names; their unused read tasks are culled before computing.
    graph = HighLevelGraph.merge(product.dask, a.dask, b.dask)
    product = da.Array(graph, product.name, product.chunks, meta=product._meta)
    if not partial:
        return product
    product = _sum_partials(product, plan, xp.empty((0,) * len(plan.out_shape), plan.dtype))
    return product.map_blocks(to_numpy, dtype=plan.dtype, meta=meta) if on_device else product


def _partials_on_device(plan: MatmulPlan, a: da.Array) -> bool:
    """A GPU engine's partial products stay on its device through the tree sum; only summed
    blocks come back to the host (CuPy chunks never leave the device at all).

    Partials are summed on the host without CuPy (numba-cuda on host blocks, e.g. under the
    CUDA simulator), and on a ``distributed`` cluster: there the client would have to build the
    tree sum's CuPy meta, which creates a CUDA context on GPU 0 (seen on an H200), and partials
    moving between workers are copied through the host anyway.
    """
    return (
        kernels.is_gpu_engine(plan.engine)
        and not is_gpu_array(a)
        and device_arrays_available()
        and current_client() is None
    )


def matmul_stores_block(
    plan: MatmulPlan, a_store, b_store, on_device: bool = False, block_info=None
):
    """Per-block function of the in-task read path: read both panels, then :func:`matmul_block`.

    ``block_info`` gives the output location; the panels follow from the plan: the same batch
    range (one matrix on broadcast axes), this block's rows of A and columns of B, and the k
    range of this partial product (all of k with one panel). With ``plan.stream_k`` the k range
    is read and multiplied in steps (see :func:`_streamed_product`).

    Parameters
    ----------
    plan : MatmulPlan
    a_store, b_store : zarr.Array
        The operands' stores.
    on_device : bool
        Keep a GPU engine's partial product on the device (see :func:`matmul_block`).
    block_info : dict
        Given by :func:`dask.array.map_blocks`.

    Returns
    -------
    array
        The output block, or a partial product with a length-1 axis after the batch axes.
    """
    location = [range(start, stop) for start, stop in block_info[None]["array-location"]]
    batch_ndim = len(plan.batch_shape)
    batch, rest = location[:batch_ndim], location[batch_ndim:]
    if plan.k_panels > 1:
        panel, rest = rest[0].start, rest[1:]
        k = slice(panel * plan.block_k, min(plan.k, (panel + 1) * plan.block_k))
    else:
        k = slice(0, plan.k)
    rows = None if plan.vector_a else slice(rest[0].start, rest[0].stop)
    cols = None if plan.vector_b else slice(rest[-1].start, rest[-1].stop)

    def read(k: slice) -> tuple:
        a_region = _operand_batch_region(plan.a_shape[:-2], batch) + (
            (k,) if rows is None else (rows, k)
        )
        b_region = _operand_batch_region(plan.b_shape[:-2], batch) + (
            (k,) if cols is None else (k, cols)
        )
        return _read_panel(a_store, a_region), _read_panel(b_store, b_region)

    if plan.stream_steps > 1:
        steps = [
            slice(start, min(plan.k, start + plan.stream_k))
            for start in range(0, plan.k, plan.stream_k)
        ]
        return _streamed_product(read, steps, plan)
    return matmul_block(
        *read(k),
        engine=plan.engine,
        dtype_=plan.dtype,
        blas_threads=plan.blas_threads,
        partial_axis=batch_ndim if plan.k_panels > 1 else None,
        on_device=on_device,
    )


def _streamed_product(read, steps: list[slice], plan: MatmulPlan):
    """Sum of the engine's products over k steps, reading step i+1 while step i multiplies.

    Zarr decodes in threads that release the GIL, so the next panels' decode overlaps the
    GEMM; memory holds two steps' panels, the running block and one step's product. Adding in
    the result dtype wraps integers exactly as one whole-k product would.
    """
    from concurrent.futures import ThreadPoolExecutor

    total = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="distconv-prefetch") as pool:
        pending = pool.submit(read, steps[0])
        for index in range(len(steps)):
            a, b = pending.result()
            if index + 1 < len(steps):
                pending = pool.submit(read, steps[index + 1])
            product = matmul_block(
                a,
                b,
                engine=plan.engine,
                dtype_=plan.dtype,
                blas_threads=plan.blas_threads,
                partial_axis=None,
            )
            del a, b
            if total is None:  # the engine's own array, or a copy when it cannot be added to
                writable = isinstance(product, np.ndarray) and product.flags.writeable
                total = product if writable else np.array(product)
            else:
                np.add(total, product, out=total)
            del product
    return total


def _read_panel(store, region: tuple):
    """One panel from a Zarr array; a damaged chunk becomes :class:`InputReadError` (bad input,
    as for chunks read by :func:`distconv.open`), naming the store and the panel."""
    try:
        return store[region]
    except Exception as exc:
        where = ", ".join(f"{s.start}:{s.stop}" for s in region)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise InputReadError(
            f"{_store_name(store)}: the panel [{where}] cannot be read "
            f"({type(exc).__name__}: {reason}); the input is damaged"
        ) from None


def _store_name(store) -> str:
    """The path of a Zarr array on a local store (the URL-like store path elsewhere)."""
    root = getattr(store.store_path.store, "root", None)
    if root is None:
        return str(store.store_path)
    return os.path.join(str(root), store.store_path.path) if store.store_path.path else str(root)


def _operand_batch_region(operand_batch: tuple[int, ...], batch: list[range]) -> tuple:
    """An operand's slices on the (right-aligned) batch axes; broadcast axes keep their one."""
    offset = len(batch) - len(operand_batch)
    return tuple(
        slice(0, 1) if size == 1 else slice(batch[offset + i].start, batch[offset + i].stop)
        for i, size in enumerate(operand_batch)
    )


def _panel_chunks(x: da.Array, index: tuple[str, ...], plan: MatmulPlan) -> tuple:
    """Chunks one operand needs: the plan's blocks, one chunk on broadcast (size-1) axes."""
    sizes = {"n": plan.block_n, "k": plan.block_k, "m": plan.block_m}
    sizes.update({f"b{i}": c for i, c in enumerate(plan.batch_chunks)})
    return tuple(
        _regular(extent, 1 if extent == 1 else sizes[name]) for extent, name in zip(x.shape, index)
    )


def _as_panels(x: da.Array, chunks: tuple) -> da.Array:
    """``x`` in panel chunks: read straight from its Zarr store when it is one, else rechunked.

    Reading a panel from the store in one task avoids assembling it from small chunks (a copy,
    and twice the memory while it happens).
    """
    if x.chunks == chunks:
        return x
    source = _zarr_source(x)
    if source is None:
        return x.rechunk(chunks)
    panels = da.from_zarr(open_zarr_array(source["path"]), chunks=chunks)
    # save() finds inputs (provenance, and the refusal to overwrite an input) by layer name.
    return remember_source(panels, source)


def _zarr_source(x: da.Array) -> dict[str, Any] | None:
    """The store record of an array opened by :func:`distconv.open` and not yet transformed."""
    record = source_of(x)
    return record if record and record.get("zarr_format") else None


def _regular(extent: int, size: int) -> tuple[int, ...]:
    size = max(1, min(size, extent)) if extent else 1
    if extent == 0:
        return (0,)
    return (size,) * (extent // size) + ((extent % size,) if extent % size else ())


def matmul_block(
    a,
    b,
    *,
    engine: str,
    dtype_: np.dtype,
    blas_threads: int,
    partial_axis: int | None,
    on_device: bool = False,
):
    """Per-block function: cast to the result dtype, run the engine's matmul with BLAS threads
    limited to this task's share, and add a length-1 axis for a partial product to be summed.

    Parameters
    ----------
    a, b : array
        The A and B panels.
    engine : str
        A resolved engine name.
    dtype_ : numpy.dtype
        The result dtype, which the product is computed in.
    blas_threads : int
        BLAS threads for this task (see :func:`~distconv.ops._blas.limit_blas_threads`).
    partial_axis : int or None
        Where to add the length-1 axis of a partial product (None: a whole block).
    on_device : bool
        Move host blocks to the GPU first, so a GPU engine returns its partial product on the
        device, where the tree sum adds it.

    Returns
    -------
    array
        The product in the engine's array type.
    """
    if on_device:
        xp = _device_module()
        a, b = xp.asarray(a), xp.asarray(b)
    a = a.astype(dtype_, copy=False)
    b = b.astype(dtype_, copy=False)
    with limit_blas_threads(blas_threads):
        out = kernels.get_op(engine, MATMUL_OP)(a, b)
    if partial_axis is not None:
        out = out.reshape(out.shape[:partial_axis] + (1,) + out.shape[partial_axis:])
    return out


def _device_module():
    """CuPy, imported only when a GPU engine runs (``import distconv`` never imports it)."""
    import cupy

    return cupy


def _keep_partial(x, axis=None, keepdims=None):
    """Reduction's per-chunk step: a partial product is already what the tree adds."""
    return x


def _add_partials(parts, axis=None, keepdims=False, dtype=None):
    """Sum partial products (length 1 along ``axis``) in place, in their own array type."""
    if not isinstance(parts, list):
        parts = [parts]
    xp = array_module(parts[0])
    total = parts[0].astype(dtype or parts[0].dtype, copy=True)
    for part in parts[1:]:
        xp.add(total, part, out=total)
    if keepdims:
        return total
    (axis,) = axis if isinstance(axis, tuple) else (axis,)
    return total.reshape(total.shape[:axis] + total.shape[axis + 1 :])
