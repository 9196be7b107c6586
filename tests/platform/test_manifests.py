"""The deployment files parse, and name only settings the app reads and commands that exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from django.core.management import get_commands

ROOT = Path(__file__).resolve().parents[2]
PLATFORM = ROOT / "platform"
# Variables read by the process managers and servers, not by Django settings.
RUNTIME_VARIABLES = {"WEB_CONCURRENCY", "WORKER_CONCURRENCY", "HOST", "PORT",
                     "PROMETHEUS_MULTIPROC_DIR", "KEEP_ALIVE_SECONDS",
                     "GRACEFUL_SHUTDOWN_SECONDS", "LIMIT_CONCURRENCY", "FORWARDED_ALLOW_IPS",
                     "PYTHON_BIN"}


def _settings_variables() -> set[str]:
    """The variables the settings read: novakit/settings.py and the database's own module."""
    source = "".join((ROOT / "novakit" / name).read_text()
                     for name in ("settings.py", "databases.py"))
    return set(re.findall(r'env_\w+\(\s*"([A-Z0-9_]+)"', source))


def _documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _k8s_documents() -> list[dict]:
    return [doc for path in sorted((PLATFORM / "k8s").glob("*.yaml")) for doc in _documents(path)]


def _containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec", {}) if "template" in spec else {}
    return pod.get("containers", [])


def test_every_manifest_parses_and_has_kind_and_name():
    kinds = {}
    for doc in _k8s_documents():
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"]
        kinds.setdefault(doc["kind"], []).append(doc["metadata"]["name"])
    assert set(kinds) >= {"Deployment", "Service", "Ingress", "HorizontalPodAutoscaler",
                          "ConfigMap", "Secret", "Job"}
    assert sorted(kinds["Deployment"]) == ["novakit-beat", "novakit-inference", "novakit-web",
                                           "novakit-worker"]


def test_beat_runs_exactly_one_replica_and_web_has_probes():
    by_name = {(doc["kind"], doc["metadata"]["name"]): doc for doc in _k8s_documents()}
    assert by_name["Deployment", "novakit-beat"]["spec"]["replicas"] == 1
    web = _containers(by_name["Deployment", "novakit-web"])[0]
    assert web["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert web["livenessProbe"]["httpGet"]["path"] == "/healthz"
    migrate = _containers(by_name["Job", "novakit-migrate"])[0]
    assert migrate["command"][-2:] == ["migrate", "--no-input"]


def test_config_and_secret_name_only_settings_the_app_reads():
    known = _settings_variables()
    for doc in _k8s_documents():
        if doc["kind"] in ("ConfigMap", "Secret"):
            names = set(doc.get("data", {})) | set(doc.get("stringData", {}))
            assert names, doc["metadata"]["name"]
            assert names <= known, names - known
    env_example = (PLATFORM / "novakit.env.example").read_text()
    example_names = set(re.findall(r"^([A-Z0-9_]+)=", env_example, re.M))
    assert example_names <= known, example_names - known


def test_every_deployment_reads_its_configuration():
    for doc in _k8s_documents():
        for container in _containers(doc):
            refs = {next(iter(item.values()))["name"] for item in container.get("envFrom", [])}
            assert refs == {"novakit-config", "novakit-secrets"}, doc["metadata"]["name"]
            for item in container.get("env", []):
                assert item["name"] in _settings_variables() | RUNTIME_VARIABLES


def _assert_command_exists(argv: list[str]) -> None:
    program = argv[0]
    if program == "platform/serve":
        assert (ROOT / "platform" / "serve").stat().st_mode & 0o111
    elif program.endswith("python") and argv[1] == "manage.py":
        assert argv[2] in get_commands(), argv
    elif program.endswith("python") and argv[1:3] == ["-m", "novakit.runtime.serve"]:
        assert (ROOT / "novakit" / "runtime" / "serve.py").exists()
    elif program.endswith("celery"):
        assert argv[1:3] == ["-A", "novakit"] and argv[3] in ("worker", "beat"), argv
    elif program.endswith("uvicorn"):
        assert argv[1] == "novakit.asgi:application"
    else:
        pytest.fail(f"unknown command {argv}")


def test_commands_in_manifests_compose_and_procfile_exist():
    commands = [c["command"] for doc in _k8s_documents() for c in _containers(doc)]
    compose = _documents(PLATFORM / "compose.yaml")[0]
    commands += [svc["command"] for svc in compose["services"].values()
                 if "command" in svc and "build" in svc]
    for line in (PLATFORM / "Procfile").read_text().splitlines():
        if line and not line.startswith("#"):
            commands.append(shlex.split(line.split(":", 1)[1]))
    assert len(commands) >= 10
    for argv in commands:
        _assert_command_exists(argv)


def test_compose_names_only_known_settings():
    compose = _documents(PLATFORM / "compose.yaml")[0]
    names = set(compose["x-app"]["environment"])
    assert names <= _settings_variables()
    assert set(compose["services"]) >= {"web", "worker", "beat", "postgres", "redis"}


def _env(container: dict) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}


def test_inference_is_a_process_type_of_its_own_in_kubernetes_compose_and_the_procfile(settings):
    by_name = {(doc["kind"], doc["metadata"]["name"]): doc for doc in _k8s_documents()}
    inference = _containers(by_name["Deployment", "novakit-inference"])[0]
    web = _containers(by_name["Deployment", "novakit-web"])[0]
    assert _env(inference)["NOVAKIT_PROCESS"] == "inference"
    assert _env(web)["NOVAKIT_PROCESS"] == "all"
    assert inference["command"] == web["command"] == ["platform/serve"]  # one image, one server
    assert inference["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert inference["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert ("Service", "novakit-inference") in by_name
    assert ("HorizontalPodAutoscaler", "novakit-inference") in by_name

    # The Ingress: each inference path to the inference tier, everything else to web.
    [rule] = by_name["Ingress", "novakit"]["spec"]["rules"]
    routes = {path["path"]: path["backend"]["service"]["name"] for path in rule["http"]["paths"]}

    def routed(url: str) -> str:  # Prefix matching: whole path elements, the longest wins
        matches = [prefix for prefix in routes
                   if prefix == "/" or url == prefix or url.startswith(prefix.rstrip("/") + "/")]
        return routes[max(matches, key=len)]

    for prefix in settings.INFERENCE_PATH_PREFIXES:
        assert routed(prefix) == "novakit-inference", prefix
    assert routed("/api/v1/chat/completions") == routed("/api/v1/models") == "novakit-inference"
    for path in ("/portal/", "/admin/", "/api/v1/keys", "/api/v1/usage", "/readyz"):
        assert routed(path) == "novakit-web", path

    compose = _documents(PLATFORM / "compose.yaml")[0]["services"]
    assert compose["inference"]["environment"]["NOVAKIT_PROCESS"] == "inference"
    assert compose["web"]["environment"]["NOVAKIT_PROCESS"] == "all"
    assert compose["inference"]["ports"] != compose["web"]["ports"]

    procfile = {line.split(":", 1)[0]: shlex.split(line.split(":", 1)[1])
                for line in (PLATFORM / "Procfile").read_text().splitlines()
                if line and not line.startswith("#")}
    assert set(procfile) == {"web", "inference", "worker", "beat"}
    for name, process in (("web", "all"), ("inference", "inference")):
        argv = procfile[name]
        assert argv[1:3] == ["-m", "novakit.runtime.serve"]
        assert argv[argv.index("--process") + 1] == process
