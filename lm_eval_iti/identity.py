"""Which model a directions file was fitted on, beyond its shape: a fingerprint of the configuration and a fixed
sample of the input-embedding weights, recorded at fit time and compared wherever directions meet a model.

Two models of the same architecture and size (another fine-tune, another seed) have the same geometry, so the shape
check passes; their embedding samples are unrelated (cosine near 0). The same weights loaded in another dtype keep a
cosine near 1 (SmolLM2 float32 vs bfloat16: 0.999999); bitsandbytes leaves embeddings unquantized."""

from __future__ import annotations

import json
import logging

import torch

from .errors import ITIError

FINGERPRINT_KEY = "model_fingerprint"
SAMPLE_ROWS = 16
SAMPLE_COLUMNS = 16
SAME_WEIGHTS_COSINE = 0.95  # dtype rounding stays above 0.9999 (measured); unrelated weights near 0
_CONFIG_FIELDS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers")

log = logging.getLogger(__name__)


def _evenly(count: int, size: int) -> list[int]:
    return sorted({min(size - 1, (i * size) // count) for i in range(count)})


def model_fingerprint(model) -> dict:
    """The configuration fields that name a model family and size, and 256 embedding weights at fixed positions."""
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    fields = {name: getattr(text_config, name, None) for name in _CONFIG_FIELDS}
    weight = model.get_input_embeddings().weight
    rows, cols = _evenly(SAMPLE_ROWS, weight.shape[0]), _evenly(SAMPLE_COLUMNS, weight.shape[1])
    if weight.device.type == "meta":  # offloaded by accelerate: no values to read
        sample = []
    else:
        block = weight.detach()[rows][:, cols].to(device="cpu", dtype=torch.float32)
        sample = [float(f"{v:.5g}") for v in block.reshape(-1).tolist()]
    return {**fields, "embedding_rows": rows, "embedding_columns": cols, "embedding_sample": sample}


def fingerprint_metadata(model) -> str:
    return json.dumps(model_fingerprint(model), sort_keys=True)


def _cosine(a: list[float], b: list[float]) -> float:
    x, y = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    if float(x.norm()) == 0.0 or float(y.norm()) == 0.0:
        return 1.0 if torch.equal(x, y) else 0.0
    return float(x @ y) / float(x.norm() * y.norm())


def compare(recorded: dict, model) -> str | None:
    """None when ``model`` matches the recorded fingerprint, else one phrase saying what differs."""
    found = model_fingerprint(model)
    for name in _CONFIG_FIELDS:
        if recorded.get(name) is not None and found.get(name) is not None and recorded[name] != found[name]:
            return f"{name} is {found[name]!r}, the directions were fitted on {recorded[name]!r}"
    same_positions = (recorded.get("embedding_rows") == found["embedding_rows"]
                      and recorded.get("embedding_columns") == found["embedding_columns"])
    if same_positions and recorded.get("embedding_sample") and found["embedding_sample"]:
        cosine = _cosine(recorded["embedding_sample"], found["embedding_sample"])
        if cosine < SAME_WEIGHTS_COSINE:
            return (f"its embedding weights differ from the fitted model's (cosine {cosine:.2f} of a fixed sample; "
                    f"the same weights give > {SAME_WEIGHTS_COSINE})")
    return None


def check_model_identity(directions, model, allow_mismatch: bool = False,
                         override: str = "--allow-model-mismatch") -> str:
    """'match', 'unrecorded' (an older file: warned once) or 'mismatch allowed'; a mismatch raises one line unless
    ``allow_mismatch`` (the caller records that it was allowed); ``override``: how the caller's user asks for that."""
    raw = directions.metadata.get(FINGERPRINT_KEY, "")
    if not raw:
        log.warning("lm-eval-iti: %s records no model fingerprint (fitted by an older version): cannot check that it "
                    "was fitted on this model", directions.source)
        return "unrecorded"
    try:
        recorded = json.loads(raw)
    except ValueError:
        raise ITIError(f"{directions.source}: field '__metadata__.{FINGERPRINT_KEY}': not valid JSON") from None
    if not isinstance(recorded, dict):
        raise ITIError(f"{directions.source}: field '__metadata__.{FINGERPRINT_KEY}': not a JSON object")
    problem = compare(recorded, model)
    if problem is None:
        return "match"
    fitted = directions.metadata.get("model") or "another model"
    if allow_mismatch:
        log.warning("lm-eval-iti: %s was fitted on %s and %s; going on as asked (allow_model_mismatch)",
                    directions.source, fitted, problem)
        return "mismatch allowed"
    raise ITIError(f"{directions.source} was fitted on {fitted}, not on this model: {problem}; {override} steers "
                   "with it anyway")
