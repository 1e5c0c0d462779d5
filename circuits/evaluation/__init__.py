"""Edge circuits judged as the MIB benchmark judges them: `evaluate` (edge ablation in one rebuilt pass) and the
faithfulness curve with its areas (`curves`). See docs/evaluation.md."""

from circuits.evaluation.ablations import ABLATIONS
from circuits.evaluation.curves import FRACTIONS, Curves, EdgeCurve, edge_curves, trapezoid
from circuits.evaluation.faithfulness import Evaluation, evaluate, head_circuit

__all__ = ["ABLATIONS", "FRACTIONS", "Curves", "EdgeCurve", "Evaluation", "edge_curves", "evaluate", "head_circuit",
           "trapezoid"]
