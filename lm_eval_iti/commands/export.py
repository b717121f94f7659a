"""``lm-eval-iti export`` and ``lm-eval-iti bake``."""

from __future__ import annotations

import click

from ..choices import DTYPES, EXPORT_FORMATS
from ..cli_types import Alpha, Count, check_output_dir, check_output_file, renamed
from .placement import placement_options

WEIGHT_DTYPES = tuple(d for d in DTYPES if d != "auto")  # a file's dtype must be named


ALLOW_MISMATCH = click.option("--allow-model-mismatch", is_flag=True,
                              help="Use directions fitted on another model of the same shape (refused otherwise).")


def _load(model_id, directions_path, dtype, revision, gguf_file=None, device_map=None, max_memory=None,
          offload_folder=None, allow_mismatch=False):
    from ..architectures import model_shape
    from ..artifact import load_directions
    from ..identity import check_model_identity
    from ..loading import load_model

    model, tokenizer = load_model(model_id, revision=revision, dtype=dtype, device=None if device_map else "cpu",
                                  progress=False, gguf_file=gguf_file, device_map=device_map, max_memory=max_memory,
                                  offload_folder=offload_folder)
    directions = load_directions(directions_path, expect=model_shape(model))
    model_check = check_model_identity(directions, model, allow_mismatch)
    return model, tokenizer, directions, model_check


def _alpha(alpha, directions):
    return directions.alpha if alpha is None else alpha


@click.command()
@click.option("--model", "model_id", required=True, help="Model the directions were fitted on: folder, hub id, .gguf or a named model.")
@click.option("--gguf-file", default=None, help="GGUF file inside the --model folder (transformers dequantizes it).")
@click.option("--directions", required=True, type=click.Path(dir_okay=False), help="Directions .safetensors file.")
@click.option("--to", "target", type=click.Choice(EXPORT_FORMATS), default="steered", show_default=True,
              help="Export format: the .pt that lm-eval's own `steered` model reads.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .pt file.")
@click.option("--alpha", type=Alpha(), default=None, help="Strength (default: the file's alpha).")
@click.option("--num-heads", "num_heads", type=Count(1), default=None, help="Use only the file's top-K heads.")
@renamed("--heads", "--num-heads", Count(1))
@click.option("--dtype", type=click.Choice(WEIGHT_DTYPES), default="float32", show_default=True)
@click.option("--revision", default=None)
@ALLOW_MISMATCH
@placement_options
def export(model_id, gguf_file, directions, target, out, alpha, num_heads, dtype, revision, allow_model_mismatch,
           device_map, max_memory, offload_folder):
    """Export W_o·(alpha·sigma·direction) per layer for `lm_eval --model steered` (edits every position)."""
    from ..errors import ITIError
    from ..export import export_steered

    if not str(out).endswith((".pt", ".pth")):  # before loading the model: fail fast
        raise ITIError(f"{out}: lm-eval's steered model reads .pt or .pth files; name the output *.pt")
    check_output_file(out)
    model, _, d, _ = _load(model_id, directions, dtype, revision, gguf_file, device_map, max_memory, offload_folder,
                        allow_model_mismatch)
    d = d.top_k(num_heads) if num_heads else d
    path = export_steered(model, d, _alpha(alpha, d), out)
    click.echo(f"wrote {path}: use --model steered --model_args pretrained={model_id},steer_path={path}")


@click.command()
@click.option("--model", "model_id", required=True, help="Model the directions were fitted on: folder, hub id, .gguf or a named model.")
@click.option("--gguf-file", default=None, help="GGUF file inside the --model folder (transformers dequantizes it).")
@click.option("--directions", required=True, type=click.Path(dir_okay=False), help="Directions .safetensors file.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output model folder (new or empty).")
@click.option("--alpha", type=Alpha(), default=None, help="Strength (default: the file's alpha).")
@click.option("--num-heads", "num_heads", type=Count(1), default=None, help="Use only the file's top-K heads.")
@renamed("--heads", "--num-heads", Count(1))
@click.option("--dtype", type=click.Choice(WEIGHT_DTYPES), default="float32", show_default=True,
              help="Weights dtype of the saved model.")
@click.option("--revision", default=None)
@ALLOW_MISMATCH
@placement_options
def bake(model_id, gguf_file, directions, out, alpha, num_heads, dtype, revision, allow_model_mismatch, device_map,
         max_memory, offload_folder):
    """Write a Hugging Face model whose attention output bias holds W_o·shift (acts at every position)."""
    from pathlib import Path

    from ..errors import ITIError
    from ..export import bake as bake_model

    check_output_dir(out)  # before loading the model: fail fast
    if Path(out).exists() and any(Path(out).iterdir()):
        raise ITIError(f"{out}: output folder exists and is not empty")
    model, tokenizer, d, model_check = _load(model_id, directions, dtype, revision, gguf_file, device_map, max_memory,
                                offload_folder, allow_model_mismatch)
    d = d.top_k(num_heads) if num_heads else d
    path = bake_model(model, d, _alpha(alpha, d), out, tokenizer=tokenizer, provenance={"base_model": model_id,
                                                                          "model_check": model_check})
    click.echo(f"wrote {path} (loads with plain transformers; edits every position like hf-iti mc/gen_positions=all)")
