"""``mei generate``: MEIs of a model by dotted path, without a database; and the CLI's errors."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from tools_testkit import base_env, png_size, run_mei

from mei.cli import CLIError, main, parse_units
from mei.zoo import correlation, v1_filters

CONFIG = {
    "device": "cpu",
    "initial": {"path": "mei.initial.RandomNormal"},
    "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 10.0}},
    "postprocessing": {"path": "mei.postprocessing.ChangeNorm", "kwargs": {"norm": 10.0}},
    "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 20}},
    "objectives": [{"path": "mei.objectives.EvaluationObjective", "kwargs": {"interval": 5}}],
}

YAML_CONFIG = """\
device: cpu
initial: {path: mei.initial.RandomNormal}
optimizer:
  path: torch.optim.SGD
  kwargs: {lr: 10.0}
postprocessing:
  path: mei.postprocessing.ChangeNorm
  kwargs: {norm: 10.0}
stopper:
  path: mei.stoppers.NumIterations
  kwargs: {num_iterations: 20}
objectives:
  - path: mei.objectives.EvaluationObjective
    kwargs: {interval: 5}
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "method.json"
    path.write_text(json.dumps(CONFIG))
    return path


def test_generate_writes_what_it_says(tmp_path):
    pytest.importorskip("yaml")
    pytest.importorskip("matplotlib")
    (tmp_path / "method.yaml").write_text(YAML_CONFIG)
    result = run_mei(
        "generate",
        "mei.zoo.v1_model",
        "--config",
        "method.yaml",
        "--units",
        "0-3,30",
        "--seed",
        "7",
        "--out",
        "out",
        env=base_env(),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    written = [
        line.removeprefix("wrote ") for line in result.stdout.splitlines() if "wrote" in line
    ]
    assert written == [str(Path("out") / name) for name in ("meis.pt", "results.pt", "meis.png")]
    meis = torch.load(out / "meis.pt", weights_only=True)
    assert meis.shape == (5, 1, 32, 32)
    results = torch.load(out / "results.pt", weights_only=True)
    assert results["units"] == [0, 1, 2, 3, 30] and results["seed"] == 7
    assert results["model"] == "mei.zoo.v1_model" and results["config"] == CONFIG
    assert len(results["outputs"]) == 5
    assert list(results["outputs"][0]) == ["mei.objectives.EvaluationObjective"]
    # the MEIs are the neurons' filters (the model's optimum)
    truth, _ = v1_filters()
    assert correlation(meis, truth[[0, 1, 2, 3, 30]]).min() > 0.97
    # the printed scores are the stored ones
    printed = [float(line.split()[1]) for line in result.stdout.splitlines()[1:6]]
    assert printed == pytest.approx(results["scores"], abs=1e-4)
    # one tile per unit, in one row
    assert png_size(out / "meis.png") == (5 * 150, 190 + 25)  # tiles, a one-line caption


def test_a_wrong_out_is_refused_before_the_optimization(tmp_path):
    """A config of ten million steps: the refusal must come before them, or this never ends."""
    endless = {
        **CONFIG,
        "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 10**7}},
    }
    (tmp_path / "endless.json").write_text(json.dumps(endless))
    (tmp_path / "taken").write_text("a file, not a folder")
    (tmp_path / "figures" / "meis.png").mkdir(parents=True)
    cases = {
        "taken": "--out taken: is a file, not a folder; choose another --out",
        "taken/sub": "--out taken/sub: cannot write there (Not a directory); choose another --out",
        "figures": "--out figures: figures/meis.png is in the way (not a file); move it",
    }
    for out, message in cases.items():
        result = run_mei(
            "generate",
            "mei.zoo.v1_model",
            "-c",
            "endless.json",
            "-u",
            "0",
            "--out",
            out,
            env=base_env(),
            cwd=tmp_path,
            timeout=120,
        )
        assert result.returncode == 1, result.stderr
        assert result.stderr.strip() == f"mei generate: error: {message}"


def test_spatiotemporal_models_get_frames_and_a_gif(tmp_path, config_file):
    pytest.importorskip("matplotlib")
    (tmp_path / "movie_model.py").write_text(
        textwrap.dedent(
            """
            import torch

            class Movie(torch.nn.Module):
                input_shape = (1, 1, 4, 6, 6)

                def __init__(self, units=3):
                    super().__init__()
                    g = torch.Generator().manual_seed(0)
                    self.w = torch.nn.Parameter(torch.randn(units, 4 * 6 * 6, generator=g))

                def forward(self, x):
                    return x.flatten(1) @ self.w.T

            def build(units=3):
                return Movie(units)
            """
        )
    )
    result = run_mei(
        "generate",
        "movie_model.build",
        "-c",
        str(config_file),
        "--model-kwargs",
        '{"units": 2}',
        "-o",
        "movies",
        env=base_env(),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    meis = torch.load(tmp_path / "movies" / "meis.pt", weights_only=True)
    assert meis.shape == (2, 1, 4, 6, 6)  # --units all: both units of the model
    assert png_size(tmp_path / "movies" / "meis.png") == (4 * 150, 2 * 190 + 25)
    from PIL import Image

    assert Image.open(tmp_path / "movies" / "meis.gif").n_frames == 4


def test_the_console_script_and_version():
    script = shutil.which("mei", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the `mei` console script is not installed next to this Python")
    import subprocess

    from mei import __version__

    result = subprocess.run([script, "--version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout.strip() == f"mei {__version__}"


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--config", "missing.json"), "config file not found: missing.json"),
        (("--config", "@bad"), "is not valid JSON"),
        (
            ("--config", "@optimizer_typo"),
            "config['optimizer'] (torch.optim.SGD): does not accept argument(s) ['momentun']",
        ),
        (("--config", "@ok", "--device", "cuda:7"), "--device cuda:7: "),
        (
            ("--config", "@ok", "--units", "0-40"),
            "unit(s) [32, 33, 34, 35, 36, 37, 38, 39, 40] out of range; the model's units are 0..31",
        ),
        (("--config", "@ok", "--units", "3,x"), "--units: cannot read 'x' in '3,x'"),
        (("--config", "@ok", "--units", "2,2"), "names a unit twice"),
        (
            ("--config", "@ok", "--shape", "1,16,16"),
            "the model fails on an input of shape (1, 1, 16, 16)",
        ),
        (("--config", "@ok", "--model-kwargs", "[1]"), "--model-kwargs must be a JSON object"),
        (
            ("--config", "@ok", "--model-kwargs", '{"colour": 1}'),
            "calling mei.zoo.v1_model(**{'colour': 1}) failed",
        ),
        (("--config", "@text"), "the config file must end in .json, .yaml or .yml"),
    ],
)
def test_generate_errors_are_one_clear_line(capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    files = {
        "ok": json.dumps(CONFIG),
        "bad": "{not json",
        "optimizer_typo": json.dumps(
            {**CONFIG, "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 1, "momentun": 1}}}
        ),
    }
    for name, text in files.items():
        (tmp_path / f"{name}.json").write_text(text)
    (tmp_path / "text.txt").write_text("device: cpu")
    names = {"@ok": "ok.json", "@bad": "bad.json", "@optimizer_typo": "optimizer_typo.json"}
    args = [{**names, "@text": "text.txt"}.get(a, a) for a in args]
    code, out, err = run_main(capsys, "generate", "mei.zoo.v1_model", *args)
    assert code == 1
    assert err.startswith("mei generate: error: ") and message in err, err
    assert "Traceback" not in err and out == ""


def test_generate_rejects_models_that_are_not_models(capsys, tmp_path, config_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "not_models.py").write_text("number = 3\ndef build():\n    return 'a string'\n")
    cases = {
        "mei.zoo.no_such_model": "cannot import the model 'mei.zoo.no_such_model'",
        "not_models.number": "not_models.number must be a callable returning an nn.Module",
        "not_models.build": "not_models.build() must return an nn.Module, got str",
        "nodots": "cannot import the model 'nodots'",
    }
    for model, message in cases.items():
        code, _, err = run_main(capsys, "generate", model, "-c", str(config_file))
        assert code == 1 and message in err, err


def test_a_model_without_input_shape_needs_shape(capsys, tmp_path, config_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plain.py").write_text(
        "import torch\ndef build():\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))\n"
    )
    code, _, err = run_main(capsys, "generate", "plain.build", "-c", str(config_file))
    assert code == 1 and "has no input_shape attribute: give the input shape" in err
    code, out, err = run_main(
        capsys, "generate", "plain.build", "-c", str(config_file), "--shape", "1,4,4", "--no-plot"
    )
    assert code == 0, err
    assert torch.load(tmp_path / "meis" / "meis.pt", weights_only=True).shape == (2, 1, 4, 4)
    assert not (tmp_path / "meis" / "meis.png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "the following arguments are required: COMMAND"),
        (("generate",), "the following arguments are required: MODEL, -c/--config"),
        (
            ("generate", "m.f", "-c", "x.json", "--shape", "1,a"),
            "argument --shape: cannot read the shape '1,a'",
        ),
        (("demo", "--steps", "many"), "argument --steps: invalid int value: 'many'"),
        (
            ("generate", "m.f", "-c", "x.json", "--batch-size", "0"),
            "argument --batch-size: expected a positive integer, got 0",
        ),
        (("demo", "--database", "sqlite"), "argument --database: invalid choice: 'sqlite'"),
        (("status",), "the following arguments are required: TABLE"),
        (("fly",), "invalid choice: 'fly'"),
    ],
)
def test_bad_arguments_exit_with_status_2(capsys, args, message):
    with pytest.raises(SystemExit) as info:
        main(list(args))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: mei" in err and message in err, err


def test_demo_checks_its_arguments_before_any_database(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MEI_DATA_DIR", str(tmp_path / "data"))
    code, _, err = run_main(capsys, "demo", "--device", "cuda:7")
    assert code == 1 and "mei demo: error: --device cuda:7: " in err
    code, _, err = run_main(capsys, "demo", "--steps", "0")
    assert code == 1 and "--steps must be positive, got 0" in err
    assert not (tmp_path / "data").exists()


def test_parse_units():
    assert parse_units("all", 3) == [0, 1, 2]
    assert parse_units(" 4 ") == [4]
    assert parse_units("0-2, 7,9-10") == [0, 1, 2, 7, 9, 10]
    for bad in ("", "-1", "3-1", "a-b", "1,,2"):
        with pytest.raises(CLIError, match="--units"):
            parse_units(bad, 20)
    with pytest.raises(CLIError, match="needs the model's number of outputs"):
        parse_units("all")
