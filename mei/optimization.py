"""The optimization itself: :class:`MEI` performs one step for a batch, :func:`optimize` loops.

One step, for every element of the batch at once::

    (parameterization ->) transform -> model -> evaluation - regularization -> backward -> precondition(grad)
    -> optimizer.step -> postprocess (no grad) -> stopper(state) -> tracker(state)

Exactly one forward and one backward pass per step. Nothing is copied to the host unless a
stopper or objective reads it (see :class:`~mei.domain.State`); a non-finite evaluation is
detected on the device and reported every ``check_every`` steps and at the end.

Stoppers and objectives with a batched form (see :mod:`mei.typing`) are called once per step
for the whole batch, and say which step attributes they read: a step nobody reads from keeps
no copies of the input and no gradients. Components without one get a State per element, as
in the original library, and the step keeps everything a State may give.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Sequence
from typing import Any, Protocol, cast, overload

import torch
from torch import Tensor

from ._components import batched_form, use_group
from .capture import StepGraph, component_blocker, describe, log_blockers, optimizer_blocker
from .domain import RECORD_FIELDS, Input, State, StepRecord
from .errors import ComponentError, ModelError, NonFiniteError
from .tracking import BatchTracking, Tracker
from .transforms import final_transform
from .typing import (
    Background,
    BatchedStopper,
    Model,
    Parameterization,
    PostProcessing,
    Precondition,
    Regularization,
    Stopper,
    Transform,
)


def default_transform(mei: Tensor, i_iteration: int) -> Tensor:
    """The original library's default transform: the input itself."""
    return mei


def default_regularization(mei: Tensor, i_iteration: int) -> Tensor:
    """The original library's default regularization: zero."""
    return torch.tensor(0.0)


def default_precondition(grad: Tensor, i_iteration: int) -> Tensor:
    """The original library's default preconditioning: the gradient itself."""
    return grad


def default_postprocessing(mei: Tensor, i_iteration: int) -> Tensor:
    """The original library's default postprocessing: the input itself."""
    return mei


def default_background(mei: Tensor, i_iteration: int) -> None:
    """The original library's default background: none."""
    return None


#: default_background as the background slot's type (it returns None: no background)
_DEFAULT_BACKGROUND: Background = cast(Background, default_background)


class Progress(Protocol):
    """A progress display such as a tqdm bar: ``update(n)`` is called once per step."""

    def update(self, n: int) -> Any: ...


class MEI:
    """One optimization step for a batch of inputs.

    ``func`` maps the transformed batch ``(B, ...)`` to one response per element (``(B,)`` or
    ``(B, 1)``); ``initial`` is the tensor being optimized (or an :class:`~mei.domain.Input`)
    and ``optimizer`` an optimizer over it. The other components are optional (see
    :mod:`mei.typing`).

    With a ``parameterization`` the tensor being optimized holds its parameters (build them
    with ``parameterization.from_image(start)``) and the model sees ``parameterization(params)``;
    postprocessing acts on that image and is mapped back with ``from_image``. The States'
    inputs (``input_``, ``transformed_input``, ``post_processed_input``) and
    :attr:`current_input` are images; ``grad`` and ``preconditioned_grad`` are with respect
    to the parameters (what the optimizer steps on).

    A subclass written for the original library runs as it did there. The original's
    attributes keep their meaning (``i_iteration``, ``_current_input``, ``initial``,
    ``_transformed_input``, ``transform`` & co. with ``default_transform`` & co. when not
    given, ``input_cls``, ``state_cls``), as do its methods: :meth:`evaluate` (the model's
    output for the current transformed input, with gradients), :meth:`transparentize`,
    :meth:`mean_alpha_value` and :meth:`step`. A subclass that overrides one of these (or
    ``input_cls``/``state_cls``) is stepped through its ``step()`` by :func:`optimize`, one
    State per step, as the original did; ``MEI`` itself and subclasses that override none of
    them run the batched engine (:meth:`record_step`).
    """

    #: the original library's wrapper of the input, and the class of the States its step makes
    input_cls: type[Input] = Input
    state_cls: type[State] = State
    #: whether optimize() runs this class through the batched engine (see __init_subclass__)
    _engine_steps: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._engine_steps = all(
            getattr(cls, name) is getattr(MEI, name) for name in _ORIGINAL_PROTOCOL
        )

    def __init__(
        self,
        func: Model,
        initial: Tensor | Input,
        optimizer: torch.optim.Optimizer,
        transform: Transform | None = None,
        regularization: Regularization | None = None,
        precondition: Precondition | None = None,
        postprocessing: PostProcessing | None = None,
        *,
        group: int | None = None,
        inhibitory: bool | None = None,
        transparency: bool | None = None,
        transparency_weight: float = 1.0,
        background: Background | None = None,
        parameterization: Parameterization | None = None,
        capture: bool = False,
    ):
        self.func = func
        if getattr(parameterization, "identity", False) is True:
            parameterization = None  # the pixels themselves: the plain path
        self.parameterization = parameterization
        if isinstance(initial, Input):
            wrapped = initial
        else:
            if _is_tensor(initial) and not initial.requires_grad and not initial.is_leaf:
                raise ValueError("the input being optimized must be a leaf tensor")
            wrapped = self.input_cls(initial)
        #: the original library's attributes: the input being optimized, wrapped, and a copy
        #: of the start
        self._current_input = wrapped
        self.initial = wrapped.clone()
        self._input = wrapped.tensor
        self.optimizer = optimizer
        # the components, with the original's defaults standing for "none" (see the
        # properties below); the engine reads the private attributes, None where absent
        self.transform = transform
        self.regularization = regularization
        self.precondition = precondition
        self.postprocessing = postprocessing
        self.background = background
        # group=None: the whole tensor is one MEI, as in the original library, until
        # optimize() is given one stopper per row group
        self._auto_group = group is None
        if _is_tensor(self._input):
            group = len(self._input) if group is None else group
            if group < 1 or len(self._input) % group:
                raise ValueError(
                    f"group must divide the {len(self._input)} input rows, got group={group}"
                )
        else:  # not a torch tensor (the original wrapped anything): checked by the steps
            group = 1 if group is None else group
        self.group = group
        use_group(self._regularization, group)
        self.inhibitory = bool(inhibitory)
        self.transparency = bool(transparency)
        self.transparency_weight = transparency_weight
        if self.transparency and self._background is None:
            raise ValueError("transparency needs a background to compose the MEI over")
        if self.transparency and parameterization is not None:
            raise ValueError("transparency optimizes pixels; it takes no parameterization")
        #: the transformed input of the current step, as the original's step kept it
        self._transformed: Tensor | None = None
        self.i_iter = 0
        # (mask (B, 1, ...) bool, values): the elements that stopped and their inputs
        self._frozen: tuple[Tensor, Tensor] | None = None
        #: the last step of each element frozen before the others stopped (:meth:`freeze`)
        self.stopped_at: dict[int, int] = {}
        self._closure_step = _takes_closure(optimizer)
        if _is_tensor(self._input):
            self._evaluation_sum = torch.zeros(
                self.batch_size, dtype=torch.float64, device=self._input.device
            )
        #: capture the steps as a CUDA graph where they can be (see :mod:`mei.capture`)
        self.capture = bool(capture)
        self._graph: StepGraph | None = None

    # The components as the original library stored them: its default functions where none
    # was given. The engine reads the private attributes, None where a default stands, so
    # that a default costs nothing and gives the numbers of no component.

    @property
    def transform(self) -> Transform:
        return default_transform if self._transform is None else self._transform

    @transform.setter
    def transform(self, value: Transform | None) -> None:
        self._transform = None if value is default_transform else value

    @property
    def regularization(self) -> Regularization:
        return default_regularization if self._regularization is None else self._regularization

    @regularization.setter
    def regularization(self, value: Regularization | None) -> None:
        self._regularization = None if value is default_regularization else value
        if "group" in vars(self):  # set after __init__: the new one acts on the groups too
            use_group(self._regularization, self.group)

    @property
    def precondition(self) -> Precondition:
        return default_precondition if self._precondition is None else self._precondition

    @precondition.setter
    def precondition(self, value: Precondition | None) -> None:
        self._precondition = None if value is default_precondition else value

    @property
    def postprocessing(self) -> PostProcessing:
        return default_postprocessing if self._postprocessing is None else self._postprocessing

    @postprocessing.setter
    def postprocessing(self, value: PostProcessing | None) -> None:
        self._postprocessing = None if value is default_postprocessing else value

    @property
    def background(self) -> Background:
        return _DEFAULT_BACKGROUND if self._background is None else self._background

    @background.setter
    def background(self, value: Background | None) -> None:
        self._background = None if value is _DEFAULT_BACKGROUND else value

    @property
    def i_iteration(self) -> int:
        """The index of the next step (the original library's name for ``i_iter``)."""
        return self.i_iter

    @i_iteration.setter
    def i_iteration(self, value: int) -> None:
        self.i_iter = value

    @property
    def _transformed_input(self) -> Tensor:
        """The current input through the transform of the current step, made once per step
        (the original library's; its step resets ``_transformed`` to ``None``)."""
        if self._transformed is None:
            image = self._image(self._current_input.tensor)
            self._transformed = self.transform(image, self.i_iteration)
        return self._transformed

    def evaluate(self) -> Any:
        """The model's output for the current input as the step sees it (the transformed
        input; with transparency, the input composed over the background), with gradients:
        the original library's ``evaluate``, which its step and a lab's ``step()`` call."""
        if self.transparency:
            return self.func(self.transparentize().float())
        return self.func(self._transformed_input)

    def transparentize(self) -> Tensor:
        """The current input composed over the background (the original library's)."""
        x = self._current_input.tensor
        return self._composite(x, self.i_iteration, self._draw_background(x, self.i_iteration))

    def mean_alpha_value(self) -> Tensor:
        """The mean of the alpha (last) channel of the current input (the original's)."""
        return torch.mean(self._current_input.tensor[:, -1, ...])

    def capture_blockers(self) -> list[str]:
        """Why this MEI's steps cannot be captured (empty: they can; see :mod:`mei.capture`)."""
        reasons = []
        if self.transparency:
            reasons.append("transparency composes each step over a background drawn on the host")
        reason = optimizer_blocker(self.optimizer)
        if reason is not None:
            reasons.append(reason)
        for slot, component in (
            ("parameterization", self.parameterization),
            ("transform", self._transform),
            ("regularization", self._regularization),
            ("precondition", self._precondition),
            ("postprocessing", self._postprocessing),
        ):
            blocker = component_blocker(slot, component)
            if blocker is not None:
                reasons.append(blocker)
        return reasons

    def stop_capturing(self, reasons: Sequence[str]) -> None:
        """Run the eager step from now on, and log ``reasons`` (once each)."""
        if self.capture and reasons:
            log_blockers(list(reasons))
            self.capture = False

    @property
    def captured(self) -> bool:
        """Whether the steps are replayed from a CUDA graph now."""
        return self._graph is not None and self._graph.captured

    def regroup(self, elements: int) -> None:
        """Treat the input as ``elements`` MEIs of equal size (before the first step)."""
        rows = len(self._input)
        if self.i_iter or elements < 1 or rows % elements:
            raise ValueError(
                f"cannot split {rows} input rows into {elements} MEIs after {self.i_iter} steps"
            )
        self.group = rows // elements
        use_group(self._regularization, self.group)
        self._evaluation_sum = torch.zeros(elements, dtype=torch.float64, device=self._input.device)

    @property
    def batch_size(self) -> int:
        """The number of elements (MEIs, or groups of ``group`` images) in the batch."""
        return self._input.shape[0] // self.group

    @property
    def current_input(self) -> Tensor:
        """The current inputs (images, with a parameterization), detached, on the device."""
        if self.parameterization is None:
            return self._input.detach()
        with torch.no_grad():
            return self.parameterization(self._input.detach())

    def _image(self, params: Tensor) -> Tensor:
        """The image of ``params`` (the params themselves without a parameterization)."""
        return params if self.parameterization is None else self.parameterization(params)

    def _evaluate(self, transformed: Tensor) -> Tensor:
        output = self.func(transformed)
        batch = self._input.shape[0] // self.group
        if not isinstance(output, Tensor):
            raise ModelError(f"the model returned a {type(output).__name__}, not a tensor")
        # a batch of one may be reduced to a single number of any shape (the original
        # library took .item() of it: a target function such as a mean gives a 0-d tensor)
        if output.shape not in ((batch,), (batch, 1)) and not (batch == 1 and output.numel() == 1):
            per = "input" if self.group == 1 else f"group of {self.group} inputs (n_meis)"
            raise ModelError(
                f"the model must return one value per {per}, shape ({batch},) or ({batch}, 1), "
                f"got {tuple(output.shape)}; select a unit, e.g. with "
                "mei.modules.ConstrainedOutputModel(model, unit)"
                + (", and reduce each group, e.g. target_fn=torch.mean" if self.group > 1 else "")
            )
        if not output.requires_grad:
            raise ModelError(
                "the model's output does not depend on its input (no gradient flows back); "
                "check that the model does not detach or replace its input"
            )
        if output.dim() != 1:
            output = output.reshape(batch)
        return -output if self.inhibitory else output

    def _composite(self, x: Tensor, i: int, background: Tensor) -> Tensor:
        """The transparent MEI over ``background`` as the original library composed it: the
        first channel blended with the first row of the weighted background by the alpha
        (last) channel, followed by the channels between."""
        # the original indexed [:, [0]] and [[0]]: the same values as these slices, through an
        # index tensor made on the host (copied to a GPU, which waits for it, every step)
        image, alpha = x[:, 0:1, ...], x[:, -1, ...]
        weighted = background.to(x.device)[0:1, ...] * self.transparency_weight
        sizes = zip(reversed(weighted[0:1].shape), reversed(alpha.shape), strict=False)
        if not all(a == b or 1 in (a, b) for a, b in sizes):  # torch's error names nothing
            raise ComponentError(
                f"the background ({type(self._background).__name__}) gave a tensor of shape "
                f"{tuple(background.shape)}, which does not fit MEIs of height x width "
                f"{tuple(alpha.shape[-2:])}: give config['background'] the model input's size "
                "(e.g. WhiteNoiseBackground's shape=[height, width] of this data_key's images)"
            )
        blended = weighted[0:1] * (1.0 - alpha) + image * alpha
        return torch.cat((blended, x[:, 1:-1, ...]), dim=1)

    def _draw_background(self, x: Tensor, i: int) -> Tensor:
        assert self._background is not None  # checked in __init__
        background: Any = self._background(x, i)
        return background if isinstance(background, Tensor) else torch.as_tensor(background)

    def _regularize(self, transformed: Tensor) -> Tensor | None:
        if self._regularization is None:
            return None
        # components written for the original library may return a float for a batch of one
        term: Tensor | float = self._regularization(transformed, self.i_iter)
        if not isinstance(term, Tensor):
            term = torch.as_tensor(term, dtype=transformed.dtype, device=transformed.device)
        if term.dim() == 0 and self.batch_size == 1:
            return term.reshape(1)
        if term.shape != (self.batch_size,):
            raise ComponentError(
                f"regularization must return one value per batch element, shape "
                f"({self.batch_size},), got {tuple(term.shape)}"
            )
        return term

    def _forward_backward(self, x: Tensor, i: int) -> tuple[Tensor, dict[str, Tensor | None]]:
        """The loss of step ``i`` at ``x``, its backward pass and the preconditioning of the
        gradient (left in ``x.grad``); the loss and the step's detached parts."""
        image: Tensor | None = None
        if self.transparency:
            # the original drew the background twice per step (it evaluated twice), so
            # random backgrounds draw twice here too; the second draw was not used
            composite = self._composite(x, i, self._draw_background(x, i))
            self._draw_background(x, i)
            transformed = composite.float()
            evaluation = self._evaluate(transformed)
            mean_alpha = torch.mean(x[:, -1, ...])
            reg_term = self._regularize(mean_alpha)
            scale = 1 - mean_alpha * self.transparency_weight
            loss = (-evaluation if reg_term is None else -evaluation + reg_term) * scale
            loss = loss.sum()
        else:
            image = self._image(x)
            transformed = self._transform(image, i) if self._transform is not None else image
            if not isinstance(transformed, Tensor):
                raise ComponentError(
                    f"transform returned a {type(transformed).__name__}, not a tensor"
                )
            evaluation = self._evaluate(transformed)
            reg_term = self._regularize(transformed)
            objective = evaluation if reg_term is None else evaluation - reg_term
            loss = -objective.sum()
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
        grad = x.grad
        if grad is None:
            raise ModelError("the model's output does not depend on its input (no gradient)")
        preconditioned = grad
        if self._precondition is not None:
            preconditioned = self._precondition(grad, i)
            if not isinstance(preconditioned, Tensor) or preconditioned.shape != grad.shape:
                raise ComponentError(
                    f"precondition must return a tensor of the gradient's shape "
                    f"{tuple(grad.shape)}, got {_describe(preconditioned)}"
                )
            x.grad = preconditioned
        return loss, {
            "image": None if image is None else image.detach(),
            "transformed": transformed.detach(),
            "evaluation": evaluation.detach(),
            "reg_term": None if reg_term is None else reg_term.detach(),
            "grad": grad.detach(),
            "preconditioned": preconditioned.detach(),
        }

    def _after_update(self, x: Tensor, i: int, evaluation: Tensor) -> None:
        """After the optimizer's update (without gradients): postprocessing, the stopped
        elements put back, and the evaluation added to the running sum of the finite check."""
        pixels = self.parameterization is None
        if self._postprocessing is not None:
            image = x.detach() if pixels else self._image(x.detach())
            processed = self._postprocessing(image, i)
            if not isinstance(processed, Tensor) or processed.shape != image.shape:
                raise ComponentError(
                    f"postprocessing must return a tensor of the input's shape "
                    f"{tuple(image.shape)}, got {_describe(processed)}"
                )
            if not pixels:
                assert self.parameterization is not None  # not pixels
                processed = self.parameterization.from_image(processed)
            x.copy_(processed)
        if self._frozen is not None:
            mask, values = self._frozen
            x.copy_(torch.where(mask, values, x))
        # one kernel: a NaN or infinite evaluation makes its element's sum non-finite
        # for good (float64: finite float32 evaluations cannot overflow it)
        self._evaluation_sum.add_(evaluation)

    def _captured_body(self) -> dict[str, Tensor | None]:
        """One whole step's tensor work, as a CUDA graph holds it (see :mod:`mei.capture`)."""
        x, i = self._input, self.i_iter
        self.optimizer.zero_grad(set_to_none=True)
        _, parts = self._forward_backward(x, i)
        self.optimizer.step()
        with _NO_GRAD:
            evaluation = parts["evaluation"]
            assert evaluation is not None  # every step evaluates
            self._after_update(x, i, evaluation)
        return parts

    def _record_captured(self, keep: Collection[str] | None) -> StepRecord:
        """:meth:`record_step` through the captured step: the step's outputs are at fixed
        places that the next step overwrites, so what the record keeps is copied."""
        x = self._input
        i = self.i_iter
        if self._graph is None:
            if self._frozen is None:  # a fixed mask in the graph from the start
                detached = x.detach()
                mask_shape = (len(detached),) + (1,) * (detached.dim() - 1)
                mask = torch.zeros(mask_shape, dtype=torch.bool, device=x.device)
                self._frozen = (mask, detached.clone())
            self._graph = StepGraph(self._captured_body, x)
        dropped = frozenset() if keep is None else _DROPPABLE.difference(keep)
        keep_transformed = "transformed_input" not in dropped
        pixels = self.parameterization is None
        input_before = None
        if pixels and (keep_transformed or "input_" not in dropped):
            input_before = x.detach().clone()
        out = self._graph()

        def own(name: str) -> Tensor | None:
            value = out[name]
            return None if value is None else value.clone()

        transformed = None
        if keep_transformed:
            seen = out["transformed"]
            assert seen is not None  # every step transforms
            if not pixels:
                transformed = seen.clone()
            elif input_before is not None:
                transformed = _as_seen(seen, x, input_before)
                transformed = transformed.clone() if transformed is seen else transformed
        evaluation = own("evaluation")
        assert evaluation is not None  # every step evaluates
        with _NO_GRAD:
            post_processed = None
            if "post_processed_input" not in dropped:
                post_processed = x.detach().clone() if pixels else self._image(x.detach())
        self.i_iter += 1
        return StepRecord(
            i_iter=i,
            evaluation=evaluation,
            reg_term=own("reg_term"),
            input_=None if "input_" in dropped else own("image") if not pixels else input_before,
            transformed_input=transformed,
            post_processed_input=post_processed,
            grad=None if "grad" in dropped else own("grad"),
            preconditioned_grad=None if "preconditioned_grad" in dropped else own("preconditioned"),
            dropped=dropped,
            group=self.group,
        )

    def step(self) -> State | list[State]:
        """Perform one step; return its :class:`~mei.domain.State` (a list of States, one
        per MEI, for a batch of several), as the original library's ``MEI.step`` did.

        In a subclass that overrides the original's methods (see the class docstring) this
        is the original's step, made of them: :meth:`evaluate`, ``regularization`` of
        :attr:`_transformed_input`, backward, ``precondition``, the optimizer's step,
        ``postprocessing``; it returns ``state_cls.from_dict(...)``.
        """
        if not type(self)._engine_steps:
            return self._original_step()
        record = self.record_step()
        states = [State.from_record(record, b) for b in range(self.batch_size)]
        return states[0] if len(states) == 1 else states

    def _original_step(self) -> State:
        """One step made of the original library's parts, which a subclass may override."""
        i = self.i_iteration
        current = self._current_input
        values: dict[str, Any] = {"i_iter": i, "input_": current.cloned_data}
        self.optimizer.zero_grad()
        # the original evaluated twice and kept the second, negated, for an inhibitory MEI
        first, second = self.evaluate(), self.evaluate()
        evaluation = -second if self.inhibitory else first
        values["evaluation"] = evaluation.item()
        values["transformed_input"] = self._transformed_input.data.cpu().clone()
        if self.transparency:
            alpha = self.mean_alpha_value()
            reg_term = self.regularization(alpha, i)
            loss = (-evaluation + reg_term) * (1 - alpha * self.transparency_weight)
        else:
            reg_term = self.regularization(self._transformed_input, i)
            loss = -evaluation + reg_term
        loss.backward()
        values["reg_term"] = reg_term.item() if isinstance(reg_term, Tensor) else float(reg_term)
        if current.grad is None:
            raise ModelError("the model's output does not depend on its input (no gradient)")
        values["grad"] = current.cloned_grad
        current.grad = self.precondition(current.grad, i)
        values["preconditioned_grad"] = current.cloned_grad
        self.optimizer.step()
        current.data = self.postprocessing(current.data, i)
        values["post_processed_input"] = current.cloned_data
        self._transformed = None
        self.i_iteration = i + 1
        return self.state_cls.from_dict(values)

    def record_step(self, keep: Collection[str] | None = None) -> StepRecord:
        """Perform one step for the whole batch and return its record.

        ``keep`` names the record's tensor attributes somebody will read (default: all); the
        others are not copied nor kept (``None`` in the record). The evaluation and the
        regularization term are always kept.
        """
        if self.capture:
            return self._record_captured(keep)
        x = self._input
        i = self.i_iter
        dropped = frozenset() if keep is None else _DROPPABLE.difference(keep)
        keep_transformed = "transformed_input" not in dropped
        keep_before = keep_transformed or "input_" not in dropped
        pixels = self.parameterization is None
        # with a parameterization, the step's image is a tensor of its own: kept as it is
        input_before = x.detach().clone() if keep_before and pixels else None
        first: dict[str, Any] = {}

        def closure() -> Tensor:
            # Optimizers such as LBFGS evaluate several times per step; the record keeps the
            # first evaluation, taken at the input before the step.
            self.optimizer.zero_grad(set_to_none=True)
            loss, parts = self._forward_backward(x, i)
            if not pixels:
                first.setdefault("image", parts["image"])
            if "evaluation" not in first:
                transformed = parts["transformed"]
                assert transformed is not None  # the forward pass made it
                first.update(
                    transformed=(
                        None
                        if not keep_transformed
                        else transformed
                        if not pixels
                        else _as_seen(transformed, x, input_before)
                        if input_before is not None
                        else None
                    ),
                    evaluation=parts["evaluation"],
                    reg_term=parts["reg_term"],
                    grad=None if "grad" in dropped else parts["grad"],
                    preconditioned=(
                        None if "preconditioned_grad" in dropped else parts["preconditioned"]
                    ),
                )
            return loss

        if self._closure_step:
            # torch types the closure as returning a float; its optimizers take the loss tensor
            self.optimizer.step(closure)  # type: ignore[arg-type]
        else:
            closure()
            self.optimizer.step()

        with _NO_GRAD:
            self._after_update(x, i, first["evaluation"])
            post_processed = None
            if "post_processed_input" not in dropped:
                post_processed = x.detach().clone() if pixels else self._image(x.detach())

        self.i_iter += 1
        return StepRecord(
            i_iter=i,
            evaluation=first["evaluation"],
            reg_term=first["reg_term"],
            input_=None if "input_" in dropped else first.get("image", input_before),
            transformed_input=first["transformed"],
            post_processed_input=post_processed,
            grad=first["grad"],
            preconditioned_grad=first["preconditioned"],
            dropped=dropped,
            group=self.group,
        )

    def freeze(self, indices: Sequence[int]) -> None:
        """Keep the inputs of elements ``indices`` as they are from now on (they stopped)."""
        x = self._input.detach()
        if self._frozen is None:
            mask_shape = (len(x),) + (1,) * (x.dim() - 1)
            self._frozen = (torch.zeros(mask_shape, dtype=torch.bool, device=x.device), x.clone())
        mask, values = self._frozen
        rows = [b * self.group + r for b in indices for r in range(self.group)]
        index = torch.as_tensor(rows, dtype=torch.long, device=x.device)
        mask[index] = True
        values[index] = x[index]
        self.stopped_at.update(dict.fromkeys(indices, self.i_iter - 1))
        stop_rows = getattr(self.parameterization, "stop_rows", None)
        if callable(stop_rows):  # e.g. PhaseFourier's attribution stops growing for them
            stop_rows(rows)

    def check_finite(self) -> None:
        """Raise :class:`~mei.errors.NonFiniteError` if any evaluation so far was NaN or inf."""
        nonfinite = ~torch.isfinite(self._evaluation_sum)
        if bool(nonfinite.any()):
            bad = nonfinite.nonzero().flatten().tolist()
            raise NonFiniteError(
                f"the evaluation became NaN or infinite (batch element(s) {bad}, by step "
                f"{self.i_iter - 1}); lower the learning rate or constrain the input"
            )

    @torch.no_grad()
    def _final_scores(self) -> Tensor:
        """The model's response to the current inputs, seen through the deterministic version
        of the transform (with transparency: composed over the background), ``(B,)``: the
        score of the MEIs as they are now (``optimize(..., score="final")``)."""
        x = self.current_input
        if self.transparency:
            x = self._composite(x, self.i_iter, self._draw_background(x, self.i_iter)).float()
        elif self._transform is not None:
            x = final_transform(self._transform, x, self.i_iter)
        output = self.func(x).reshape(self.batch_size)
        return -output if self.inhibitory else output

    def __repr__(self) -> str:
        parts = [
            f"func={self.func!r}",
            f"optimizer={type(self.optimizer).__name__}",
            f"parameterization={self.parameterization!r}",
            f"transform={self._transform!r}",
            f"regularization={self._regularization!r}",
            f"precondition={self._precondition!r}",
            f"postprocessing={self._postprocessing!r}",
        ]
        return f"MEI({', '.join(parts)})"


#: The original library's methods and class attributes: a subclass that overrides one of them
#: is stepped through its step(), as the original stepped it.
_ORIGINAL_PROTOCOL = (
    "step",
    "evaluate",
    "transparentize",
    "mean_alpha_value",
    "_transformed_input",
    "input_cls",
    "state_cls",
)


def _is_tensor(value: Any) -> bool:
    """Whether ``value`` is a torch tensor (its class derives from Tensor: a stand-in that
    only claims to be one, such as a mock with ``spec=Tensor``, is not)."""
    return issubclass(type(value), Tensor)


#: What a step may leave out of its record: everything but the evaluation and the
#: regularization term (one value per element each).
_DROPPABLE = RECORD_FIELDS - {"evaluation", "reg_term"}


class _NoGrad:
    """``torch.no_grad()`` for the step's hot path, without building a context object per
    step (one step of a small model on a GPU is bound by the host's Python)."""

    __slots__ = ("_previous",)

    def __init__(self) -> None:
        self._previous: list[bool] = []

    def __enter__(self) -> None:
        self._previous.append(torch.is_grad_enabled())
        torch.set_grad_enabled(False)

    def __exit__(self, *exc: object) -> None:
        torch.set_grad_enabled(self._previous.pop())


_NO_GRAD = _NoGrad()


def _takes_closure(optimizer: Any) -> bool:
    """Whether ``optimizer.step`` accepts a closure (every ``torch.optim`` optimizer does)."""
    try:
        return "closure" in inspect.signature(optimizer.step).parameters
    except (TypeError, ValueError):
        return False


def _as_seen(transformed: Tensor, x: Tensor, input_before: Tensor) -> Tensor:
    """``transformed`` as the model saw it, safe from the in-place updates of ``x`` to come.

    A transform may return ``x`` itself or a view of it (``x.expand(...)``, ``x[..., :h, :w]``);
    the optimizer and the postprocessing then change what such a view shows. Such a view is
    re-created on ``input_before`` (a copy of ``x`` with the same strides, taken before the
    step): same shape, strides and offset, no copy, no device sync. A tensor that shares
    ``x``'s memory in a way that cannot be re-created there is copied now.
    """
    if transformed.untyped_storage().data_ptr() != x.untyped_storage().data_ptr():
        return transformed  # a new tensor: the step does not change it
    if (
        transformed.shape == x.shape
        and transformed.stride() == x.stride()
        and transformed.storage_offset() == x.storage_offset()
    ):
        return input_before  # identity
    offset = transformed.storage_offset() - x.storage_offset()
    same_layout = input_before.stride() == x.stride() and transformed.dtype == x.dtype
    if same_layout and _within(transformed, x):
        return input_before.as_strided(
            transformed.shape, transformed.stride(), input_before.storage_offset() + offset
        )
    return transformed.clone()


def _within(view: Tensor, base: Tensor) -> bool:
    """Whether every element of ``view`` lies in the storage span of the dense ``base``."""

    def span(t: Tensor) -> tuple[int, int]:
        last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True))
        return int(t.storage_offset()), int(t.storage_offset() + last)

    if view.numel() == 0:
        return True
    low, high = span(view)
    base_low, base_high = span(base)
    return base.numel() > 0 and base_low <= low and high <= base_high


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"shape {tuple(value.shape)}"
    return type(value).__name__


@overload
def optimize(
    mei: MEI,
    stopper: Stopper,
    tracker: Tracker,
    *,
    check_every: int = ...,
    progress: Progress | None = ...,
    score: str = ...,
) -> tuple[float, Tensor]: ...


@overload
def optimize(
    mei: MEI,
    stopper: Sequence[Stopper],
    tracker: Sequence[Tracker],
    *,
    check_every: int = ...,
    progress: Progress | None = ...,
    score: str = ...,
) -> tuple[list[float], Tensor]: ...


def optimize(
    mei: MEI,
    stopper: Stopper | Sequence[Stopper],
    tracker: Tracker | Sequence[Tracker],
    *,
    check_every: int = 25,
    progress: Progress | None = None,
    score: str = "last_step",
) -> tuple[float | list[float], Tensor]:
    """Step ``mei`` until its stoppers say stop; return ``(score, input)``.

    With one stopper and tracker (a batch of one) the result is ``(float, Tensor (1, ...))``.
    With a list of stoppers and trackers (one per batch element) each element runs until its
    own stopper stops it, after which its input stays fixed; the result is
    ``(list of floats, Tensor (B, ...))``. ``score="last_step"`` (the original library's):
    an element's score is the evaluation of its last step, taken before that step's update;
    ``score="final"``: the model's evaluation of the returned input (through the
    deterministic version of the transform). ``progress`` is an object with ``update(n)``
    (e.g. a tqdm bar), called per step.

    ``mei`` of another class than :class:`MEI` (any object with a ``step()`` that returns a
    State), or of a subclass that overrides the original library's methods (see
    :class:`MEI`), is stepped as the original stepped it: ``state = mei.step()``, ``stop,
    output = stopper(state)``, ``state.stopper_output = output``, ``tracker.track(state)``
    until ``stop``; the result is ``(state.evaluation, state.post_processed_input)`` of the
    last State. Such an object is one MEI: one stopper and one tracker.
    """
    if score not in ("last_step", "final"):
        raise ValueError(f"score must be 'last_step' or 'final', got {score!r}")
    single = not isinstance(stopper, (list, tuple))
    stoppers = [cast(Stopper, stopper)] if single else list(cast(Sequence[Stopper], stopper))
    trackers = [cast(Tracker, tracker)] if single else list(cast(Sequence[Tracker], tracker))
    if not getattr(type(mei), "_engine_steps", False):
        evaluation, inputs = _optimize_by_steps(mei, stoppers, trackers, progress, score)
        return (evaluation, inputs) if single else ([evaluation], inputs)
    if getattr(mei, "_auto_group", False) and mei.i_iter == 0 and len(stoppers) != mei.batch_size:
        if len(stoppers) and len(mei.current_input) % len(stoppers) == 0:
            mei.regroup(len(stoppers))
    if len(stoppers) != mei.batch_size or len(trackers) != mei.batch_size:
        raise ValueError(
            f"need one stopper and one tracker per batch element ({mei.batch_size}), got "
            f"{len(stoppers)} and {len(trackers)}"
        )
    stopping = _Stopping(stoppers)
    tracking = BatchTracking(trackers)
    if mei.capture:
        reasons = mei.capture_blockers()
        if stopping.batched is None:
            reasons.append(
                f"stopper {describe(stoppers[0])} has no batched form: it reads each element's "
                "State on the host every step"
            )
        mei.stop_capturing(reasons)
    active = list(range(mei.batch_size))
    last: Tensor | None = None  # each element's evaluation at the step it stopped
    while active:
        keep = _union(stopping.reads(mei.i_iter), tracking.reads(mei.i_iter))
        record = mei.record_step(keep)
        states: dict[int, State] = {}

        def state(b: int, record: StepRecord = record, states: dict[int, State] = states) -> State:
            current = states.get(b)
            if current is None:
                current = states[b] = State.from_record(record, b)
            return current

        stopped = stopping.step(record, active, state, tracking.needs_states)
        tracking.track(record, active, state)
        if stopped:
            if score == "last_step":
                if len(stopped) == len(active) and last is None:
                    last = record.evaluation.detach().clone()
                else:
                    if last is None:
                        last = torch.zeros_like(record.evaluation)
                    index = torch.as_tensor(list(stopped), device=last.device)
                    last[index] = record.evaluation.detach()[index]
            done = set(stopped)
            active = [b for b in active if b not in done]
            if active:
                mei.freeze(stopped)
        del record, states, state  # the next step's tensors do not meet this step's
        if progress is not None:
            progress.update(1)
        if mei.i_iter % check_every == 0:
            mei.check_finite()
    mei.check_finite()
    scores = mei._final_scores() if score == "final" or last is None else last
    if not bool(torch.isfinite(scores).all()):
        raise NonFiniteError(f"the final evaluation is not finite: {scores.tolist()}")
    values: list[float] = scores.cpu().tolist()
    inputs = mei.current_input
    return (values[0], inputs) if single else (values, inputs)


def _optimize_by_steps(
    mei: Any,
    stoppers: Sequence[Stopper],
    trackers: Sequence[Tracker],
    progress: Progress | None,
    score: str,
) -> tuple[Any, Any]:
    """The original library's loop: ``mei.step()`` until the stopper says stop."""
    if len(stoppers) != 1 or len(trackers) != 1:
        raise ValueError(
            f"{type(mei).__name__} is stepped through its own step() (it is not mei's batched "
            f"MEI): it takes one stopper and one tracker, got {len(stoppers)} and "
            f"{len(trackers)}"
        )
    stopper, tracker = stoppers[0], trackers[0]
    while True:
        current_state = mei.step()
        result = stopper(current_state)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise ComponentError(
                f"a stopper must return (stop, output), {stopper!r} returned {result!r}"
            )
        stop, current_state.stopper_output = result
        tracker.track(current_state)
        if progress is not None:
            progress.update(1)
        if stop:
            break
    if score == "final":
        if not isinstance(mei, MEI):
            raise ValueError(f'score="final" needs an mei.optimization.MEI, got {type(mei)!r}')
        return float(mei._final_scores().reshape(-1)[0]), current_state.post_processed_input
    return current_state.evaluation, current_state.post_processed_input


def _union(a: Collection[str] | None, b: Collection[str] | None) -> Collection[str] | None:
    if a is None or b is None:
        return None
    return {*a, *b}


class _Stopping:
    """The stoppers of a batch: their batched form if every element's stopper has it, else a
    per-element call with the element's State."""

    def __init__(self, stoppers: Sequence[Stopper]):
        self.stoppers = stoppers
        self.batched: BatchedStopper | None = batched_form(stoppers)

    def reads(self, i_iteration: int) -> Collection[str] | None:
        return None if self.batched is None else self.batched.reads(i_iteration)

    def step(
        self,
        record: StepRecord,
        elements: Sequence[int],
        state: Callable[[int], State],
        states_follow: bool,
    ) -> Sequence[int]:
        """The elements that stop after step ``record``; sets each State's stopper output
        (``state(b)`` gives element ``b``'s; ``states_follow``: States are made after this)."""
        if self.batched is not None:
            stopped, outputs = self.batched(record, elements)
            if outputs is not None and states_follow:
                record.stopper_outputs = dict(zip(elements, outputs, strict=True))
            return stopped
        stopped = []
        for b in elements:
            current = state(b)
            result = self.stoppers[b](current)
            if not (isinstance(result, tuple) and len(result) == 2):
                raise ComponentError(
                    f"a stopper must return (stop, output), {self.stoppers[b]!r} returned "
                    f"{result!r}"
                )
            stop, current.stopper_output = result
            if stop:
                stopped.append(b)
        return stopped
