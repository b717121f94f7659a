"""Activation collection: the input of every layer's attention output projection at each prompt's last real token.

Prompts are tokenised once, cut into fixed chunks in prompt order, and each chunk is run in length-sorted batches,
right-padded with an explicit attention mask (so each row's last real token is at ``length - 1`` and the pads, which
come after it, cannot influence it). A forward pre-hook on each out-projection copies that row's input; the forward is
stopped after the last layer's hook, so no final MLP or LM head is computed. Everything runs under ``no_grad`` in the
model's dtype; activations are stored fp16 ``[N, layers, heads, head_dim]``.

Cache: ``{cache_dir}/activations/{key}/`` with ``meta.json`` and one safetensors file per chunk (atomic writes: a
killed run leaves only whole chunks, and the next run computes only the missing ones). The key is a hash of the model
identity (hub id + commit, or a sha256 of the weights), the token ids of the prompt set and the dtype, so a second fit
with another K, method or fold reads everything back with no forward pass. Memory during collection is one chunk.
Under ``accelerate launch`` with N processes the missing chunks are dealt out across ranks (rank r takes every N-th,
starting at r); each rank writes its own into the same cache entry, then all read the others' chunks back.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import distributed
from .architectures import execution_device, model_shape, out_projections
from .artifact import file_sha256
from .atomic import atomic_path, write_json_atomic
from .errors import ITIError

CACHE_ENV = "LM_EVAL_ITI_CACHE"
NONFINITE = ("activations contain NaN/inf values: the model produced them, or a value exceeded the fp16 range of the "
             "activation cache (|x| > 65504)")
LAYOUT_VERSION = "1"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lm_eval_iti").expanduser()


@dataclass
class CollectStats:
    """What a collection did: forward passes run now, chunks computed vs read from the cache, seconds."""

    prompts: int = 0
    forward_passes: int = 0
    prompts_forwarded: int = 0
    chunks_computed: int = 0
    chunks_cached: int = 0
    chunks_by_other_ranks: int = 0  # under accelerate launch: computed by another process, read from the cache
    seconds: float = 0.0
    cache_path: str = ""
    model_identity: str = ""

    def add(self, other: "CollectStats") -> None:
        for name in ("prompts", "forward_passes", "prompts_forwarded", "chunks_computed", "chunks_cached",
                     "chunks_by_other_ranks", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


# model identity ------------------------------------------------------------------------------------------------------
def weights_fingerprint(folder: str | os.PathLike, memo_dir: Path | None = None) -> str | None:
    """sha256 over the weight files of a local model folder (memoised by path, size and mtime); None if it has none."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        return None
    memo_file = memo_dir / "weight_fingerprints.json" if memo_dir is not None else None
    memo = {}
    if memo_file is not None and memo_file.is_file():
        try:
            memo = json.loads(memo_file.read_text())
        except (OSError, json.JSONDecodeError):
            memo = {}
    stat_key = "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    if stat_key in memo:
        return memo[stat_key]
    digest = hashlib.sha256()
    for p in files:
        digest.update(p.name.encode() + b"\0" + file_sha256(p).encode())
    value = "sha256:" + digest.hexdigest()
    if memo_file is not None:
        memo[stat_key] = value
        write_json_atomic(memo_file, memo)
    return value


def state_dict_fingerprint(model: nn.Module) -> str:
    """sha256 over parameter names, dtypes, shapes and bytes (for an in-memory model with no files to hash)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{list(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + digest.hexdigest()


def model_identity(model: nn.Module, name: str | None = None, revision: str | None = None,
                   memo_dir: Path | None = None) -> str:
    """Hub id@commit for hub models, the weights' sha256 for a local folder or an in-memory model."""
    given = getattr(model, "_lm_eval_iti_identity", None)  # set by loading.load_model, e.g. a GGUF file's sha256
    if given:
        return given
    cfg = model.config
    name = name or getattr(cfg, "_name_or_path", "") or ""
    if name and Path(name).expanduser().is_dir():
        fp = weights_fingerprint(Path(name).expanduser(), memo_dir)
        if fp:
            return f"{type(model).__name__}:{fp}"
    commit = getattr(cfg, "_commit_hash", None) or revision
    if name and commit:
        return f"{name}@{commit}"
    cached = getattr(model, "_lm_eval_iti_fingerprint", None)
    if cached is None:
        cached = state_dict_fingerprint(model)
        model._lm_eval_iti_fingerprint = cached  # rehashing a large model on every fit would dominate a sweep
    return f"{type(model).__name__}:{cached}"


# tokens ------------------------------------------------------------------------------------------------------------
def tokenize_prompts(tokenizer, prompts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
    ids = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
    for i, row in enumerate(ids):
        if not row:
            raise ITIError(f"prompt {i} tokenises to nothing: {prompts[i][:60]!r}")
    return [list(map(int, row)) for row in ids]


def tokens_sha256(token_lists: list[list[int]]) -> str:
    digest = hashlib.sha256()
    for row in token_lists:
        digest.update(len(row).to_bytes(4, "little"))
        digest.update(torch.tensor(row, dtype=torch.int64).numpy().tobytes())
    return digest.hexdigest()


# the forward ---------------------------------------------------------------------------------------------------------
class _StopForward(Exception):
    """Raised by the last layer's hook: everything after it (final MLP, norm, LM head) is not needed."""


def _input_device(model: nn.Module) -> torch.device:
    return execution_device(model)  # not the embedding weight's device: it is "meta" when accelerate offloaded it


@torch.no_grad()
def last_token_activations(model: nn.Module, batch: list[list[int]], pad_id: int = 0,
                           projections: list[nn.Module] | None = None) -> torch.Tensor:
    """One right-padded forward over ``batch``; the out-projection inputs at each row's last token, [B, L, H*d]."""
    projections = projections if projections is not None else out_projections(model)
    lengths = torch.tensor([len(r) for r in batch])
    width = int(lengths.max())
    device = _input_device(model)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, tokens in enumerate(batch):
        ids[row, :len(tokens)] = torch.tensor(tokens)
        mask[row, :len(tokens)] = 1
    rows = torch.arange(len(batch))
    last = lengths - 1
    captured: list[torch.Tensor | None] = [None] * len(projections)

    def make_hook(layer: int):
        def hook(module, args):
            x = args[0]
            captured[layer] = x[rows.to(x.device), last.to(x.device)].detach().to("cpu")
            if layer == len(projections) - 1:
                raise _StopForward

        return hook

    handles = [proj.register_forward_pre_hook(make_hook(i)) for i, proj in enumerate(projections)]
    try:
        model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    if any(c is None for c in captured):
        raise ITIError(f"{type(model).__name__}: the forward did not reach every attention output projection")
    return torch.stack(captured, dim=1)


# the cache ---------------------------------------------------------------------------------------------------------
class ActivationCache:
    """One cache entry: ``meta.json`` plus ``chunk_{i:05d}.safetensors`` files, each fp16 [rows, L, H, d]."""

    def __init__(self, path: Path, meta: dict):
        self.path = Path(path)
        self.meta = meta
        self.num_prompts = int(meta["num_prompts"])
        self.chunk_size = int(meta["chunk_size"])
        self.shape = tuple(int(x) for x in meta["shape"])

    @staticmethod
    def entry_path(root: Path, meta: dict) -> Path:
        """``root/activations/<key>``, the key a hash of model identity, prompt token ids, dtype and site."""
        key_fields = {k: meta[k] for k in ("layout", "model_identity", "tokens_sha256", "dtype", "site")}
        return Path(root) / "activations" / hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:32]

    @classmethod
    def open(cls, root: Path, meta: dict) -> "ActivationCache":
        """The entry for ``meta``; an existing entry must have been written for the same model, prompts and dtype."""
        path = cls.entry_path(root, meta)
        meta_file = path / "meta.json"
        if meta_file.is_file():
            try:
                found = json.loads(meta_file.read_text())
            except (OSError, json.JSONDecodeError):
                raise ITIError(f"{meta_file}: unreadable activation-cache metadata; delete {path}") from None
            for name in ("model_identity", "tokens_sha256", "dtype", "shape", "num_prompts", "site", "layout"):
                if found.get(name) != meta.get(name):
                    raise ITIError(f"{path}: activation cache was written by another model or prompt set "
                                   f"({name} is {found.get(name)!r}, expected {meta.get(name)!r}); delete it or pass "
                                   "another --cache-dir")
            meta = dict(meta, chunk_size=found["chunk_size"])
        else:
            write_json_atomic(meta_file, meta)
        return cls(path, meta)

    @property
    def num_chunks(self) -> int:
        return (self.num_prompts + self.chunk_size - 1) // self.chunk_size

    def chunk_rows(self, i: int) -> range:
        return range(i * self.chunk_size, min((i + 1) * self.chunk_size, self.num_prompts))

    def chunk_path(self, i: int) -> Path:
        return self.path / f"chunk_{i:05d}.safetensors"

    def has_chunk(self, i: int) -> bool:
        """A chunk written with its content hash (a chunk from before hashes is recollected, not trusted)."""
        return self.chunk_path(i).is_file() and _stored_layer_hashes(self.chunk_path(i)) is not None

    def write_chunk(self, i: int, acts: torch.Tensor) -> None:
        from safetensors.torch import save_file

        acts = acts.to(torch.float16).contiguous()
        hashes = json.dumps([_layer_sha256(acts[:, layer]) for layer in range(acts.shape[1])])
        with atomic_path(self.chunk_path(i), suffix=".safetensors") as tmp:
            save_file({"activations": acts}, str(tmp), metadata={LAYER_HASHES: hashes})

    def _verify(self, path: Path, acts: torch.Tensor, start: int = 0) -> torch.Tensor:
        """``acts`` holds layers start.. of the chunk at ``path``; each must match the hash written with it."""
        stored = _stored_layer_hashes(path)
        for offset in range(acts.shape[1]):
            if stored is None or _layer_sha256(acts[:, offset]) != stored[start + offset]:
                raise ITIError(f"{path}: activation chunk does not match the sha256 written with it (modified after "
                               "it was written); delete it to recollect")
        if not torch.isfinite(acts).all():
            raise ITIError(f"{path}: {NONFINITE}")
        return acts

    def read_chunk(self, i: int) -> torch.Tensor:
        from safetensors import safe_open

        path = self.chunk_path(i)
        try:
            with safe_open(str(path), framework="pt") as fh:
                acts = fh.get_tensor("activations")
        except Exception as exc:
            raise ITIError(f"{path}: unreadable activation chunk ({type(exc).__name__}); delete it to recollect") from None
        want = (len(self.chunk_rows(i)),) + self.shape
        if tuple(acts.shape) != want or acts.dtype != torch.float16:
            raise ITIError(f"{path}: activation chunk has shape {list(acts.shape)} {acts.dtype}, expected {list(want)} "
                           "float16 (written by another model?); delete it or pass another --cache-dir")
        return self._verify(path, acts)

    def read_chunk_layers(self, i: int, start: int, stop: int) -> torch.Tensor:
        """Layers ``start:stop`` of chunk ``i``, fp16 [rows, stop-start, H, d]: only those bytes are read."""
        from safetensors import safe_open

        path = self.chunk_path(i)
        try:
            with safe_open(str(path), framework="pt") as fh:
                part = fh.get_slice("activations")
                found = tuple(part.get_shape())
                want = (len(self.chunk_rows(i)),) + self.shape
                if found != want:
                    raise ITIError(f"{path}: activation chunk has shape {list(found)}, expected {list(want)} (written "
                                   "by another model?); delete it or pass another --cache-dir")
                acts = part[:, start:stop]
        except ITIError:
            raise
        except Exception as exc:
            raise ITIError(f"{path}: unreadable activation chunk ({type(exc).__name__}); delete it to recollect") from None
        if acts.dtype != torch.float16:
            raise ITIError(f"{path}: activation chunk is {acts.dtype}, expected float16; delete it to recollect")
        return self._verify(path, acts, start)

    def layers(self, rows: list[int] | None = None) -> "CachedActivations":
        """A streaming view of this entry (every chunk must be written) for ``probes.fit_probes``."""
        missing = [i for i in range(self.num_chunks) if not self.has_chunk(i)]
        if missing:
            raise ITIError(f"{self.path}: activation chunks {missing[:5]} are missing; collect them first")
        return CachedActivations(self, rows)

    def load(self) -> torch.Tensor:
        out = torch.empty((self.num_prompts,) + self.shape, dtype=torch.float16)
        for i in range(self.num_chunks):
            rows = self.chunk_rows(i)
            out[rows.start:rows.stop] = self.read_chunk(i)
        return out


class CachedActivations:
    """fp16 [N, L, H, d] activations of a cache entry (optionally only ``rows``, in that order), read a block of layers
    at a time: ``read_layers(start, stop)`` holds N x (stop-start) x H x d x 2 bytes plus one chunk's slice, never the
    whole tensor. ``probes.fit_probes`` accepts it in place of the tensor (its streaming mode)."""

    def __init__(self, cache: ActivationCache, rows: list[int] | None = None):
        self.cache = cache
        self.rows = torch.arange(cache.num_prompts) if rows is None else torch.as_tensor(list(rows), dtype=torch.long)
        if self.rows.numel() and (int(self.rows.min()) < 0 or int(self.rows.max()) >= cache.num_prompts):
            raise ITIError(f"rows outside the {cache.num_prompts} prompts of {cache.path}")
        self.shape = (len(self.rows),) + cache.shape

    def read_layers(self, start: int, stop: int) -> torch.Tensor:
        out = torch.empty((len(self.rows), stop - start) + self.cache.shape[1:], dtype=torch.float16)
        for i in range(self.cache.num_chunks):
            span = self.cache.chunk_rows(i)
            wanted = ((self.rows >= span.start) & (self.rows < span.stop)).nonzero().flatten()
            if wanted.numel():
                out[wanted] = self.cache.read_chunk_layers(i, start, stop)[self.rows[wanted] - span.start]
        return out

    def head_activations(self, heads: torch.Tensor, rows=None) -> torch.Tensor:
        """float32 [n, K, d] of the (layer, head) pairs ``heads`` (rows of this view, or ``rows`` of them), read one
        layer at a time (select.head_activations for a streaming view)."""
        import numpy as np

        picked = torch.arange(len(self.rows)) if rows is None else torch.as_tensor(np.asarray(rows, dtype=np.int64))
        out = torch.empty((len(picked), len(heads), self.cache.shape[-1]), dtype=torch.float32)
        for layer in sorted(set(heads[:, 0].tolist())):
            columns = (heads[:, 0] == layer).nonzero().flatten()
            block = self.read_layers(layer, layer + 1)[picked, 0]  # [n, H, d]
            out[:, columns] = block[:, heads[columns, 1]].float()
        return out


def cache_meta(model: nn.Module, token_lists: list[list[int]], chunk_size: int, identity: str) -> dict:
    """What a cache entry records and is checked against: model identity, prompt token ids, dtype, shape, size."""
    shape = model_shape(model)
    return {"layout": LAYOUT_VERSION, "model_identity": identity, "tokens_sha256": tokens_sha256(token_lists),
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""), "site": "attn_out_proj_input",
            "shape": [shape.num_layers, shape.num_heads, shape.head_dim], "num_prompts": len(token_lists),
            "chunk_size": int(chunk_size)}


def _batches(token_lists: list[list[int]], rows: range, batch_size: int) -> list[list[int]]:
    """Row indices of ``rows`` in length-sorted batches (less padding); the order is fixed for a given chunk."""
    order = sorted(rows, key=lambda r: (-len(token_lists[r]), r))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def collect_activations(model: nn.Module, tokenizer, prompts: list[str], *, add_special_tokens: bool = True,
                        batch_size: int = 16, chunk_size: int = 512, cache_dir: str | os.PathLike | None = None,
                        use_cache: bool = True, model_name: str | None = None, revision: str | None = None,
                        identity: str | None = None, progress: bool = True, desc: str = "activations",
                        stats: CollectStats | None = None, token_lists: list[list[int]] | None = None,
                        rows: list[int] | None = None, collect_all: bool = False,
                        stream: bool = False) -> "torch.Tensor | CachedActivations":
    """fp16 [N, layers, heads, head_dim]: out-projection inputs at each prompt's last token, from the cache if there.

    ``rows`` (optional): the only prompts the caller will use; the result then holds those rows, in that order. They
    are collected as a prompt set of their own (their own cache entry), unless a complete cache entry of the whole
    set exists (then it is read) or ``collect_all`` asks for the whole set to be collected and cached anyway (for
    callers that will need the other rows later, e.g. the other folds of ``validate``).
    ``stats`` (optional) is filled in: ``forward_passes`` counts the model calls made now (0 when all chunks were cached).
    ``stream``: return a ``CachedActivations`` view of the cache instead of the tensor (nothing but one chunk is held
    in memory; needs the cache).
    """
    if batch_size < 1 or chunk_size < 1:
        raise ITIError(f"batch_size={batch_size} and chunk_size={chunk_size} must be positive")
    stats = stats if stats is not None else CollectStats()
    if stream and not use_cache:
        raise ITIError("streaming activations (probe_memory='stream') reads them from the activation cache: do not "
                       "disable it")
    if not (token_lists if token_lists is not None else prompts):
        raise ITIError("no prompts to collect activations for")
    tokens = token_lists if token_lists is not None else tokenize_prompts(tokenizer, prompts, add_special_tokens)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    ident = identity or model_identity(model, model_name, revision, root if use_cache else None)
    common = dict(batch_size=batch_size, chunk_size=chunk_size, root=root, use_cache=use_cache, identity=ident,
                  progress=progress, desc=desc, stats=stats, stream=stream)
    rows = None if rows is None else [int(r) for r in rows]
    if rows is None or rows == list(range(len(tokens))):
        return _collect(model, tokenizer, tokens, **common)
    if not rows:
        raise ITIError("no prompts to collect activations for")
    if collect_all:
        collected = _collect(model, tokenizer, tokens, **common)
        return collected.cache.layers(rows) if stream else collected[rows]
    whole = _complete_entry(model, tokens, chunk_size, root, ident) if use_cache else None
    if whole is not None:
        if stream:
            stats.prompts += len(rows)
            stats.chunks_cached += whole.num_chunks
            stats.model_identity, stats.cache_path = ident, str(whole.path)
            return whole.layers(rows)
        started = time.perf_counter()
        acts = whole.load()
        stats.prompts += len(rows)
        stats.chunks_cached += whole.num_chunks
        stats.model_identity, stats.cache_path = ident, str(whole.path)
        stats.seconds += time.perf_counter() - started
        return acts[rows]
    return _collect(model, tokenizer, [tokens[r] for r in rows], **common)


def _complete_entry(model: nn.Module, tokens: list[list[int]], chunk_size: int, root: Path,
                    identity: str) -> "ActivationCache | None":
    """The cache entry of exactly these prompts if it exists with every chunk written; never creates one."""
    meta = cache_meta(model, tokens, chunk_size, identity)
    if not (ActivationCache.entry_path(root, meta) / "meta.json").is_file():
        return None
    cache = ActivationCache.open(root, meta)
    return cache if all(cache.has_chunk(i) for i in range(cache.num_chunks)) else None


def _collect(model: nn.Module, tokenizer, tokens: list[list[int]], *, batch_size: int, chunk_size: int, root: Path,
             use_cache: bool, identity: str, progress: bool, desc: str, stats: CollectStats,
             stream: bool = False) -> "torch.Tensor | CachedActivations":
    """Every prompt of ``tokens``: cached chunks are read, the others computed (and written when ``use_cache``)."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    shape = model_shape(model)
    projections = out_projections(model)
    n = len(tokens)
    pad_id = getattr(tokenizer, "pad_token_id", None)
    pad_id = int(pad_id if pad_id is not None else (getattr(tokenizer, "eos_token_id", None) or 0))
    meta = cache_meta(model, tokens, chunk_size, identity)
    ident = meta["model_identity"]
    cache = ActivationCache.open(root, meta) if use_cache else None
    chunking = cache.chunk_size if cache else chunk_size
    num_chunks = (n + chunking - 1) // chunking
    # streaming: nothing is assembled in memory (every chunk is on disk; the caller reads the layers it needs)
    out = None if stream else torch.empty((n, shape.num_layers, shape.num_heads, shape.head_dim), dtype=torch.float16)
    stats.prompts += n
    stats.model_identity = ident
    stats.cache_path = str(cache.path) if cache else ""
    todo = []
    for i in range(num_chunks):
        rows = range(i * chunking, min((i + 1) * chunking, n))
        if cache is not None and cache.has_chunk(i):
            if out is not None:
                out[rows.start:rows.stop] = cache.read_chunk(i)  # checked finite on read
            stats.chunks_cached += 1
        else:
            todo.append((i, rows))
    others = []  # under accelerate launch: missing chunks other ranks compute, read back once all are written
    if distributed.world_size() > 1:
        if cache is None:
            raise ITIError("data-parallel collection (accelerate launch with several processes) shares chunks through "
                           "the activation cache: do not disable it (--no-cache / use_cache=False)")
        distributed.barrier()  # every rank has listed the missing chunks before any rank writes one
        mine = distributed.my_share(todo)
        others = [item for item in todo if item not in mine]
        todo = mine
    pending = sum(len(rows) for _, rows in todo)
    was_training = model.training
    model.eval()
    try:
        with tqdm(total=pending, desc=desc, unit="prompt",
                  disable=not progress or pending == 0 or not distributed.is_main_process()) as bar:
            for i, rows in todo:
                chunk = torch.empty((len(rows), shape.num_layers, shape.num_heads * shape.head_dim), dtype=torch.float16)
                for batch in _batches(tokens, rows, batch_size):
                    acts = last_token_activations(model, [tokens[r] for r in batch], pad_id, projections)
                    chunk[torch.tensor(batch) - rows.start] = acts.to(torch.float16)
                    stats.forward_passes += 1
                    stats.prompts_forwarded += len(batch)
                    bar.update(len(batch))
                chunk = chunk.view(len(rows), shape.num_layers, shape.num_heads, shape.head_dim)
                _finite(chunk)  # before it is cached: a cache never holds a chunk the fit would refuse
                if cache is not None:
                    cache.write_chunk(i, chunk)
                if out is not None:
                    out[rows.start:rows.stop] = chunk
                stats.chunks_computed += 1
    finally:
        model.train(was_training)
    if distributed.world_size() > 1:
        distributed.barrier()  # every rank has written its chunks
        for i, rows in others:
            if out is not None:
                out[rows.start:rows.stop] = cache.read_chunk(i)  # checked finite on read
            stats.chunks_by_other_ranks += 1
    stats.seconds += time.perf_counter() - started
    return cache.layers() if out is None else out


LAYER_HASHES = "layer_sha256"  # safetensors metadata: a JSON list, one sha256 per layer of the chunk


def _layer_sha256(block: torch.Tensor) -> str:
    return hashlib.sha256(block.contiguous().numpy().tobytes()).hexdigest()


def _stored_layer_hashes(path: Path) -> list[str] | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(LAYER_HASHES)
        hashes = json.loads(raw) if raw else None
    except Exception:  # unreadable header: read_chunk names the file when it is read
        return None
    return hashes if isinstance(hashes, list) else None


def _finite(chunk: torch.Tensor) -> torch.Tensor:
    """The chunk, checked chunk by chunk (a check of the whole [N, L, H, d] tensor would need N x P bytes more)."""
    if not torch.isfinite(chunk).all():
        raise ITIError(NONFINITE)
    return chunk
