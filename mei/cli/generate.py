"""``mei generate``: MEIs of any model given by dotted path, without a database."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from .common import (
    CLIError,
    check_device,
    err,
    prepare_output_dir,
    set_quiet,
    working_directory_importable,
)


def parse_units(spec: str, n_units: int | None = None) -> list[int]:
    """Units from ``"all"``, ``"3"``, ``"0,2,5"`` or ranges ``"0-7,12"`` (inclusive).

    ``n_units`` (the model's number of outputs) is needed for ``"all"`` and checks the range.
    """
    spec = spec.strip()
    if spec == "all":
        if n_units is None:
            raise CLIError("--units all needs the model's number of outputs")
        return list(range(n_units))
    units: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                first, last = part.split("-", 1) if not part.startswith("-") else (part, "")
                low, high = int(first), int(last)
                if high < low:
                    raise ValueError
                units += range(low, high + 1)
            else:
                units.append(int(part))
        except ValueError:
            raise CLIError(
                f"--units: cannot read {part!r} in {spec!r}; use e.g. 'all', '3', '0,2,5' or "
                "'0-7,12'"
            ) from None
    bad = [u for u in units if u < 0 or (n_units is not None and u >= n_units)]
    if bad:
        limit = f"0..{n_units - 1}" if n_units is not None else "non-negative"
        raise CLIError(f"--units: unit(s) {bad} out of range; the model's units are {limit}")
    if len(set(units)) != len(units):
        raise CLIError(f"--units: {spec!r} names a unit twice")
    return units


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"cannot read the shape {text!r}; use e.g. 1,36,64 (C,H,W)"
        ) from None
    if not shape or any(s < 1 for s in shape):
        raise argparse.ArgumentTypeError(f"the shape must have positive sizes, got {text!r}")
    return shape


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _read_config(path: Path) -> dict[str, Any]:
    """A method config from a JSON or YAML file."""
    if not path.is_file():
        raise CLIError(f"config file not found: {path}")
    text = path.read_text()
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            config = json.loads(text)
        except json.JSONDecodeError as e:
            raise CLIError(f"{path} is not valid JSON: {e}") from None
    elif suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise CLIError(
                f"reading {path} needs PyYAML: `pip install pyyaml`, or write the config as JSON"
            ) from None
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise CLIError(f"{path} is not valid YAML: {e}") from None
    else:
        raise CLIError(f"the config file must end in .json, .yaml or .yml, got {path.name}")
    if not isinstance(config, dict):
        raise CLIError(f"{path} must hold a mapping (a method config), got {type(config).__name__}")
    return config


def _load_model(path: str, kwargs_json: str | None) -> Any:
    """The model from a dotted path to a callable returning an ``nn.Module`` (or a module)."""
    from torch import nn

    from ..import_helpers import resolve_path

    working_directory_importable()
    try:
        kwargs = json.loads(kwargs_json) if kwargs_json else {}
    except json.JSONDecodeError as e:
        raise CLIError(f"--model-kwargs is not valid JSON: {e}") from None
    if not isinstance(kwargs, dict):
        raise CLIError(f"--model-kwargs must be a JSON object, got {kwargs_json!r}")
    try:
        obj = resolve_path(path)
    except (ImportError, ValueError) as e:
        raise CLIError(f"cannot import the model {path!r}: {e}") from None
    if isinstance(obj, nn.Module):
        if kwargs:
            raise CLIError(f"{path} is a module, not a callable: --model-kwargs cannot apply")
        return obj
    if not callable(obj):
        raise CLIError(
            f"{path} must be a callable returning an nn.Module, got {type(obj).__name__}"
        )
    try:
        model = obj(**kwargs)
    except TypeError as e:
        raise CLIError(f"calling {path}(**{kwargs!r}) failed: {e}") from None
    if not isinstance(model, nn.Module):
        raise CLIError(f"{path}() must return an nn.Module, got {type(model).__name__}")
    return model


def _output_count(model: Any, shape: tuple[int, ...]) -> int:
    """Run the model once on zeros ``shape`` (CPU) and return its number of outputs."""
    import torch

    modes = [(m, m.training) for m in model.modules()]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        model.eval()
        with torch.no_grad():
            output = model(torch.zeros(shape, device=device))
    except Exception as e:
        raise CLIError(
            f"the model fails on an input of shape {shape}: {type(e).__name__}: {e} "
            "(is --shape right?)"
        ) from None
    finally:
        for module, training in modes:
            module.training = training
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise CLIError(f"the model must map (B, ...) to (B, units), got output {got}")
    return output.shape[1]


def _cmd_generate(args: argparse.Namespace) -> int:
    set_quiet(args.quiet)
    import torch

    from ..config import resolve_config
    from ..methods import gradient_ascent_units

    config = _read_config(Path(args.config))
    if args.device is not None:
        check_device(args.device)
        config["device"] = args.device
    config.setdefault("device", "cpu")
    resolve_config(config)  # ConfigError (a user error) before the model is built
    if not args.no_plot:
        try:
            from .. import plot
        except ImportError as e:
            raise CLIError(f"{e}; or pass --no-plot to write only the tensors") from None
    model = _load_model(args.model, args.model_kwargs)
    if args.shape is not None:
        shape = (1, *args.shape)
    elif getattr(model, "input_shape", None) is not None:
        shape = (1, *tuple(model.input_shape)[1:])
    else:
        raise CLIError(
            f"{args.model} has no input_shape attribute: give the input shape, e.g. --shape 1,36,64"
        )
    n_units = _output_count(model, shape)
    units = parse_units(args.units, n_units)
    # before the optimization: a wrong --out must not cost the run
    out = prepare_output_dir(args.out, ("meis.pt", "results.pt", "meis.png", "meis.gif"))
    err(f"mei generate: {len(units)} unit(s) of {args.model}, input {shape}, seed {args.seed}")
    start = time.perf_counter()
    results = gradient_ascent_units(
        None, model, config, args.seed, units, shape=shape, batch_size=args.batch_size
    )
    seconds = time.perf_counter() - start
    meis = torch.cat([mei for mei, _, _ in results])
    scores = [score for _, score, _ in results]
    written = [out / "meis.pt", out / "results.pt"]
    torch.save(meis, written[0])
    torch.save(
        {
            "model": args.model,
            "model_kwargs": json.loads(args.model_kwargs) if args.model_kwargs else {},
            "units": units,
            "seed": args.seed,
            "config": config,
            "scores": scores,
            "outputs": [output for _, _, output in results],
        },
        written[1],
    )
    if not args.no_plot:
        titles = [f"unit {u}" for u in units]
        if meis.dim() == 5:  # spatio-temporal (B, C, T, H, W): frames and a GIF
            plot.plot_frames(meis, scores=scores, max_frames=8, path=out / "meis.png")
            written += [out / "meis.png", plot.save_gif(meis, out / "meis.gif")]
        else:
            plot.plot_meis(meis, scores=scores, titles=titles, path=out / "meis.png")
            written.append(out / "meis.png")
    print(f"{'unit':>6}  {'score':>9}")
    for unit, score in zip(units, scores, strict=True):
        print(f"{unit:>6}  {score:>9.4f}")
    print(f"{len(units)} MEI(s) in {seconds:.1f} s")
    for path in written:
        print(f"wrote {path}")
    return 0


def add_parser(commands: Any) -> Any:
    """Add this command to the ``mei`` subcommands."""
    generate = commands.add_parser(
        "generate",
        help="MEIs of a model given by dotted path; no database",
        description=(
            "Find MEIs of a model without a database. MODEL is a dotted path to a callable "
            "that returns an nn.Module mapping inputs (B, C, H, W) to responses (B, units), "
            "e.g. mei.zoo.v1_model or mypackage.models.build. Writes meis.pt (the MEIs, one "
            "per unit, stacked), results.pt (units, scores, traces, config) and meis.png."
        ),
    )
    generate.add_argument("model", metavar="MODEL", help="dotted path to a model factory")
    generate.add_argument(
        "-c", "--config", required=True, help="method config file (.json, .yaml or .yml)"
    )
    generate.add_argument(
        "-u", "--units", default="all", help="units: all, 3, 0,2,5 or 0-7,12 (default: all)"
    )
    generate.add_argument("--seed", type=int, default=42, help="seed (default: %(default)s)")
    generate.add_argument(
        "--device",
        default=None,
        help="torch device; overrides the config's (default: config, else cpu)",
    )
    generate.add_argument(
        "-o", "--out", default="meis", help="output directory (default: %(default)s)"
    )
    generate.add_argument(
        "--shape",
        type=_parse_shape,
        default=None,
        help="input shape C,H,W (default: the model's input_shape attribute)",
    )
    generate.add_argument(
        "--batch-size", type=_positive_int, default=None, help="units per batched run"
    )
    generate.add_argument(
        "--model-kwargs", default=None, help="keyword arguments for MODEL as a JSON object"
    )
    generate.add_argument("--no-plot", action="store_true", help="write only the tensors")
    generate.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    generate.set_defaults(handler=_cmd_generate)
    return generate
