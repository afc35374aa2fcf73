"""deploy/: the scheduler recipes, checked without a cluster.

The Kubernetes manifests are validated against Kubernetes' own schemas (``kubernetes-validate``,
which ships the JSON schemas generated from each release's OpenAPI definition; strict: unknown
fields are errors), and their worker's arguments with ``mei worker``'s own parser. The SLURM
recipe's directives and its time arithmetic are checked here; the recipe itself runs on a real
SLURM in tests/pipeline/test_scheduler.py. The settings must be the same names everywhere:
the compose workers', the Kubernetes Secret's, and what DataJoint reads.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from tools_testkit import REPO, base_env, require_datajoint2, run_python

yaml = pytest.importorskip("yaml", reason="reading the manifests needs PyYAML")
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason='validating the manifests needs kubernetes-validate (".[test]")'
)

DEPLOY = REPO / "deploy"
RECIPE = DEPLOY / "slurm" / "mei-worker.sbatch"
KUBERNETES = DEPLOY / "kubernetes"
VERSIONS = ("1.27.0", "1.37.0")  # the oldest with podFailurePolicy's schema here, the newest


def manifest(name: str) -> dict:
    [document] = list(yaml.safe_load_all((KUBERNETES / name).read_text()))
    return document


def worker_parser():
    require_datajoint2()  # mei.cli.worker imports the DataJoint layer
    from mei.cli.worker import build_parser

    return build_parser()


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", ["mei-workers.yaml", "mei-database-secret.yaml"])
def test_kubernetes_manifests_validate_strictly(name, version):
    kubernetes_validate.validate(manifest(name), version, strict=True)


def test_the_validation_refuses_a_misspelt_field():
    """The check can fail: a field Kubernetes does not know is an error."""
    job = manifest("mei-workers.yaml")
    job["spec"]["paralelism"] = job["spec"].pop("parallelism")
    with pytest.raises(kubernetes_validate.ValidationError, match="paralelism"):
        kubernetes_validate.validate(job, VERSIONS[-1], strict=True)


def test_the_kubernetes_job_is_a_pool_of_gpu_workers():
    job = manifest("mei-workers.yaml")
    spec = job["spec"]
    assert spec["parallelism"] >= 2 and "completions" not in spec  # a work queue
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # podFailurePolicy needs it
    [rule] = spec["podFailurePolicy"]["rules"]
    assert rule["action"] == "Ignore"
    assert rule["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
    assert pod["terminationGracePeriodSeconds"] >= 300  # time to finish the batch in hand
    [container] = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["envFrom"] == [
        {"secretRef": {"name": manifest("mei-database-secret.yaml")["metadata"]["name"]}}
    ]
    command, *args = container["args"]  # the image's entrypoint is `mei`
    assert command == "worker"
    parsed = worker_parser().parse_args(args)
    assert parsed.table == "lab_pipeline.MEI" and parsed.device == "cuda"
    assert 0 < parsed.max_time < spec["activeDeadlineSeconds"]


def test_the_settings_are_the_same_names_everywhere():
    secret = manifest("mei-database-secret.yaml")["stringData"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    worker = compose["services"]["worker"]
    names = {name for name in worker["environment"] if name.startswith("DJ_")}
    assert (
        set(secret)
        == names
        == {
            "DJ_HOST",
            "DJ_PORT",
            "DJ_BACKEND",
            "DJ_USER",
            "DJ_PASS",
            "DJ_STORES",
        }
    )
    recipe = RECIPE.read_text()
    readme = (DEPLOY / "README.md").read_text()
    for name in names:
        assert name in recipe and name in readme, name
    # compose gives a stopped worker as long as Kubernetes does
    grace = manifest("mei-workers.yaml")["spec"]["template"]["spec"]
    assert worker["stop_grace_period"] == f"{grace['terminationGracePeriodSeconds'] // 60}m"


def test_datajoint_reads_the_secret_as_a_database_and_an_s3_store():
    require_datajoint2()
    secret = manifest("mei-database-secret.yaml")["stringData"]
    code = """
import json, datajoint as dj
from mei.main import MEITemplate
spec = dj.config.get_store_spec(MEITemplate.storage)
print(json.dumps({
    "backend": dj.config["database.backend"], "host": dj.config["database.host"],
    "port": dj.config["database.port"], "user": dj.config["database.user"],
    "protocol": spec["protocol"], "endpoint": spec["endpoint"], "bucket": spec["bucket"],
}))
"""
    result = run_python(code, env=base_env(**secret), cwd=REPO)
    read = json.loads(result.stdout.strip().splitlines()[-1])
    store = json.loads(secret["DJ_STORES"])["minio"]
    assert read == {
        "backend": "postgresql",
        "host": secret["DJ_HOST"],
        "port": int(secret["DJ_PORT"]),
        "user": secret["DJ_USER"],
        "protocol": "s3",
        "endpoint": store["endpoint"],
        "bucket": store["bucket"],
    }


# --------------------------------------------------------------------------- SLURM
def directives() -> dict[str, str]:
    """The recipe's ``#SBATCH --name=value`` lines."""
    found = {}
    for line in RECIPE.read_text().splitlines():
        match = re.fullmatch(r"#SBATCH --([a-z-]+)(?:=(\S+))?", line.strip())
        if match:
            found[match.group(1)] = match.group(2) or ""
    return found


def test_the_slurm_recipe_asks_for_what_the_worker_needs():
    found = directives()
    assert found["gres"] == "gpu:1" and re.fullmatch(r"\d+-\d+", found["array"])
    signal = re.fullmatch(r"B:TERM@(\d+)", found["signal"])  # to the worker: it is the batch step
    assert signal and int(signal.group(1)) >= 60
    assert "requeue" in found and found["open-mode"] == "append"
    assert "%A_%a" in found["output"]
    text = RECIPE.read_text()
    assert 'exec "${command[@]}"' in text
    subprocess.run(["bash", "-n", str(RECIPE)], check=True)


@pytest.mark.parametrize(
    "left, seconds",
    [("12:00:00", 43200), ("1-02:03:04", 93784), ("2-00:00:00", 172800), ("09:08", 548), ("7", 7)],
)
def test_the_slurm_recipe_reads_squeue_time_left(left, seconds):
    function = re.search(r"^seconds\(\) \{.*?^\}$", RECIPE.read_text(), re.S | re.M).group(0)
    done = subprocess.run(
        ["bash", "-c", f'{function}\nseconds "$1"', "bash", left],
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(done.stdout) == seconds


def test_the_slurm_recipe_outside_slurm_says_how_to_use_it(tmp_path):
    env = {k: v for k, v in base_env().items() if not k.startswith("SLURM_")}
    usage = subprocess.run(["bash", str(RECIPE)], env=env, capture_output=True, text=True)
    assert usage.returncode == 2 and "usage: sbatch" in usage.stderr
    outside = subprocess.run(
        ["bash", str(RECIPE), "lab_pipeline.MEI"], env=env, capture_output=True, text=True
    )
    assert outside.returncode != 0 and "submit this script with sbatch" in outside.stderr


def test_the_slurm_recipe_runs_a_command_mei_worker_accepts():
    text = RECIPE.read_text()
    [line] = [line for line in text.splitlines() if line.startswith("command=(")]
    assert line == 'command=(mei worker --device cuda "${max_time[@]}" "$@")'
    parsed = worker_parser().parse_args(
        ["--device", "cuda", "--max-time", "42300", "lab_pipeline.MEI", "--device", "cpu"]
    )
    assert parsed.device == "cpu" and parsed.max_time == 42300  # the lab's options win
