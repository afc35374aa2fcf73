"""docker-compose.yml and Dockerfile, checked as far as possible without a Docker engine.

The compose file is parsed and its variables interpolated the way Compose does with the
defaults; the worker's settings are then handed to DataJoint itself, which must read them as a
PostgreSQL connection to the compose database and an S3 store on the compose MinIO, named as
mei's MEI table expects. The Dockerfile must install this project with extras that exist.
"""

from __future__ import annotations

import json
import re
import shlex

import pytest
from tools_testkit import REPO, base_env, require_datajoint2, run_python

yaml = pytest.importorskip("yaml", reason="parsing docker-compose.yml needs PyYAML")
tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11")

VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?::-([^}]*))?\}")


def interpolate(value):
    """Compose's ``${NAME:-default}`` with nothing set: the default ("" without one)."""
    if isinstance(value, str):
        value = VARIABLE.sub(lambda m: m.group(2) or "", value)
        return value.replace("$$", "$")
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    return value


@pytest.fixture(scope="module")
def compose():
    return interpolate(yaml.safe_load((REPO / "docker-compose.yml").read_text()))


def published_port(service: dict, container_port: int) -> int:
    for mapping in service.get("ports", []):
        *_, host, container = mapping.split(":")
        if int(container) == container_port:
            return int(host)
    raise AssertionError(f"port {container_port} is not published")


def test_services(compose):
    services = compose["services"]
    assert set(services) >= {"postgres", "mysql", "minio", "createbucket", "worker", "worker-gpu"}
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["mysql"]["image"].startswith("mysql:") and services["mysql"]["profiles"] == [
        "mysql"
    ]
    assert services["minio"]["image"].startswith("minio/minio")
    for name in ("postgres", "mysql", "minio"):
        assert "healthcheck" in services[name], name
    # published only on the loopback interface, on ports that do not clash with local servers
    assert services["postgres"]["ports"] == ["127.0.0.1:15432:5432"]
    assert published_port(services["minio"], 9000) == 19000


def test_worker_settings_match_the_database_and_store_services(compose):
    services = compose["services"]
    worker = services["worker"]
    env = worker["environment"]
    postgres = services["postgres"]["environment"]
    assert env["DJ_HOST"] == "postgres" and env["DJ_BACKEND"] == "postgresql"
    assert env["DJ_PORT"] == "5432"
    assert env["DJ_USER"] == postgres["POSTGRES_USER"]
    assert env["DJ_PASS"] == postgres["POSTGRES_PASSWORD"]
    stores = json.loads(env["DJ_STORES"])
    assert set(stores) == {"minio"}
    store = stores["minio"]
    minio = services["minio"]["environment"]
    host, port = store["endpoint"].split(":")
    assert host == "minio" and port == "9000"  # the MinIO API inside the compose network
    assert (store["access_key"], store["secret_key"]) == (
        minio["MINIO_ROOT_USER"],
        minio["MINIO_ROOT_PASSWORD"],
    )
    assert store["protocol"] == "s3" and store["secure"] is False
    # the bucket exists: createbucket makes the store's bucket with MinIO's credentials
    bucket = services["createbucket"]
    assert bucket["command"] == [store["bucket"]]
    assert (bucket["environment"]["MINIO_USER"], bucket["environment"]["MINIO_PASSWORD"]) == (
        minio["MINIO_ROOT_USER"],
        minio["MINIO_ROOT_PASSWORD"],
    )
    script = (REPO / "docker" / "createbucket.sh").read_text()
    assert 'mc alias set local http://minio:9000 "$MINIO_USER" "$MINIO_PASSWORD"' in script
    assert 'mc mb --ignore-existing "local/$bucket"' in script
    assert bucket["volumes"] == ["./docker/createbucket.sh:/docker/createbucket.sh:ro"]
    # the worker waits for both and runs the demo against them
    assert worker["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "createbucket": {"condition": "service_completed_successfully"},
    }
    assert worker["command"][:3] == ["demo", "--database", "configured"]
    assert worker["build"] == "." and (REPO / "Dockerfile").is_file()


def test_gpu_worker_is_the_worker_on_a_gpu(compose):
    worker, gpu = compose["services"]["worker"], compose["services"]["worker-gpu"]
    assert gpu["environment"] == worker["environment"]
    assert gpu["command"] == [*worker["command"], "--device", "cuda"]
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


def test_datajoint_reads_the_worker_settings(compose):
    """DataJoint itself, given the worker's environment, finds the database and the store."""
    require_datajoint2()
    env = base_env(**compose["services"]["worker"]["environment"])
    code = """
import json, datajoint as dj
from mei.main import MEITemplate
spec = dj.config.get_store_spec(MEITemplate.storage)
print(json.dumps({
    "backend": dj.config["database.backend"], "host": dj.config["database.host"],
    "port": dj.config["database.port"], "user": dj.config["database.user"],
    "password_set": dj.config["database.password"] is not None,
    "store": MEITemplate.storage, "protocol": spec["protocol"], "endpoint": spec["endpoint"],
    "bucket": spec["bucket"], "access_key": spec["access_key"],
}))
"""
    result = run_python(code, env=env, cwd=REPO)
    read = json.loads(result.stdout.strip().splitlines()[-1])
    store = json.loads(env["DJ_STORES"])["minio"]
    assert read == {
        "backend": "postgresql",
        "host": "postgres",
        "port": 5432,
        "user": env["DJ_USER"],
        "password_set": True,
        "store": "minio",
        "protocol": "s3",
        "endpoint": "minio:9000",
        "bucket": store["bucket"],
        "access_key": store["access_key"],
    }


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_builds_a_cuda_pytorch_image_with_this_project():
    instructions = dockerfile_instructions()
    args = dict(rest.split("=", 1) for keyword, rest in instructions if keyword == "ARG")
    [base] = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert base == "${BASE_IMAGE}"
    image = args["BASE_IMAGE"]
    assert re.fullmatch(r"pytorch/pytorch:[\d.]+-cuda[\d.]+-cudnn\d+-runtime", image), image
    copied = [rest.split() for keyword, rest in instructions if keyword == "COPY"]
    assert ["pyproject.toml", "README.md", "./"] in copied and ["mei", "./mei"] in copied
    [install] = [rest for keyword, rest in instructions if keyword == "RUN" and "pip" in rest]
    words = shlex.split(install.split("&&")[0])
    project = [w for w in words if w.startswith(".[")]
    assert len(project) == 1, words
    extras = project[0][2:-1].split(",")
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    missing = [e for e in extras if e not in declared]
    assert not missing, f"the Dockerfile installs extras that pyproject.toml lacks: {missing}"
    assert any(w.startswith("datajoint[") and "postgres" in w and "s3" in w for w in words)
    assert not any(w.startswith("torch") for w in words)  # keep the base image's CUDA torch
    assert ("ENTRYPOINT", '["mei"]') in instructions
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["mei"] == "mei.cli:main"


def test_dockerignore_keeps_the_build_context_small():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv*", "tests"} <= set(ignored)
    assert "mei" not in ignored and "pyproject.toml" not in ignored
