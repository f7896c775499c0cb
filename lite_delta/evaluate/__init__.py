"""Stage 3: the reduced Tulu 3 evaluation, base vs tuned with paired statistics."""

from lite_delta.evaluate.compare import compare
from lite_delta.evaluate.stage import EvalConfig, evaluate, score_file

__all__ = ["EvalConfig", "compare", "evaluate", "score_file"]
