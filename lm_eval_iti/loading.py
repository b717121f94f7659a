"""Loading a model and tokenizer from a local folder or a hub id, with errors that name the problem."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import ITIError

DTYPES = {"auto": "auto", "float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
          "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def parse_dtype(name: str):
    if name not in DTYPES:
        raise ITIError(f"--dtype {name!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[name]


def load_model_and_tokenizer(model_id: str, dtype: str = "float32", device: str = "cpu", revision: str | None = None):
    """(model in eval mode on ``device``, tokenizer). Unknown paths/ids become a one-line ITIError."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    looks_local = model_id.startswith((".", "/", "~")) or Path(model_id).exists()
    if looks_local and not Path(model_id).expanduser().is_dir():
        raise ITIError(f"--model {model_id}: no such model folder")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(model_id, revision=revision, dtype=parse_dtype(dtype))
    except ITIError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ITIError(f"--model {model_id}: could not load it ({first[:200]})") from None
    return model.to(device).eval(), tokenizer
