"""Values of hf-iti's model args (strings from ``--model_args`` or Python values), parsed without lm-eval or torch so
that the CLIs and experiments share them with ``harness/model.py``."""

from __future__ import annotations

import math

from .errors import ITIError


def parse_alpha(alpha) -> float | None:
    if alpha is None or alpha == "":
        return None
    if isinstance(alpha, bool):
        raise ITIError(f"alpha={alpha!r} is not a number")
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise ITIError(f"alpha={alpha!r} is not a number") from None
    if not math.isfinite(value):
        raise ITIError(f"alpha={alpha!r} must be finite")
    return value


def parse_heads(heads) -> int | None:
    if heads is None or heads == "":
        return None
    if isinstance(heads, bool) or not str(heads).isdigit() or int(heads) <= 0:
        raise ITIError(f"heads={heads!r} must be a positive whole number of heads")
    return int(heads)


def parse_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ITIError(f"{value!r} is not true or false")
