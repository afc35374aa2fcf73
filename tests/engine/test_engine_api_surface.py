"""The names the seed documents are a public contract: this fails when one disappears."""

import importlib

import pytest

PUBLIC = {
    "mei": ["gradient_ascent", "gradient_ascent_units", "ConfigError"],
    "mei.methods": [
        "gradient_ascent",
        "gradient_ascent_units",
        "get_input_dimensions",
        "get_dims_for_loader_dict",
        "get_input_shape",
    ],
    "mei.domain": ["State", "Input"],
    "mei.optimization": [
        "MEI",
        "optimize",
        "default_transform",
        "default_regularization",
        "default_precondition",
        "default_postprocessing",
        "default_background",
    ],
    "mei.initial": [
        "InitialGuessCreator",
        "RandomNormal",
        "RandomNormalNullChannel",
        "RandomUniform",
        "FromTensor",
        "FromFile",
    ],
    "mei.stoppers": [
        "OptimizationStopper",
        "NumIterations",
        "MaxSteps",
        "EarlyStopping",
        "AnyStopper",
    ],
    "mei.objectives": [
        "Objective",
        "RegularIntervalObjective",
        "EvaluationObjective",
        "PostProcessedInputObjective",
    ],
    "mei.tracking": ["Tracker"],
    "mei.capture": ["capturing", "requested", "StepGraph"],
    "mei.transforms": [
        "Jitter",
        "RandomCrop",
        "Resize",
        "GrayscaleToRGB",
        "ChangeRange",
        "Identity",
        "Compose",
    ],
    "mei.regularization": ["TotalVariation", "LpNorm", "L2ToReference", "WeightedSum"],
    "mei.preconditioning": [
        "GaussianBlur",
        "FourierSmoothing",
        "MultiplyBy",
        "DivideByMeanOfAbsolute",
    ],
    "mei.postprocessing": [
        "ChangeNorm",
        "ClipRange",
        "ChangeStd",
        "PNormConstraint",
        "PNormConstraintAndClip",
    ],
    "mei.modules": [
        "ConstrainedOutputModel",
        "ContrastiveOutputModel",
        "EnsembleModel",
        "CEIObjective",
        "VEIObjective",
        "LayerResponse",
    ],
    "mei.import_helpers": [
        "import_object",
        "resolve_path",
        "dynamic_import",
        "split_module_name",
    ],
    "mei.errors": ["ConfigError", "ComponentError", "ModelError", "NonFiniteError"],
    "mei.validation": [
        "NaturalImages",
        "ValidationResult",
        "check_mei_shape",
        "ensemble_members",
        "read_images",
        "score_meis",
        "top_natural_images",
        "validate_meis",
    ],
    "mei.variants": [
        "exciting_variants",
        "exciting_variants_units",
        "diversity_index",
        "mean_pairwise_distance",
        "ExcitingVariantsObjective",
        "VARIANTS_DEFAULTS",
        "validate_variants_config",
    ],
    "mei.legacy.ops": [
        "GaussianBlur",
        "ChangeNorm",
        "ClipRange",
        "Jitter",
        "TotalVariation",
        "LpNorm",
        "FourierSmoothing",
        "MultiplyBy",
        "DivideByMeanOfAbsolute",
        "ChangeStd",
        "ChangeRange",
        "Resize",
        "GrayscaleToRGB",
        "RandomCrop",
        "Identity",
    ],
    "mei.parameterization": [
        "Pixel",
        "Fourier",
        "PhaseFourier",
        "magnitude_spectrum",
        "power_law_magnitude",
    ],
}

# open-retina users' recipes (docs/open-retina.md)
for _module, _names in {
    "mei.stoppers": ["LossEarlyStopping"],
    "mei.regularization": ["RangePenalty", "range_penalty"],
    "mei.preconditioning": ["TemporalBlur", "temporal_blur"],
    "mei.modules": ["TimeWindowResponse", "ClusterContrast"],
}.items():
    PUBLIC[_module] = PUBLIC.get(_module, []) + _names


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_importable(module):
    mod = importlib.import_module(module)
    missing = [name for name in PUBLIC[module] if not hasattr(mod, name)]
    assert not missing, f"{module} lost {missing}"


def test_gradient_ascent_keeps_the_seed_signature():
    import inspect

    from mei.methods import gradient_ascent

    params = list(inspect.signature(gradient_ascent).parameters)
    assert params[:4] == ["dataloaders", "model", "config", "seed"]
    assert callable(gradient_ascent.validate_config)


def test_modules_are_nn_modules_and_forward_kwargs_are_not_mutated():
    import torch
    from torch import nn

    from mei.modules import ConstrainedOutputModel, EnsembleModel

    class WithKwargs(nn.Module):
        def forward(self, x, scale=1.0, **extra):
            return x.flatten(1)[:, :3] * scale

    kwargs = {"scale": 2.0}
    model = ConstrainedOutputModel(WithKwargs(), 1, forward_kwargs=kwargs)
    x = torch.ones(2, 1, 2, 2)
    assert torch.equal(model(x, extra=1), torch.full((2, 1), 2.0))  # an int unit keeps its dim
    assert kwargs == {"scale": 2.0} and model.forward_kwargs == {"scale": 2.0}
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    model(x)
    assert seen == [torch.Size([2, 1])]
    ensemble = EnsembleModel(
        WithKwargs(), ConstrainedOutputModel(WithKwargs(), slice(None), target_fn=lambda y: 3 * y)
    )
    assert torch.equal(ensemble(x), torch.full((2, 3), 2.0))
