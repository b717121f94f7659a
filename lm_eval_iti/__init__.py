"""lm-eval-iti: Inference-Time Intervention for lm-evaluation-harness."""

__version__ = "0.1.0"

from .artifact import Directions, ModelShape, load_directions, save_directions  # noqa: E402
from .errors import ITIError  # noqa: E402
from .folds import fold_assignment, fold_indices, question_id  # noqa: E402

__all__ = ["Directions", "ModelShape", "load_directions", "save_directions", "ITIError", "fold_assignment",
           "fold_indices", "question_id", "__version__"]
