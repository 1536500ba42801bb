"""HTML tables for Jupyter: how plans and :func:`distconv.info` display in a notebook.

A notebook shows an object's ``_repr_html_()`` when it has one; the plans
(:class:`~distconv.ops.filter_plan.FilterPlan`, :class:`~distconv.plan.tiles.TilePlan`,
:class:`~distconv.plan.matmul.MatmulPlan`, :class:`~distconv.plan.deconvolution.DeconvolutionPlan`)
and the result of :func:`distconv.info` render their facts as (field, value) rows with
:func:`html_table`. Every field and value is escaped, so text from a store (a path, a codec's
repr, provenance) can never become markup.
"""

from __future__ import annotations

from collections.abc import Iterable
from html import escape
from typing import Any

__all__ = ["cell_text", "html_table", "shape_text"]

# Inline styles only: a notebook's own CSS may be absent (nbviewer, GitHub, exported HTML).
_TABLE = '<table class="distconv-table" style="border-collapse:collapse">'
_CAPTION = '<caption style="text-align:left;font-weight:bold">{}</caption>'
_ROW = (
    '<tr><th style="text-align:left;vertical-align:top;padding-right:1em">{}</th>'
    '<td style="text-align:left;white-space:pre-wrap">{}</td></tr>'
)


def shape_text(shape: Iterable[int]) -> str:
    """A shape as ``1024×512`` (``()`` for a scalar's)."""
    shape = tuple(shape)
    return "×".join(map(str, shape)) if shape else "()"


def cell_text(value: Any) -> str:
    """The text a table shows for ``value``.

    Parameters
    ----------
    value : object
        A tuple or list of ints reads as a shape (``1024×512``), other sequences as a comma
        separated list, None as ``none``; anything else as ``str(value)``.

    Returns
    -------
    str
        Not escaped (:func:`html_table` escapes it).
    """
    if value is None:
        return "none"
    if isinstance(value, (tuple, list)):
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return shape_text(value)
        return ", ".join(cell_text(v) for v in value)
    return str(value)


def html_table(rows: Iterable[tuple[str, Any]], title: str | None = None) -> str:
    """An HTML ``<table>`` of (field, value) rows, one row each, every cell escaped.

    Parameters
    ----------
    rows : iterable of (str, object)
        The field names and their values (shown with :func:`cell_text`).
    title : str, optional
        A caption above the table.

    Returns
    -------
    str
        The table's HTML.
    """
    parts = [_TABLE]
    if title:
        parts.append(_CAPTION.format(escape(title)))
    parts.append("<tbody>")
    parts.extend(_ROW.format(escape(str(field)), escape(cell_text(value))) for field, value in rows)
    parts.append("</tbody></table>")
    return "".join(parts)
