"""Security guarantees, each with a test that fails if it breaks.

- Admin endpoints need a token, sent as `Authorization: Bearer <token>` and compared in
  constant time (serving's /v1/admin/*, the feedback service's POST /promote); without a
  configured token they are off.
- Request bodies over the limit get 413 with a reason, however they are sent.
- No pickle on any load path: the source, the bundle files and the registry's stored
  model are free of it.
- Artifacts are verified by sha256 before use: a changed byte in any bundle file is
  refused, in process and by the running services.
- Secrets come only from the environment (SecretStr settings), and are never logged,
  put on a command line, or written to stack.json, checkpoints or state files.
- Nothing listens beyond loopback by default: the settings and commands of every
  listening part, and the sockets of the running processes.
"""

from __future__ import annotations

import ast
import hmac
import inspect
import ipaddress
import os
import re
import secrets
import shutil
import zipfile
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any, cast

import httpx
import mlflow
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from infra import broker as infra_broker
from infra import mlflow_server, prefect_server
from infra.process import HOST, ManagedProcess, free_port
from infra.stack import STATE_FILE, Stack, StackSettings
from models.bundle import MANIFEST, BundleError, read_manifest, verify_bundle
from models.predict import Predictor
from services.common.settings import CommonSettings
from services.feedback.metrics import serve_metrics
from services.feedback.settings import FeedbackSettings
from services.feedback.versions import BaseBundles
from services.serving.app import create_app
from services.serving.settings import ServingSettings
from tests.conftest import TinyModel, build_bundle
from tests.integration.helpers import wait_until
from tests.integration.stack import TOKEN, Feedback, Serving

pytestmark = pytest.mark.reliability

REPO = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("models", "services", "flows", "infra", "loopline", "feature_repo", "bench")
# Whole words inside names ("admin_token", "DB_PASSWORD"), not "tokenizer" or "tokens".
SECRET_FIELD = re.compile(r"(?<![a-z])(token|secret|password|passwd|credential|api_key|private_key)(?![a-z])",
                          re.IGNORECASE)
IN_PROCESS_TOKEN = "in-process-" + secrets.token_hex(8)


# -- shared pieces ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bundle(trained: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    encoder, head, _ = trained
    return build_bundle(tmp_path_factory.mktemp("security") / "bundle", encoder, head)


def app_client(bundle: Path, state: Path, token: str | None, **settings: Any) -> TestClient:
    return TestClient(create_app(ServingSettings(bundle=bundle, state_dir=state, admin_token=token,
                                                 kafka_bootstrap_servers=None, **settings)))


@pytest.fixture
def client(bundle: Path, tmp_path: Path) -> Iterator[TestClient]:
    with app_client(bundle, tmp_path, IN_PROCESS_TOKEN) as test_client:
        yield test_client


class PromoteOnly:
    """What POST /promote needs of the feedback service."""

    def __init__(self) -> None:
        self.promotions = 0

    def request_promotion(self) -> dict[str, Any]:
        self.promotions += 1
        return {"status": "unchanged", "version": 1, "detail": "nothing learned since v1"}


@pytest.fixture
def promote_port() -> Iterator[Callable[[str | None], tuple[str, PromoteOnly]]]:
    """Start the feedback service's HTTP server (with a stand-in service) for a token; URL of /promote."""
    servers = []

    def start(token: str | None) -> tuple[str, PromoteOnly]:
        service = PromoteOnly()
        port = free_port()
        servers.append(serve_metrics(cast(Any, service), port, token))
        return f"http://{HOST}:{port}/promote", service

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def compare_digest_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Any]]:
    """Calls to hmac.compare_digest (and secrets.compare_digest, the same function) from now on."""
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    monkeypatch.setattr(secrets, "compare_digest", spy)
    return calls


def compared_with(calls: list[tuple[Any, Any]], token: str) -> bool:
    wanted = {token, token.encode()}
    return any(a in wanted or b in wanted for a, b in calls)


# -- (a) admin endpoints need a token, compared in constant time ---------------------------------

@pytest.mark.parametrize(("route", "body"), [("/v1/admin/reload", None), ("/v1/admin/rollback", {"version": 1})])
def test_serving_admin_routes_compare_the_token_in_constant_time(
        client: TestClient, compare_digest_calls: list[tuple[Any, Any]], route: str, body: Any) -> None:
    for given in ({}, {"Authorization": "Bearer " + IN_PROCESS_TOKEN[:-1]}, {"Authorization": "Bearer x"}):
        compare_digest_calls.clear()
        refused = client.post(route, json=body, headers=given)
        assert refused.status_code == 401 and "token" in refused.json()["detail"]
        assert compared_with(compare_digest_calls, IN_PROCESS_TOKEN), "the token was not compared in constant time"
    compare_digest_calls.clear()
    ok = client.post(route, json=body, headers={"Authorization": f"Bearer {IN_PROCESS_TOKEN}"})
    assert ok.status_code == 200 and ok.json()["version"] == "1"
    assert compared_with(compare_digest_calls, IN_PROCESS_TOKEN)


def test_serving_admin_routes_are_off_without_a_token(bundle: Path, tmp_path: Path) -> None:
    with app_client(bundle, tmp_path, None) as client:
        for route in ("/v1/admin/reload", "/v1/admin/rollback"):
            response = client.post(route, json={"version": 1}, headers={"Authorization": "Bearer anything"})
            assert response.status_code == 403 and "LOOPLINE_ADMIN_TOKEN" in response.json()["detail"]


def test_feedback_promote_compares_the_token_in_constant_time(
        promote_port: Callable[[str | None], tuple[str, PromoteOnly]],
        compare_digest_calls: list[tuple[Any, Any]]) -> None:
    url, service = promote_port(IN_PROCESS_TOKEN)
    for given in ({}, {"Authorization": "Bearer " + IN_PROCESS_TOKEN[:-1]}, {"Authorization": "Basic eDp5"}):
        compare_digest_calls.clear()
        refused = httpx.post(url, headers=given, timeout=5)
        assert refused.status_code == 401 and "token" in refused.json()["detail"]
        assert compared_with(compare_digest_calls, IN_PROCESS_TOKEN), "the token was not compared in constant time"
    assert service.promotions == 0
    ok = httpx.post(url, headers={"Authorization": f"Bearer {IN_PROCESS_TOKEN}"}, timeout=5)
    assert ok.status_code == 200 and service.promotions == 1


def test_feedback_promote_is_refused_without_a_configured_token(
        promote_port: Callable[[str | None], tuple[str, PromoteOnly]]) -> None:
    url, service = promote_port(None)
    for given in ({}, {"Authorization": "Bearer anything"}):
        response = httpx.post(url, headers=given, timeout=5)
        assert response.status_code == 403 and "LOOPLINE_ADMIN_TOKEN" in response.json()["detail"]
    assert service.promotions == 0


@pytest.mark.parametrize("scheme", ["", "Token ", "Basic "], ids=["no scheme", "Token", "Basic"])
def test_admin_tokens_need_the_bearer_scheme(
        scheme: str, client: TestClient, promote_port: Callable[[str | None], tuple[str, PromoteOnly]]) -> None:
    """The right token in no scheme or another one is refused, by serving and the feedback service alike."""
    header = scheme + IN_PROCESS_TOKEN  # the token is random: in the test ids it would differ per collection
    assert client.post("/v1/admin/reload", headers={"Authorization": header}).status_code == 401
    url, service = promote_port(IN_PROCESS_TOKEN)
    assert httpx.post(url, headers={"Authorization": header}, timeout=5).status_code == 401
    assert service.promotions == 0


def secret_equality(tree: ast.Module) -> list[str]:
    """`==` and `!=` comparisons of something whose name says it is secret."""
    return [f"{node.lineno}: {ast.unparse(node)}" for node in ast.walk(tree)
            if isinstance(node, ast.Compare) and any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops)
            and any(SECRET_FIELD.search(ast.unparse(part)) for part in (node.left, *node.comparators))]


@pytest.mark.parametrize(("snippet", "flagged"), [
    ("ok = given == settings.admin_token.get_secret_value()", True),
    ("if request.headers['Authorization'] != 'Bearer ' + TOKEN: pass", True),
    ("if token is None: pass", False),
    ("if len(tokens) == 0 or tokenizer == other: pass", False),
])
def test_the_equality_scan_flags_secret_comparisons(snippet: str, flagged: bool) -> None:
    assert bool(secret_equality(ast.parse(snippet))) is flagged


def test_no_secret_is_compared_with_equality_operators() -> None:
    """`==` on a token leaks its prefix through timing; the tests above catch the admin paths, this one any
    other comparison of a value whose name says it is secret."""
    found = [f"{path}:{use}" for path, tree in project_sources() for use in secret_equality(tree)]
    assert not found, found


# -- (b) request size limits --------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("route", ["/v1/predict", "/v1/predict/batch", "/v1/admin/rollback"])
def test_a_body_over_the_limit_gets_413_with_a_reason(serving: Serving, route: str) -> None:
    limit = ServingSettings.model_fields["max_body_bytes"].default
    declared = httpx.post(serving.url + route, content=b"x" * (limit + 1), timeout=30,
                          headers={"content-type": "application/json"})
    assert declared.status_code == 413 and f"body over {limit} bytes" in declared.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the size is known only while reading
        yield b'{"text": "'
        for _ in range(limit // 65_536 + 2):
            yield b"x" * 65_536
        yield b'"}'

    streamed = httpx.post(serving.url + route, content=chunks(), timeout=30,
                          headers={"content-type": "application/json"})
    assert streamed.status_code == 413, (streamed.status_code, streamed.text[:200])
    assert f"body over {limit} bytes" in streamed.json()["detail"]
    assert serving.predict("turn on wifi")["intent"]


# -- (c) no pickle on a load path ---------------------------------------------------------------

PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "joblib", "shelve", "marshal", "jsonpickle"}
UNSAFE_CALLS = {"torch.load", "torch.save", "pd.read_pickle", "pandas.read_pickle", "yaml.unsafe_load",
                "yaml.full_load", "mlflow.sklearn.load_model", "mlflow.pytorch.load_model"}


@cache
def project_sources() -> list[tuple[Path, ast.Module]]:
    """Every Python file of the project (tests aside), parsed once."""
    return [(path.relative_to(REPO), ast.parse(path.read_text(), str(path)))
            for folder in SOURCE_DIRS for path in sorted((REPO / folder).rglob("*.py"))]


def pickle_uses(tree: ast.Module) -> list[str]:
    """Imports and calls that unpickle (or write what only unpickling reads)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            if name in UNSAFE_CALLS or name.endswith(".read_pickle"):
                found.append(name)
            elif name in ("np.load", "numpy.load") and "allow_pickle" in keywords:
                value = keywords["allow_pickle"]
                if not (isinstance(value, ast.Constant) and value.value is False):
                    found.append(f"{name}(allow_pickle={ast.unparse(value)})")
            elif name == "yaml.load" and "SafeLoader" not in ast.unparse(keywords.get("Loader", ast.Constant(""))):
                found.append("yaml.load without SafeLoader")
            elif name.endswith("pyfunc.log_model") or name.endswith("pyfunc.save_model"):
                # A PythonModel instance is cloudpickled; a path to its code ("model from code") is not.
                model = keywords.get("python_model")
                if model is not None and not _is_path_expression(model):
                    found.append(f"{name}(python_model={ast.unparse(model)})")
    return found


def _is_path_expression(node: ast.expr) -> bool:
    text = ast.unparse(node)
    return (isinstance(node, ast.Constant) and isinstance(node.value, str)) or text.startswith("str(") \
        or "PYFUNC_CODE" in text or text.endswith("_path")


@pytest.mark.parametrize(("snippet", "flagged"), [
    ("import pickle", True),
    ("from joblib import load", True),
    ("import cloudpickle as cp", True),
    ("torch.load(path)", True),
    ("np.load(path, allow_pickle=True)", True),
    ("np.load(path, allow_pickle=flag)", True),
    ("pd.read_pickle(path)", True),
    ("frame.read_pickle(path)", True),
    ("yaml.load(text)", True),
    ("mlflow.pyfunc.log_model(name='m', python_model=LooplineModel())", True),
    ("np.load(path, allow_pickle=False)", False),
    ("np.load(path)", False),
    ("yaml.load(text, Loader=yaml.SafeLoader)", False),
    ("mlflow.pyfunc.log_model(name='m', python_model=str(PYFUNC_CODE))", False),
])
def test_the_pickle_scan_flags_what_unpickles(snippet: str, flagged: bool) -> None:
    assert bool(pickle_uses(ast.parse(snippet))) is flagged


def test_no_pickle_in_the_source() -> None:
    found = [f"{path}: {use}" for path, tree in project_sources() for use in pickle_uses(tree)]
    assert not found, found


def pickled_files(folder: Path) -> list[str]:
    """Files (and zip members, e.g. of .npz) that are pickles or numpy arrays of Python objects."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = str(path.relative_to(folder))
        head = path.read_bytes()[:2]
        if path.suffix in (".pkl", ".pickle", ".joblib") or (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05"):
            found.append(name)
        elif zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                found += [f"{name}:{m}" for m in archive.namelist() if m.endswith((".pkl", ".pickle"))]
            if path.suffix == ".npz":
                try:
                    with np.load(path, allow_pickle=False) as arrays:
                        for key in arrays.files:
                            arrays[key]  # object arrays refuse to load without pickle
                except ValueError:
                    found.append(f"{name}: object arrays")
    return found


def test_bundle_files_hold_no_pickle(bundle: Path) -> None:
    assert not pickled_files(bundle)


def test_the_packaged_encoder_weights_are_safetensors() -> None:
    from models.encoder import minilm_path

    folder = minilm_path()
    assert (folder / "model.safetensors").is_file()
    assert not [p.name for p in folder.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]


@pytest.mark.slow
def test_the_registered_model_holds_no_pickle(serving: Serving, tmp_path: Path) -> None:
    """The pyfunc model is logged from code: loading it runs the reviewed module, unpickles nothing."""
    mlflow.set_tracking_uri(serving.settings.tracking_uri)
    root = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{serving.settings.model_name}/1",
                                                    dst_path=str(tmp_path)))
    assert (root / "MLmodel").is_file() and list(root.rglob(MANIFEST))
    assert not pickled_files(root)


# -- (d) artifacts verified by sha256 before use ------------------------------------------------

def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_changed_byte_in_any_bundle_file_is_refused(bundle: Path, tmp_path: Path) -> None:
    listed = sorted(read_manifest(bundle).files)
    assert {"encoder.onnx", "head.npz"} <= set(listed) and any(n.startswith("tokenizer/") for n in listed)
    for name in listed:
        copy = tmp_path / name.replace("/", "_")
        shutil.copytree(bundle, copy)
        flip_a_byte(copy / name)
        with pytest.raises(BundleError, match=f"{re.escape(name)}: sha256 mismatch"):
            verify_bundle(copy)
        with pytest.raises(BundleError, match="sha256 mismatch"):
            Predictor(copy)
    extra = tmp_path / "extra"
    shutil.copytree(bundle, extra)
    (extra / "head.npz.orig").write_bytes(b"left behind")
    with pytest.raises(BundleError, match="not listed in the manifest"):
        verify_bundle(extra)


@pytest.mark.slow
def test_a_tampered_registry_version_is_refused_by_serving_and_the_feedback_service(
        serving: Serving, trained: TinyModel, tmp_path: Path) -> None:
    version = serving.register(trained[1], trained, "tampered")
    source = serving.registry.client.get_model_version(serving.settings.model_name, str(version)).source
    model_id = source.removeprefix("models:/").split("/")[0]  # MLflow 3: models:/<logged model id>
    stored = [p for p in (serving.settings.state_dir / "mlflow").rglob("head.npz") if model_id in p.parts]
    assert len(stored) == 1, f"stored head.npz of {source}: {stored}"
    flip_a_byte(stored[0])
    before = serving.current()
    response = httpx.post(f"{serving.url}/v1/admin/rollback", json={"version": version}, timeout=60,
                          headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 409 and "head.npz: sha256 mismatch" in response.json()["detail"]
    assert serving.current() == before and serving.predict("call mom")["model_version"] == before
    with pytest.raises(BundleError, match=r"head\.npz: sha256 mismatch"):
        BaseBundles(serving.registry, tmp_path / "bundles").get(version)


# -- (e) secrets only from the environment, never written out -----------------------------------

def settings_classes() -> list[type[CommonSettings]]:
    found: list[type[CommonSettings]] = [CommonSettings]
    for cls in found:
        found += [c for c in cls.__subclasses__() if c not in found]
    return found


def test_secret_settings_are_secretstr_without_a_default() -> None:
    classes = settings_classes()
    assert {ServingSettings, FeedbackSettings, StackSettings} <= set(classes)
    secret_fields = []
    for cls in classes:
        assert cls.model_config.get("env_file") is None, f"{cls.__name__} reads a file, not only the environment"
        for name, field in cls.model_fields.items():
            if SECRET_FIELD.search(name):
                secret_fields.append(f"{cls.__name__}.{name}")
                assert SecretStr in getattr(field.annotation, "__args__", (field.annotation,)), name
                assert field.default is None, f"{cls.__name__}.{name} has a default"
    assert "ServingSettings.admin_token" in secret_fields and "FeedbackSettings.admin_token" in secret_fields


@pytest.mark.parametrize("cls", [ServingSettings, FeedbackSettings])
def test_the_admin_token_comes_from_the_environment_and_is_never_shown(
        cls: type[ServingSettings] | type[FeedbackSettings], monkeypatch: pytest.MonkeyPatch) -> None:
    value = "env-only-" + secrets.token_hex(8)
    monkeypatch.setenv("LOOPLINE_ADMIN_TOKEN", value)
    settings = cls()
    assert settings.admin_token is not None and settings.admin_token.get_secret_value() == value
    for shown in (repr(settings), str(settings), settings.model_dump_json(), str(settings.model_dump())):
        assert value not in shown


@pytest.mark.parametrize("cls", [ServingSettings, FeedbackSettings])
@pytest.mark.parametrize("placeholder", ["changeme", " Secret ", ""])
def test_a_placeholder_admin_token_is_refused_at_start(cls: type[CommonSettings], placeholder: str) -> None:
    with pytest.raises(ValueError, match="placeholder"):
        cls(admin_token=placeholder)  # type: ignore[call-arg]


def test_stack_json_and_the_client_environment_hold_no_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    value = "stack-" + secrets.token_hex(8)
    monkeypatch.setenv("LOOPLINE_ADMIN_TOKEN", value)
    stack = Stack.from_settings(StackSettings(state_dir=tmp_path))
    stack.save()
    assert value not in (tmp_path / STATE_FILE).read_text()
    assert value not in str(stack.client_env())
    for name in ("serving", "feedback", "evidently"):
        assert value not in " ".join(stack.process(name).cmd)


def files_containing(folder: Path, secret: str) -> list[str]:
    needle = secret.encode()
    found = []
    for path in folder.rglob("*"):
        try:
            if path.is_file() and needle in path.read_bytes():
                found.append(str(path))
        except FileNotFoundError:  # a checkpoint's temporary file, renamed while the folder was walked
            continue
    return found


def command_line(process: ManagedProcess) -> str:
    return " ".join(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ")
                    for pid in process.group_pids())


@pytest.mark.slow
def test_running_services_keep_their_tokens_out_of_logs_command_lines_and_state(
        serving: Serving, feedback: Feedback) -> None:
    feedback_token = (feedback.process.env or {})["LOOPLINE_ADMIN_TOKEN"]
    for token in (TOKEN, TOKEN[:-1] + "x"):  # right and wrong tokens both pass through the log's reach
        httpx.post(f"{serving.url}/v1/admin/reload", headers={"Authorization": f"Bearer {token}"}, timeout=60)
    for token in (feedback_token[:-1] + "x", "x"):
        assert httpx.post(f"{feedback.process.url}/promote", headers={"Authorization": f"Bearer {token}"},
                          timeout=10).status_code == 401
    checkpoints = feedback.state / "feedback" / "checkpoints"
    assert wait_until(lambda: any(checkpoints.glob("ckpt-*")), timeout=60), "no checkpoint was written"
    for process, folder, token in ((serving.process, serving.settings.state_dir, TOKEN),
                                   (feedback.process, feedback.state, feedback_token)):
        assert process.log_path.is_file()
        assert not files_containing(folder, token), f"{process.name} wrote its token to disk"
        assert not files_containing(folder, token[:-1] + "x"), f"{process.name} wrote a token it was sent"
        assert token not in command_line(process)


# -- (f) nothing listens beyond loopback by default ---------------------------------------------

def test_every_listening_part_defaults_to_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("LOOPLINE_"):
            monkeypatch.delenv(name)
    assert HOST == "127.0.0.1"
    assert ServingSettings().host == "127.0.0.1"
    assert inspect.signature(serve_metrics).parameters["host"].default == "127.0.0.1"
    broker = infra_broker.broker_command(9092)
    assert broker[broker.index("--listener-url") + 1] == "tcp://127.0.0.1:9092"
    for cmd in (mlflow_server.mlflow_command(tmp_path, 5000), prefect_server.prefect_process(tmp_path).cmd,
                Stack.from_settings(StackSettings(state_dir=tmp_path)).process("evidently").cmd):
        assert cmd[cmd.index("--host") + 1] == "127.0.0.1", cmd
    serving = Stack.from_settings(StackSettings(state_dir=tmp_path)).process("serving")
    assert serving.env is not None and serving.env["LOOPLINE_HOST"] == "127.0.0.1"


def test_no_source_binds_every_interface() -> None:
    found = [f"{path}:{node.lineno}" for path, tree in project_sources() for node in ast.walk(tree)
             if isinstance(node, ast.Constant) and node.value in ("0.0.0.0", "::", "[::]")]
    assert not found, found


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def listeners(table: str, inodes: set[str]) -> list[tuple[Address, int]]:
    """(address, port) of the listening sockets in a /proc/net/tcp or tcp6 table whose inode is in `inodes`."""
    found = []
    for line in table.splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # 32-bit words in host order
            found.append((ipaddress.ip_address(words), int(port, 16)))
    return found


def listening_addresses(process: ManagedProcess) -> list[tuple[Address, int]]:
    """(address, port) of every TCP socket the process group listens on."""
    inodes = set()
    for pid in process.group_pids():
        fds = Path(f"/proc/{pid}/fd")
        for fd in fds.iterdir() if fds.is_dir() else []:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return [found for table in ("/proc/net/tcp", "/proc/net/tcp6") for found in listeners(Path(table).read_text(),
                                                                                           inodes)]


def is_loopback(address: Address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


@pytest.mark.slow
def test_running_parts_listen_on_loopback_only(reliability_broker: ManagedProcess, serving: Serving,
                                                feedback: Feedback) -> None:
    for process in (reliability_broker, serving.process, feedback.process):
        port = int(process.url.rsplit(":", 1)[1])
        addresses = listening_addresses(process)
        assert port in {p for _, p in addresses}, (process.name, addresses)
        assert all(is_loopback(a) for a, _ in addresses), (process.name, addresses)


HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


@pytest.mark.parametrize(("local", "state", "loopback"), [
    ("0100007F:1F90", "0A", True),  # 127.0.0.1:8080
    ("00000000:1F90", "0A", False),  # 0.0.0.0:8080
    ("0A00020F:1F90", "0A", False),  # 15.2.0.10 (a network interface)
    ("00000000000000000000000001000000:1F90", "0A", True),  # [::1]:8080
    ("00000000000000000000000000000000:1F90", "0A", False),  # [::]:8080
    ("0000000000000000FFFF00000100007F:1F90", "0A", True),  # [::ffff:127.0.0.1]:8080
])
def test_the_socket_check_tells_loopback_from_other_addresses(local: str, state: str, loopback: bool) -> None:
    line = f"   0: {local} 00000000:0000 {state} 00000000:00000000 00:00000000 00000000  0 0 4242 1\n"
    [(address, port)] = listeners(HEADER + line, {"4242"})
    assert port == 8080 and is_loopback(address) is loopback
    assert listeners(HEADER + line, {"1"}) == []
