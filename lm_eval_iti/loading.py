"""Loading a model and tokenizer from a local folder, a hub id, a .gguf file or a named real model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .architectures import execution_device  # noqa: F401  (this module's API: where inputs go)
from .choices import DTYPES
from .distributed import local_gpus, process_device, world_size
from .errors import ITIError
from .gguf import dequantized_folder, gguf_identity, load_gguf, resolve_model


def load_model(name: str, revision: str | None = None, dtype: str = "auto", device: str | None = None,
               progress: bool = True, gguf_file: str | None = None, gguf_cache: bool = True,
               cache_dir: str | None = None, device_map: str | dict | None = None,
               max_memory: str | dict | None = None, offload_folder: str | os.PathLike | None = None):
    """(model, tokenizer); any failure is one ITIError line.

    ``name``: a folder, a hub id, a ``.gguf`` file, or a named model (``gguf.KNOWN_MODELS``); ``gguf_file``: the
    GGUF file inside the folder ``name``. GGUF weights are dequantized to float32 and, with ``gguf_cache``, saved
    once in the dequantized-weights cache. A GGUF model's identity is the file's sha256.
    ``device_map`` ("auto", "balanced", ..., or a dict module -> device/"cpu"/"disk", or its JSON), ``max_memory``
    (a dict or "0=20GiB,cpu=60GiB") and ``offload_folder``: accelerate's placement through ``from_pretrained``; the
    model is then left where accelerate put it (no ``.to(device)``).
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
    if device_map is None and (max_memory is not None or offload_folder is not None):
        raise ITIError("max_memory= and offload_folder= need device_map= (e.g. device_map='auto')")
    if device_map is not None and device is not None:
        raise ITIError(f"device={device!r} and device_map= both place the model; pass one of them")
    check_device(device)
    placement = placement_kwargs(device_map, max_memory, offload_folder)
    source = resolve_model(text, gguf_file)
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    identity = None
    try:
        if source.is_gguf:
            identity = gguf_identity(source.gguf_path)
            if gguf_cache:
                folder = dequantized_folder(source, cache_dir)
                tokenizer = AutoTokenizer.from_pretrained(folder)
                model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, **placement)
            else:
                if placement:
                    raise ITIError("device_map= with a GGUF model needs the dequantized-weights cache (gguf_cache=True)")
                model, tokenizer = load_gguf(source)
                if dtype not in ("auto", "float32"):
                    model = model.to(torch_dtype)
        else:
            tokenizer = AutoTokenizer.from_pretrained(text, revision=revision)
            model = AutoModelForCausalLM.from_pretrained(text, revision=revision, dtype=torch_dtype, **placement)
    except ITIError:
        raise
    except Exception as exc:  # OSError, ValueError, HF hub errors: all mean "cannot load this model"
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ITIError(f"model {source.label}: could not load model/tokenizer ({type(exc).__name__}: {first})") from None
    if identity is not None:
        model._lm_eval_iti_identity = identity  # read by collect.model_identity
    if placement:  # accelerate placed (and hooked) every module; moving it would undo that
        return model.eval(), tokenizer
    device = device or process_device() or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = model.to(device)
    except Exception as exc:
        raise ITIError(f"device {device}: cannot move the model there ({type(exc).__name__})") from None
    return model.eval(), tokenizer


def check_model_source(name: str, gguf_file: str | None = None, revision: str | None = None,
                       what: str = "model ") -> None:
    """Before anything loads: a local path must exist (a named model be installed, a GGUF file be there); a hub id
    must be well formed and, offline, already in the local cache."""
    from .gguf import KNOWN_MODELS

    if name in KNOWN_MODELS or os.path.exists(os.path.expanduser(name)):
        resolve_model(name, gguf_file)  # a named model not installed, or a missing gguf_file: one line
        return
    if name.startswith((".", "/", "~")) or name.endswith(".gguf") or name.count("/") > 1:
        raise ITIError(f"{what}{name}: no such model folder or file")
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError

    try:
        cached = try_to_load_from_cache(name, "config.json", revision=revision if revision not in (None, "main") else None)
    except HFValidationError:
        raise ITIError(f"{what}{name}: neither a local path nor a valid hub id") from None
    if constants.HF_HUB_OFFLINE and not isinstance(cached, str):
        raise ITIError(f"{what}{name}: not a local path, and not in the local Hugging Face cache while "
                       "HF_HUB_OFFLINE=1")


def check_device(device: str | None, what: str = "device") -> None:
    """A device string that names a device this machine has, checked before a model loads."""
    if not device:
        return
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ITIError(f"{what}={device!r} is not a device (cpu, cuda, cuda:1, mps ...)") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ITIError(f"{what}={device!r}: this machine has no usable CUDA GPU (torch {torch.__version__}); use cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ITIError(f"{what}={device!r}: MPS is not available on this machine; use cpu")


def parse_device_map(value: str | dict | None) -> str | dict | None:
    """``device_map=``: None, a strategy name ("auto", "balanced", "balanced_low_0", "sequential"), a device
    ("cpu", "cuda:1", "0"), a dict module name -> device, or that dict as JSON."""
    if value is None or isinstance(value, dict):
        return value
    text = str(value).strip()
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ITIError(f"device_map={text[:60]!r}: not valid JSON ({exc.msg})") from None
        if not isinstance(parsed, dict) or not all(isinstance(v, (str, int)) for v in parsed.values()):
            raise ITIError("device_map=: the JSON must map module names to devices (\"cpu\", \"disk\", 0, \"cuda:1\")")
        return parsed
    if not text:
        raise ITIError("device_map= is empty; give auto, balanced, sequential, a device or a JSON object")
    return int(text) if text.isdigit() else text


def parse_max_memory(value: str | dict | None) -> dict | None:
    """``max_memory=``: accelerate's dict, or "0=20GiB,1=20GiB,cpu=60GiB" (GPU index or cpu/disk = size)."""
    if value is None or isinstance(value, dict):
        return value
    from accelerate.utils import convert_file_size_to_int

    limits: dict = {}
    for part in str(value).split(","):
        if not part.strip():
            continue
        key, sep, size = part.partition("=")
        key, size = key.strip(), size.strip()
        if not sep or not key or not size:
            raise ITIError(f"max_memory={value!r}: expected DEVICE=SIZE pairs such as 0=20GiB,cpu=60GiB")
        if key.startswith("cuda:"):
            key = key[len("cuda:"):]
        if not (key.isdigit() or key in ("cpu", "disk", "mps")):
            raise ITIError(f"max_memory={value!r}: {key!r} is not a GPU index, cpu or disk")
        try:
            convert_file_size_to_int(size)
        except ValueError:
            raise ITIError(f"max_memory={value!r}: {size!r} is not a size such as 20GiB or 500MB") from None
        limits[int(key) if key.isdigit() else key] = size
    if not limits:
        raise ITIError(f"max_memory={value!r}: no DEVICE=SIZE pair")
    return limits


def placement_kwargs(device_map=None, max_memory=None, offload_folder=None) -> dict:
    """from_pretrained keyword arguments for accelerate's placement (empty without a device_map)."""
    device_map = parse_device_map(device_map)
    if device_map is None:
        return {}
    kwargs = {"device_map": device_map}
    max_memory = parse_max_memory(max_memory)
    if max_memory is None and isinstance(device_map, str) and world_size() > 1 and torch.cuda.device_count() > 1:
        # accelerate launch with a strategy ("auto"...): each process shards over its own GPUs only
        from accelerate.utils import get_max_memory

        available = get_max_memory()
        max_memory = {i: available[i] for i in local_gpus()}
        max_memory["cpu"] = available["cpu"]
    if max_memory is not None:
        kwargs["max_memory"] = max_memory
    if offload_folder is not None:
        kwargs["offload_folder"] = str(Path(offload_folder).expanduser())
    elif isinstance(device_map, dict) and "disk" in map(str, device_map.values()):
        raise ITIError("device_map= sends modules to disk: pass offload_folder= (a folder for the offloaded weights)")
    return kwargs
