"""The closed sets of option values, in one torch-free module: the CLI builds its ``click.Choice`` lists from these
without importing torch (``lm-eval-iti <command> --help`` stays fast), and the library modules re-export them."""

DTYPES = ("auto", "float32", "float16", "bfloat16")
METHODS = ("mass-mean", "probe", "random")  # select.compute_directions
# legacy: the reference baukit code edited from len(prompt)+4, i.e. (Llama tokenizer) from the second answer token
MC_POSITIONS = ("answer", "all", "legacy")  # intervene: what hf-iti edits when scoring loglikelihoods
GEN_POSITIONS = ("last", "generated", "all")  # intervene: what hf-iti edits when generating
PROBE_BACKENDS = ("torch", "sklearn")
HEAD_SELECTIONS = ("probe", "effect")  # fit: ITI's probe ranking, or the measured effect (effect.py)
# memory: the [N, L, H, d] activations in memory; stream: read from the activation cache a block of layers at a time
PROBE_MEMORY = ("memory", "stream")
ENGINE_MODES = ("auto", "on", "off")  # experiments.plan: the shared-prefix engine
SELECT_COLUMNS = {"MC1": "truthfulqa_iti_mc1", "MC2": "truthfulqa_iti_mc2", "MC3": "truthfulqa_iti_mc3",
                  "binary": "truthfulqa_iti_binary"}  # --alpha select: the metric maximised -> its task
EXPORT_FORMATS = ("steered",)  # lm-eval's own steered model (.pt)
JUDGE_BACKENDS = ("openai", "hf", "chat", "none")  # judges.config
