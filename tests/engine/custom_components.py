"""Components a user writes in their own module and names by path in a config.

EvaluationThreshold is the seed documentation's custom stopper, verbatim in behaviour.
"""

import torch

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


class SeenInput:
    """Logs, at every step, the input the model saw and the input after the step."""

    def __call__(self, state):
        return state.transformed_input, state.post_processed_input


class ReachCosine(OptimizationStopper):
    """Stops at the first step whose input has cosine >= ``threshold`` with a Gabor filter
    (the stopper output is that cosine), or after ``max_steps`` steps."""

    def __init__(self, threshold=0.95, max_steps=300, size=21):
        from models import gabor

        self.threshold = threshold
        self.max_steps = max_steps
        self._target = gabor(size).flatten()

    def __call__(self, state):
        x = state.post_processed_input.flatten()
        cosine = float(torch.nn.functional.cosine_similarity(x, self._target, dim=0))
        return cosine >= self.threshold or state.i_iter + 1 >= self.max_steps, cosine


class ItemReadingPenalty:
    """A regularization that reads its value on the host every step (``.item()``), as the
    original library's loop read the evaluation: on a GPU a wait for the device per step."""

    per_row = True  # each element's penalty is its own: the batch may run together

    def __call__(self, x, i_iteration=None):
        penalty = 0.01 * x.pow(2).flatten(1).sum(1)
        self.last = penalty.sum().item()
        return penalty


class EvaluationAbove(OptimizationStopper):
    """Stops an element once its evaluation exceeds ``threshold``, or after ``max_steps``
    steps; its batched form reads the batch's evaluations once per step."""

    def __init__(self, threshold, max_steps):
        self.threshold = threshold
        self.max_steps = max_steps

    def __call__(self, current_state):
        done = current_state.evaluation > self.threshold
        return done or current_state.i_iter + 1 >= self.max_steps, None

    @classmethod
    def batched(cls, stoppers):
        return _EvaluationAboveBatch(stoppers)


class _EvaluationAboveBatch:
    def __init__(self, stoppers):
        self.stoppers = stoppers

    def reads(self, i_iteration):
        return ()  # the evaluation is always in the record

    def __call__(self, record, elements):
        values = record.evaluation.tolist()
        stopped = [
            b
            for b in elements
            if values[b] > self.stoppers[b].threshold
            or record.i_iter + 1 >= self.stoppers[b].max_steps
        ]
        return stopped, None


class RefusesItsKwargs:
    """A component of any slot whose constructor refuses its kwargs (as ``torch.optim.SGD``
    refuses ``lr=-1.0``)."""

    def __init__(self, *args, level=1, name="x", **kwargs):
        raise ValueError(f"level must be positive, got {level}")


# --- components of another library, named by path: classes whose instances are called -------
# through forward/process, or whose call takes the input alone (open-retina's shapes)


class ForwardOnlyPenalty:
    """open-retina's regularization losses' shape: ``forward(stimulus)``, no ``__call__``."""

    def __init__(self, weight):
        self.weight = weight

    def forward(self, stimulus):
        return self.weight * (stimulus**2).sum()


class ProcessOnlyClip:
    """open-retina's stimulus postprocessors' shape: ``process(x)``, no ``__call__``."""

    def __init__(self, low, high):
        self.low, self.high = low, high

    def process(self, x):
        return torch.clamp(x, self.low, self.high)


class ScaleModule(torch.nn.Module):
    """A torch module whose ``forward`` takes the input alone."""

    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


class RunsInstead:
    """Nothing a slot can call: its method is named ``run``."""

    def run(self, x):
        return x


class ForwardTakesThree:
    """A ``forward`` that needs more than the slot passes."""

    def forward(self, x, y, z):
        return x
