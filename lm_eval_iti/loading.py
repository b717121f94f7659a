"""Loading a model and tokenizer from a local folder or a hub id, with errors that name the problem."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import ITIError

DTYPES = ("auto", "float32", "float16", "bfloat16")


def load_model(name: str, revision: str | None = None, dtype: str = "auto", device: str | None = None,
               progress: bool = True):
    """(model, tokenizer) from a local folder or a hub id; any failure is one ITIError line."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not progress:
        hf_logging.disable_progress_bar()

    text = str(name)
    if text.startswith((".", "/", "~")) and not Path(text).expanduser().exists():
        raise ITIError(f"--model {text}: no such model folder")
    if dtype not in DTYPES:
        raise ITIError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(text, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(text, revision=revision, dtype=torch_dtype)
    except Exception as exc:  # OSError, ValueError, HF hub errors: all mean "cannot load this model"
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ITIError(f"--model {text}: could not load model/tokenizer ({type(exc).__name__}: {first})") from None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = model.to(device)
    except Exception as exc:
        raise ITIError(f"--device {device}: cannot move the model there ({type(exc).__name__})") from None
    return model.eval(), tokenizer
