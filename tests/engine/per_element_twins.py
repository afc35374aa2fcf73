"""The built-in stoppers and objectives without their batched forms.

A subclass does not inherit ``batched``: the engine calls these once per element and step
with a State, the path every component took before batched forms existed. Tests compare the
two paths.
"""

from mei import objectives, stoppers


class NumIterations(stoppers.NumIterations):
    pass


class AnyStopper(stoppers.AnyStopper):
    pass


class AllStoppers(stoppers.AllStoppers):
    pass


class EvaluationObjective(objectives.EvaluationObjective):
    pass


class RegularizationObjective(objectives.RegularizationObjective):
    pass


class PostProcessedInputObjective(objectives.PostProcessedInputObjective):
    pass


class GradientObjective(objectives.GradientObjective):
    pass


def stopper_output_objective():
    """A per-element objective that records what the stopper put in the State."""

    def objective(state):
        return state.stopper_output if state.i_iter % 2 == 0 else None

    return objective
