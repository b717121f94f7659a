"""Click parameter types that check a value once, where the option is declared, so a bad number is refused with one
line before any model loads or any output folder is made. Torch-free: ``--help`` stays fast."""

from __future__ import annotations

import math
import os
from pathlib import Path

import click

from .errors import ITIError
from .model_args import FLOAT32_MAX, check_alpha_value


class Count(click.ParamType):
    """A whole number of at least ``minimum`` (``--num-docs 0`` has no meaning: refused, never read as 'all')."""

    name = "integer"

    def __init__(self, minimum: int = 1):
        self.minimum = minimum

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = int(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is not a whole number", param, ctx)
        if number < self.minimum:
            self.fail(f"{number} is below the minimum {self.minimum}", param, ctx)
        return number


class Real(click.ParamType):
    """A finite number, optionally above ``minimum`` (``exclusive``) and below ``maximum`` (exclusive)."""

    name = "number"

    def __init__(self, minimum: float | None = None, maximum: float | None = None, inclusive_minimum: bool = False):
        self.minimum, self.maximum, self.inclusive_minimum = minimum, maximum, inclusive_minimum

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not finite", param, ctx)
        if self.minimum is not None:
            below = number < self.minimum if self.inclusive_minimum else number <= self.minimum
            if below:
                self.fail(f"{number:g} must be {'at least' if self.inclusive_minimum else 'above'} {self.minimum:g}",
                          param, ctx)
        if self.maximum is not None and number >= self.maximum:
            self.fail(f"{number:g} must be below {self.maximum:g}", param, ctx)
        return number


class Alpha(click.ParamType):
    """A steering strength: finite and within float32's range, or one of the listed words (``auto``, ``select``)."""

    name = "alpha"

    def __init__(self, words: tuple[str, ...] = ()):
        self.words = words

    def convert(self, value, param, ctx):
        if value is None:
            return None
        text = str(value).strip().lower()
        if text in self.words:
            return text
        try:
            number = float(text)
        except ValueError:
            words = f" or {' / '.join(repr(w) for w in self.words)}" if self.words else ""
            self.fail(f"{value!r} is not a number{words}", param, ctx)
        try:
            return check_alpha_value(number, "value")
        except ITIError as exc:
            self.fail(str(exc).replace("value=", ""), param, ctx)


class NumberList(click.ParamType):
    """A comma-separated list of finite numbers (``int`` or ``float`` items), each at least ``minimum``."""

    name = "list"

    def __init__(self, item=float, minimum: float | None = None):
        self.item, self.minimum = item, minimum

    def convert(self, value, param, ctx):
        if isinstance(value, (list, tuple)):
            return list(value)
        items = [t.strip() for t in str(value).split(",") if t.strip()]
        if not items:
            self.fail(f"{value!r}: give at least one value", param, ctx)
        out = []
        for text in items:
            try:
                number = self.item(text)
            except ValueError:
                kind = "whole number" if self.item is int else "number"
                self.fail(f"{text!r} is not a {kind}", param, ctx)
            if not math.isfinite(number):
                self.fail(f"{text!r} is not finite", param, ctx)
            if abs(number) > FLOAT32_MAX:
                self.fail(f"{text!r} overflows float32", param, ctx)
            if self.minimum is not None and number < self.minimum:
                self.fail(f"{text} is below the minimum {self.minimum:g}", param, ctx)
            if number in out:
                self.fail(f"{value!r}: {text} is repeated", param, ctx)
            out.append(number)
        return out


# output and cache paths ------------------------------------------------------------------------------------------
def _existing_ancestor(path: Path) -> Path:
    for parent in [path, *path.parents]:
        if os.path.lexists(parent):
            return parent
    return Path(".")


def check_output_file(path: str | os.PathLike, what: str = "--out") -> None:
    """An output file must be a regular file (or not exist yet) in a folder this process can create and write."""
    from .atomic import regular_file_target  # the writer's own rule, checked before the compute

    check_output_dir(regular_file_target(path, what).parent, what, shown=path)


def check_output_dir(path: str | os.PathLike, what: str = "--out", shown=None) -> None:
    """A folder that exists and is writable, or that can be made: its nearest existing ancestor is a writable folder."""
    shown = path if shown is None else shown
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ITIError(f"{what} {shown}: {p} is a file, not a folder")
    ancestor = _existing_ancestor(p)
    if not ancestor.is_dir():
        raise ITIError(f"{what} {shown}: {ancestor} is a file, not a folder")
    _probe_writable(ancestor, what, shown)


def _probe_writable(folder: Path, what: str, shown) -> None:
    """Create and drop a temp file: os.access says yes to root on read-only mounts and in /proc."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ITIError(f"{what} {shown}: cannot write in {folder} ({exc.strerror or type(exc).__name__})") from None


# old spellings -----------------------------------------------------------------------------------------------------
def renamed(old: str, new: str, type_=None, param: str | None = None):
    """Keep ``old`` (e.g. ``--heads``) working as a hidden alias of ``new`` (``--num-heads``) with a one-line
    deprecation on stderr. Put it under ``@click.command`` (it wraps the function and adds the hidden option)."""
    import functools

    old_param = old.lstrip("-").replace("-", "_") + "_renamed"
    new_param = param or new.lstrip("-").replace("-", "_")  # ``param``: the new option's Python name, if not its flag's

    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            value = kwargs.pop(old_param)
            if value is not None:
                click.echo(f"lm-eval-iti: warning: {old} is deprecated; use {new}", err=True)
                kwargs[new_param] = value
            return func(*args, **kwargs)

        return click.option(old, old_param, type=type_, default=None, hidden=True,
                            help=f"Deprecated spelling of {new}.")(wrapper)

    return decorate
