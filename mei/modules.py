"""Model wrappers: select one output unit, average an ensemble, select one unit per element,
reduce a video model's responses over a time window, read an inner layer's channels
(:class:`LayerResponse`), contrast clusters of units; check a model's first response.

The wrappers that select units of a model name the attribute(s) holding that model in
``inner_models``; :func:`wrap_inner` puts something between a wrapper and its model (the
config's ``response`` entry does so for a run: it reduces a video model's responses over time
before the unit is selected).
"""

from __future__ import annotations

import copy
import difflib
import functools
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from .errors import ModelError, list_names


def _identity(x: Tensor) -> Tensor:
    return x


def _select(output: Tensor, constraint: Any, view: bool = False) -> Tensor:
    """``output[:, constraint]`` as the original library selected: an int unit keeps its
    dimension (``(B, 1)``), ``None`` or an empty list selects everything.

    ``view``: an int unit may be selected as a view of ``output`` (a width-one slice: the same
    values without an index kernel forward and an index_put backward). Only where nobody
    changes the selection in place: the model's output may be saved for its backward.
    """
    if constraint is None:
        return output
    if isinstance(constraint, numbers.Integral):
        unit = int(constraint)
        if output.dim() >= 2 and -output.shape[1] <= unit < output.shape[1]:
            # output[:, [unit]] without an index tensor made on the host (copied to a GPU
            # every step, which waits for the device); a copy unless a view may do
            selected = output.narrow(1, unit % output.shape[1], 1)
            return selected if view else selected.clone()
        return output[:, [unit]]  # the original's error for a unit out of range
    if isinstance(constraint, slice):
        return output[:, constraint]
    units = list(constraint)
    if not units:
        return output
    if all(type(u) is int for u in units):  # plain ints (not bools, which select by mask)
        return output[:, _unit_index(tuple(units), output.device)]
    return output[:, units]


@functools.lru_cache(maxsize=256)
def _unit_index(units: tuple[int, ...], device: torch.device) -> Tensor:
    """The index tensor ``output[:, units]`` makes of a list, made on ``device`` once (a list
    is turned into an index on the host and copied to the device every step)."""
    return torch.tensor(units, dtype=torch.long, device=device)


class ConstrainedOutputModel(nn.Module):
    """The response of some output units: ``target_fn(model(x, **forward_kwargs)[:, units])``.

    ``constraint`` indexes the model's second dimension: an int (selected as ``[unit]``, so
    ``target_fn`` gets ``(B, 1)``, as in the original library), a list of units, a slice, or
    ``None`` (everything). Without ``target_fn`` an int unit's ``(B, 1)`` is a view of the
    model's output (``output[:, unit:unit + 1]``: no copy per step). ``target_fn`` may reduce
    a batch of one to a single number (e.g.
    ``torch.mean`` over several units). ``forward_kwargs`` are passed to every call and never
    changed by one; keyword arguments given at call time are added to a copy.
    """

    inner_models: tuple[str, ...] = ("model",)
    """The attributes holding the model whose units this wrapper selects (see
    :func:`wrap_inner`)."""

    def __init__(
        self,
        model: nn.Module,
        constraint: Any,
        target_fn: Callable[[Tensor], Tensor] | None = None,
        forward_kwargs: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self.model = model
        self.constraint = constraint
        self.target_fn = target_fn if target_fn is not None else _identity
        self.forward_kwargs = dict(forward_kwargs) if forward_kwargs else {}

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        merged = {**self.forward_kwargs, **kwargs}
        # a lab's target_fn gets a tensor of its own, as in the original library (it may
        # change it in place); the engine itself does not
        output = self.model(x, *args, **merged)
        if self.target_fn is _identity:
            return _select(output, self.constraint, view=True)
        return self.target_fn(_select(output, self.constraint))

    @property
    def has_target_fn(self) -> bool:
        """Whether a ``target_fn`` was given (the selection is not returned as it is)."""
        return self.target_fn is not _identity

    def predict_mean(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """The selected units of the model's ``predict_mean`` (a model that predicts a
        response distribution), through ``target_fn``: what a CEI or VEI ascends
        (``"mei_class_name"``, see :class:`CEIObjective`)."""
        mean = _prediction(self.model, "predict_mean")(x, *args, **self.forward_kwargs, **kwargs)
        return self.target_fn(_select(mean, self.constraint))

    def predict_variance(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """The selected units of the model's ``predict_variance`` (no ``target_fn``)."""
        predict = _prediction(self.model, "predict_variance")
        return _select(predict(x, *args, **self.forward_kwargs, **kwargs), self.constraint)

    def extra_repr(self) -> str:
        target = "" if self.target_fn is _identity else f", target_fn={self.target_fn!r}"
        return f"constraint={self.constraint!r}{target}, forward_kwargs={self.forward_kwargs!r}"


class ContrastiveOutputModel(nn.Module):
    """The difference of two models' responses of one unit:
    ``target_fn((model1(x) - model2(x))[:, constraint])`` (the original library's wrapper;
    both get ``forward_kwargs``)."""

    inner_models: tuple[str, ...] = ("model1", "model2")

    def __init__(
        self,
        model1: nn.Module,
        model2: nn.Module,
        constraint: Any,
        target_fn: Callable[[Tensor], Tensor] | None = None,
        forward_kwargs: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self.model1 = model1
        self.model2 = model2
        self.constraint = constraint
        self.target_fn = target_fn if target_fn is not None else _identity
        self.forward_kwargs = dict(forward_kwargs) if forward_kwargs else {}

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        merged = {**self.forward_kwargs, **kwargs}
        contrast = self.model1(x, *args, **merged) - self.model2(x, *args, **merged)
        return self.target_fn(contrast[:, self.constraint])

    def extra_repr(self) -> str:
        return f"constraint={self.constraint!r}, forward_kwargs={self.forward_kwargs!r}"


class EnsembleModel(nn.Module):
    """Averages the outputs of its members (all called with the same arguments)."""

    def __init__(self, *members: nn.Module):
        super().__init__()
        if not members:
            raise ValueError("EnsembleModel needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor, *args: Any, avg: bool = True, **kwargs: Any) -> Tensor:
        """The members' mean output; ``avg=False``: their outputs stacked, ``(members, ...)``."""
        outputs = [member(x, *args, **kwargs) for member in self.members]
        for i, output in enumerate(outputs):
            if isinstance(output, Tensor) and not output.dtype.is_floating_point:
                raise ModelError(
                    f"ensemble member {i} ({type(self.members[i]).__name__}) returned a tensor "
                    f"of dtype {output.dtype}; members must return floating-point values to be "
                    "averaged (and ascended)"
                )
        stacked = torch.stack(outputs, dim=0)
        return stacked if avg is False else stacked.mean(dim=0)

    def predict_mean(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """The members' mean ``predict_mean`` (members predicting response distributions)."""
        means = [_prediction(m, "predict_mean")(x, *args, **kwargs) for m in self.members]
        return torch.stack(means, dim=0).mean(dim=0)

    def predict_variance(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """The members' mean ``predict_variance``: what the sinzlab/mei fork that defined
        CEIs and VEIs computed for an ensemble (its mixture formula reduces to this)."""
        variances = [_prediction(m, "predict_variance")(x, *args, **kwargs) for m in self.members]
        return torch.stack(variances, dim=0).mean(dim=0)


def _prediction(model: Any, name: str) -> Callable[..., Tensor]:
    method = getattr(model, name, None)
    if not callable(method):
        raise ModelError(
            f"the model ({type(model).__name__}) has no {name}(x) method: a CEI or VEI "
            "(mei_class_name) needs a model that predicts the mean (and, for a VEI, the "
            "variance) of each neuron's response"
        )
    return cast(Callable[..., Tensor], method)


def _check_predicts(model: Any, name: str) -> None:
    """Raise :class:`~mei.errors.ModelError` unless ``model`` (through the wrappers that
    delegate ``name`` to the models they hold) has a ``name`` method."""
    if isinstance(model, ConstrainedOutputModel):
        _check_predicts(model.model, name)
    elif isinstance(model, EnsembleModel):
        for member in model.members:
            _check_predicts(member, name)
    else:
        _prediction(model, name)


def _reference(model: Any, name: str, kind: str) -> Tensor | float:
    """``model.<name>`` (the response of the unit's MEI), which a CEI or VEI is relative to."""
    value = getattr(model, name, None)
    if value is None:
        raise ModelError(
            f"a {kind} is relative to the unit's MEI: the model ({type(model).__name__}) has no "
            f"{name} (the {'mean' if name == 'mei_mean' else 'variance'} of the unit's response "
            "to its MEI). The sinzlab/mei fork's MEI table set it from the unit's MEI rows in "
            "add_params_to_model(model, key); set model."
            f"{name} there (a method of your MEI table, called before each key's run) or on "
            "the model you pass"
        )
    if isinstance(value, Tensor):
        return value
    if isinstance(value, numbers.Real):
        return float(value)
    return torch.as_tensor(value)


class CEIObjective(nn.Module):
    """A certainly exciting input (``"mei_class_name": "CEI"``, as the sinzlab/mei fork used
    in sinzlab/nnsysident defines it): an input whose predicted mean response is
    ``ref_level`` times that of the unit's MEI. Ascends ``-(ref_level - mean / mei_mean)**2``
    where ``mean = model.predict_mean(x)`` and ``mei_mean = model.mei_mean``; ``(B,)`` or
    ``(B, 1)`` as the model's ``predict_mean``. The last evaluation's mean and variance (if
    the model predicts one) are kept in :attr:`last`.
    """

    kind = "CEI"

    def __init__(self, model: nn.Module, ref_level: float):
        super().__init__()
        self.model = model
        self.ref_level = float(ref_level)
        _check_predicts(model, "predict_mean")
        self.mei_mean = _reference(model, "mei_mean", self.kind)
        try:
            _check_predicts(model, "predict_variance")
            self._variance = True
        except ModelError:
            self._variance = False
        #: ``{"mean": Tensor, "variance": Tensor}`` of the last evaluation (detached)
        self.last: dict[str, Tensor] = {}

    def _moments(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        mean = _prediction(self.model, "predict_mean")(x)
        variance = _prediction(self.model, "predict_variance")(x) if self._variance else None
        self.last = {"mean": mean.detach()}
        if variance is not None:
            self.last["variance"] = variance.detach()
        return mean, variance

    def forward(self, x: Tensor) -> Tensor:
        mean, _ = self._moments(x)
        return -((self.ref_level - mean / self.mei_mean) ** 2)

    def extra_repr(self) -> str:
        return f"ref_level={self.ref_level}"


class VEIObjective(CEIObjective):
    """A variably exciting input (``"mei_class_name": "VEI"``, the fork's meaning): an input
    whose predicted mean response stays near ``ref_level`` times that of the unit's MEI while
    the predicted variance is maximized (``variance_optimization="max"``) or minimized
    (``"min"``). Ascends ``-well(mean / mei_mean) +- variance / mei_variance`` with the
    potential well around ``ref_level`` of half-width ``dx`` and steepness ``scale``:
    ``"exp"``, ``exp(-scale (r + dx - ref)) + exp(scale (r - dx - ref))``, or ``"linear"``,
    ``scale / 2 (r - ref) erf((r - ref) / (sqrt(2) dx))``.
    """

    kind = "VEI"

    def __init__(
        self,
        model: nn.Module,
        ref_level: float,
        scale: float,
        dx: float,
        variance_optimization: str,
        potential_well_function: str = "exp",
    ):
        super().__init__(model, ref_level)
        if variance_optimization not in ("max", "min"):
            raise ValueError(
                f"variance_optimization must be 'max' or 'min', got {variance_optimization!r}"
            )
        if potential_well_function not in ("exp", "linear"):
            raise ValueError(
                "potential_well_function must be 'exp' or 'linear', got "
                f"{potential_well_function!r}"
            )
        self.scale, self.dx = float(scale), float(dx)
        self.variance_optimization = variance_optimization
        self.potential_well_function = potential_well_function
        _check_predicts(model, "predict_variance")
        self.mei_variance = _reference(model, "mei_variance", self.kind)

    def well(self, ratio: Tensor) -> Tensor:
        """The potential well at ``ratio = mean / mei_mean``."""
        offset = ratio - self.ref_level
        if self.potential_well_function == "exp":
            return torch.exp(-self.scale * (offset + self.dx)) + torch.exp(
                self.scale * (offset - self.dx)
            )
        return self.scale * 0.5 * offset * torch.erf(offset / (2**0.5) / self.dx)

    def forward(self, x: Tensor) -> Tensor:
        mean, variance = self._moments(x)
        assert variance is not None  # checked in __init__
        spread = variance / self.mei_variance
        well = -self.well(mean / self.mei_mean)
        return well + spread if self.variance_optimization == "max" else well - spread

    def extra_repr(self) -> str:
        return (
            f"ref_level={self.ref_level}, scale={self.scale}, dx={self.dx}, "
            f"variance_optimization={self.variance_optimization!r}, "
            f"potential_well_function={self.potential_well_function!r}"
        )


class TimeWindowResponse(nn.Module):
    """A video model's responses reduced over a window of output frames: ``(B, ...) ->
    (B, N)``.

    ``model`` maps movies ``(B, C, T, H, W)`` to responses over time, ``(B, T', N)`` with
    ``time_dim=1`` (open-retina's layout) or ``(B, N, T')`` with ``time_dim=2``. The window is
    the output frames ``[start:stop]`` (Python slice semantics: ``start=-k`` is the last ``k``
    frames); ``reduce="mean"`` averages them (open-retina's slice-mean response reducer),
    ``"sum"`` adds them (the frame-sum objective of sinzlab/mei forks' ``frames_maximize``).
    Wrap the model before selecting units (``ConstrainedOutputModel(TimeWindowResponse(m,
    start=-10), unit)``), or name it in a method config's ``response`` entry, which does that
    for the run; keyword arguments are passed to ``model``.

    A window that reaches past the output frames keeps the frames it covers (as a slice
    does, and as open-retina's ``SliceMeanReducer(start, length)`` shortens its window to the
    frames there are); one that covers none raises :class:`~mei.errors.ModelError` naming the
    window and the number of output frames (where open-retina's reducer falls back to the
    first ``length`` frames, with a warning). ``strict=True``: a window reaching past either
    end raises that error too, so a window is always the frames it names.
    """

    elementwise = True
    """Each element's response is reduced on its own (batched runs equal single runs)."""

    def __init__(
        self,
        model: nn.Module,
        start: int | None = None,
        stop: int | None = None,
        reduce: str = "mean",
        time_dim: int = 1,
        strict: bool = False,
    ):
        super().__init__()
        if reduce not in ("mean", "sum"):
            raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
        if time_dim not in (1, 2):
            raise ValueError(f"time_dim must be 1 (B, T, N) or 2 (B, N, T), got {time_dim!r}")
        self.model = model
        self.start = start
        self.stop = stop
        self.reduce = reduce
        self.time_dim = time_dim
        self.strict = bool(strict)

    def _check_reach(self, frames: int) -> None:
        """``strict``: raise unless ``[start:stop]`` lies within ``frames`` output frames."""
        outside = [
            bound
            for bound in (self.start, self.stop)
            if bound is not None and not -frames <= bound <= frames
        ]
        if outside:
            kept = range(frames)[slice(self.start, self.stop)]
            raise ModelError(
                f"the window [{self.start}:{self.stop}] reaches past the model's {frames} output "
                f"frames (it would keep {len(kept)} of them, [{kept.start}:{kept.stop}]); "
                "choose start and stop within them (strict=True)"
            )

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        output = self.model(x, *args, **kwargs)
        if not isinstance(output, Tensor) or output.dim() != 3:
            got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            layout = "(B, T, N)" if self.time_dim == 1 else "(B, N, T)"
            raise ModelError(f"TimeWindowResponse needs responses {layout}, the model gave {got}")
        if self.strict:
            self._check_reach(output.shape[self.time_dim])
        index = [slice(None)] * 3
        index[self.time_dim] = slice(self.start, self.stop)
        window = output[tuple(index)]
        if window.shape[self.time_dim] == 0:
            raise ModelError(
                f"the window [{self.start}:{self.stop}] holds none of the model's "
                f"{output.shape[self.time_dim]} output frames"
            )
        reduced: Tensor = getattr(window, self.reduce)(dim=self.time_dim)
        return reduced

    def extra_repr(self) -> str:
        return (
            f"start={self.start!r}, stop={self.stop!r}, reduce={self.reduce!r}, "
            f"time_dim={self.time_dim!r}" + (", strict=True" if self.strict else "")
        )


def _is_int(value: Any) -> bool:
    """An integer, not a bool (numpy integers too: a config fetched from a table)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class _LayerReached(Exception):
    """Raised by :class:`LayerResponse`'s hook to stop the forward pass after the layer."""


def _layer_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_modules() if name]


def _find_layer(model: nn.Module, layer: str) -> nn.Module | None:
    try:
        return model.get_submodule(layer)
    except AttributeError:
        return None


def _no_layer(model: nn.Module, layer: str) -> ModelError:
    names = _layer_names(model)
    close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
    hint = f"; close matches: {list_names(close)}" if close else ""
    return ModelError(
        f"the model ({type(model).__name__}) has no layer {layer!r}{hint}; its layers: "
        f"{list_names(names, limit=12)} (name a module path as model.get_submodule takes it)"
    )


class LayerResponse(nn.Module):
    """The channels of an inner layer of ``model``, as its outputs: ``(B, ...) -> (B, C)``.

    A forward hook on ``model.get_submodule(layer)`` takes the layer's output during the
    model's forward pass; with ``truncate`` (the default) the pass stops there, so the layers
    after it are not computed. The hook is registered for each call and removed when the
    call ends, also when it raises, so the model is left as it was.

    The layer's output is reduced to one value per channel:

    - ``(B, C)`` (a linear layer): as it is;
    - ``(B, C, H, W)``: ``position="mean"`` averages over space (the channel's mean
      activation), ``"center"`` takes the unit at ``(H // 2, W // 2)``, ``[y, x]`` the unit
      there;
    - ``(B, C, T, H, W)`` (a video layer): first the frames ``[start:stop]`` (Python slice
      semantics: ``start=-1`` is the last frame), reduced by ``time_reduce`` (``"mean"`` or
      ``"sum"``), then space as for images.

    Wrap the model before selecting a channel,
    ``ConstrainedOutputModel(LayerResponse(model, "core.features.layer1"), 5)``, or name it
    in a method config's ``response`` entry (``{"path": "mei.modules.LayerResponse",
    "kwargs": {"layer": "core.features.layer1", "position": "center"}}``), which does that for
    the run. An :class:`EnsembleModel` whose members all have ``layer`` (and that has no such
    module itself) gets the mean of the members' channels. A wrong name raises
    :class:`~mei.errors.ModelError` listing close matches.
    """

    elementwise = True
    """Each element's channels are reduced on their own (batched runs equal single runs)."""

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        position: str | Sequence[int] = "mean",
        start: int | None = None,
        stop: int | None = None,
        time_reduce: str = "mean",
        truncate: bool = True,
    ):
        super().__init__()
        self.check_arguments(layer, position, start, stop, time_reduce, truncate)
        self.model = model
        self.layer = layer
        self.position = position if isinstance(position, str) else [int(p) for p in position]
        self.start = start
        self.stop = stop
        self.time_reduce = time_reduce
        self.truncate = truncate
        self._members: list[nn.Module] | None = None
        if _find_layer(model, layer) is None:
            members = getattr(model, "members", None)
            if (
                isinstance(model, EnsembleModel)
                and members is not None
                and all(_find_layer(m, layer) is not None for m in members)
            ):
                self._members = list(members)
            else:
                raise _no_layer(model, layer)

    @staticmethod
    def check_arguments(
        layer: Any,
        position: Any = "mean",
        start: Any = None,
        stop: Any = None,
        time_reduce: Any = "mean",
        truncate: Any = True,
    ) -> None:
        """Raise ``ValueError`` for arguments no model can take (a config is checked so,
        before a model is there)."""
        if not isinstance(layer, str) or not layer:
            raise ValueError(
                f"layer must be a module path such as 'core.features.0', got {layer!r}"
            )
        if isinstance(position, str):
            if position not in ("mean", "center"):
                raise ValueError(f"position must be 'mean', 'center' or [y, x], got {position!r}")
        elif (
            not hasattr(position, "__len__")  # a list, a tuple (a numpy array from a table)
            or len(position) != 2
            or not all(_is_int(p) for p in position)
        ):
            raise ValueError(f"position must be 'mean', 'center' or [y, x], got {position!r}")
        for name, value in (("start", start), ("stop", stop)):
            if value is not None and not _is_int(value):
                raise ValueError(f"{name} must be an int or None, got {value!r}")
        if time_reduce not in ("mean", "sum"):
            raise ValueError(f"time_reduce must be 'mean' or 'sum', got {time_reduce!r}")
        if not isinstance(truncate, bool):
            raise ValueError(f"truncate must be True or False, got {truncate!r}")

    def _activation(self, model: nn.Module, x: Tensor, args: Any, kwargs: Any) -> Tensor:
        """The layer's output for ``x``, reduced to ``(B, C)``."""
        seen: list[Any] = []

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            seen.append(output)
            if self.truncate:
                raise _LayerReached

        handle = model.get_submodule(self.layer).register_forward_hook(hook)
        try:
            model(x, *args, **kwargs)
        except _LayerReached:
            pass
        finally:
            handle.remove()
        if not seen:
            raise ModelError(f"the layer {self.layer!r} was not called in the model's forward pass")
        return self._reduce(seen[0])

    def _reduce(self, output: Any) -> Tensor:
        if not isinstance(output, Tensor) or output.dim() not in (2, 4, 5):
            got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ModelError(
                f"the layer {self.layer!r} gave {got}; LayerResponse reads (B, C), images "
                "(B, C, H, W) or movies (B, C, T, H, W)"
            )
        if output.dim() == 2:
            return output
        if output.dim() == 5:
            window = output[:, :, self.start : self.stop]
            if window.shape[2] == 0:
                raise ModelError(
                    f"the window [{self.start}:{self.stop}] holds none of the layer's "
                    f"{output.shape[2]} frames"
                )
            output = getattr(window, self.time_reduce)(dim=2)
        elif self.start is not None or self.stop is not None:
            raise ModelError(
                f"start/stop select frames, and the layer {self.layer!r} gave images "
                f"{tuple(output.shape)} without a time axis"
            )
        height, width = output.shape[-2:]
        if self.position == "mean":
            reduced: Tensor = output.mean(dim=(-2, -1))
            return reduced
        if isinstance(self.position, str):  # "center"
            y, x = height // 2, width // 2
        else:
            y, x = self.position
        if not (-height <= y < height and -width <= x < width):
            raise ModelError(f"position [{y}, {x}] is outside the layer's {height} x {width} units")
        unit: Tensor = output[:, :, y, x]
        return unit

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if self._members is None:
            return self._activation(self.model, x, args, kwargs)
        channels = [self._activation(m, x, args, kwargs) for m in self._members]
        return torch.stack(channels).mean(dim=0)

    def extra_repr(self) -> str:
        return (
            f"layer={self.layer!r}, position={self.position!r}, start={self.start!r}, "
            f"stop={self.stop!r}, time_reduce={self.time_reduce!r}, truncate={self.truncate!r}"
        )


class ClusterContrast(nn.Module):
    """The most discriminative stimulus objective of Burg et al. (ICLR 2024), per element.

    ``clusters`` lists the output units of each of ``K`` clusters. For an input, each
    cluster's response is the mean response of its units; element ``b`` of the batch is a
    stimulus for cluster ``targets[b]`` (default: element ``b`` for cluster ``b``) and gets
    ``log softmax(cluster responses / temperature)[targets[b]]``, ``(B,)``: high when that
    cluster responds and the others do not. Each element's value depends on its own input
    only, so the stimuli of all clusters are optimized in one batched run.
    ``forward_kwargs`` are passed to ``model``.
    """

    inner_models: tuple[str, ...] = ("model",)

    def __init__(
        self,
        model: nn.Module,
        clusters: Sequence[Sequence[int]],
        targets: Sequence[int] | None = None,
        temperature: float = 1.0,
        forward_kwargs: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        if len(clusters) < 2 or any(len(c) == 0 for c in clusters):
            raise ValueError(f"need at least two clusters, none empty; got {clusters!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature!r}")
        self.model = model
        self.clusters = [[int(u) for u in c] for c in clusters]
        self.targets = list(range(len(clusters))) if targets is None else [int(t) for t in targets]
        if any(not 0 <= t < len(clusters) for t in self.targets):
            raise ValueError(f"targets must index the {len(clusters)} clusters, got {targets!r}")
        self.temperature = float(temperature)
        self.forward_kwargs = dict(forward_kwargs) if forward_kwargs else {}
        n_units = max(max(c) for c in self.clusters) + 1
        membership = torch.zeros(len(clusters), n_units)
        for k, units in enumerate(self.clusters):
            membership[k, units] = 1.0 / len(units)
        self.register_buffer("_membership", membership, persistent=False)
        self.register_buffer("_targets", torch.tensor(self.targets), persistent=False)

    def cluster_responses(self, x: Tensor) -> Tensor:
        """Each cluster's mean response to each input, ``(B, K)``."""
        output = self.model(x, **self.forward_kwargs)
        membership = cast(Tensor, self._membership).to(output.device, output.dtype)
        responses: Tensor = output[:, : membership.shape[1]] @ membership.T
        return responses

    def forward(self, x: Tensor) -> Tensor:
        if len(x) != len(self.targets):
            raise ValueError(f"expected a batch of {len(self.targets)} inputs, got {len(x)}")
        log_p = torch.log_softmax(self.cluster_responses(x) / self.temperature, dim=1)
        targets = cast(Tensor, self._targets).to(log_p.device)
        selected: Tensor = log_p[torch.arange(len(x), device=log_p.device), targets]
        return selected

    def extra_repr(self) -> str:
        return (
            f"clusters={self.clusters!r}, targets={self.targets!r}, "
            f"temperature={self.temperature!r}"
        )


class UnitPerElement(nn.Module):
    """Element ``b`` of the batch gets unit ``units[b]``: ``model(x)[b, units[b]]``, ``(B,)``.

    This is how a batched run gives every MEI its own neuron. ``target_fn`` and
    ``forward_kwargs`` are as in :class:`ConstrainedOutputModel`; ``target_fn`` is applied to
    each element's selection ``(1, 1)`` on its own, exactly as the element's single run applies
    it, and must give one value.
    """

    inner_models: tuple[str, ...] = ("model",)
    _units: Tensor  # buffers: each element's unit and row, on the model's output device
    _rows: Tensor

    def __init__(
        self,
        model: nn.Module,
        units: Sequence[int],
        target_fn: Callable[[Tensor], Tensor] | None = None,
        forward_kwargs: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self.model = model
        self.units = [int(u) for u in units]
        self.target_fn = target_fn if target_fn is not None else _identity
        self.forward_kwargs = dict(forward_kwargs) if forward_kwargs else {}
        self.register_buffer("_units", torch.tensor(self.units), persistent=False)
        self.register_buffer("_rows", torch.arange(len(self.units)), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if len(x) != len(self.units):
            raise ValueError(f"expected a batch of {len(self.units)} inputs, got {len(x)}")
        output = self.model(x, **self.forward_kwargs)
        if self.target_fn is _identity:
            rows, units = self._rows, self._units
            if units.device != output.device:  # made once per device, not per step
                self._units = units = units.to(output.device)
                self._rows = rows = rows.to(output.device)
            selected: Tensor = output[rows, units]
            return selected
        values = []
        # each element's row as a view (a row taken by indexing has a backward that writes a
        # whole batch of zeros: B of them per step), and its unit as a copy of its own
        per_row = torch.split(output, 1)
        for b, unit in enumerate(self.units):
            value = self.target_fn(_select(per_row[b], unit))
            if not isinstance(value, Tensor) or value.numel() != 1:
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ModelError(
                    f"target_fn must reduce one element's response (1, 1) to one value, got {got}"
                )
            values.append(value.reshape(()))
        return torch.stack(values)

    def extra_repr(self) -> str:
        return f"units={self.units!r}"


class NotAWrapperError(TypeError):
    """:func:`wrap_inner` was given a model that declares no ``inner_models``."""


def wrap_inner(model: nn.Module, wrap: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """A copy of the wrapper ``model`` whose inner model(s) are ``wrap(inner)``.

    ``model`` is a wrapper that selects units of (or contrasts) the models in the attributes
    its class names in ``inner_models``: :class:`ConstrainedOutputModel`,
    :class:`UnitPerElement`, :class:`ClusterContrast` (``"model"``),
    :class:`ContrastiveOutputModel` (``"model1"``, ``"model2"``), or a lab's own class that
    declares the attribute. The copy shares everything else with ``model`` (the inner models
    themselves, buffers, ``target_fn``; ``forward_kwargs`` is copied), and ``model`` is not
    changed. Raises :class:`NotAWrapperError` for a model without ``inner_models``.
    """
    names = getattr(type(model), "inner_models", None)
    if not isinstance(model, nn.Module) or not names:
        raise NotAWrapperError(
            f"{type(model).__name__} does not declare the attribute(s) holding the model whose "
            "units it selects (inner_models)"
        )
    clone = copy.copy(model)  # a new __dict__ holding the same values
    state = clone.__dict__
    for registry in ("_parameters", "_buffers", "_modules"):
        state[registry] = dict(state[registry])  # the copy's own: setting a module below
    if isinstance(state.get("forward_kwargs"), dict):
        state["forward_kwargs"] = dict(state["forward_kwargs"])
    for name in names:
        setattr(clone, name, wrap(getattr(model, name)))
    return clone


class FirstCallCheck:
    """``model`` for one run, checked at its first call (the first step) only.

    Its output must be floating point, and for every batch element the gradient of the
    output with respect to the model's input must not be zero everywhere: a model such as
    ``y * 0 + 1`` has a gradient path but no gradient, and ascending it would return the
    initial guess unchanged. The gradient is seen on a view of the input the model gets, so
    transforms (crops, masks) and regularization do not count. Raises
    :class:`~mei.errors.ModelError`; costs one device synchronization, in the first backward
    pass. Later calls go straight to ``model``.
    """

    def __init__(self, model: Callable[[Tensor], Tensor]):
        self.model = model
        self._checked = False

    def __call__(self, x: Tensor) -> Tensor:
        if self._checked:
            return self.model(x)
        self._checked = True
        seen = x.view_as(x) if x.requires_grad else x
        output = self.model(seen)
        if isinstance(output, Tensor) and not output.dtype.is_floating_point:
            raise ModelError(
                f"the model returned a tensor of dtype {output.dtype}; it must return "
                "floating-point values (an integer output has no gradient to ascend)"
            )
        if seen is not x and isinstance(output, Tensor) and output.requires_grad:
            seen.register_hook(_refuse_zero_gradient)  # type: ignore[no-untyped-call]
        return output

    def __repr__(self) -> str:
        return repr(self.model)


def _refuse_zero_gradient(grad: Tensor) -> None:
    zero = ~grad.reshape(len(grad), -1).ne(0).any(dim=1)
    if bool(zero.any()):  # the check's one device synchronization
        elements = zero.nonzero().flatten().tolist()
        raise ModelError(
            "the model's output does not depend on its input: at the first step the gradient "
            f"of its output with respect to its input is zero everywhere for batch element(s) "
            f"{elements} (a constant output such as y * 0 + 1, or a unit silent at the initial "
            "guess); optimizing would return the initial guess unchanged"
        )
