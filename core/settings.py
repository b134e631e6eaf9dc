"""The one settings class: every `FTSERVE_*` environment variable is read here and nowhere else."""

from __future__ import annotations

import logging
import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FTSERVE_", env_file=".env", extra="ignore")

    data_dir: Path = Field(default=Path(".ftserve-data"), description="Root of all stored state.")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite in data_dir.")
    broker_url: str | None = Field(
        default=None, description="Celery broker URL; default: an embedded filesystem transport."
    )
    queue: str = Field(default="ftserve", description="Celery queue that training jobs are sent to.")
    api_keys: str = Field(default="", description="Comma-separated name:key pairs; empty = auth off.")
    admin_keys: str = Field(default="", description="Comma-separated key names (from api_keys) that see and act "
                            "on every owner's resources.")

    # Bounded input (see README "Security model").
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1, description="Largest dataset upload (413).")
    max_import_bytes: int = Field(
        default=2 * 1024 * 1024 * 1024, ge=1,
        description="Largest model archive import, as sent and as unpacked (413 above either).")
    max_import_members: int = Field(default=10_000, ge=1, description="Most members in an imported archive (422).")
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, description="Largest JSON request body (413).")
    max_dataset_rows: int = Field(default=5_000_000, ge=1, description="Most rows in one dataset (422).")
    max_dataset_uncompressed_bytes: int = Field(
        default=2 * 1024 * 1024 * 1024, ge=1,
        description="Most bytes a dataset may take once decompressed (Parquet pages; 422).")
    max_streams_per_key: int = Field(
        default=16, ge=1, description="Open event streams and streamed generations per API key (429 beyond).")
    max_streams_per_model: int = Field(
        default=4, ge=1, description="Streamed generations running at once per loaded model (the rest queue).")
    max_active_jobs_per_owner: int = Field(
        default=50, ge=1, description="Queued + running jobs per owner (429 beyond).")
    max_job_seconds: float = 24 * 3600.0
    warm_training_process: bool = Field(
        default=True, description="Keep the next job's training process started, torch imported (~7 s on a CPU), "
                                  "waiting for its job; costs that process's memory while idle.")
    cancel_grace_seconds: float = 30.0
    heartbeat_seconds: float = 10.0
    lease_seconds: float = 60.0
    max_attempts: int = 3
    requeue_after_seconds: float = 120.0
    progress_interval_seconds: float = 2.0
    reconcile_seconds: float = Field(default=15.0, gt=0, description="How often a worker's reconciler runs.")
    checkpoint_seconds: float = Field(
        default=0.0, ge=0, description="Also checkpoint when this long has passed since the last save; 0 = off."
    )
    failpoints: str = Field(
        default="", description="Fault injection for tests: 'point=action@model_name,…'; empty = inert."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", description="Logging level of the API, the worker and its training processes.")

    hub_timeout_seconds: float = 10.0
    hf_offline: bool = Field(default=False, description="Never contact the Hugging Face hub.")
    hub_probe: bool = Field(
        default=True, description="At start, check the hub is reachable; if not, use the local cache only."
    )
    # Pushing versions to the Hub (POST /models/{name}/versions/{v}/push, a job's `push`).
    hf_endpoint: str | None = Field(
        default=None, max_length=512,
        description="The Hub that pushes go to; default: huggingface_hub's (HF_ENDPOINT, else https://huggingface.co).")
    hf_token: SecretStr | None = Field(
        default=None, description="The server's Hub token, for pushes that bring none (and every job's `push`).")
    hf_push_namespaces: str = Field(
        default="", description="Comma-separated Hub namespaces (users, organizations) that pushes with the "
        "server's token may write to; empty = none.")

    default_license: str = Field(
        default="", pattern=r"^([A-Za-z0-9.+-]{1,64})?$",
        description="The model card license of jobs that give none (e.g. apache-2.0); empty = the base model's "
        "cached card's license, else 'other'.")

    model_cache_size: int = Field(default=4, ge=1, description="Most model versions loaded at once.")
    model_cache_mb: int = Field(default=0, ge=0, description="Most MB of weights loaded at once; 0 = no limit.")
    adapter_cache_size: int = Field(default=64, ge=1, description=(
        "Most LoRA adapter versions loaded at once, on their shared bases (apart from FTSERVE_MODEL_CACHE_SIZE)."))
    adapter_cache_mb: int = Field(default=1024, ge=0, description=(
        "Most MB of LoRA adapter weights loaded at once, least recently used out first; a base stays loaded while "
        "any adapter of it is; 0 = no limit."))
    quantize_int8: bool = Field(
        default=False, description="int8 dynamic quantization of Linear layers for CPU serving."
    )
    onnx: Literal["off", "fp32", "int8"] = Field(default="off", description=(
        "/classify and /answer on CPU through ONNX Runtime: an export of the version (cached under "
        "data_dir/cache/<name>/<version>/onnx), fp32 or int8 (per-channel weights); takes precedence over "
        "quantize_int8 for them."))
    onednn_linear: bool = Field(default=True, description=(
        "Generation models on CPU compute their linear layers with oneDNN on weights packed once at load "
        "(decoding steps of many rows ~1.9x faster; the packed copy doubles those weights' memory)."))
    max_batch_size: int = Field(default=32, ge=1, description="Most inputs in one forward pass.")
    continuous_batching: bool = Field(default=True, description=(
        "/generate in one decode loop per model: requests join and leave the running batch at every step."))
    max_generation_tokens: int = Field(default=16384, ge=1, description=(
        "KV-cache positions per generation model: running rows x the longest row's prompt + max_new_tokens "
        "(rows are padded to the longest), reserved at admission; beyond it requests wait."))
    max_batch_wait_ms: float = Field(default=5.0, ge=0, description=(
        "How long a /summarize or /generate batch waits to fill up (/classify and /answer never wait)."))
    max_batch_tokens: int = Field(
        default=16384, ge=0,
        description="Most tokens in one batch, padded as its forward pass pads them, from the requests' real "
        "tokenization (QA windows count each; /generate and /summarize add max_new_tokens per row, and per beam); "
        "0 = no limit.",
    )
    max_queue_items: int = Field(default=1024, ge=1, description="Inputs queued per model before 429s.")
    warm_models: str = Field(default="", description="Model refs to load at start, comma-separated.")
    request_timeout_seconds: float = Field(default=30.0, gt=0, description="Predict deadline; then 504.")
    max_inputs_per_request: int = 256
    max_input_chars: int = 100_000
    max_new_tokens_cap: int = 512
    max_num_beams_cap: int = 8
    torch_threads: int = Field(
        default=0, ge=0, description="torch threads per process; 0 = one per CPU the process may use (its "
        "affinity, capped by a container's CPU quota).",
    )

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_name(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value  # "debug" as well as "DEBUG"

    @field_validator("hf_endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        url = urlparse(value.strip())
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("FTSERVE_HF_ENDPOINT must be an http(s) URL such as https://huggingface.co")
        return value.strip().rstrip("/")

    @model_validator(mode="after")
    def _lease_outlasts_heartbeats(self) -> Settings:
        # A worker stops its training run once its last good heartbeat is older than the lease minus one
        # heartbeat; with no room between the two it would stop every run at once.
        if self.lease_seconds <= self.heartbeat_seconds:
            raise ValueError(f"FTSERVE_LEASE_SECONDS ({self.lease_seconds:g}) must be longer than "
                             f"FTSERVE_HEARTBEAT_SECONDS ({self.heartbeat_seconds:g}), a few times over")
        return self

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'ftserve.db'}"

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    @property
    def hf_home(self) -> Path:
        """Our own HF cache unless the user points HF_HOME elsewhere (never the user's global cache)."""
        env = os.environ.get("HF_HOME")
        return Path(env) if env else self.data_dir / "hf"

    @property
    def api_key_map(self) -> dict[str, str]:
        """key → owner name."""
        pairs: dict[str, str] = {}
        for item in filter(None, (p.strip() for p in self.api_keys.split(","))):
            name, sep, key = item.partition(":")
            if not sep or not name or not key:
                raise ValueError("FTSERVE_API_KEYS entries must be name:key pairs")
            pairs[key] = name
        return pairs

    @property
    def admin_names(self) -> frozenset[str]:
        return frozenset(filter(None, (n.strip() for n in self.admin_keys.split(","))))

    @property
    def push_namespaces(self) -> frozenset[str]:
        return frozenset(filter(None, (n.strip() for n in self.hf_push_namespaces.split(","))))

    @property
    def server_hf_token(self) -> str | None:
        token = self.hf_token.get_secret_value().strip() if self.hf_token is not None else ""
        return token or None


def hub_reachable(*, timeout: float) -> bool:
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((host.hostname or "huggingface.co", host.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


# Set by configure_environment when the start-up probe found no route to the hub, for the processes it starts.
HUB_UNREACHABLE_ENV = "FTSERVE_HUB_UNREACHABLE"


def hub_found_unreachable() -> bool:
    """The start-up probe of this process or of the one that started it found no route to the hub."""
    return bool(os.environ.get(HUB_UNREACHABLE_ENV))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def configure_environment(settings: Settings | None = None) -> Settings:
    """Point Hugging Face libraries at our cache before they are imported; call at process start."""
    settings = settings or get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HOME", str(settings.hf_home))
    if settings.hf_offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    elif (
        settings.hub_probe
        and os.environ.get("HF_HUB_OFFLINE", "") in ("", "0", "false")
        and not hub_reachable(timeout=min(3.0, settings.hub_timeout_seconds))
    ):
        # huggingface_hub retries a failed connection with backoff for minutes; with no route to the
        # hub, say so once and go offline so cached models load at once and missing ones fail fast.
        logging.getLogger("ftserve").warning(
            "the Hugging Face hub is not reachable: using the local cache only (HF_HUB_OFFLINE=1)"
        )
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ[HUB_UNREACHABLE_ENV] = "1"
    # A hub that cannot be reached must fail fast, not hang for the library's default timeouts.
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", str(int(settings.hub_timeout_seconds)))
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", str(int(settings.hub_timeout_seconds)))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return settings
