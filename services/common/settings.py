"""Settings shared by the flows and services, from `LOOPLINE_*` environment variables.

Every setting has a default that works on one machine with no server at all:
the registry falls back to a SQLite file in the state folder, Kafka is off
until a bootstrap address is given.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "secret", "token"}


def refuse_placeholder_token(value: SecretStr | None) -> SecretStr | None:
    """An admin token validator for every service: a placeholder left in an env file is no secret."""
    if value is not None and value.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS:
        raise ValueError("LOOPLINE_ADMIN_TOKEN is a placeholder; set a real secret or leave it unset")
    return value


class CommonSettings(BaseSettings):
    """Where the state lives and how to reach the registry, the broker and the feature store."""

    model_config = SettingsConfigDict(env_prefix="LOOPLINE_", extra="ignore")

    state_dir: Path = Field(Path(".state"), description="Logs, PID files, Feast stores, work files.")
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow server URL; default: a SQLite registry in the state folder.")
    model_name: str = Field("loopline-intent", description="Registered model name in MLflow.")
    experiment: str = Field("loopline", description="MLflow experiment of the train runs.")
    kafka_bootstrap_servers: str | None = Field(
        None, description="host:port list; unset means no broker (announcements are skipped).")
    feature_repo: Path = Field(Path(__file__).resolve().parents[2] / "feature_repo",
                               description="The Feast repo with feature_store.yaml and the definitions.")
    examples_uri: str | None = Field(None, description="The examples table (a Delta table): a folder or an "
                                     "s3:// URI (credentials from the AWS_* variables); default: examples/ in "
                                     "the state folder.")
    examples_retention_days: float = Field(0.0, ge=0.0, description="Examples (and kept dead letters) older "
                                           "than this are deleted; 0: kept until deleted by hand.")

    @field_validator("model_name")
    @classmethod
    def _model_name_is_plain(cls, value: str) -> str:
        # The name goes into `models:/<name>@alias` URIs and MLflow search filters.
        if not value or any(c in value for c in "/@'\" "):
            raise ValueError(f"model name {value!r} must be non-empty without / @ quotes or spaces")
        return value

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        # The same database the embedded MLflow server uses, so `loopline up` shows these versions.
        return f"sqlite:///{(self.state_dir / 'mlflow' / 'mlflow.db').resolve()}"

    @property
    def examples_location(self) -> str:
        return self.examples_uri or str((self.state_dir / "examples").resolve())

    @property
    def work_dir(self) -> Path:
        return self.state_dir / "work"
