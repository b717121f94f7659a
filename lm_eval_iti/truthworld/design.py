"""The shipped design: the one world, model shape and training recipe the checkpoint was trained with.

Change these only together with a retrained checkpoint (``lm-eval-iti truthworld train``) and the README seed table.
"""

from .generator import WorldConfig
from .train import ModelConfig, TrainConfig

WORLD = WorldConfig(seed=0, first_names=24, second_names=16, myth_share=0.75, min_statements=3, max_statements=7,
                    verdict_share=0.3)
# Two layers: the first can only copy words, so the truth of a statement exists only after its MLP, and the second
# layer's heads that carry it forward are the heads that carry the belief into the next answer (with 4 or 3 layers the
# last layer re-read the evidence itself at the answer and no constant shift along a probe direction reached 0.9;
# docs/truthworld.md).
MODEL = ModelConfig(hidden=128, layers=2, heads=8, intermediate=256, max_positions=256)
TRAIN = TrainConfig(seed=0, steps=2000, batch_size=32, lr=3e-3, warmup=100, weight_decay=0.01, threads=1)

# The bar's ITI settings: K heads of the 16 (fit-directions' default K=48 exceeds this model's head count; 2 of 16 is
# 12.5%, the paper's 48 of LLaMA-7B's 1,024 is 4.7%: with K=4, random heads hit one of the two heads that carry the
# belief in about half the draws and came within 0.19 of the steered result on seed 0), sigma
# measured on the probe statements themselves (``sigma_data="mc"``, honest_llama's ``--activations_dataset tqa_mc2``;
# the default ``gen_end_q`` measures it at the end of the next question, where the heads that carry the belief are
# idle, so their sigma was 30-50 times smaller than their own belief gap), and the alpha grid searched on the training
# folds only (that sigma already spans the class gap, so alpha stays small: the shipped seed chose 0.7 and 1.5).
NUM_HEADS = 2
SIGMA_DATA = "mc"
ALPHA_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0)
