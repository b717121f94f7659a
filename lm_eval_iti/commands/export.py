"""``lm-eval-iti export`` and ``lm-eval-iti bake``."""

from __future__ import annotations

import click

from ..cli_types import check_output_dir, check_output_file
from ..options import PLACEMENT, cli_options


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
@cli_options("model", "gguf_file", "directions", "export_format", "export_out", "file_alpha", "top_num_heads",
             "save_dtype", "revision", "allow_model_mismatch", *PLACEMENT)
def export(model, gguf_file, directions, export_format, export_out, file_alpha, top_num_heads, save_dtype, revision,
           allow_model_mismatch, device_map, max_memory, offload_folder):
    """Export W_o·(alpha·sigma·direction) per layer for `lm_eval --model steered` (edits every position)."""
    from ..errors import ITIError
    from ..export import export_steered

    out = export_out
    if not str(out).endswith((".pt", ".pth")):  # before loading the model: fail fast
        raise ITIError(f"{out}: lm-eval's steered model reads .pt or .pth files; name the output *.pt")
    check_output_file(out)
    loaded, _, d, _ = _load(model, directions, save_dtype, revision, gguf_file, device_map, max_memory,
                            offload_folder, allow_model_mismatch)
    d = d.top_k(top_num_heads) if top_num_heads else d
    path = export_steered(loaded, d, _alpha(file_alpha, d), out)
    click.echo(f"wrote {path}: use --model steered --model_args pretrained={model},steer_path={path}")


@click.command()
@cli_options("model", "gguf_file", "directions", "bake_out", "file_alpha", "top_num_heads", "save_dtype", "revision",
             "allow_model_mismatch", *PLACEMENT)
def bake(model, gguf_file, directions, bake_out, file_alpha, top_num_heads, save_dtype, revision, allow_model_mismatch,
         device_map, max_memory, offload_folder):
    """Write a Hugging Face model whose attention output bias holds W_o·shift (acts at every position)."""
    from pathlib import Path

    from ..errors import ITIError
    from ..export import bake as bake_model

    out = bake_out
    check_output_dir(out)  # before loading the model: fail fast
    if Path(out).exists() and any(Path(out).iterdir()):
        raise ITIError(f"{out}: output folder exists and is not empty")
    loaded, tokenizer, d, model_check = _load(model, directions, save_dtype, revision, gguf_file, device_map,
                                              max_memory, offload_folder, allow_model_mismatch)
    d = d.top_k(top_num_heads) if top_num_heads else d
    path = bake_model(loaded, d, _alpha(file_alpha, d), out, tokenizer=tokenizer,
                      provenance={"base_model": model, "model_check": model_check})
    click.echo(f"wrote {path} (loads with plain transformers; edits every position like hf-iti mc/gen_positions=all)")
