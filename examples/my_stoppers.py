from mei.stoppers import OptimizationStopper


class EvaluationThreshold(OptimizationStopper):
    """Stop once the model's response exceeds `threshold`, or after `max_steps` steps at the
    latest: a model that never gets there must not run forever."""

    def __init__(self, threshold, max_steps=1000):
        self.threshold = threshold
        self.max_steps = max_steps

    def __call__(self, current_state):
        if current_state.evaluation > self.threshold:
            return True, None
        return current_state.i_iter + 1 >= self.max_steps, None
