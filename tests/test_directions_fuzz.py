"""At scale: >= 1,000 generated malformed directions files through the loader, each must end in one ITIError line.

A seeded generator of our own (no hypothesis dependency) mutates a valid file of the tiny Llama's geometry (2 layers,
4 heads, head_dim 16): bytes (truncation, random bytes, bit flips), the safetensors header (length field, JSON,
offsets, dtypes, oversize), tensor dtypes and shapes, values (NaN/Inf, zero and non-unit rows, sigma <= 0), head
indices (out of range, repeated), layer keys, metadata (missing, contradictory, non-numeric) and another model's
geometry. Every case is loaded as hf-iti loads it (``expect`` = the model's shape); cases whose fault is not the
geometry are also loaded without ``expect`` (as the leak guard reads a file). Any other exception fails the test.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import random
import struct

import torch
from safetensors.torch import save as safetensors_bytes

from lm_eval_iti.artifact import FORMAT, FORMAT_VERSION, SITE, ModelShape, load_directions
from lm_eval_iti.errors import ITIError

SHAPE = ModelShape(2, 4, 16, "LlamaForCausalLM", "tiny")
NUM_CASES_PER_KIND = 70


def valid_parts(rng: random.Random) -> tuple[dict, dict]:
    """A valid file's tensors and metadata, with random heads and directions."""
    g = torch.Generator().manual_seed(rng.randrange(1 << 30))
    tensors = {}
    for layer in range(SHAPE.num_layers):
        k = rng.randint(1, SHAPE.num_heads)
        heads = sorted(rng.sample(range(SHAPE.num_heads), k))
        d = torch.randn(k, SHAPE.head_dim, generator=g)
        tensors[f"layers.{layer}.heads"] = torch.tensor(heads, dtype=torch.int64)
        tensors[f"layers.{layer}.directions"] = d / d.norm(dim=1, keepdim=True)
        tensors[f"layers.{layer}.sigma"] = torch.rand(k, generator=g) + 0.1
    tensors["probe_accuracy"] = torch.rand(SHAPE.num_layers, SHAPE.num_heads, generator=g)
    tensors["head_rank"] = torch.tensor([[l, h] for l in range(SHAPE.num_layers) for h in range(SHAPE.num_heads)])
    ids = json.dumps([f"{i:016x}" for i in range(rng.randint(0, 20))])
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "site": SITE, "num_layers": "2", "num_heads": "4",
            "head_dim": "16", "alpha": "15.0", "method": "mass-mean", "model": "tiny", "architecture":
            "LlamaForCausalLM", "seed": "42", "num_folds": "2", "fold": "0", "contiguous_folds": "false",
            "train_question_ids": ids, "train_question_ids_sha256": hashlib.sha256(ids.encode()).hexdigest()}
    return tensors, meta


def encode(tensors: dict, meta: dict) -> bytes:
    return safetensors_bytes({k: v.contiguous() for k, v in tensors.items()}, metadata=meta)


def raw_file(header: dict, data: bytes = b"", length: int | None = None) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def _layer_key(rng, tensors, part):
    return rng.choice([k for k in tensors if k.endswith("." + part)])


# ---- mutations: each returns the file's bytes and whether its fault is the geometry (then only with expect) ----
def bytes_truncated(rng):
    data = encode(*valid_parts(rng))
    return data[: rng.randrange(0, len(data) - 1)], False


def bytes_random(rng):
    return bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 7, 8, 9, 64, 512, 4096]))), False


def bytes_flipped_in_header(rng):
    data = bytearray(encode(*valid_parts(rng)))
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(0, header_end)
        data[i] = rng.choice([ord("{"), ord("}"), ord('"'), ord(","), 0, 0xFF, ord("9"), data[i] ^ 0x20])
    # a flip that still parses is a valid file with another value; add stray quotes until the header is no JSON.
    # (safetensors writes the metadata from a hash map, so the header's byte layout changes from process to process:
    # a single forced quote could land on a quote already there)
    while True:
        i = rng.randrange(9, header_end)
        if data[i] == ord('"'):
            continue
        data[i] = ord('"')
        try:
            json.loads(bytes(data[8:header_end]))
        except ValueError:
            return bytes(data), False


def header_length_wrong(rng):
    data = encode(*valid_parts(rng))
    true_length = struct.unpack("<Q", data[:8])[0]
    length = rng.choice([0, 1, true_length - 1, true_length + 1, len(data), len(data) * 2, 1 << 40, (1 << 64) - 1])
    return struct.pack("<Q", length) + data[8:], False


def header_oversized(rng):
    """A header length above safetensors' 100 MB limit (the declared length; the file itself stays small)."""
    header = {"__metadata__": valid_parts(rng)[1], "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    text = json.dumps(header).encode() + b" " * rng.randrange(0, 4096)
    return struct.pack("<Q", 100_000_001 + rng.randrange(1 << 20)) + text + b"\0" * 4, False


def header_not_an_object(rng):
    body = rng.choice([b"[]", b"null", b"42", b'"text"', b"{", b"{}}", b'{"a": }',
                       '{"\u00e9": 1}'.encode("latin-1")])
    return struct.pack("<Q", len(body)) + body, False


def header_bad_entries(rng):
    tensors, meta = valid_parts(rng)
    key = _layer_key(rng, tensors, rng.choice(["heads", "directions", "sigma"]))
    n = tensors[key].numel()
    entry = rng.choice([
        {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n + 4]},  # offsets past the data
        {"dtype": "F32", "shape": [n, 2], "data_offsets": [0, 4 * n]},  # shape and byte count disagree
        {"dtype": "Q7", "shape": [n], "data_offsets": [0, 4 * n]},  # unknown dtype
        {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [n], "data_offsets": [8, 4]},  # reversed
        {"dtype": "F32", "shape": [1 << 62, 1 << 62], "data_offsets": [0, 4]},  # overflowing shape
        {"dtype": "F32", "shape": [n]},  # no offsets
        "not an entry",
    ])
    header = {"__metadata__": meta, key: entry}
    if rng.random() < 0.5:
        header["__metadata__"] = rng.choice([{"format": 1}, ["format"], "meta", {"format": FORMAT, "alpha": None}])
    return raw_file(header, b"\0" * (4 * n)), False


def wrong_dtype(rng):
    tensors, meta = valid_parts(rng)
    part = rng.choice(["heads", "directions", "sigma", "probe_accuracy", "head_rank"])
    key = part if part in tensors else _layer_key(rng, tensors, part)
    choices = {"heads": [torch.int32, torch.int16, torch.float32, torch.uint8, torch.bool],
               "head_rank": [torch.int32, torch.float32, torch.float64]}.get(
        part, [torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.bool, torch.uint8,
               torch.float8_e4m3fn])
    tensors[key] = tensors[key].to(rng.choice(choices))
    return encode(tensors, meta), False


def wrong_shape(rng):
    tensors, meta = valid_parts(rng)
    part = rng.choice(["heads", "directions", "sigma", "probe_accuracy", "head_rank"])
    key = part if part in tensors else _layer_key(rng, tensors, part)
    t = tensors[key]
    k = t.shape[0]
    dim = SHAPE.head_dim
    shape = rng.choice({
        "heads": [(1, k), (), (0,)],
        "directions": [(k, dim - 1), (k + 1, dim), (k,), (1, k, dim), (k, dim + 1), (0, dim)],
        "sigma": [(k + 1,), (k, 1), (), (0,)],
        "probe_accuracy": [(SHAPE.num_heads, SHAPE.num_layers + 1), (SHAPE.num_layers, SHAPE.num_heads + 1),
                           (SHAPE.num_layers * SHAPE.num_heads,), (1, SHAPE.num_layers, SHAPE.num_heads)],
        "head_rank": [(k, 3), (k,), (2 * k, 1), (k, 2, 1)],
    }[part])
    if t.is_floating_point():
        new = torch.rand(shape) + 0.5
        if part == "directions" and len(shape) == 2 and shape[0]:
            new = new / new.norm(dim=1, keepdim=True)
    else:
        new = torch.zeros(shape, dtype=t.dtype)
    tensors[key] = new.to(t.dtype)
    return encode(tensors, meta), False


def bad_values(rng):
    tensors, meta = valid_parts(rng)
    part = rng.choice(["directions", "sigma"])
    key = _layer_key(rng, tensors, part)
    t = tensors[key].clone()
    flat = t.reshape(-1)
    flat[rng.randrange(flat.numel())] = rng.choice([math.nan, math.inf, -math.inf])
    tensors[key] = t
    return encode(tensors, meta), False


def bad_rows(rng):
    tensors, meta = valid_parts(rng)
    key = _layer_key(rng, tensors, "directions")
    t = tensors[key].clone()
    row = rng.randrange(t.shape[0])
    t[row] = t[row] * rng.choice([0.0, 0.5, 1.01, 2.0, 1e6, 1e-6, -0.9]) if rng.random() < 0.9 else 0.0
    tensors[key] = t
    return encode(tensors, meta), False


def bad_sigma(rng):
    tensors, meta = valid_parts(rng)
    key = _layer_key(rng, tensors, "sigma")
    t = tensors[key].clone()
    t[rng.randrange(t.numel())] = rng.choice([0.0, -0.0, -1.0, -1e-30, -1e30])
    tensors[key] = t
    return encode(tensors, meta), False


def bad_heads(rng):
    tensors, meta = valid_parts(rng)
    key = _layer_key(rng, tensors, "heads")
    t = tensors[key].clone()
    if rng.random() < 0.5 and t.numel() > 1:
        t[rng.randrange(1, t.numel())] = t[0]  # a repeated head
    else:
        t[rng.randrange(t.numel())] = rng.choice([-1, SHAPE.num_heads, SHAPE.num_heads + 7, -(1 << 62), (1 << 62)])
    tensors[key] = t
    return encode(tensors, meta), False


def bad_layers(rng):
    tensors, meta = valid_parts(rng)
    layer = rng.randrange(SHAPE.num_layers)
    parts = {p: tensors.pop(f"layers.{layer}.{p}") for p in ("heads", "directions", "sigma")}
    fault = rng.choice(["out of range", "leading zero", "missing part", "unknown tensor", "no layer", "newline"])
    if fault == "out of range":
        new = str(rng.choice([SHAPE.num_layers, SHAPE.num_layers + 5, 10 ** 25]))
    elif fault == "leading zero":
        new = "0" + str(layer)
        if rng.random() < 0.5:  # and an alias of another layer
            tensors.update({f"layers.{layer}.{p}": v.clone() for p, v in parts.items()})
    elif fault == "newline":
        new = f"{layer}\n"
    else:
        new = str(layer)
    if fault == "missing part":
        parts.pop(rng.choice(["heads", "directions", "sigma"]))
    if fault == "no layer":
        tensors = {k: v for k, v in tensors.items() if not k.startswith("layers.")}
        parts = {}
    for p, v in parts.items():
        tensors[f"layers.{new}.{p}"] = v
    if fault == "unknown tensor":
        tensors[rng.choice(["layers.0.bias", "extra", "layers.x.heads", "layers.1.heads.extra"])] = torch.zeros(1)
    return encode(tensors, meta), False


def bad_metadata(rng):
    tensors, meta = valid_parts(rng)
    fault = rng.randrange(6)
    if fault == 0:
        meta.pop(rng.choice(["format", "format_version", "site", "num_layers", "num_heads", "head_dim", "alpha",
                             "method"]))
    elif fault == 1:
        key = rng.choice(["format", "format_version", "site"])
        meta[key] = rng.choice(["", "other", meta[key] + "x", "lm-eval-iti/directions\n2", "2"])
    elif fault == 2:
        meta["alpha"] = rng.choice(["", "nan", "inf", "-inf", "1e999", "fifteen", "15,0", "0x10"])
    elif fault == 3:
        key = rng.choice(["num_layers", "num_heads", "head_dim"])
        meta[key] = rng.choice(["", "two", "2.0", "-2", "0", str(10 ** 30), "9" * 400, "1e3"])
    elif fault == 4:  # contradictory fit provenance
        case = rng.randrange(6)
        if case == 0:
            meta["fold"] = rng.choice(["2", "5", "-1"])
        elif case == 1:
            meta["num_folds"] = rng.choice(["", "1", "0"])
            if meta["num_folds"] == "":
                meta["fold"] = "0"
        elif case == 2:
            meta["train_question_ids_sha256"] = "0" * 64
        elif case == 3:
            meta["train_question_ids"] = rng.choice(["", "{", "{}", "[1, 2]", '["a", "a"]', "null", "[" * 5000])
            meta.pop("train_question_ids_sha256")
        elif case == 4:
            meta.pop("train_question_ids")
        else:
            meta[rng.choice(["seed", "contiguous_folds"])] = rng.choice(["x", "1.5", "yes"])
    else:
        meta["model"] = "line one\nline two"  # an unprintable value must not break the one line
        meta["num_heads"] = "3"
    return encode(tensors, meta), False


def other_geometry(rng):
    tensors, meta = valid_parts(rng)
    fault = rng.randrange(3)
    if fault == 0:  # another model's file, consistent in itself
        layers, heads, dim = rng.choice([(3, 4, 16), (2, 8, 8), (2, 4, 32), (30, 9, 64)])
        tensors = {}
        for layer in range(layers):
            d = torch.randn(1, dim)
            tensors[f"layers.{layer}.heads"] = torch.tensor([heads - 1])
            tensors[f"layers.{layer}.directions"] = d / d.norm()
            tensors[f"layers.{layer}.sigma"] = torch.ones(1)
        meta.update(num_layers=str(layers), num_heads=str(heads), head_dim=str(dim), model="some/other-model")
    elif fault == 1:
        meta["architecture"] = rng.choice(["GPT2LMHeadModel", "Qwen2ForCausalLM"])
    else:
        key = rng.choice(["num_layers", "num_heads", "head_dim"])
        meta[key] = str(int(meta[key]) * 2)  # the metadata claims a bigger model than the tensors hold
        return encode(tensors, meta), key != "num_layers"  # a larger num_layers alone is consistent in itself
    return encode(tensors, meta), True


MUTATIONS = [bytes_truncated, bytes_random, bytes_flipped_in_header, header_length_wrong, header_oversized,
             header_not_an_object, header_bad_entries, wrong_dtype, wrong_shape, bad_values, bad_rows, bad_sigma,
             bad_heads, bad_layers, bad_metadata, other_geometry]


def test_valid_base_files_load(tmp_path):
    _TMP.update(dir=tmp_path, n=0)
    rng = random.Random(0)
    for _ in range(20):
        tensors, meta = valid_parts(rng)
        load_directions(_write(tensors, meta), expect=SHAPE)


_TMP = {}


def _write(tensors_or_bytes, meta=None):
    path = _TMP["dir"] / f"case{_TMP.setdefault('n', 0)}.safetensors"
    _TMP["n"] += 1
    data = tensors_or_bytes if isinstance(tensors_or_bytes, bytes) else encode(tensors_or_bytes, meta)
    path.write_bytes(data)
    return path


def test_generated_malformed_files_each_end_in_one_itierror_line(tmp_path, capsys):
    _TMP.update(dir=tmp_path, n=0)
    rng = random.Random(12)
    counts, messages = collections.Counter(), collections.Counter()
    for mutation in MUTATIONS:
        for _ in range(NUM_CASES_PER_KIND):
            data, geometry_only = mutation(rng)
            path = _write(data)
            for expect in ((SHAPE,) if geometry_only else (SHAPE, None)):
                try:
                    load_directions(path, expect=expect)
                except ITIError as exc:
                    message = str(exc)
                    assert message and "\n" not in message and "\r" not in message, (mutation.__name__, message)
                    assert message.isprintable(), (mutation.__name__, message)
                    assert str(path) in message, (mutation.__name__, message)
                    messages[message.split(": ", 2)[1][:40]] += 1
                else:
                    raise AssertionError(f"{mutation.__name__}: {path} loaded (expect={expect}) but is malformed")
            counts[mutation.__name__] += 1
            path.unlink()
    total = sum(counts.values())
    assert total >= 1000
    with capsys.disabled():
        print(f"\nmalformed directions files: {total} cases, every one a one-line ITIError "
              f"({', '.join(f'{k} {v}' for k, v in counts.items())}); {len(messages)} distinct error kinds")
