"""Exceptions that reach users as one line (the CLI prints them and exits 2)."""

from __future__ import annotations


class DistconvError(ValueError):
    """Bad input or an impossible request: the message is shown to the user as is."""


class EngineError(DistconvError):
    """An engine is unknown, not installed, or cannot run the requested operation here."""


class OutputError(DistconvError):
    """The output location is unsafe or already taken."""
