"""Loading a model and tokenizer from a local folder, a hub id, a .gguf file or a named real model."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import ITIError
from .gguf import dequantized_folder, gguf_identity, load_gguf, resolve_model

DTYPES = ("auto", "float32", "float16", "bfloat16")


def load_model(name: str, revision: str | None = None, dtype: str = "auto", device: str | None = None,
               progress: bool = True, gguf_file: str | None = None, gguf_cache: bool = True,
               cache_dir: str | None = None):
    """(model, tokenizer); any failure is one ITIError line.

    ``name``: a folder, a hub id, a ``.gguf`` file, or a named model (``gguf.KNOWN_MODELS``); ``gguf_file``: the
    GGUF file inside the folder ``name``. GGUF weights are dequantized to float32 and, with ``gguf_cache``, saved
    once in the dequantized-weights cache. A GGUF model's identity is the file's sha256.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not progress:
        hf_logging.disable_progress_bar()

    text = str(name)
    if text.startswith((".", "/", "~")) and not Path(text).expanduser().exists():
        raise ITIError(f"model {text}: no such model folder or file")
    if dtype not in DTYPES:
        raise ITIError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    source = resolve_model(text, gguf_file)
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    identity = None
    try:
        if source.is_gguf:
            identity = gguf_identity(source.gguf_path)
            if gguf_cache:
                folder = dequantized_folder(source, cache_dir)
                tokenizer = AutoTokenizer.from_pretrained(folder)
                model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype)
            else:
                model, tokenizer = load_gguf(source)
                if dtype not in ("auto", "float32"):
                    model = model.to(torch_dtype)
        else:
            tokenizer = AutoTokenizer.from_pretrained(text, revision=revision)
            model = AutoModelForCausalLM.from_pretrained(text, revision=revision, dtype=torch_dtype)
    except ITIError:
        raise
    except Exception as exc:  # OSError, ValueError, HF hub errors: all mean "cannot load this model"
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ITIError(f"model {source.label}: could not load model/tokenizer ({type(exc).__name__}: {first})") from None
    if identity is not None:
        model._lm_eval_iti_identity = identity  # read by collect.model_identity
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = model.to(device)
    except Exception as exc:
        raise ITIError(f"device {device}: cannot move the model there ({type(exc).__name__})") from None
    return model.eval(), tokenizer
