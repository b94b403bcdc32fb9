"""The scale-out files (infra/compose.yaml, infra/k8s/, infra/Dockerfile) agree with the code.

No container engine runs here, so these files are checked, not run: every LOOPLINE_*
variable is a setting of the service that reads it and its value passes that settings
class; ports agree between the settings, containers, Services, probes and URLs; the
topic job creates exactly infra/broker.py's topics and partition counts; the examples
table's writer and reader open one table on MinIO, in a bucket the stack creates; compose and
Kubernetes describe the same stack; secrets never appear as literals.
"""

from __future__ import annotations

import fnmatch
import os
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic_settings import BaseSettings

import infra.broker
import infra.mlflow_server
import infra.prefect_server
from services.common import events
from services.common.settings import CommonSettings
from services.feedback.settings import FeedbackSettings
from services.serving.settings import ServingSettings

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
COMPOSE = INFRA / "compose.yaml"
DOCKERFILE = INFRA / "Dockerfile"
NAMESPACE = "loopline"
IMAGE_DIR = "/app"  # WORKDIR of infra/Dockerfile: the repository's root in the image
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|AUTH|ACCESS_KEY")
# Kubernetes-only variables: the pod's name for Kafka's listeners, PostgreSQL's data folder
# below the volume's lost+found.
K8S_ONLY = {"POD_NAME", "PGDATA"}

# What delta-rs reads from the environment to reach the examples table on MinIO (object_store's S3 keys;
# AWS_CONDITIONAL_PUT=etag makes concurrent commits safe without a DynamoDB lock), and the MinIO
# variables its credentials must come from.
EXAMPLES_STORE = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ALLOW_HTTP", "AWS_CONDITIONAL_PUT", "AWS_ACCESS_KEY_ID",
                  "AWS_SECRET_ACCESS_KEY")
EXAMPLES_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "MINIO_ROOT_USER", "AWS_SECRET_ACCESS_KEY": "MINIO_ROOT_PASSWORD"}
# The commands that open the examples table: the feedback service writes it, every retrain reads it.
EXAMPLES_TABLE_USERS = {("loopline", "feedback"), ("loopline", "flows", "serve")}
EXAMPLES_NEEDS = {"LOOPLINE_EXAMPLES_URI", *EXAMPLES_STORE}
# The commands that open the Feast store: the train flow writes and materializes it, serving reads it.
FEAST_USERS = {("loopline", "serve"), ("loopline", "flows", "serve")}

# The loopline commands the stack runs, the settings class each reads, and what it needs at scale.
ROLES: dict[tuple[str, ...], tuple[type[CommonSettings], set[str]]] = {
    ("loopline", "serve"): (ServingSettings, {
        "LOOPLINE_HOST", "LOOPLINE_PORT", "LOOPLINE_STATE_DIR", "LOOPLINE_MLFLOW_TRACKING_URI",
        "LOOPLINE_KAFKA_BOOTSTRAP_SERVERS", "LOOPLINE_FEATURE_REPO", "LOOPLINE_ADMIN_TOKEN"}),
    ("loopline", "feedback"): (FeedbackSettings, {
        "LOOPLINE_GROUP_ID", "LOOPLINE_METRICS_PORT", "LOOPLINE_STATE_DIR", "LOOPLINE_MLFLOW_TRACKING_URI",
        "LOOPLINE_KAFKA_BOOTSTRAP_SERVERS", "LOOPLINE_FEATURE_REPO", "LOOPLINE_ADMIN_TOKEN", "PREFECT_API_URL",
        *EXAMPLES_NEEDS}),
    ("loopline", "flows", "serve"): (CommonSettings, {
        "LOOPLINE_STATE_DIR", "LOOPLINE_MLFLOW_TRACKING_URI", "LOOPLINE_KAFKA_BOOTSTRAP_SERVERS",
        "LOOPLINE_FEATURE_REPO", "PREFECT_API_URL", *EXAMPLES_NEEDS}),
}
# infra/k8s/config.yaml: one ConfigMap per settings class.
CONFIGMAP_SETTINGS: dict[str, type[CommonSettings]] = {
    "loopline-common": CommonSettings, "loopline-serving": ServingSettings, "loopline-feedback": FeedbackSettings}


@dataclass
class Container:
    """One container of either platform, reduced to what these checks compare."""

    where: str
    role: str  # the compose service or Kubernetes workload name
    image: str
    command: list[str]
    env: dict[str, str]  # secrets and pod fields as <placeholders>, references expanded
    secret_env: set[str] = field(default_factory=set)  # names whose value comes from a Secret
    helpers: set[str] = field(default_factory=set)  # secret names used only to build other values
    ports: dict[str, int] = field(default_factory=dict)  # k8s: port name -> containerPort
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def settings(self) -> type[CommonSettings] | None:
        role = ROLES.get(tuple(self.command))
        return role[0] if role else None


def setting_names(cls: type[BaseSettings]) -> set[str]:
    """The environment variables a pydantic-settings class reads."""
    prefix = cls.model_config.get("env_prefix", "")
    names = set()
    for name, info in cls.model_fields.items():
        alias = info.validation_alias
        names.add((alias if isinstance(alias, str) else f"{prefix}{name}").upper())
    return names


@cache
def k8s_objects() -> list[dict[str, Any]]:
    objects = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert isinstance(doc, dict) and doc.get("kind"), f"{path.name}: a document without a kind"
            objects.append({**doc, "_file": path.name})
    return objects


def k8s(kind: str, name: str) -> dict[str, Any]:
    found = [o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def workloads() -> list[dict[str, Any]]:
    return [o for o in k8s_objects() if o["kind"] in ("Deployment", "StatefulSet", "Job")]


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


_INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def compose_value(value: object) -> str:
    """A compose value as the container sees it: defaults filled in, required variables as <NAME>."""
    text = _INTERPOLATION.sub(lambda m: m.group(3) if m.group(2) in ("-", ":-") else f"<{m.group(1)}>",
                              str(value))
    return text.replace("$$", "$")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(NAME): a variable defined earlier in the same container."""
    return re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], value)


def k8s_containers() -> Iterator[Container]:
    configmaps = {o["metadata"]["name"]: o.get("data", {}) for o in k8s_objects() if o["kind"] == "ConfigMap"}
    for workload in workloads():
        for spec in workload["spec"]["template"]["spec"]["containers"]:
            env: dict[str, str] = {}
            secret: set[str] = set()
            for source in spec.get("envFrom", []):
                env.update({k: str(v) for k, v in configmaps[source["configMapRef"]["name"]].items()})
            for var in spec.get("env", []):
                if "value" in var:
                    env[var["name"]] = expand(str(var["value"]), env)
                elif "secretKeyRef" in var["valueFrom"]:
                    env[var["name"]] = f"<{var['valueFrom']['secretKeyRef']['key']}>"
                    secret.add(var["name"])
                else:
                    env[var["name"]] = f"<{var['name']}>"
            args = [str(a) for a in spec.get("command", []) + spec.get("args", [])]
            text = " ".join([*args, *(str(v.get("value", "")) for v in spec.get("env", []))])
            helpers = {name for name in secret if f"$({name})" in text}
            ports = {p.get("name", str(p["containerPort"])): p["containerPort"] for p in spec.get("ports", [])}
            yield Container("k8s", workload["metadata"]["name"], spec["image"], args, env, secret, helpers,
                            ports, spec)


def compose_containers() -> Iterator[Container]:
    for name, service in compose()["services"].items():
        command = [compose_value(c) for c in service.get("entrypoint", []) + service.get("command", [])]
        env = {k: compose_value(v) for k, v in service.get("environment", {}).items()}
        yield Container("compose", name, service["image"], command, env, raw=service)


def all_containers() -> list[Container]:
    return [*k8s_containers(), *compose_containers()]


def loopline_containers() -> list[Container]:
    return [c for c in all_containers() if c.settings is not None]


def one(where: str, role: str) -> Container:
    found = [c for c in all_containers() if c.where == where and c.role == role]
    assert len(found) == 1, f"{where}: expected one container for {role}"
    return found[0]


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"//{url}")
    assert parts.hostname and parts.port, url
    return parts.hostname, parts.port


def service_port(name: str, port: int) -> int:
    """The container port a Kubernetes Service forwards `port` to."""
    service = k8s("Service", name)
    matches = [p for p in service["spec"].get("ports", []) if p["port"] == port]
    assert matches, f"Service {name} has no port {port}"
    target = matches[0].get("targetPort", port)
    pods = [c for c in k8s_containers() if selects(service, c.role)]
    assert pods, f"Service {name} selects no workload"
    return pods[0].ports[target] if isinstance(target, str) else target


def selects(service: dict[str, Any], workload_name: str) -> bool:
    workload = next(w for w in workloads() if w["metadata"]["name"] == workload_name)
    labels = workload["spec"]["template"]["metadata"].get("labels", {})
    selector = service["spec"].get("selector", {})
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def flag(command: list[str], name: str) -> str:
    assert name in command, f"{name} missing from {command}"
    return command[command.index(name) + 1]


@cache
def scaleout_feature_vars() -> set[str]:
    return set(re.findall(r"\$\{(LOOPLINE_\w+)\}", (INFRA / "feature_repo" / "feature_store.yaml").read_text()))


def topic_partitions(container: Container) -> dict[str, int]:
    return {name: int(n) for name, n in (spec.split(":") for spec in container.env["TOPICS"].split())}


def created_buckets(where: str) -> set[str]:
    """The buckets the minio-bucket job makes (`mc mb ... local/<bucket> ...`) on the stack's MinIO."""
    script = " ".join(one(where, "minio-bucket").command)
    alias = re.search(r"mc alias set local (\S+)", script)
    assert alias, script
    host, port = host_port(alias.group(1))
    assert reaches(where, host, port, "minio"), alias.group(1)
    return {bucket for args in re.findall(r"mc mb ([^&;|]+)", script)
            for bucket in re.findall(r"\blocal/([\w.-]+)", args)}


def credential(container: Container, name: str) -> str:
    """Where a credential comes from: its Secret key in Kubernetes, its ${VARIABLE:-default} in compose."""
    return container.env[name] if container.where == "k8s" else str(container.raw["environment"][name])


# -- files ---------------------------------------------------------------------------------------------------


def test_every_manifest_parses_is_namespaced_and_listed_in_the_kustomization() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secrets.template.yaml"}
    assert set(kustomization["resources"]) == manifests
    assert kustomization["namespace"] == NAMESPACE
    for generator in kustomization["configMapGenerator"]:
        assert all((K8S / f).is_file() for f in generator["files"])
    kinds = {o["kind"] for o in k8s_objects()}
    assert {"Namespace", "ConfigMap", "Secret", "Service", "Deployment", "StatefulSet", "Job"} <= kinds
    assert k8s("Namespace", NAMESPACE)
    for o in k8s_objects():
        if o["kind"] not in ("Namespace", "Kustomization"):
            assert o["metadata"].get("namespace") == NAMESPACE, f"{o['_file']}: {o['kind']} {o['metadata']['name']}"
    assert set(compose()["services"]) >= {"kafka-1", "topics", "postgres", "minio", "redis", "mlflow",
                                          "prefect-server", "prefect-worker", "serving", "feedback"}


def test_each_loopline_command_runs_once_on_each_platform() -> None:
    for where in ("k8s", "compose"):
        commands = [tuple(c.command) for c in loopline_containers() if c.where == where]
        assert sorted(commands) == sorted(ROLES), where


# -- settings ------------------------------------------------------------------------------------------------


def test_loopline_variables_are_settings_of_the_service_that_reads_them() -> None:
    for container in loopline_containers():
        assert container.settings is not None
        known = setting_names(container.settings) | scaleout_feature_vars()
        unknown = {n for n in container.env if n.startswith("LOOPLINE_")} - known
        assert not unknown, f"{container.where} {container.role}: not settings of " \
                            f"{container.settings.__name__}: {sorted(unknown)}"
    for name, cls in CONFIGMAP_SETTINGS.items():
        keys = set(k8s("ConfigMap", name)["data"])
        assert keys <= setting_names(cls), f"ConfigMap {name}: {sorted(keys - setting_names(cls))}"
    dockerfile_env = set(re.findall(r"\b(LOOPLINE_\w+)=", DOCKERFILE.read_text()))
    assert dockerfile_env <= setting_names(CommonSettings)
    # No LOOPLINE_* variable reaches a container that reads no loopline settings.
    for container in all_containers():
        if container.settings is None:
            assert not [n for n in container.env if n.startswith("LOOPLINE_")], container.role


@pytest.mark.parametrize("where", ["k8s", "compose"])
def test_each_service_gets_what_it_needs_and_the_values_load(where: str, monkeypatch) -> None:
    for container in (c for c in loopline_containers() if c.where == where):
        cls, required = ROLES[tuple(container.command)]
        missing = required - set(container.env)
        assert not missing, f"{where} {container.role} lacks {sorted(missing)}"
        assert {n for n in required if n.startswith("LOOPLINE_")} <= setting_names(cls)
        # Values pass the settings class exactly as the service would read them.
        for name in [n for n in os.environ if n.startswith("LOOPLINE_")]:
            monkeypatch.delenv(name)
        for name, value in container.env.items():
            if name.startswith("LOOPLINE_"):
                monkeypatch.setenv(name, value)
        settings = cls()
        feature_repo = settings.feature_repo
        assert feature_repo.is_relative_to(IMAGE_DIR), feature_repo
        repo_copy = REPO / feature_repo.relative_to(IMAGE_DIR)
        assert (repo_copy / "feature_store.yaml").is_file(), repo_copy
        if tuple(container.command) not in FEAST_USERS:  # its online store's credentials go to its users only
            assert not scaleout_feature_vars() & set(container.env), f"{where} {container.role}"
        elif repo_copy == INFRA / "feature_repo":
            assert scaleout_feature_vars() <= set(container.env), f"{where} {container.role}"
        if isinstance(settings, ServingSettings):
            assert settings.host == "0.0.0.0", "serving must listen beyond the container's loopback"
            assert settings.admin_token is not None


def test_the_scaleout_feature_store_differs_from_the_default_only_in_its_online_store() -> None:
    default = yaml.safe_load((REPO / "feature_repo" / "feature_store.yaml").read_text())
    scaled = yaml.safe_load((INFRA / "feature_repo" / "feature_store.yaml").read_text())
    assert {k: v for k, v in scaled.items() if k != "online_store"} == \
           {k: v for k, v in default.items() if k != "online_store"}
    assert scaled["online_store"]["type"] == "redis"
    assert scaled["online_store"]["connection_string"] == "${LOOPLINE_REDIS_URL}"
    # The image completes the repo with the same definitions.
    assert "cp feature_repo/definitions.py infra/feature_repo/definitions.py" in DOCKERFILE.read_text()


def test_only_the_feast_stores_users_mount_its_files() -> None:
    # The code opens the store in serving and the flows only (services/common/features.py defines open_store).
    opened_in = {p.relative_to(REPO).as_posix() for d in ("services", "flows") for p in (REPO / d).rglob("*.py")
                 if "open_store(" in p.read_text()} - {"services/common/features.py"}
    assert opened_in and all(p.startswith(("services/serving/", "flows/")) for p in opened_in), opened_in
    for container in loopline_containers():
        if container.where == "k8s":
            mounts = {m["mountPath"] for m in container.raw.get("volumeMounts", [])}
        else:
            mounts = {str(v).split(":")[1] for v in container.raw.get("volumes", [])}
        feast = f"{container.env['LOOPLINE_STATE_DIR']}/feast"
        assert (feast in mounts) == (tuple(container.command) in FEAST_USERS), f"{container.where} {container.role}"


def test_the_image_installs_like_the_makefile() -> None:
    text = DOCKERFILE.read_text()
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torch = next(p for p in pins if p.startswith("torch=="))
    assert text.index(f"pip install {torch}") < text.index("pip install -e .")
    assert f"WORKDIR {IMAGE_DIR}" in text and "HF_HUB_OFFLINE=1" in text
    assert f"EXPOSE {ServingSettings.model_fields['port'].default}" in text


# -- ports, probes, URLs -------------------------------------------------------------------------------------


def test_serving_ports_probes_and_replicas_agree(tmp_path) -> None:
    from services.serving.app import create_app

    default = ServingSettings.model_fields["port"].default
    routes = {getattr(r, "path", "") for r in create_app(ServingSettings(state_dir=tmp_path)).routes}
    deployment = k8s("Deployment", "serving")
    assert deployment["spec"]["replicas"] >= 3
    container = one("k8s", "serving")
    port = int(container.env["LOOPLINE_PORT"])
    assert port == default == container.ports["http"] == service_port("serving", default)
    probes = {kind: container.raw[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz" and probes["livenessProbe"]["path"] == "/healthz"
    for probe in probes.values():
        assert probe["path"] in routes
        assert container.ports[probe["port"]] == port

    service = compose()["services"]["serving"]
    assert service["deploy"]["replicas"] >= 3
    assert int(one("compose", "serving").env["LOOPLINE_PORT"]) == port
    assert all(mapping.endswith(f":{port}") for mapping in service["ports"])
    url = re.search(r"http://[^']+", " ".join(service["healthcheck"]["test"]))
    assert url and host_port(url.group())[1] == port and urlsplit(url.group()).path in routes


def test_feedback_group_port_probes_and_replicas_agree() -> None:
    import inspect

    import services.feedback.metrics

    default = FeedbackSettings.model_fields["metrics_port"].default
    assert '"/healthz"' in inspect.getsource(services.feedback.metrics)
    statefulset = k8s("StatefulSet", "feedback")
    partitions = infra.broker.DEFAULT_PARTITIONS
    # Members of one group beyond the partition count would sit idle.
    assert 1 <= statefulset["spec"]["replicas"] <= partitions[events.PREDICTIONS]
    k8s_feedback, compose_feedback = one("k8s", "feedback"), one("compose", "feedback")
    assert k8s_feedback.env["LOOPLINE_GROUP_ID"] == compose_feedback.env["LOOPLINE_GROUP_ID"]
    assert int(k8s_feedback.env["LOOPLINE_METRICS_PORT"]) == int(compose_feedback.env["LOOPLINE_METRICS_PORT"]) \
        == default
    for kind in ("startupProbe", "livenessProbe"):
        probe = " ".join(k8s_feedback.raw[kind]["exec"]["command"])
        assert "LOOPLINE_METRICS_PORT" in probe and "/healthz" in probe
    url = re.search(r"http://[^']+", " ".join(compose()["services"]["feedback"]["healthcheck"]["test"]))
    assert url and host_port(url.group())[1] == default and url.group().endswith("/healthz")


def test_every_service_targets_a_container_port_and_every_probe_a_port() -> None:
    containers = {c.role: c for c in k8s_containers()}
    for service in (o for o in k8s_objects() if o["kind"] == "Service"):
        selected = [w["metadata"]["name"] for w in workloads() if selects(service, w["metadata"]["name"])]
        assert len(selected) == 1, f"Service {service['metadata']['name']} selects {selected}"
        ports = containers[selected[0]].ports
        for port in service["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            assert target in ports or target in ports.values(), f"{service['metadata']['name']}: {target}"
    for container in containers.values():
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = container.raw.get(kind, {})
            for action in ("httpGet", "tcpSocket"):
                if action in probe:
                    assert probe[action]["port"] in container.ports or probe[action]["port"] in \
                           container.ports.values(), f"{container.role} {kind}"
    for workload in workloads():
        assert workload["spec"]["template"]["spec"].get("enableServiceLinks") is False, \
            f"{workload['metadata']['name']}: Service env vars (KAFKA_PORT=tcp://...) would leak in"


def reaches(where: str, host: str, port: int, workload: str) -> bool:
    """True if host:port inside the stack lands on `workload` listening on that same port."""
    if where == "k8s":
        return selects(k8s("Service", host), workload) and service_port(host, port) == port
    return re.fullmatch(rf"{workload}(-\d+)?", host) is not None and port in one("k8s", workload).ports.values()


@pytest.mark.parametrize("where", ["k8s", "compose"])
def test_urls_name_the_right_services_and_ports(where: str) -> None:
    mlflow, prefect = one(where, "mlflow"), one(where, "prefect-server")
    for container in (c for c in loopline_containers() if c.where == where):
        env = container.env
        host, port = host_port(env["LOOPLINE_MLFLOW_TRACKING_URI"])
        assert port == infra.mlflow_server.DEFAULT_PORT == int(flag(mlflow.command, "--port"))
        assert reaches(where, host, port, "mlflow")
        # MLflow refuses requests whose Host header it does not allow.
        allowed = flag(mlflow.command, "--allowed-hosts").split(",")
        assert any(fnmatch.fnmatch(f"{host}:{port}", a) if "*" in a else f"{host}:{port}" == a for a in allowed)
        if "PREFECT_API_URL" in env:
            host, port = host_port(env["PREFECT_API_URL"])
            assert urlsplit(env["PREFECT_API_URL"]).path == "/api"
            assert port == infra.prefect_server.DEFAULT_PORT == int(flag(prefect.command, "--port"))
            assert reaches(where, host, port, "prefect-server")
        for server in env["LOOPLINE_KAFKA_BOOTSTRAP_SERVERS"].split(","):
            host, port = host_port(server)
            assert port == infra.broker.DEFAULT_PORT and reaches(where, host, port, "kafka"), server
        if "LOOPLINE_REDIS_URL" in env:
            host, port = host_port(env["LOOPLINE_REDIS_URL"].split(",")[0])
            assert reaches(where, host, port, "redis")
    # MLflow's artifacts go to the bucket the bucket job creates, on MinIO.
    assert urlsplit(flag(mlflow.command, "--artifacts-destination")).netloc in created_buckets(where)
    host, port = host_port(mlflow.env["MLFLOW_S3_ENDPOINT_URL"])
    assert reaches(where, host, port, "minio")
    # Kafka's advertised listeners use the port clients bootstrap with.
    for kafka in (c for c in all_containers() if c.where == where and c.image.startswith("apache/kafka:")):
        if "KAFKA_ADVERTISED_LISTENERS" in kafka.env:
            assert kafka.env["KAFKA_ADVERTISED_LISTENERS"].endswith(f":{infra.broker.DEFAULT_PORT}")


# -- the examples table --------------------------------------------------------------------------------------


def test_the_examples_tables_writer_and_reader_open_one_table_in_a_bucket_the_stack_creates() -> None:
    # The code opens the table in the feedback service and the train flow, never in serving.
    opened_in = {p.relative_to(REPO).as_posix() for d in ("services", "flows") for p in (REPO / d).rglob("*.py")
                 if "ExamplesTable(" in p.read_text()}
    assert opened_in and all(p.startswith(("services/feedback/", "flows/")) for p in opened_in), opened_in
    uris: set[str] = set()
    stores: dict[str, dict[str, str]] = {}
    for where in ("k8s", "compose"):
        users = {tuple(c.command): c for c in loopline_containers()
                 if c.where == where and tuple(c.command) in EXAMPLES_TABLE_USERS}
        assert set(users) == EXAMPLES_TABLE_USERS, where
        minio, mlflow = one(where, "minio"), one(where, "mlflow")
        for container in users.values():
            env, at = container.env, f"{where} {container.role}"
            missing = EXAMPLES_NEEDS - set(env)
            assert not missing, f"{at} lacks {sorted(missing)}"
            uris.add(env["LOOPLINE_EXAMPLES_URI"])
            # MinIO's API, the endpoint MLflow uses; plain http only where the endpoint is http.
            endpoint = env["AWS_ENDPOINT_URL"]
            assert reaches(where, *host_port(endpoint), "minio") and endpoint == mlflow.env["MLFLOW_S3_ENDPOINT_URL"], \
                f"{at}: {endpoint} is not MinIO's S3 API"
            assert env["AWS_ALLOW_HTTP"] == str(urlsplit(endpoint).scheme == "http").lower(), at
            assert env["AWS_CONDITIONAL_PUT"] == "etag" and env["AWS_REGION"], at
            for name, minio_name in EXAMPLES_CREDENTIALS.items():
                assert credential(container, name) == credential(minio, minio_name), f"{at}: {name}"
            store = {n: env[n] for n in EXAMPLES_STORE if n not in EXAMPLES_CREDENTIALS}
            assert stores.setdefault(where, store) == store, f"{at}: another S3 configuration"
            if where == "compose":
                assert container.raw.get("depends_on", {}).get("minio-bucket") == \
                    {"condition": "service_completed_successfully"}, f"{at}: starts before its bucket exists"
        # The S3 credentials go to the table's users and to no other loopline container.
        for container in (c for c in loopline_containers() if c.where == where):
            aws = {n for n in container.env if n.startswith("AWS_")}
            assert aws == (set(EXAMPLES_STORE) if tuple(container.command) in EXAMPLES_TABLE_USERS else set()), \
                f"{where} {container.role}: {sorted(aws)}"
    assert stores["k8s"] == stores["compose"]
    assert set(k8s("ConfigMap", "loopline-examples-store")["data"]) == set(stores["k8s"])
    # One table, inside a bucket (not its root) that the bucket job creates on both platforms.
    assert len(uris) == 1, f"the writer and the reader name different tables: {sorted(uris)}"
    uri = urlsplit(uris.pop())
    assert uri.scheme == "s3" and uri.path.strip("/"), uri.geturl()
    for where in ("k8s", "compose"):
        assert uri.netloc in created_buckets(where), f"{where}: no job creates bucket {uri.netloc}"


# -- topics --------------------------------------------------------------------------------------------------


def test_the_topic_jobs_create_the_codes_topics_with_its_partition_counts() -> None:
    code_topics = {events.PREDICTIONS, events.FEEDBACK, events.FEEDBACK_DLQ, events.MODEL_UPDATES}
    assert set(infra.broker.TOPICS) == set(infra.broker.DEFAULT_PARTITIONS) == code_topics
    partitions = infra.broker.DEFAULT_PARTITIONS
    # Same key and partition count, so one member owns both sides of a join.
    assert partitions[events.PREDICTIONS] == partitions[events.FEEDBACK]
    brokers = {"k8s": k8s("StatefulSet", "kafka")["spec"]["replicas"],
               "compose": len([s for s in compose()["services"] if re.fullmatch(r"kafka-\d+", s)])}
    for where, role in (("k8s", "kafka-topics"), ("compose", "topics")):
        job = one(where, role)
        assert topic_partitions(job) == dict(partitions), where
        assert 1 <= int(job.env["MIN_INSYNC_REPLICAS"]) < int(job.env["REPLICATION_FACTOR"]) <= brokers[where]
        assert job.command == ["/bin/sh", "/scripts/create-topics.sh"]
        for server in job.env["BOOTSTRAP"].split(","):
            assert host_port(server)[1] == infra.broker.DEFAULT_PORT
    # Both run the same script file: kustomize generates the ConfigMap from it, compose mounts it.
    script = "scripts/create-topics.sh"
    assert f"./k8s/{script}:/scripts/create-topics.sh:ro" in compose()["services"]["topics"]["volumes"]
    assert any(script in g["files"] for g in yaml.safe_load((K8S / "kustomization.yaml").read_text())[
        "configMapGenerator"])
    assert "--replication-factor" in (K8S / script).read_text()


# -- the two platforms ---------------------------------------------------------------------------------------


def test_compose_and_kubernetes_run_the_same_images_commands_and_variables() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    pairs = [("mlflow", "mlflow"), ("prefect-server", "prefect-server"), ("prefect-worker", "prefect-worker"),
             ("serving", "serving"), ("feedback", "feedback"), ("kafka-topics", "topics"),
             ("minio-bucket", "minio-bucket"), ("postgres", "postgres"), ("minio", "minio"), ("redis", "redis"),
             ("kafka", "kafka-1")]
    for k8s_role, compose_role in pairs:
        a, b = one("k8s", k8s_role), one("compose", compose_role)
        assert a.image == b.image, k8s_role
        if a.image.startswith("loopline:"):
            assert a.image == f"loopline:{version}"
            # mlflow's command carries the database password: a $(reference) or a ${reference}.
            assert a.command == b.command or k8s_role == "mlflow", k8s_role
        # Kubernetes builds connection strings from secret helpers; compose interpolates instead.
        names_a = set(a.env) - K8S_ONLY
        assert names_a - a.helpers <= set(b.env) <= names_a, f"{k8s_role}: {sorted(names_a ^ set(b.env))}"
        for name in set(b.env):
            if name.startswith("LOOPLINE_") and name not in a.secret_env and "<" not in a.env[name] \
                    and name != "LOOPLINE_KAFKA_BOOTSTRAP_SERVERS":
                assert a.env[name] == b.env[name], f"{k8s_role} {name}"
    mlflow_k8s, mlflow_compose = one("k8s", "mlflow").command, one("compose", "mlflow").command
    assert [c for c in mlflow_k8s if c.startswith("--")] == [c for c in mlflow_compose if c.startswith("--")]
    for name in ("--artifacts-destination", "--host", "--port", "--workers"):
        assert flag(mlflow_k8s, name) == flag(mlflow_compose, name), name
    # Broker settings other than a node's identity are the same.
    kafka_k8s, kafka_compose = one("k8s", "kafka"), one("compose", "kafka-1")
    per_node = {"KAFKA_NODE_ID", "KAFKA_ADVERTISED_LISTENERS", "KAFKA_CONTROLLER_QUORUM_VOTERS", "KAFKA_HEAP_OPTS"}
    for name in set(kafka_k8s.env) - per_node - K8S_ONLY:
        assert kafka_k8s.env[name] == kafka_compose.env[name], name
    voters = kafka_k8s.env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert len(voters) == k8s("StatefulSet", "kafka")["spec"]["replicas"]


def test_external_variable_names_are_real_settings_of_their_tools() -> None:
    import mlflow.environment_variables
    import prefect.settings

    for container in all_containers():
        if not container.image.startswith("loopline:"):
            continue
        for name in container.env:
            if name.startswith("PREFECT_"):
                assert hasattr(prefect.settings, name), f"{container.role}: {name} is no Prefect setting"
            if name.startswith("MLFLOW_"):
                assert hasattr(mlflow.environment_variables, name), f"{container.role}: {name}"
    for where in ("k8s", "compose"):
        mlflow_env = one(where, "mlflow").env
        assert all(mlflow_env.get(k) == v for k, v in infra.mlflow_server.SERVER_ENV.items()), where
        assert one(where, "prefect-server").env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"


# -- secrets -------------------------------------------------------------------------------------------------


def test_secrets_come_from_the_secret_in_kubernetes_and_have_only_marked_dev_defaults_in_compose() -> None:
    template = k8s("Secret", "loopline-secrets")
    assert all(value == "" for value in template["stringData"].values()), "the template holds no secrets"
    for o in k8s_objects():
        if o["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        for spec in o["spec"]["template"]["spec"]["containers"]:
            for var in spec.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if SECRET_NAME.search(var["name"]):
                    assert ref, f"{o['metadata']['name']}: {var['name']} is not from a Secret"
                if ref:
                    assert ref["name"] == template["metadata"]["name"] and ref["key"] in template["stringData"]
    k8s_text = "\n".join(p.read_text() for p in K8S.glob("*.yaml"))
    compose_text = COMPOSE.read_text()
    # Credentials inside URLs and connection strings are references, never literals.
    for text, reference in ((k8s_text, r"\$\(\w+\)"), (compose_text, r"\$\{\w+[^}]*\}")):
        for secret in re.findall(r"://\w+:([^@\s]+)@|password=([^,\s\"]+)", text):
            value = secret[0] or secret[1]
            assert re.fullmatch(reference, value), f"literal credential {value!r}"
    for name, op, default in _INTERPOLATION.findall(compose_text):
        if op.endswith("-"):
            assert "dev-only" in default, f"${{{name}}}: a default that is not marked as a dev default"
    for service in ("serving", "feedback"):
        assert compose()["services"][service]["environment"]["LOOPLINE_ADMIN_TOKEN"].startswith(
            "${LOOPLINE_ADMIN_TOKEN:?"), "no default admin token"
