"""The directions file: what fit-directions writes and hf-iti reads (safetensors, never a pickle).

Tensors, for every intervened layer L:
  ``layers.{L}.heads`` int64 [k], ``layers.{L}.directions`` float32 [k, head_dim] (unit rows),
  ``layers.{L}.sigma`` float32 [k] (> 0);
optional ``probe_accuracy`` float32 [num_layers, num_heads] and ``head_rank`` int64 [K, 2] ((layer, head), best first).
String metadata: ``format``, ``format_version``, ``model``, ``model_revision``, ``architecture``, ``num_layers``,
``num_heads``, ``head_dim``, ``site``, ``alpha``, ``method`` and the fit's provenance.

The shift for head h of layer L at strength alpha is ``alpha * sigma * direction``, added to the slice
``[h*head_dim, (h+1)*head_dim)`` of the input of that layer's attention output projection.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .architectures import ModelShape, model_shape
from .atomic import atomic_path
from .errors import ITIError
from .options import DEFAULT_ALPHA, default_of

FORMAT = "lm-eval-iti/directions"
FORMAT_VERSION = "1"
SITE = "attn_out_proj_input"
UNIT_NORM_TOLERANCE = 1e-3
REQUIRED_METADATA = ("format", "format_version", "num_layers", "num_heads", "head_dim", "site", "alpha", "method")
_LAYER_KEY = re.compile(r"layers\.([0-9]+)\.(heads|directions|sigma)")  # used with fullmatch


class ReadOnlyDict(dict):
    """A dict that refuses changes (the mappings of a frozen Directions); it copies and pickles as its contents."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("Directions are immutable: use dataclasses.replace, with_alpha or top_k for a changed copy")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = __ior__ = _refuse

    def __reduce__(self):
        return ReadOnlyDict, (dict(self),)

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        import copy

        return ReadOnlyDict(copy.deepcopy(dict(self), memo))


PROVENANCE_KEYS = ("model", "model_revision", "model_identity", "model_fingerprint", "dataset", "dataset_sha256",
                   "num_folds", "fold", "seed", "contiguous_folds", "max_questions", "num_questions",
                   "train_question_ids", "train_question_ids_sha256", "package", "package_version")


@dataclass(frozen=True)
class Directions:
    """Per-layer head indices, unit directions and sigmas, the strength ``alpha`` and the file's metadata.

    Immutable: ``with_alpha``, ``top_k`` and ``dataclasses.replace`` return new objects; ``metadata`` (string
    fields, read-only) is written to the file as is, with ``alpha`` added by ``save`` (the one place a number becomes
    text). ``alpha`` defaults to the metadata's (a file's), else 15.
    """

    num_layers: int
    num_heads: int
    head_dim: int
    heads: Mapping[int, torch.Tensor]
    directions: Mapping[int, torch.Tensor]
    sigma: Mapping[int, torch.Tensor]
    metadata: Mapping[str, str] = field(default_factory=dict)
    probe_accuracy: torch.Tensor | None = None
    head_rank: torch.Tensor | None = None
    source: str = "<memory>"
    alpha: float | None = None

    def __post_init__(self):
        meta = dict(self.metadata)
        text = meta.pop("alpha", None)
        alpha = self.alpha if self.alpha is not None else DEFAULT_ALPHA if text is None else _parse_alpha(self.source, text)
        # objects built in memory get the format fields a saved file carries
        for key, value in (("format", FORMAT), ("format_version", FORMAT_VERSION), ("site", SITE),
                           ("num_layers", self.num_layers), ("num_heads", self.num_heads),
                           ("head_dim", self.head_dim), ("method", "unknown")):
            meta.setdefault(key, str(value))
        set_field = object.__setattr__  # frozen: the normalised values are set once, here
        set_field(self, "alpha", float(alpha))
        set_field(self, "metadata", ReadOnlyDict(meta))
        for name in ("heads", "directions", "sigma"):
            set_field(self, name, ReadOnlyDict(getattr(self, name)))

    @property
    def provenance(self) -> dict[str, str]:
        """Where the directions come from: the model, the data and its sha256, the folds and the training question
        ids (what the leak guard checks)."""
        return {key: self.metadata[key] for key in PROVENANCE_KEYS if key in self.metadata}

    def with_alpha(self, alpha: float) -> "Directions":
        """The same directions at another default strength."""
        from .model_args import check_alpha_value

        return replace(self, alpha=check_alpha_value(float(alpha)))

    @property
    def num_selected(self) -> int:
        return sum(int(h.numel()) for h in self.heads.values())

    def selected_heads(self) -> list[tuple[int, int]]:
        """(layer, head) pairs in head_rank order when known, else by layer then head."""
        chosen = {(layer, int(h)) for layer, hs in self.heads.items() for h in hs.tolist()}
        if self.head_rank is not None:
            ranked = [(int(l), int(h)) for l, h in self.head_rank.tolist() if (int(l), int(h)) in chosen]
            if len(ranked) == len(chosen):
                return ranked
        return sorted(chosen)

    def top_k(self, k: int) -> "Directions":
        """Keep only the file's k best heads by ``head_rank``."""
        if k <= 0:
            raise ITIError(f"{self.source}: heads={k} must be a positive number of heads")
        if k > self.num_selected:
            raise ITIError(f"{self.source}: heads={k} asked for, but the file holds only {self.num_selected} heads")
        if self.head_rank is None:
            raise ITIError(f"{self.source}: heads={k} needs the optional 'head_rank' tensor, which this file lacks")
        keep = set(self.selected_heads()[:k])
        heads, dirs, sig = {}, {}, {}
        for layer in sorted(self.heads):
            rows = [i for i, h in enumerate(self.heads[layer].tolist()) if (layer, h) in keep]
            if rows:
                idx = torch.tensor(rows, dtype=torch.long)
                heads[layer] = self.heads[layer][idx]
                dirs[layer] = self.directions[layer][idx]
                sig[layer] = self.sigma[layer][idx]
        return replace(self, heads=heads, directions=dirs, sigma=sig)

    # the public API: save, load, check against a model, apply -----------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Validate, then write the safetensors file atomically."""
        return save_directions(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, model=None) -> "Directions":
        """Read and validate a directions file; with ``model``, also check it fits that model's attention geometry."""
        d = load_directions(path)
        return d.check(model) if model is not None else d

    def check(self, model) -> "Directions":
        """Raise one ITIError line unless these directions fit ``model`` (layers, heads, head_dim)."""
        return validate(self, model_shape(model))

    def apply(self, model, alpha: float | None = None, *, positions: str = "all",
              gen_positions: str = default_of("gen_positions")):
        """Context manager that steers ``model``: ``alpha * sigma * direction`` added to each selected head.

        ``positions``: what a plain forward edits (``all`` or ``last``); ``gen_positions``: what each
        ``model.generate`` call edits (``last``, hf-iti's default and ITI's convention: the last prompt position and
        every generated token; ``all``; ``generated``). ``alpha`` defaults to the file's. The hooks are removed on exit, also after
        an exception; applying to a model that is already steered raises.
        """
        from .intervene import steer

        return steer(model, self, self.alpha if alpha is None else alpha, positions=positions,
                     gen_positions=gen_positions)

    def shift_vectors(self, alpha: float) -> dict[int, torch.Tensor]:
        """Per intervened layer, the float32 vector [num_heads*head_dim] added to the out-projection input."""
        out = {}
        for layer in sorted(self.heads):
            vec = torch.zeros(self.num_heads, self.head_dim, dtype=torch.float32)
            vec[self.heads[layer]] = alpha * self.sigma[layer].float()[:, None] * self.directions[layer].float()
            out[layer] = vec.reshape(-1)
        return out


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


MAX_GEOMETRY = 1 << 20  # layers, heads or head_dim beyond this are not a model's: a corrupt or hostile file


def one_line(text: str) -> str:
    """Text from a file (names, metadata values) made safe for a one-line message: control characters escaped."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(text))


def _fail(source, field_name, problem) -> ITIError:
    return ITIError(one_line(f"{source}: field '{field_name}': {problem}"))


def validate(d: Directions, expect: ModelShape | None = None) -> Directions:
    """Check a Directions object (and optionally its fit to a model); raise ITIError naming file and field."""
    src = d.source
    meta = d.metadata
    for key in REQUIRED_METADATA:
        if key not in meta and key != "alpha":  # in memory, alpha is a field
            raise _fail(src, f"__metadata__.{key}", "missing")
    if meta["format"] != FORMAT:
        raise _fail(src, "__metadata__.format", f"is {meta['format']!r}, expected {FORMAT!r}")
    if meta["format_version"] != FORMAT_VERSION:
        raise _fail(src, "__metadata__.format_version", f"is {meta['format_version']!r}; this version reads {FORMAT_VERSION!r}")
    if meta["site"] != SITE:
        raise _fail(src, "__metadata__.site", f"is {meta['site']!r}, expected {SITE!r}")
    if not math.isfinite(d.alpha):
        raise _fail(src, "__metadata__.alpha", "is not finite")
    if not d.heads:
        raise _fail(src, "layers", "the file intervenes on no layer")
    check_provenance(src, meta)
    if expect is not None:
        for name, have, want in (("num_layers", d.num_layers, expect.num_layers),
                                 ("num_heads", d.num_heads, expect.num_heads),
                                 ("head_dim", d.head_dim, expect.head_dim)):
            if have != want:
                theirs = f" (fitted for {meta.get('model') or 'another model'})"
                raise _fail(src, f"__metadata__.{name}", f"is {have} but the model{' ' + expect.model if expect.model else ''} has {want}{theirs}")
        arch = meta.get("architecture", "")
        if arch and expect.architecture and arch != expect.architecture:
            raise _fail(src, "__metadata__.architecture", f"is {arch!r} (fitted for {meta.get('model') or 'another model'}) "
                        f"but the model is {expect.architecture!r}")
    for layer in sorted(d.heads):
        base = f"layers.{layer}"
        if not 0 <= layer < d.num_layers:
            raise _fail(src, base, f"layer {layer} is outside 0..{d.num_layers - 1}")
        for part in ("directions", "sigma"):
            if layer not in getattr(d, part):
                raise _fail(src, f"{base}.{part}", "missing")
        heads, dirs, sig = d.heads[layer], d.directions[layer], d.sigma[layer]
        k = heads.numel()
        if heads.dim() != 1 or heads.dtype != torch.int64:
            raise _fail(src, f"{base}.heads", f"must be int64 [k], got {heads.dtype} {list(heads.shape)}")
        for part, tensor in (("directions", dirs), ("sigma", sig)):
            if tensor.dtype != torch.float32:
                raise _fail(src, f"{base}.{part}", f"must be float32, got {str(tensor.dtype).replace('torch.', '')}")
        if k == 0:
            raise _fail(src, f"{base}.heads", "is empty")
        if heads.min() < 0 or heads.max() >= d.num_heads:
            raise _fail(src, f"{base}.heads", f"has indices outside 0..{d.num_heads - 1}")
        if heads.unique().numel() != k:
            raise _fail(src, f"{base}.heads", "repeats a head")
        if tuple(dirs.shape) != (k, d.head_dim):
            raise _fail(src, f"{base}.directions", f"shape {list(dirs.shape)}, expected [{k}, {d.head_dim}]")
        if tuple(sig.shape) != (k,):
            raise _fail(src, f"{base}.sigma", f"shape {list(sig.shape)}, expected [{k}]")
        if not torch.isfinite(dirs).all():
            raise _fail(src, f"{base}.directions", "contains NaN or infinite values")
        if not torch.isfinite(sig).all():
            raise _fail(src, f"{base}.sigma", "contains NaN or infinite values")
        norms = dirs.double().norm(dim=1)
        if ((norms - 1).abs() > UNIT_NORM_TOLERANCE).any():
            raise _fail(src, f"{base}.directions", f"rows must have unit L2 norm (found {norms.min():.4g}..{norms.max():.4g})")
        if (sig <= 0).any():
            raise _fail(src, f"{base}.sigma", "must be > 0")
    if d.probe_accuracy is not None and d.probe_accuracy.dtype != torch.float32:
        raise _fail(src, "probe_accuracy", f"must be float32, got {str(d.probe_accuracy.dtype).replace('torch.', '')}")
    if d.probe_accuracy is not None and tuple(d.probe_accuracy.shape) != (d.num_layers, d.num_heads):
        raise _fail(src, "probe_accuracy", f"shape {list(d.probe_accuracy.shape)}, expected [{d.num_layers}, {d.num_heads}]")
    if d.head_rank is not None:
        hr = d.head_rank
        if hr.dim() != 2 or hr.shape[1] != 2 or hr.dtype != torch.int64:
            raise _fail(src, "head_rank", f"must be int64 [K, 2], got {str(hr.dtype).replace('torch.', '')} "
                        f"{list(hr.shape)}")
        if hr.numel() and (hr[:, 0].min() < 0 or hr[:, 0].max() >= d.num_layers or hr[:, 1].min() < 0 or hr[:, 1].max() >= d.num_heads):
            raise _fail(src, "head_rank", "has (layer, head) pairs outside the model")
    return d


def _int_field(src, meta: dict, key: str) -> int | None:
    text = meta.get(key, "")
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise _fail(src, f"__metadata__.{key}", f"{text[:40]!r} is not an integer") from None


def train_question_ids(d: Directions) -> list[str] | None:
    """The question ids the directions were fitted on (None when the file does not record them)."""
    raw = d.metadata.get("train_question_ids")
    return None if raw is None else json.loads(raw)


def check_provenance(src, meta: dict) -> None:
    """The fit's provenance fields must be well formed and agree with each other (the leak guard relies on them)."""
    num_folds, fold = _int_field(src, meta, "num_folds"), _int_field(src, meta, "fold")
    _int_field(src, meta, "seed")
    if (num_folds is None) != (fold is None):
        raise _fail(src, "__metadata__.fold", "num_folds and fold must be both set or both empty")
    if num_folds is not None and (num_folds < 2 or not 0 <= fold < num_folds):
        raise _fail(src, "__metadata__.fold", f"fold={fold} with num_folds={num_folds} is not a valid fold")
    if meta.get("contiguous_folds", "false") not in ("true", "false"):
        raise _fail(src, "__metadata__.contiguous_folds", "must be 'true' or 'false'")
    raw = meta.get("train_question_ids")
    digest = meta.get("train_question_ids_sha256")
    if raw is None:
        if digest is not None:
            raise _fail(src, "__metadata__.train_question_ids_sha256", "present without train_question_ids")
        return
    try:
        ids = json.loads(raw)
    except (ValueError, RecursionError):
        ids = None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise _fail(src, "__metadata__.train_question_ids", "is not a JSON list of question id strings")
    if len(set(ids)) != len(ids):
        raise _fail(src, "__metadata__.train_question_ids", "repeats a question id")
    if digest is not None and digest != hashlib.sha256(raw.encode("utf-8")).hexdigest():
        raise _fail(src, "__metadata__.train_question_ids_sha256", "does not match train_question_ids (edited file?)")


def _file_parts(d: Directions) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and string metadata a file holds, validated (the caller's object is left as it was)."""
    import dataclasses

    meta = {k: str(v) for k, v in d.metadata.items()}
    meta.update(alpha=repr(float(d.alpha)), format=FORMAT, format_version=FORMAT_VERSION, site=SITE, num_layers=str(d.num_layers),
                num_heads=str(d.num_heads), head_dim=str(d.head_dim))

    def float32(t):  # the file stores float32: in-memory floats (e.g. float64 from numpy) are cast on a copy
        return t.to(torch.float32) if t is not None and t.is_floating_point() else t

    d = dataclasses.replace(d, metadata=meta, directions={k: float32(t) for k, t in d.directions.items()},
                            sigma={k: float32(t) for k, t in d.sigma.items()}, probe_accuracy=float32(d.probe_accuracy))
    validate(d)
    tensors: dict[str, torch.Tensor] = {}
    for layer in sorted(d.heads):
        tensors[f"layers.{layer}.heads"] = d.heads[layer].to(torch.int64).contiguous()
        tensors[f"layers.{layer}.directions"] = d.directions[layer].to(torch.float32).contiguous()
        tensors[f"layers.{layer}.sigma"] = d.sigma[layer].to(torch.float32).contiguous()
    if d.probe_accuracy is not None:
        tensors["probe_accuracy"] = d.probe_accuracy.to(torch.float32).contiguous()
    if d.head_rank is not None:
        tensors["head_rank"] = d.head_rank.to(torch.int64).contiguous()
    return tensors, meta


def save_directions(d: Directions, path: str | os.PathLike) -> Path:
    """Validate, then write atomically (temp file, then rename)."""
    from safetensors.torch import save_file

    tensors, meta = _file_parts(d)
    target = Path(path)
    if _same_content(target, tensors, meta):
        return target  # keep the bytes: safetensors writes metadata in hash-map order, so a rewrite changes sha256
    with atomic_path(target, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return target


def _same_content(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> bool:
    """True when ``path`` already holds exactly these tensors and this metadata (a resumed run re-saving its fit)."""
    if not path.is_file():
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}) != meta or set(f.keys()) != set(tensors):
                return False
            for key, tensor in tensors.items():
                stored = f.get_tensor(key)
                if stored.dtype != tensor.dtype or not torch.equal(stored, tensor):
                    return False
            return True
    except Exception:  # unreadable or not safetensors: overwrite it
        return False


def load_directions(path: str | os.PathLike, expect: ModelShape | None = None) -> Directions:
    """Read and validate a directions file; every problem is an ITIError naming the file and the field."""
    from safetensors import safe_open

    p = Path(path)
    src = str(p)
    if not p.is_file():
        raise ITIError(one_line(f"{src}: directions file not found"))
    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises several types for a corrupt header
        first = str(exc).splitlines()[0][:200] if str(exc).strip() else ""
        problem = f"not a readable safetensors directions file ({type(exc).__name__}: {first})"
        raise ITIError(one_line(f"{src}: {problem}")) from None
    if meta.get("format") != FORMAT:
        raise _fail(src, "__metadata__.format", f"is {meta.get('format')!r}, expected {FORMAT!r}: not an lm-eval-iti directions file")
    for key in REQUIRED_METADATA:  # before Directions() fills in-memory defaults (alpha 15, site, method)
        if key not in meta:
            raise _fail(src, f"__metadata__.{key}", "missing")
    ints = {}
    for key in ("num_layers", "num_heads", "head_dim"):
        try:
            ints[key] = int(meta[key])
        except (KeyError, ValueError):
            raise _fail(src, f"__metadata__.{key}", "missing or not an integer") from None
        if not 1 <= ints[key] <= MAX_GEOMETRY:
            raise _fail(src, f"__metadata__.{key}", f"{ints[key]} is not a plausible {key} (1..{MAX_GEOMETRY})")
    heads, dirs, sig = {}, {}, {}
    for key, tensor in tensors.items():
        m = _LAYER_KEY.fullmatch(key)
        if m and str(int(m.group(1))) != m.group(1):
            raise _fail(src, key, "layer number with leading zeros (it would alias another layer)")
        if m:
            {"heads": heads, "directions": dirs, "sigma": sig}[m.group(2)][int(m.group(1))] = tensor
        elif key not in ("probe_accuracy", "head_rank"):
            raise _fail(src, key, "unknown tensor")
    for layer in set(dirs) | set(sig):
        if layer not in heads:
            raise _fail(src, f"layers.{layer}.heads", "missing")
    d = Directions(ints["num_layers"], ints["num_heads"], ints["head_dim"], heads, dirs, sig, meta,
                   tensors.get("probe_accuracy"), tensors.get("head_rank"), src)
    return validate(d, expect)


def to_bytes(d: Directions) -> bytes:
    """The file's content as bytes (safetensors, metadata included): how accelerate ranks share a fit."""
    from safetensors.torch import save

    tensors, meta = _file_parts(d)
    return save(tensors, metadata=meta)


def from_bytes(data: bytes, source: str = "<bytes>") -> Directions:
    """``to_bytes``'s inverse: read and validated by ``load_directions``, as any file (safetensors, no pickle)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "directions.safetensors"
        path.write_bytes(data)
        return replace(load_directions(path), source=source)


def _parse_alpha(src, text) -> float:
    try:
        alpha = float(text)
    except (TypeError, ValueError):
        raise _fail(src, "__metadata__.alpha", f"{str(text)[:40]!r} is not a number") from None
    if not math.isfinite(alpha):
        raise _fail(src, "__metadata__.alpha", "is not finite")
    return alpha
