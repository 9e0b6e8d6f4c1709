"""Errors a user can act on: the CLI prints their message as one line, without a traceback."""

from __future__ import annotations

__all__ = ["RuntimeFailure", "TrimformerError", "UsageError", "first_line"]


class TrimformerError(Exception):
    """Base class: the message names the problem and the fix."""

    exit_code = 1


class UsageError(TrimformerError):
    """Bad input from the user (unknown model, bad flag value, not a bundle): exit code 2."""

    exit_code = 2


class RuntimeFailure(TrimformerError):
    """Valid input that failed while running (export mismatch, write failure): exit code 1."""

    exit_code = 1


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type name when empty): what fits in a one-line
    error naming a library's failure."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
