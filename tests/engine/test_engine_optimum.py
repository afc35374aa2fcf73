"""The engine finds optima that are known in closed form."""

import copy

import torch
from models import GaborNeuron, LinearNeurons, base_config, gabor
from torch.nn.functional import cosine_similarity

from mei.methods import gradient_ascent
from mei.modules import ConstrainedOutputModel


def _cos(a, b):
    return cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def test_linear_neuron_under_change_norm_reaches_norm_times_direction(device):
    model = LinearNeurons(n=3)
    config = base_config(device=device)
    mei, score, output = gradient_ascent(
        None, ConstrainedOutputModel(model, 1), config, 7, shape=(1, 1, 8, 8)
    )
    w = model.weight[1:2].detach().cpu()  # the run left the model on its device
    optimum = 3.0 * w / w.norm()
    assert mei.device.type == "cpu" and mei.shape == (1, 1, 8, 8)
    assert _cos(mei, optimum) >= 0.999
    assert torch.allclose(mei.norm(), torch.tensor(3.0), atol=1e-4)
    # score is the model's evaluation of the returned MEI
    assert abs(score - (mei.flatten() @ w.flatten()).item()) < 1e-4
    assert output == {}


def test_gabor_neuron_recovers_its_gabor():
    config = base_config(
        optimizer={"path": "torch.optim.SGD", "kwargs": {"lr": 1.0}},
        stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 200}},
        postprocessing={"path": "mei.postprocessing.ChangeNorm", "kwargs": {"norm": 10.0}},
        precondition={"path": "mei.preconditioning.GaussianBlur", "kwargs": {"sigma": 0.5}},
    )
    mei, score, _ = gradient_ascent(None, GaborNeuron(), config, 0, shape=(1, 1, 21, 21))
    assert _cos(mei, gabor()) >= 0.95
    assert score > GaborNeuron()(torch.randn(1, 1, 21, 21) * 10 / 21).item()


def test_score_is_the_last_steps_evaluation_and_trace_is_logged():
    model = ConstrainedOutputModel(LinearNeurons(n=2), 0)
    config = base_config(
        objectives=[
            {"path": "mei.objectives.EvaluationObjective", "kwargs": {"interval": 10}},
            {"path": "mei.objectives.PostProcessedInputObjective", "kwargs": {"interval": 25}},
        ]
    )
    mei, score, output = gradient_ascent(None, model, config, 1, shape=(1, 1, 8, 8))
    evaluations = output["mei.objectives.EvaluationObjective"]
    assert evaluations["times"] == list(range(0, 51, 10))  # NumIterations(50): steps 0..50
    assert all(isinstance(v, float) for v in evaluations["values"])
    assert evaluations["values"][-1] > evaluations["values"][0]
    inputs = output["mei.objectives.PostProcessedInputObjective"]
    assert inputs["times"] == [0, 25, 50]
    assert inputs["values"][0].shape == (1, 1, 8, 8)
    # the original library's score: the evaluation of the last step, before its update
    assert score == evaluations["values"][-1]
    # ... not the MEI's own evaluation, seen where the input still moves (after 50 steps it
    # may have converged to the last bit on some processors)
    early = dict(
        config, stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 2}}
    )
    early_mei, early_score, _ = gradient_ascent(None, model, early, 1, shape=(1, 1, 8, 8))
    assert early_score != model(early_mei).item()
    final = gradient_ascent(None, model, dict(config, score="final"), 1, shape=(1, 1, 8, 8))
    assert torch.equal(final[0], mei)
    assert final[1] == model(mei).item()


def test_num_iterations_runs_n_plus_one_steps_and_max_steps_exactly_n():
    for path, kwargs, steps in (
        ("mei.stoppers.NumIterations", {"num_iterations": 7}, 8),
        ("mei.stoppers.MaxSteps", {"steps": 7}, 7),
    ):
        config = base_config(
            stopper={"path": path, "kwargs": kwargs},
            objectives=[{"path": "mei.objectives.EvaluationObjective", "kwargs": {"interval": 1}}],
        )
        _, _, output = gradient_ascent(
            None, ConstrainedOutputModel(LinearNeurons(), 0), config, 0, shape=(1, 1, 8, 8)
        )
        assert output["mei.objectives.EvaluationObjective"]["times"] == list(range(steps))


def test_same_seed_gives_bitwise_identical_meis_and_other_seed_differs():
    model = ConstrainedOutputModel(LinearNeurons(), 2)
    config = base_config(
        transform={"path": "mei.transforms.Jitter", "kwargs": {"max_jitter": 2}},
        precondition={"path": "mei.preconditioning.GaussianBlur", "kwargs": {"sigma": 1.0}},
        stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 5}},
    )
    a = gradient_ascent(None, model, config, 3, shape=(1, 1, 8, 8))
    torch.rand(10)  # global generator state must not matter
    b = gradient_ascent(None, model, config, 3, shape=(1, 1, 8, 8))
    c = gradient_ascent(None, model, config, 4, shape=(1, 1, 8, 8))
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert not torch.equal(a[0], c[0])


def test_run_leaves_config_model_and_global_rng_untouched():
    net = LinearNeurons()
    net.train()
    model = ConstrainedOutputModel(net, 0)
    config = base_config(
        objectives=[{"path": "mei.objectives.EvaluationObjective", "kwargs": {"interval": 5}}]
    )
    snapshot = copy.deepcopy(config)
    state_before = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    gradient_ascent(None, model, config, 0, shape=(1, 1, 8, 8))
    assert torch.equal(torch.rand(3), expected_next)
    assert config == snapshot
    assert net.training and net.weight.requires_grad
    assert all(torch.equal(v, state_before[k]) for k, v in net.state_dict().items())


def test_input_shape_from_nnfabrik_style_dataloaders():
    from collections import namedtuple

    from torch.utils.data import DataLoader, TensorDataset

    Batch = namedtuple("Batch", ["images", "responses"])

    class Named(TensorDataset):
        def __getitem__(self, i):
            return Batch(*super().__getitem__(i))

    loader = DataLoader(Named(torch.zeros(4, 1, 8, 8), torch.zeros(4, 3)), batch_size=2)
    dataloaders = {"train": {"session-1": loader}}
    mei, _, _ = gradient_ascent(
        dataloaders, ConstrainedOutputModel(LinearNeurons(), 0), base_config(), 0
    )
    assert mei.shape == (1, 1, 8, 8)
    tuple_loader = DataLoader(
        TensorDataset(torch.zeros(4, 1, 8, 8), torch.zeros(4, 3)), batch_size=2
    )
    mei, _, _ = gradient_ascent(
        {"train": {"a": tuple_loader}}, ConstrainedOutputModel(LinearNeurons(), 0), base_config(), 0
    )
    assert mei.shape == (1, 1, 8, 8)


def test_one_forward_and_one_backward_per_step():
    net = LinearNeurons()
    counts = {"forward": 0, "backward": 0}
    net.register_forward_hook(lambda *a: counts.__setitem__("forward", counts["forward"] + 1))
    net.register_full_backward_hook(
        lambda *a: counts.__setitem__("backward", counts["backward"] + 1)
    )
    config = base_config(
        stopper={"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 12}},
        precondition={"path": "mei.preconditioning.GaussianBlur", "kwargs": {"sigma": 1.0}},
        regularization={"path": "mei.regularization.TotalVariation", "kwargs": {"weight": 0.1}},
    )
    gradient_ascent(None, ConstrainedOutputModel(net, 0), config, 0, shape=(1, 1, 8, 8))
    assert counts == {"forward": 13, "backward": 13}  # NumIterations(12): 13 steps
    counts.update(forward=0, backward=0)
    config["score"] = "final"
    gradient_ascent(None, ConstrainedOutputModel(net, 0), config, 0, shape=(1, 1, 8, 8))
    assert counts == {"forward": 13 + 1, "backward": 13}  # + 1: scoring the returned MEI


def test_states_copy_nothing_to_the_host_unless_read():
    import custom_components

    records = []

    def by_step_count(state):
        records.append(state._record)
        return state.i_iter >= 9, None

    custom_components.by_step_count = lambda: by_step_count
    try:
        config = base_config(stopper={"path": "custom_components.by_step_count"})
        gradient_ascent(
            None, ConstrainedOutputModel(LinearNeurons(), 0), config, 0, shape=(1, 1, 8, 8)
        )
    finally:
        del custom_components.by_step_count
    assert len(records) == 10
    assert all(record._cpu == {} for record in records)  # nothing was materialized
    records[3].element("evaluation", 0)
    assert set(records[3]._cpu) == {"evaluation"}
