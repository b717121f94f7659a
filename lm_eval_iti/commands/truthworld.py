"""``lm-eval-iti truthworld ...``: train the truth-world model, export its data, evaluate ITI on it."""

from __future__ import annotations

import shlex
import sys

import click

from ..cli_types import check_output_dir, check_output_file
from ..options import cli_options


def _world_config(world_seed: int):
    from dataclasses import replace

    from ..truthworld.design import WORLD

    return replace(WORLD, seed=world_seed).check()


@click.group()
def truthworld():
    """The offline truth world: a small trained Llama where ITI must measurably work."""


@truthworld.command("train", context_settings={"show_default": True})
@cli_options("world_train_out", "train_seed", "steps", "documents_per_step", "threads", "probe_every", "world_seed")
def train_cmd(world_train_out, train_seed, steps, documents_per_step, threads, probe_every, world_seed):
    """Train the truth-world model (fixed seed, fixed step count; resumes an interrupted run in OUT)."""
    from dataclasses import replace

    from ..truthworld.design import MODEL, TRAIN
    from ..truthworld.train import train

    out = world_train_out
    check_output_dir(out)
    cfg = replace(TRAIN, seed=train_seed, threads=threads, probe_every=probe_every,
                  **({"steps": steps} if steps is not None else {}),
                  **({"batch_size": documents_per_step} if documents_per_step is not None else {}))
    command = "lm-eval-iti truthworld train " + " ".join(shlex.quote(a) for a in sys.argv[3:])
    path = train(out, _world_config(world_seed), MODEL, cfg, command=command)
    click.echo(f"wrote {path}")


train_cmd.name = "train"


@truthworld.command("export-data")
@cli_options("world_data_out", "world_model")
def export_data(world_data_out, world_model):
    """Write the world's questions in TruthfulQA's own formats (for fit-directions --data-dir and the tasks)."""
    from ..truthworld import CHECKPOINT_DIR
    from ..truthworld.generator import export_truthfulqa, load_world

    out = world_data_out
    check_output_dir(out)
    world = load_world(world_model or CHECKPOINT_DIR)
    path = export_truthfulqa(world, out)
    click.echo(f"wrote {path}/mc_task.json, TruthfulQA.csv, world.json ({len(world.entities)} questions, "
               f"{len(world.myth_entities)} with a myth)")


@truthworld.command("evaluate", context_settings={"show_default": True})
@cli_options("world_model", "result_file", "world_num_heads", "fold_seed", "head_selection")
def evaluate_cmd(world_model, result_file, world_num_heads, fold_seed, head_selection):
    """The bar: 2-fold fit-directions, alpha chosen on the training folds within side-effect bounds, scored on the
    held-out fold against random and orthogonal directions, random heads and a colour prior."""
    import json

    out = result_file
    if out:
        check_output_file(out)
    from ..atomic import write_json_atomic
    from ..truthworld import CHECKPOINT_DIR
    from ..truthworld.bar import run_bar

    report = run_bar(world_model or CHECKPOINT_DIR, num_heads=world_num_heads, seed=fold_seed,
                     head_selection=head_selection)
    click.echo(json.dumps(report["summary"], indent=2))
    if out:
        write_json_atomic(out, report)
        click.echo(f"wrote {out}")


evaluate_cmd.name = "evaluate"


@truthworld.command("diagnose")
@cli_options("world_model", "result_file")
def diagnose_cmd(world_model, result_file):
    """Why the bar holds or fails: speaker evidence in context, the best a constant shift at the answer can do (the
    model's own belief direction), and each head alone with the method's direction."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..atomic import write_json_atomic
    from ..truthworld import CHECKPOINT_DIR
    from ..truthworld.diagnose import diagnose
    from ..truthworld.generator import load_world

    out = result_file
    folder = str(world_model or CHECKPOINT_DIR)
    world = load_world(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    report = diagnose(model, AutoTokenizer.from_pretrained(folder), world)
    evidence = report["evidence_in_context"]
    click.echo(f"unsteered myth MC1 {report['unsteered']['myth_mc1']:.3f}; after one true statement by the same "
               f"speaker {evidence['after_true_statement']:.3f}, after one myth {evidence['after_myth_statement']:.3f}")
    click.echo("belief heads (separation at the answer's 'is'): " + ", ".join(
        f"{r['layer']}.{r['head']} {r['separation']:.2f}" for r in report["belief_heads"]))
    best = max(report["constant_shift_ceiling"], key=lambda r: r["myth_mc1"])
    click.echo(f"constant-shift ceiling: myth MC1 {best['myth_mc1']:.3f} (K={best['k']}, alpha={best['alpha']:g})")
    def scores(row):  # myth MC1 per alpha of one head alone (none for a head without a direction)
        return {k.split("_")[-1]: v for k, v in row.items() if k.startswith("myth_mc1")}

    top = sorted(report["single_heads"], key=lambda r: max(scores(r).values(), default=0.0), reverse=True)
    for row in top[:5]:
        click.echo(f"head {row['layer']}.{row['head']} alone: "
                   + ", ".join(f"{alpha} {v:.3f}" for alpha, v in scores(row).items())
                   + f" (cosine of its direction with its belief direction {row['cosine_with_belief']:+.2f}; "
                   f"true - myth along it: {row['gap_at_statement_end']:+.2f} at '.', "
                   f"{row['gap_at_next_answer']:+.2f} at the next answer)")
    if out:
        write_json_atomic(out, report)
        click.echo(f"wrote {out}")


diagnose_cmd.name = "diagnose"
