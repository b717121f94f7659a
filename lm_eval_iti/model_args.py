"""Values of hf-iti's model args (strings from ``--model_args`` or Python values), parsed without lm-eval or torch so
that the CLIs and experiments share them with ``harness/model.py``."""

from __future__ import annotations

import math

from .errors import ITIError

# the largest float32 (also bfloat16's range): a strength beyond it overflows every dtype a model runs in
FLOAT32_MAX = 3.4028234663852886e38


def check_alpha_value(value: float, what: str = "alpha") -> float:
    """A strength must be finite and representable in float32 (models compute in float32 or narrower)."""
    if not math.isfinite(value):
        raise ITIError(f"{what}={value!r} must be finite")
    if abs(value) > FLOAT32_MAX:
        raise ITIError(f"{what}={value!r} overflows float32 (largest {FLOAT32_MAX:.4g}): every shift would be infinite")
    return value


def parse_alpha(alpha) -> float | None:
    if alpha is None or alpha == "":
        return None
    if isinstance(alpha, bool):
        raise ITIError(f"alpha={alpha!r} is not a number")
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise ITIError(f"alpha={alpha!r} is not a number") from None
    return check_alpha_value(value)


def parse_heads(heads, name: str = "num_heads") -> int | None:
    if heads is None or heads == "":
        return None
    if isinstance(heads, bool) or not str(heads).isdigit() or int(heads) <= 0:
        raise ITIError(f"{name}={heads!r} must be a positive whole number of heads")
    return int(heads)


def num_heads_arg(num_heads, heads) -> int | None:
    """hf-iti's K: ``num_heads=`` (``heads=`` is its deprecated spelling, with a one-line warning)."""
    if heads is not None and heads != "":
        if num_heads is not None and num_heads != "":
            raise ITIError("give num_heads= only (heads= is its deprecated spelling)")
        import sys

        print("lm-eval-iti: warning: the model_arg heads= is deprecated; use num_heads=", file=sys.stderr)
        return parse_heads(heads, "heads")
    return parse_heads(num_heads)


def parse_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ITIError(f"{value!r} is not true or false")
