"""The container, Compose, Kubernetes and CI files of every render, checked by real tools.

Docker Compose and hadolint come from requirements-dev.txt as binaries next to this
interpreter; no Docker engine is needed to validate a compose file or lint a Dockerfile.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .baking import JOB_STORES, Bake, resolve_answers

TOOLS_DIR = Path(sys.executable).parent
TOOL_TIMEOUT = 120
# The one non-root user the image runs as; the Kubernetes manifests name the same ids.
IMAGE_UID = 10001
# Not the default port, so a port that is hard-coded instead of answered shows.
PORT = "9001"


def store_answers(store: str) -> dict[str, str]:
    return {"job_store": store, "port": PORT}


@pytest.fixture(params=JOB_STORES)
def store(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def project(bake: Bake, store: str) -> Path:
    return bake(**store_answers(store))


def run_tool(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a binary that requirements-dev.txt installs next to this interpreter."""
    tool = TOOLS_DIR / name
    if not tool.is_file():
        pytest.fail(f"{tool} is missing: pip install -r requirements-dev.txt into this venv")
    return subprocess.run(
        [str(tool), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=TOOL_TIMEOUT,
    )


def output_of(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit code {result.returncode}\n{result.stdout}\n{result.stderr}"


def default_shutdown_grace(project: Path, package: str) -> float:
    """SHUTDOWN_GRACE's default, read from the render's own Settings class."""
    program = (
        f"from {package}.settings import Settings\n"
        "print(Settings.model_fields['shutdown_grace'].default)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(project / "src")},
        capture_output=True,
        text=True,
        check=True,
    )
    return float(result.stdout)


def seconds(duration: str) -> float:
    """Compose's normalised duration ("35s", "1m5s") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", duration)
    assert parts, f"not a duration: {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


# --- compose.yaml -----------------------------------------------------------------------


def compose_config(project: Path) -> dict[str, Any]:
    """`docker compose config`: the file validated against the Compose spec, normalised."""
    result = run_tool(
        "docker-compose", "-f", "compose.yaml", "config", "--format", "json", cwd=project
    )
    assert result.returncode == 0, output_of(result)
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def test_compose_validator_refuses_a_broken_file(tmp_path: Path) -> None:
    # Proves the check below can fail: a dependency on a service that does not exist.
    (tmp_path / "compose.yaml").write_text(
        "services:\n"
        "  app:\n"
        "    image: app\n"
        "    depends_on:\n"
        "      db:\n"
        "        condition: service_healthy\n"
    )

    result = run_tool("docker-compose", "-f", "compose.yaml", "config", cwd=tmp_path)

    assert result.returncode != 0
    assert "db" in result.stderr


@pytest.mark.parametrize("use_metrics", ["yes", "no"])
def test_compose_file_is_valid_and_runs_the_image_with_the_chosen_store(
    bake: Bake, store: str, use_metrics: str
) -> None:
    project = bake(**store_answers(store), use_metrics=use_metrics)
    config = compose_config(project)

    services = config["services"]
    app = services["app"]
    environment = app.get("environment", {})
    metrics_services = {"prometheus", "grafana"} if use_metrics == "yes" else set()
    store_services = {"postgres"} if store == "postgres" else set()
    assert set(services) == {"app"} | store_services | metrics_services
    assert Path(app["build"]["context"]) == project
    assert [(port["target"], port["published"]) for port in app["ports"]] == [(9001, PORT)]
    assert seconds(app["stop_grace_period"]) > default_shutdown_grace(
        project, resolve_answers(store_answers(store))["package_name"]
    )
    if store == "sqlite":
        assert environment["DATABASE_URL"] == "sqlite:////data/jobs.db"
        assert [(v["type"], v["target"]) for v in app["volumes"]] == [("volume", "/data")]
        assert set(config["volumes"]) >= {"jobs-data"}
    elif store == "postgres":
        assert environment["DATABASE_URL"].startswith("postgresql://postgres:postgres@postgres:")
        assert app["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    else:
        assert "DATABASE_URL" not in environment
        assert "volumes" not in app
    # Passed through from the shell; empty (the API open) when it is not set there.
    assert environment["API_KEYS"] == ""
    if use_metrics == "yes":
        assert_prometheus_scrapes_the_app(project, services)


def assert_prometheus_scrapes_the_app(project: Path, services: dict[str, Any]) -> None:
    """Prometheus reads the render's scrape config, which names the app's port; Grafana
    reads the render's provisioning and dashboards."""
    mounts = {
        name: {mount["target"]: mount.get("source") for mount in services[name]["volumes"]}
        for name in ("prometheus", "grafana")
    }
    scrape_config = Path(mounts["prometheus"]["/etc/prometheus/prometheus.yml"])
    assert scrape_config == project / "monitoring" / "prometheus.yml"
    (job,) = yaml.safe_load(scrape_config.read_text())["scrape_configs"]
    assert job["static_configs"] == [{"targets": [f"app:{PORT}"]}]
    for target, source in mounts["grafana"].items():
        assert target.startswith(("/etc/grafana/provisioning", "/var/lib/grafana/dashboards"))
        assert Path(source).is_dir()
    assert services["grafana"]["depends_on"].keys() == {"prometheus"}


# --- Dockerfile -------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", path.read_text())
    instructions = []
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, arguments = line.strip().partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, FROM first."""
    found: list[list[tuple[str, str]]] = []
    for instruction in instructions:
        if instruction[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def test_dockerfile_passes_hadolint(project: Path) -> None:
    result = run_tool("hadolint", "Dockerfile", cwd=project)

    assert result.returncode == 0, output_of(result)


def test_hadolint_reports_a_bad_dockerfile(tmp_path: Path) -> None:
    # Proves the lint above can fail: an unpinned base image and a shell-form CMD.
    (tmp_path / "Dockerfile").write_text("FROM python\nCMD python -m app\n")

    result = run_tool("hadolint", "Dockerfile", cwd=tmp_path)

    assert result.returncode != 0
    assert "DL3006" in result.stdout


def test_image_is_multi_stage_non_root_and_stops_on_sigterm(project: Path, store: str) -> None:
    instructions = dockerfile_instructions(project / "Dockerfile")
    build, final = stages(instructions)[-2:]
    package = resolve_answers(store_answers(store))["package_name"]
    final_keywords = {keyword for keyword, _ in final}
    runs = " ".join(arguments for keyword, arguments in final if keyword == "RUN")
    environment = " ".join(arguments for keyword, arguments in final if keyword == "ENV")
    healthchecks = [arguments for keyword, arguments in final if keyword == "HEALTHCHECK"]

    # Only the installed virtualenv crosses over; pip and compilers stay in the build stage.
    assert any("pip" in arguments for keyword, arguments in build if keyword == "RUN")
    assert ("COPY", "--from=build /opt/venv /opt/venv") in final
    assert not re.search(r"\b(pip|apt-get|gcc|build-essential)\b", runs)
    users = [arguments for keyword, arguments in final if keyword == "USER"]
    assert users == [str(IMAGE_UID)]
    assert f"--uid {IMAGE_UID}" in runs
    assert f"--gid {IMAGE_UID}" in runs
    # Exec form: no shell between the container runtime and Python.
    cmd = [arguments for keyword, arguments in final if keyword == "CMD"]
    assert [json.loads(arguments) for arguments in cmd] == [["python", "-m", package]]
    assert ("STOPSIGNAL", "SIGTERM") in final
    assert "ENTRYPOINT" not in final_keywords
    assert len(healthchecks) == 1
    assert "urllib.request" in healthchecks[0]
    assert f"'{PORT}') + '/health'" in healthchecks[0]
    assert ("EXPOSE", PORT) in final
    if store == "sqlite":
        assert "mkdir /data" in runs
        assert "chown app:app /data" in runs
        assert "DATABASE_URL=sqlite:////data/jobs.db" in environment
    else:
        assert "/data" not in runs


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_build(project: Path) -> None:
    patterns = [
        line.strip()
        for line in (project / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    # Everything is ignored, then only what the Dockerfile copies is let back in.
    assert patterns[0] == "*"
    assert {pattern for pattern in patterns if pattern.startswith("!")} == {
        "!pyproject.toml",
        "!README.md",
        "!src/",
    }
    copied = [
        arguments
        for keyword, arguments in dockerfile_instructions(project / "Dockerfile")
        if keyword == "COPY" and not arguments.startswith("--from")
    ]
    assert copied == ["pyproject.toml README.md ./", "src ./src"]


# --- Kubernetes -------------------------------------------------------------------------


def manifests(project: Path) -> dict[str, list[dict[str, Any]]]:
    """The documents of deploy/kubernetes/, grouped by kind."""
    kinds: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((project / "deploy" / "kubernetes").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            kinds.setdefault(document["kind"], []).append(document)
    return kinds


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """Each env entry's value, or its valueFrom."""
    return {
        entry["name"]: entry.get("value", entry.get("valueFrom"))
        for entry in container.get("env", [])
    }


def test_kubernetes_pods_outlast_shutdown_grace_and_run_as_the_image_user(
    project: Path, store: str
) -> None:
    package = resolve_answers(store_answers(store))["package_name"]
    grace = default_shutdown_grace(project, package)

    deployments = manifests(project)["Deployment"]

    assert deployments
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] > grace
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == IMAGE_UID


def http_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert [port["containerPort"] for port in container["ports"]] == [int(PORT)]
    return container


# Where the pods find the Secret <slug>-api-keys, mounted as files.
API_KEYS_FILE = "/run/secrets/api-keys/API_KEYS"


def assert_mounts_the_api_keys_secret(deployment: dict[str, Any]) -> None:
    """The pod mounts the Secret read-only at the directory API_KEYS points into."""
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mount = {"name": "api-keys", "mountPath": "/run/secrets/api-keys", "readOnly": True}
    assert mount in container["volumeMounts"]
    assert {"name": "api-keys", "secret": {"secretName": "job-service-api-keys"}} in pod["volumes"]
    assert API_KEYS_FILE.startswith(mount["mountPath"] + "/")


def test_kubernetes_postgres_runs_api_and_workers_as_two_deployments(bake: Bake) -> None:
    kinds = manifests(bake(**store_answers("postgres")))
    secret = {"secretKeyRef": {"name": "job-service-database", "key": "DATABASE_URL"}}

    api, worker = kinds["Deployment"]
    (worker_container,) = worker["spec"]["template"]["spec"]["containers"]
    (service,) = kinds["Service"]

    assert set(kinds) == {"Deployment", "Service"}
    assert env_of(http_container(api)) == {
        "START_HTTP": "true",
        "START_WORKERS": "false",
        "DATABASE_URL": secret,
        "API_KEYS": API_KEYS_FILE,
    }
    assert_mounts_the_api_keys_secret(api)
    assert env_of(worker_container) == {
        "START_HTTP": "false",
        "START_WORKERS": "true",
        "DATABASE_URL": secret,
        "API_KEYS": API_KEYS_FILE,
    }
    assert_mounts_the_api_keys_secret(worker)
    # A worker-only process listens for /health (and /metrics).
    assert http_container(worker)["readinessProbe"]["httpGet"]["path"] == "/health"
    assert api["spec"]["template"]["spec"]["containers"][0]["image"] == worker_container["image"]
    assert service["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]


def test_kubernetes_workers_without_metrics_are_probed_on_health_too(bake: Bake) -> None:
    kinds = manifests(bake(**store_answers("postgres"), use_metrics="no"))

    _, worker = kinds["Deployment"]

    assert env_of(http_container(worker))["START_HTTP"] == "false"


@pytest.mark.parametrize("single_store", ["sqlite", "memory"])
def test_kubernetes_single_replica_stores_run_one_pod_that_does_everything(
    bake: Bake, single_store: str
) -> None:
    kinds = manifests(bake(**store_answers(single_store)))

    (deployment,) = kinds["Deployment"]
    container = http_container(deployment)
    pod = deployment["spec"]["template"]["spec"]
    environment = env_of(container)

    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert environment["START_HTTP"] == environment["START_WORKERS"] == "true"
    assert environment["API_KEYS"] == API_KEYS_FILE
    assert_mounts_the_api_keys_secret(deployment)
    if single_store == "sqlite":
        (claim,) = kinds["PersistentVolumeClaim"]
        assert environment["DATABASE_URL"] == "sqlite:////data/jobs.db"
        assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
        assert {
            "name": "data",
            "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]},
        } in pod["volumes"]
        assert pod["securityContext"]["fsGroup"] == IMAGE_UID
    else:
        assert set(kinds) == {"Deployment", "Service"}
        assert "DATABASE_URL" not in environment
        assert [volume["name"] for volume in pod["volumes"]] == ["api-keys"]


@pytest.mark.parametrize("store_without_auth", JOB_STORES)
def test_kubernetes_without_auth_has_no_api_keys_secret(
    bake: Bake, store_without_auth: str
) -> None:
    kinds = manifests(bake(**store_answers(store_without_auth), use_auth="no"))

    for deployment in kinds["Deployment"]:
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert "API_KEYS" not in env_of(container)
        assert "api-keys" not in {volume["name"] for volume in pod.get("volumes", [])}


# --- CI workflow ------------------------------------------------------------------------


def test_ci_workflow_runs_the_gates_and_cruft_check_and_only_this_store_s_services(
    project: Path, store: str
) -> None:
    workflow = yaml.safe_load((project / ".github" / "workflows" / "ci.yml").read_text())

    # YAML 1.1 reads the key `on` as True.
    triggers = workflow[True]
    test_job = workflow["jobs"]["test"]
    commands = " && ".join(step.get("run", "") for step in test_job["steps"])
    (cruft_step,) = [s for s in workflow["jobs"]["template"]["steps"] if "run" in s]

    assert set(triggers) == {"push", "pull_request"}
    for command in ("ruff check .", "ruff format --check .", "mypy src tests", "pytest"):
        assert command in commands
    assert cruft_step["run"].endswith("cruft check")
    assert cruft_step["if"] == "hashFiles('.cruft.json') != ''"
    if store == "postgres":
        assert set(test_job["services"]) == {"postgres"}
        assert test_job["env"]["REQUIRE_POSTGRES"] == "1"
    else:
        assert "services" not in test_job
        assert "env" not in test_job
