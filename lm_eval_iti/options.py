"""Every command-line option and every shared default, declared once.

Each ``Option`` is one concept with one name, one flag, one default, one type and one help text. The click options
of every command are generated from here (``cli_options``), and the library's dataclasses take their defaults from
here too (``default_of`` / ``config_field``), so a default has exactly one home (tests/test_options.py checks both).
Old spellings stay as hidden aliases that print a one-line deprecation. Torch-free: ``--help`` stays fast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import click

from .choices import (DTYPES, ENGINE_MODES, EXPORT_FORMATS, GEN_POSITIONS, HEAD_SELECTIONS, JUDGE_BACKENDS,
                      MC_POSITIONS, METHODS, PROBE_BACKENDS, PROBE_MEMORY, SELECT_COLUMNS)
from .cli_types import Alpha, Count, NumberList, Real, renamed
from .data import HUB_ID
from .prompts import INSTRUCTIONS, PROMPT_FORMATS, SIGMA_DATA

REQUIRED = dataclasses.MISSING
DEFAULT_ALPHA = 15.0  # ITI's strength for LLaMA-7B; the fit stores it, validate and fit-directions start from it
NAMED_MODELS = "smollm2-135m-instruct, gemma3-270m"
# the judges' settings when neither an option, --metadata nor $LM_EVAL_ITI_<KEY> gives one (judges.config.JudgeConfig)
JUDGE_DEFAULTS = {"api_key_env": "OPENAI_API_KEY", "concurrency": 8, "timeout": 60.0, "retries": 6, "backoff": 1.0,
                  "batch_size": 8, "dtype": "auto", "check_examples": 100, "check_min_accuracy": 0.7, "check_seed": 0}


def _judge_default(name: str):
    return JUDGE_DEFAULTS[name]


@dataclass(frozen=True)
class Option:
    """One concept: ``name`` is its Python name (a keyword of the API and of the command function)."""

    name: str
    flag: str
    default: Any = None
    help: str = ""
    type: Any = None
    is_flag: bool = False
    secondary: str | None = None  # the off switch of an on/off pair, e.g. --no-side-effects
    aliases: tuple[str, ...] = ()  # further accepted spellings (not deprecated)
    deprecated: tuple[str, ...] = ()  # old spellings: hidden, and a one-line warning when used

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def decorate(self, func, deprecated: tuple[str, ...] = ()):
        flags = (f"{self.flag}/{self.secondary}",) if self.secondary else (self.flag, *self.aliases)
        kwargs = {"help": self.help, "show_default": self.default not in (None, False, REQUIRED)}
        if self.required:
            kwargs["required"] = True
        else:
            kwargs["default"] = self.default
        if self.is_flag and not self.secondary:
            kwargs["is_flag"] = True
        elif self.type is not None:
            kwargs["type"] = self.type
        for old in self.deprecated + deprecated:
            func = renamed(old, self.flag, self.type, param=self.name)(func)
        func = click.option(*flags, self.name, **kwargs)(func)
        func.__click_params__[-1].iti_option = self  # the test reads which concept made each click option
        return func


def _options(*items: Option) -> dict[str, Option]:
    registry: dict[str, Option] = {}
    for item in items:
        if item.name in registry:
            raise RuntimeError(f"option {item.name!r} declared twice")
        registry[item.name] = item
    return registry


def _model_help(what: str = "") -> str:
    return f"{what}Local model folder, hub id, .gguf file, or a named model ({NAMED_MODELS})."


OPTIONS = _options(
    # the model ------------------------------------------------------------------------------------------------------
    Option("model", "--model", REQUIRED, _model_help()),
    Option("gguf_file", "--gguf-file", None, "GGUF file inside the --model folder (transformers dequantizes it)."),
    Option("revision", "--revision", None, "Hub revision (branch, tag or commit) of --model."),
    Option("dtype", "--dtype", "auto", "Model dtype.", click.Choice(DTYPES)),
    Option("save_dtype", "--dtype", "float32", "Weights dtype of the model (and of what is written).",
           click.Choice(tuple(d for d in DTYPES if d != "auto"))),
    Option("device", "--device", None, "cuda, cuda:1, cpu ... (default: cuda if available)."),
    Option("device_map", "--device-map", None,
           "Shard the model with accelerate: auto, balanced, sequential, or a JSON object module -> device "
           "(0, \"cuda:1\", \"cpu\", \"disk\"). Replaces --device."),
    Option("max_memory", "--max-memory", None, "With --device-map: memory per device, e.g. 0=20GiB,1=20GiB,cpu=60GiB."),
    Option("offload_folder", "--offload-folder", None, "With --device-map: folder for the weights offloaded to disk.",
           click.Path(file_okay=False)),
    # the data and the folds ---------------------------------------------------------------------------------------
    Option("dataset", "--dataset", HUB_ID, "Hub id of TruthfulQA (multiple_choice + generation configs)."),
    Option("data_dir", "--data-dir", None, "Local TruthfulQA folder (mc_task.json, TruthfulQA.csv) or mc_task.json "
           "file; default: the hub dataset (--dataset).", click.Path(exists=True)),
    Option("binary_data", "--binary-data", None, "The 2025 TruthfulQA.csv for truthfulqa_iti_binary."),
    Option("num_questions", "--num-questions", None,
           "Quick runs: only the first N questions of the data (folds are then over those N).", Count(2),
           deprecated=("--max-questions",)),
    Option("num_folds", "--num-folds", 2, "Folds of the questions (fit-directions: used with --fold).", Count(2)),
    Option("fold", "--fold", None, "Held-out fold: fit on every fold but this one (default: fit on every question).",
           Count(0)),
    Option("only_folds", "--folds", None, "Evaluate only these held-out folds (comma list, e.g. 0); default: every fold."),
    Option("fold_seed", "--fold-seed", 42, "Seed of the folds, the probes' train/val split, random heads and "
           "directions, and the sigma set.", Count(0), deprecated=("--seed",)),
    Option("contiguous_folds", "--contiguous-folds", False, "The reference's folds: contiguous blocks in file order.",
           is_flag=True),
    # the fit -----------------------------------------------------------------------------------------------------
    Option("num_heads", "--num-heads", 48, "K: heads intervened on.", Count(1)),
    Option("method", "--method", "mass-mean", "Direction of each head.", click.Choice(METHODS)),
    Option("head_selection", "--head-selection", "probe", "How the K heads are ranked. probe: ITI's probe "
           "validation accuracy; effect: the first-order effect of steering each head alone on the training "
           "questions' log MC2 (one forward+backward pass; checked against measured one-head effects).",
           click.Choice(HEAD_SELECTIONS)),
    Option("effect_questions", "--effect-questions", 128, "For --head-selection effect: at most this many training "
           "questions (a seeded sample) in the objective.", Count(2)),
    Option("effect_check_heads", "--effect-check-heads", 8, "For --head-selection effect: heads whose one-head "
           "effect is measured to check the estimate (rank correlation in the file's metadata); 0: none.", Count(0)),
    Option("random_heads", "--random-heads", False, "Pick K heads at random (seeded): the random-heads baseline.",
           is_flag=True),
    Option("alpha", "--alpha", DEFAULT_ALPHA, "Strength stored in the file (hf-iti alpha= overrides), or "
           "'auto': the largest alpha whose KL on held-out WikiText stays within --kl-budget.", Alpha(("auto",))),
    Option("kl_budget", "--kl-budget", 0.2, "For alpha auto and select: KL(base||steered) budget in nats/token on "
           "held-out WikiText (the ITI paper's LLaMA-7B point cost 0.17).", Real(minimum=0)),
    Option("kl_corpus", "--kl-corpus", "wikitext",
           "For --alpha auto: 'wikitext' (hub wikitext-2-raw-v1 test) or a local raw text file."),
    Option("val_ratio", "--val-ratio", 0.2, "Share of training questions used to validate probes.",
           Real(minimum=0, maximum=1)),
    Option("prompt_format", "--prompt-format", "qa",
           "Activation prompts. qa: 'Q: {question} A: {answer}'; chat: the tokenizer's chat template.",
           click.Choice(PROMPT_FORMATS)),
    Option("sigma_data", "--sigma-data", "gen_end_q",
           "Prompts sigma is measured on (always restricted to the training questions).", click.Choice(SIGMA_DATA)),
    Option("probe_backend", "--probe-backend", "torch",
           "torch: all probes batched; sklearn: the reference's per-head loop.", click.Choice(PROBE_BACKENDS)),
    Option("probe_memory", "--probe-memory", "memory", "stream: probes read the activation cache a block of layers "
           "at a time (bounded memory for large models; same result).", click.Choice(PROBE_MEMORY)),
    Option("fit_batch_size", "--fit-batch-size", 16, "Prompts per forward pass of the activation collection.",
           Count(1)),
    Option("chunk_size", "--chunk-size", 512, "Prompts per activation-cache file: the unit of resuming and of the "
           "split across accelerate ranks.", Count(1)),
    Option("cache_dir", "--cache-dir", None, "Activation cache (default: $LM_EVAL_ITI_CACHE or ~/.cache/lm_eval_iti).",
           click.Path(file_okay=False)),
    Option("no_cache", "--no-cache", False, "Do not read or write the activation cache.", is_flag=True),
    Option("collect_all_folds", "--collect-all-folds", False,
           "With --fold: also collect (and cache) the held-out fold's prompts, so fits of the other folds read "
           "everything from the cache (validate and sweep do this). Default: the training fold's only.", is_flag=True),
    Option("no_plot", "--no-plot", False, "Do not write the FILE.heads.png heatmap.", is_flag=True),
    Option("directions_out", "--out", REQUIRED, "Directions file to write (.safetensors).", click.Path(dir_okay=False)),
    # using a directions file ---------------------------------------------------------------------------------------
    Option("directions", "--directions", REQUIRED, "Directions .safetensors file.", click.Path(dir_okay=False)),
    Option("file_alpha", "--alpha", None, "Strength (default: the file's alpha).", Alpha()),
    Option("top_num_heads", "--num-heads", None, "Use only the file's top-K heads.", Count(1),
           deprecated=("--heads",)),
    Option("allow_model_mismatch", "--allow-model-mismatch", False,
           "Use directions fitted on another model of the same shape (refused otherwise).", is_flag=True),
    Option("export_format", "--to", "steered", "Export format: the .pt that lm-eval's own `steered` model reads.",
           click.Choice(EXPORT_FORMATS)),
    Option("export_out", "--out", REQUIRED, "Output .pt file.", click.Path(dir_okay=False)),
    Option("bake_out", "--out", REQUIRED, "Output model folder (new or empty).", click.Path(file_okay=False)),
    # evaluation through lm-eval -----------------------------------------------------------------------------------
    Option("tasks", "--tasks", "truthfulqa_iti", "Comma-separated lm-eval tasks or groups."),
    Option("batch_size", "--batch-size", 8, "Evaluation and CE/KL batch size.", Count(1)),
    Option("instruction", "--instruction", "default", "The instruction before the questions of the MC and "
           "generation tasks.", click.Choice(tuple(INSTRUCTIONS))),
    Option("mc_positions", "--mc-positions", "answer",
           "hf-iti mc_positions (legacy: from the second answer token, as the reference).", click.Choice(MC_POSITIONS)),
    Option("gen_positions", "--gen-positions", "last", "hf-iti gen_positions: what generation edits (last: the "
           "last prompt position and every generated token, ITI's convention).", click.Choice(GEN_POSITIONS)),
    Option("limit", "--limit", None, "lm-eval --limit per task and fold (testing only)."),
    Option("metadata", "--metadata", None, "Extra task metadata (JSON or k=v,...), e.g. judge settings."),
    Option("apply_chat_template", "--apply-chat-template", False, "lm-eval --apply_chat_template.", is_flag=True),
    Option("system_instruction", "--system-instruction", None, "lm-eval --system_instruction."),
    Option("gen_kwargs", "--gen-kwargs", None, "lm-eval --gen_kwargs."),
    Option("bootstrap_iters", "--bootstrap-iters", 100000, "lm-eval bootstrap iterations.", Count(0)),
    Option("max_length", "--max-length", None, "lm-eval HFLM max_length.", Count(2)),
    Option("engine", "--engine", "auto", "Score hooked rows of loglikelihood tasks with the shared-prefix engine "
           "(auto: a sweep's grid when every task is one; on: also every hf and hf-iti row of validate, controls "
           "included; off: every row through lm-eval). See docs/sweeps.md.", click.Choice(ENGINE_MODES)),
    Option("run_out", "--out", None, "Run folder (default: results/<a name from the settings>); rerun to resume.",
           click.Path(file_okay=False)),
    # CE/KL on a text corpus -----------------------------------------------------------------------------------------
    Option("side_effects", "--side-effects", True, "Measure CE/KL for every row.", secondary="--no-side-effects"),
    Option("corpus", "--corpus", "wikitext",
           "CE/KL text: 'wikitext' (hub wikitext-2-raw-v1 test split) or a local raw text file."),
    Option("num_docs", "--num-docs", 100, "CE/KL documents (paragraphs of >= 100 words).", Count(1)),
    Option("num_tokens", "--num-tokens", 128, "CE/KL: the first T tokens of each document.", Count(2)),
    Option("corpus_seed", "--corpus-seed", 0, "Seed of the CE/KL document sample.", Count(0)),
    Option("no_detokenize", "--no-detokenize", False, "Keep WikiText's ' @-@ ' tokenisation.", is_flag=True),
    Option("result_file", "--out", None, "Write the JSON result here.", click.Path(dir_okay=False)),
    # validate ----------------------------------------------------------------------------------------------------
    Option("validate_alpha", "--alpha", DEFAULT_ALPHA, "ITI strength, or 'auto': per fold, the largest "
           "alpha whose KL on held-out WikiText stays within --kl-budget (the way to start on a new model), or "
           "'select': per fold, alpha and K chosen by nested cross-validation on its training folds "
           "(--select-alphas, --select-num-heads; the grid scored by the shared-prefix engine, the chosen row by "
           "lm-eval, or by the engine with --engine on).", Alpha(("auto", "select"))),
    Option("select_alphas", "--select-alphas", "5,10,15,20", "For --alpha select: the strengths to choose from.",
           NumberList(float, minimum=0)),
    Option("select_num_heads", "--select-num-heads", "16,32,48", "For --alpha select: the K values to choose from "
           "(each at most --num-heads, the fit's size).", NumberList(int, minimum=1)),
    Option("select_by", "--select-by", "MC2", "For --alpha select: the metric maximised on the inner folds.",
           click.Choice(tuple(SELECT_COLUMNS))),
    Option("select_methods", "--select-methods", None, "For --alpha select: direction types searched too "
           "(comma list of mass-mean, probe); default: --method only. With --baselines nested-strategy: that row's "
           "(default mass-mean,probe)."),
    Option("select_head_selections", "--select-head-selections", None, "For --alpha select: head rankings "
           "searched too (comma list of probe, effect); default: --head-selection only. With --baselines "
           "nested-strategy: that row's (default probe,effect)."),
    Option("inner_folds", "--inner-folds", 2, "For --alpha select: folds of each training part.", Count(2)),
    Option("no_baseline", "--no-baseline", False, "Skip the alpha-0 baseline row.", is_flag=True),
    Option("baselines", "--baselines", "", "Comma list or 'all' (nested-strategy only with --alpha select): random-directions, random-matched, "
           "random-matched-kl, random-heads, label-shuffled, style, probe-weights, no-instruction, baked, steered, "
           "nested-strategy (with --alpha select: a row whose direction type and head ranking are nested too); "
           "or 'study': the study's controls (random-matched, random-matched-kl, random-heads, label-shuffled, "
           "style, probe-weights, no-instruction) with at least 20, 20, 10 and 10 draws per fold."),
    Option("random_draws", "--random-draws", 5, "Draws per fold of each control family (random-matched, "
           "random-matched-kl, random-heads, label-shuffled; one row each); with --baselines study, a larger value "
           "raises the study's counts.", Count(1)),
    Option("curve_scales", "--curve-scales", "", "Comma list, e.g. 0.5,2: ITI and every hooked control again at "
           "these multiples of its own alpha (first random draw only), for gain-vs-KL curves in pareto.png."),
    # sweep -------------------------------------------------------------------------------------------------------
    Option("alphas", "--alphas", "0,5,10,15,20,25", "Comma-separated strengths.", NumberList(float, minimum=0)),
    Option("sweep_num_heads", "--num-heads", "16,48,96", "Comma-separated K values.", NumberList(int, minimum=1)),
    Option("rescore_by", "--select-by", "auto", "Where the engine scored the grid: score the best row by this "
           "column again through lm-eval's hf-iti (auto: MC2, else MC1, MC3, binary; none: skip).",
           click.Choice(("auto", "none") + tuple(SELECT_COLUMNS))),
    # report ------------------------------------------------------------------------------------------------------
    Option("report_out", "--out", "results/report", "Output folder.", click.Path(file_okay=False)),
    Option("title", "--title", "Leaderboard", "Title of the markdown table."),
    Option("no_plots", "--no-plots", False, "Do not draw the PNG plots.", is_flag=True),
    # demo --------------------------------------------------------------------------------------------------------
    Option("demo_out", "--out", None, "Folder for the table, heatmap, alpha curve and JSON (default: results/demo "
           "or results/demo-MODEL).", click.Path(file_okay=False)),
    Option("demo_model", "--model", None, f"A real model (folder, hub id, .gguf, {NAMED_MODELS}): fit on TruthfulQA "
           "fold 1, evaluate fold 0 with lm-eval hf and hf-iti. Default: the embedded truth-world model."),
    Option("demo_num_questions", "--num-questions", 100,
           "With --model: the first N questions (half fit, half evaluated); 0 = all 817.", Count(0)),
    Option("demo_num_heads", "--num-heads", 16, "With --model: K heads (a small model: SmolLM2 has 270).", Count(1)),
    # the truth world ---------------------------------------------------------------------------------------------
    Option("world_seed", "--world-seed", 0, "Seed of the world (entities, facts, myths).", Count(0)),
    Option("world_model", "--model", None, "A truth-world checkpoint (default: the shipped one).",
           click.Path(exists=True, file_okay=False)),
    Option("world_train_out", "--out", REQUIRED, "Output model folder.", click.Path(file_okay=False)),
    Option("world_data_out", "--out", REQUIRED, "Folder for mc_task.json, TruthfulQA.csv and world.json.",
           click.Path(file_okay=False)),
    Option("train_seed", "--train-seed", 0, "Training seed (weights and documents).", Count(0),
           deprecated=("--seed",)),
    Option("steps", "--steps", None, "Training steps (default: the shipped design's).", Count(1)),
    Option("documents_per_step", "--batch-size", None, "Documents per step (default: the shipped design's).",
           Count(1)),
    Option("threads", "--threads", 1, "Torch CPU threads.", Count(1)),
    Option("probe_every", "--probe-every", 0,
           "Every N steps print how linearly readable truth is at '.' per head (0: never).", Count(0)),
    Option("world_num_heads", "--num-heads", None, "K (default: the shipped design's).", Count(1)),
    # judge (the names are the metadata keys of judges.config; None: $LM_EVAL_ITI_<KEY>, else JudgeConfig's default)
    Option("judge", "--judge", None, "Backend (default: $LM_EVAL_ITI_JUDGE).",
           click.Choice(tuple(b for b in JUDGE_BACKENDS if b != "none"))),  # "none" (no judge) is no judge command
    Option("truth_judge", "--truth-judge", None, "Truth judge: served model name, or hf id/path."),
    Option("info_judge", "--info-judge", None, "Info judge: served model name, or hf id/path."),
    Option("judge_model", "--judge-model", None, "One model for both judges (typical for chat)."),
    Option("truth_judge_revision", "--truth-revision", None, "Truth judge revision (hf) or label (API)."),
    Option("info_judge_revision", "--info-revision", None, "Info judge revision (hf) or label (API)."),
    Option("judge_base_url", "--base-url", None, "OpenAI-compatible server, e.g. http://localhost:8000/v1."),
    Option("truth_judge_base_url", "--truth-base-url", None, "The truth judge's own server (default --base-url)."),
    Option("info_judge_base_url", "--info-base-url", None, "The info judge's own server (default --base-url)."),
    Option("judge_api_key_env", "--api-key-env", None,
           f"NAME of the variable holding the API key ({_judge_default('api_key_env')})."),
    Option("judge_cache", "--cache", None, "SQLite judgment cache, or 'off'."),
    Option("judge_concurrency", "--concurrency", None,
           f"Parallel API requests ({_judge_default('concurrency')}).", Count(1)),
    Option("judge_timeout", "--timeout", None, f"Seconds per API request ({_judge_default('timeout'):g}).",
           Real(minimum=0)),
    Option("judge_retries", "--retries", None, f"Retries per request ({_judge_default('retries')}).", Count(0)),
    Option("judge_backoff", "--backoff", None,
           f"First backoff in seconds, doubled per retry ({_judge_default('backoff'):g}).",
           Real(minimum=0, inclusive_minimum=True)),
    Option("judge_batch_size", "--batch-size", None, f"hf: prompts per forward ({_judge_default('batch_size')}).",
           Count(1)),
    Option("judge_device", "--device", None, "hf: device (cuda if available, else cpu)."),
    Option("judge_dtype", "--dtype", None, f"hf: {', '.join(DTYPES)} ({_judge_default('dtype')})."),
    Option("no_judge_check", "--no-judge-check", False, "Skip the checks before judging (endpoint/model, and the "
           "judges' accuracy on human-labelled answers); the report records that the check was skipped.",
           is_flag=True, aliases=("--no-check",)),
    Option("check_only", "--check", False, "Without SAMPLES: only check the judges on human-labelled TruthfulQA "
           f"answers (accuracy, usable share, AUC; {_judge_default('check_examples')} per judge unless "
           "--check-examples). With SAMPLES the check runs anyway.", is_flag=True),
    Option("judge_check_examples", "--check-examples", None, "Labelled answers per judge for the check, half "
           f"positive (even; {_judge_default('check_examples')}).", Count(2)),
    Option("judge_check_data", "--check-data", None,
           "TruthfulQA's eval_examples.csv or its folder (default: download)."),
    Option("judge_check_min_accuracy", "--check-min-accuracy", None,
           f"A judge below it fails the check ({_judge_default('check_min_accuracy'):g}).",
           Real(minimum=0, maximum=1.0000001)),
    Option("judge_check_allow_fail", "--check-allow-fail", False, "A failed check warns instead of stopping.",
           is_flag=True),
    Option("judge_check_seed", "--check-seed", None,
           f"Which labelled answers are drawn ({_judge_default('check_seed')}).", Count(0)),
    Option("judge_out", "--out", None, "Report JSON (metrics, judge ids, request counts); required with SAMPLES.",
           click.Path()),
    Option("judge_samples_out", "--samples-out", None, "Per-answer judgments as JSON lines.", click.Path()),
    Option("filter_name", "--filter", None, "lm-eval filter to judge when the file has several."),
    # progress ----------------------------------------------------------------------------------------------------
    Option("quiet", "--quiet", False, "No progress bars.", is_flag=True),
)


def cli_options(*names: str, deprecated: dict[str, tuple[str, ...]] | None = None):
    """The click options of ``names``, in that order (``--help`` lists them so). ``deprecated``: old spellings
    that only this command had (e.g. side-effects' ``--seed`` for ``--corpus-seed``)."""
    deprecated = deprecated or {}
    missing = [n for n in [*names, *deprecated] if n not in OPTIONS]
    if missing:
        raise RuntimeError(f"no such option: {', '.join(missing)}")

    def decorate(func):
        for name in reversed(names):
            func = OPTIONS[name].decorate(func, deprecated.get(name, ()))
        return func

    return decorate


PLACEMENT = ("device_map", "max_memory", "offload_folder")


def default_of(name: str):
    """The one default of ``name`` (for a dataclass field or a function's keyword)."""
    value = OPTIONS[name].default
    if value is REQUIRED:
        raise RuntimeError(f"option {name!r} has no default")
    return value


def config_field(name: str, *, option: str | None = None):
    """A dataclass field whose default is the option's (``option``: when the field's name is not the concept's)."""
    concept = option or name
    value = default_of(concept)
    return dataclasses.field(default=value, metadata={"option": concept})
