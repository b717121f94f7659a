"""One exception type for bad user input, shown as a single line by the CLIs."""

from __future__ import annotations

import sys


class ITIError(Exception):
    """A problem with the user's input (file, option, data). Its message is one self-contained line."""


def _excepthook(exc_type, exc, tb, _previous=sys.excepthook):
    if issubclass(exc_type, ITIError):
        print(f"lm-eval-iti: error: {exc}", file=sys.stderr)
        return
    _previous(exc_type, exc, tb)


def install_one_line_errors() -> None:
    """Make an uncaught ITIError print one line instead of a traceback (used by the stock ``lm_eval`` CLI)."""
    if getattr(sys.excepthook, "__name__", "") != "_excepthook":
        sys.excepthook = _excepthook
