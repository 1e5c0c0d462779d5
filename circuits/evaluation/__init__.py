"""Edge circuits judged as the MIB benchmark judges them: `evaluate` (edge ablation in one rebuilt pass) and the
faithfulness curve with its areas (`curves`). See docs/evaluation.md."""

from circuits.evaluation.ablations import ABLATIONS
from circuits.evaluation.faithfulness import Evaluation, evaluate, head_circuit

__all__ = ["ABLATIONS", "Evaluation", "evaluate", "head_circuit"]
