"""The shipped design: the one world, model shape and training recipe the checkpoint was trained with.

Change these only together with a retrained checkpoint (``lm-eval-iti truthworld train``) and the README seed table.
"""

from .generator import WorldConfig
from .train import ModelConfig, TrainConfig

WORLD = WorldConfig(seed=0, first_names=24, second_names=16, myth_share=0.75, min_statements=3, max_statements=7,
                    verdict_share=0.3)
MODEL = ModelConfig(hidden=128, layers=4, heads=8, intermediate=256, max_positions=256)
TRAIN = TrainConfig(seed=0, steps=2000, batch_size=32, lr=3e-3, warmup=100, weight_decay=0.01, threads=1)

# The bar's ITI settings: K heads of the 32 (fit-directions' default K=48 exceeds this model's head count) and the
# alpha grid searched on the training folds only (sigma already spans the class gap, so alpha stays small).
NUM_HEADS = 8
ALPHA_GRID = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0)
