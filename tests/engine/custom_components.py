"""Components a user writes in their own module and names by path in a config.

EvaluationThreshold is the seed documentation's custom stopper, verbatim in behaviour.
"""

from mei.stoppers import OptimizationStopper


class EvaluationThreshold(OptimizationStopper):
    def __init__(self, threshold):
        self.threshold = threshold

    def __call__(self, current_state):
        if current_state.evaluation > self.threshold:
            return True, None
        return False, None


class ReturnsBool(OptimizationStopper):
    """A broken stopper: returns a bare bool."""

    def __call__(self, current_state):
        return True


def legacy_initial():
    """An initial guess written for the original library: ``*shape`` only, global RNG."""
    import torch

    class RandomNormalOld:
        def __call__(self, *shape):
            return torch.randn(*shape)

    return RandomNormalOld()


not_callable = 42
