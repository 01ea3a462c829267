"""One settings object for every part of linecheck: a TOML file plus `LINECHECK_*` environment.

Precedence: explicit overrides > environment (`LINECHECK_KAFKA__BOOTSTRAP_SERVERS=...`) >
config file > defaults. Nothing is read at import; call `load_settings`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from infra.images import ImagePolicy
from schemas.topics import Topics


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = Field(default="", description="prepended to every topic name")
    partitions: int = Field(
        default=4, ge=1, description="partitions of boards.flagged (bounds parallelism)"
    )
    group_id: str = "linecheck-workers"
    batch_size: int = Field(
        default=16, ge=1, le=500, description="most events a worker takes from one poll"
    )
    poll_wait_ms: int = Field(
        default=100,
        ge=1,
        le=1_000,
        description="longest a worker's poll waits for a batch's first record (it returns as "
        "soon as one arrives, with what else has arrived, up to batch_size): how quickly an "
        "idle worker notices a stop",
    )
    fetch_wait_ms: int = Field(
        default=25,
        ge=1,
        le=10_000,
        description="longest time the broker may hold a consumer's fetch (librdkafka "
        "fetch.wait.max.ms): lower is less latency on a quiet line, more idle fetches",
    )
    # Short session/poll limits: a crashed worker's partitions move quickly, and Tansu
    # completes a group join within the rebalance timeout.
    session_timeout_ms: int = Field(default=10_000, ge=1_000)
    max_poll_interval_ms: int = Field(default=60_000, ge=5_000)
    delivery_timeout_ms: int = Field(
        default=10_000, ge=1_000, description="a verdict not acknowledged by then fails the batch"
    )

    @property
    def topics(self) -> Topics:
        return Topics().with_prefix(self.topic_prefix)


class PostgresSettings(_Section):
    url: SecretStr = Field(
        default=SecretStr("postgresql+psycopg://linecheck:linecheck@127.0.0.1:5432/linecheck"),
        description="SQLAlchemy URL of the audit store (secret: redacted when printed)",
    )
    connect_timeout_s: int = Field(default=5, ge=1, description="give up connecting after this")
    statement_timeout_ms: int = Field(
        default=15_000, ge=100, description="a worker's audit statement is cancelled after this"
    )


class RedisSettings(_Section):
    url: SecretStr = Field(
        default=SecretStr("redis://127.0.0.1:6379/0"),
        description="Redis URL (secret: redacted when printed)",
    )
    key_prefix: str = "linecheck"
    window_s: int = Field(default=3600, ge=60, description="rolling window of the live counters")
    timeout_s: float = Field(
        default=2.0, gt=0, description="connect and read timeout of every Redis call"
    )


class ImageSettings(_Section):
    inline_max_bytes: int = Field(
        default=256 * 1024, ge=0, description="larger images go to the object store (claim check)"
    )
    object_store: Path = Field(
        default=Path(".linecheck/objects"), description="claim-check and template folder"
    )
    max_bytes: int = Field(default=32 * 1024 * 1024, ge=1, description="largest encoded image")
    max_pixels: int = Field(
        default=40_000_000, ge=1, description="largest width × height, read from the header"
    )
    sixteen_bit: Literal["scale", "reject"] = Field(
        default="scale", description="16-bit images: scaled by their real range, or refused"
    )
    colour: Literal["luma", "reject"] = Field(
        default="luma", description="colour images: converted to luma (BT.601), or refused"
    )

    @property
    def policy(self) -> ImagePolicy:
        return ImagePolicy(self.max_bytes, self.max_pixels, self.sixteen_bit, self.colour)


class ModelSettings(_Section):
    models_dir: Path = Path(".linecheck/models")
    version: str = Field(default="latest", description="model folder name, or 'latest'")
    backend: Literal["openvino", "torch"] = "openvino"
    variant: Literal["fp32", "int8"] = Field(
        default="fp32",
        description="OpenVINO IR served: fp32, or the NNCF-quantized int8 saved beside it",
    )
    device: str | None = Field(default=None, description="CPU/GPU/NPU (openvino), cpu/cuda (torch)")
    threads: int | None = Field(
        default=None, ge=1, description="threads per worker for inference and OpenCV"
    )
    boards_per_call: int = Field(
        default=1,
        ge=1,
        le=500,
        description="boards of a polled batch whose crops go to the classifier in one call: "
        "1 suits a CPU (no gain from larger calls); a GPU wants the whole batch (e.g. 64 with "
        "kafka.batch_size 64)",
    )
    refresh_s: float = Field(
        default=5.0,
        ge=0,
        description="how often workers look up the model stages (promote/rollback take "
        "effect within this); 0: serve `version` only",
    )


class WorkerSettings(_Section):
    name: str | None = Field(default=None, description="worker id in verdicts; host:pid if unset")
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="serve Prometheus metrics on this port"
    )
    ready_file: Path | None = Field(
        default=None, description="touched when the worker holds partitions (orchestration)"
    )
    explain: bool = Field(
        default=True,
        description="save class-activation heatmaps of failed/doubtful regions beside verdicts",
    )
    migrate: bool = Field(
        default=False,
        description="apply database migrations at start-up (needs owner rights); otherwise "
        "workers check the schema and `linecheck db upgrade` applies it",
    )
    max_board_s: float = Field(
        default=1.0,
        gt=0,
        description="budget for inspecting one board (a 640x640 board takes ~0.02 s on one "
        "core); batch_size × this plus the sinks' timeouts must fit in max_poll_interval_ms",
    )
    inspect_threads: int = Field(
        default=1,
        ge=1,
        le=64,
        description="boards of one batch inspected at once on this many threads (OpenCV and "
        "OpenVINO release the GIL): a burst on one worker's partitions can use cores the "
        "other workers leave idle",
    )
    processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="child processes that inspect this worker's boards, taking them from one "
        "queue (1: the worker inspects them itself): one consumer feeding N processes lets a "
        "board wait only while all N are busy, where N single-process workers pin each "
        "partition's boards to one of them",
    )
    fault_slow_file: Path | None = Field(
        default=None,
        description="fault injection (linecheck chaos): while this file exists, each board "
        "takes the seconds it holds longer",
    )
    review_products: list[str] = Field(
        default_factory=list,
        description="products whose boards go to review, uninspected, when their template is "
        "missing (every other product's such boards are dead letters, stage 'template')",
    )


class QualitySettings(_Section):
    """The quality loop: audit sampling, baselines and drift limits (`[quality]`)."""

    audit_rate: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="share of automatically decided boards sampled for audit review",
    )
    baseline_fnr: float = Field(
        default=0.01, ge=0.0, le=1.0, description="FNR baseline when the model card has none"
    )
    baseline_fpr: float = Field(
        default=0.05, ge=0.0, le=1.0, description="FPR baseline when the model card has none"
    )
    fnr_margin: float = Field(
        default=0.05, ge=0.0, le=1.0, description="FNR alert limit = baseline + margin"
    )
    fpr_margin: float = Field(
        default=0.10, ge=0.0, le=1.0, description="FPR alert limit = baseline + margin"
    )
    review_margin: float = Field(
        default=0.15, ge=0.0, le=1.0, description="review-rate limit = reference + margin"
    )
    label_window: int = Field(
        default=200, ge=10, description="labelled boards in the rolling FNR/FPR window"
    )
    min_labelled: int = Field(
        default=30, ge=1, description="labelled boards needed before FNR/FPR can alert"
    )
    reference_boards: int = Field(
        default=100, ge=20, description="first N boards of a line form the PSI reference"
    )
    window_boards: int = Field(
        default=100, ge=20, description="boards in the rolling label-free window"
    )
    psi_limit: float = Field(
        default=0.25, gt=0.0, description="PSI above this (and significant) is drift"
    )
    psi_bins: int = Field(default=10, ge=2, le=50, description="score bins for the PSI")
    check_every: int = Field(
        default=10, ge=1, description="evaluate the label-free window every N boards"
    )
    z: float = Field(default=1.96, gt=0.0, description="Wilson interval z (1.96 = 95%)")


class WebSettings(_Section):
    """The review station and health endpoints (`linecheck web`, `linecheck up`)."""

    host: str = Field(default="127.0.0.1", description="address the web server listens on")
    port: int = Field(default=8000, ge=1, le=65535)
    secret_key: SecretStr | None = Field(
        default=None,
        description="signs the station's session cookies (secret); when unset, one is made "
        "and kept in work_dir/web-secret",
    )
    session_hours: float = Field(default=12.0, gt=0, description="a sign-in lasts one shift")
    queue_refresh_s: float = Field(
        default=3.0, gt=0, description="how often the station's queue page asks for new boards"
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LINECHECK_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    kafka: KafkaSettings = KafkaSettings()
    postgres: PostgresSettings = PostgresSettings()
    redis: RedisSettings = RedisSettings()
    images: ImageSettings = ImageSettings()
    model: ModelSettings = ModelSettings()
    worker: WorkerSettings = WorkerSettings()
    quality: QualitySettings = QualitySettings()
    web: WebSettings = WebSettings()
    work_dir: Path = Field(
        default=Path(".linecheck"), description="embedded servers' data, logs and demo output"
    )

    @field_validator("work_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def topics(self) -> Topics:
        return self.kafka.topics


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from `config_file` (TOML), the environment and `overrides`, validated strictly."""
    if config_file is not None and not config_file.is_file():
        raise FileNotFoundError(f"config file not found: {config_file}")

    class _FileSettings(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if config_file is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
            return tuple(sources)

    return Settings.model_validate(_FileSettings(**overrides).model_dump())


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that reproduces `settings` in a child process (workers): secrets
    revealed, since the child needs them."""
    env: dict[str, str] = {}
    for section, values in settings.model_dump(mode="json").items():
        if isinstance(values, dict):
            model = getattr(settings, section)
            for key, value in values.items():
                field = getattr(model, key)
                if isinstance(field, SecretStr):
                    value = field.get_secret_value()
                if value is not None:
                    env[f"LINECHECK_{section.upper()}__{key.upper()}"] = (
                        json.dumps(value) if isinstance(value, list | dict) else str(value)
                    )
        elif values is not None:
            env[f"LINECHECK_{section.upper()}"] = str(values)
    return env


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for printing and logs)."""
    return _PASSWORD.sub(r"\1***\2", url)


_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*(@)")


def redacted(settings: Settings) -> dict[str, Any]:
    """The settings as JSON-ready data, secrets shown with their passwords masked."""
    out: dict[str, Any] = settings.model_dump(mode="json")
    for section in ("postgres", "redis"):
        out[section]["url"] = redact_url(getattr(settings, section).url.get_secret_value())
    if settings.web.secret_key is not None:
        out["web"]["secret_key"] = "***"
    return out
