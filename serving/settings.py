"""Settings of the HTTP service, read from ``FACETRUST_*`` environment variables.

Everything is validated when the server starts: a bad value stops ``facetrust serve``
with a clear message (exit status 2) instead of failing on the first request.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_KEY_ID = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine (127.0.0.0/8, ::1, localhost)."""
    name = host.strip().strip("[]").lower()
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_key_id(key_id: str) -> str:
    """``key_id`` unchanged if it can name an API key, else ``ValueError`` saying why."""
    if not _KEY_ID.match(key_id):
        raise ValueError(
            f"api key id {key_id[:70]!r} must be 1 to 64 letters, digits, '_', '.', '@' or '-'"
        )
    return key_id


def parse_api_keys(text: str) -> tuple[tuple[str, str], ...]:
    """Parse ``"id:sha256hex,id2:sha256hex"`` into ``((id, hex), ...)``; raises ``ValueError``."""
    entries: list[tuple[str, str]] = []
    seen: set[str] = set()
    for raw in text.replace("\n", ",").split(","):
        item = raw.strip()
        if not item:
            continue
        key_id, sep, digest = item.partition(":")
        key_id, digest = key_id.strip(), digest.strip().lower()
        if not sep or not _KEY_ID.match(key_id):
            raise ValueError(
                f"api key entry {item[:20]!r}... must be 'ID:SHA256HEX' with ID made of "
                "letters, digits, '_', '.', '@' or '-' (at most 64 characters)"
            )
        if not _SHA256_HEX.match(digest):
            raise ValueError(
                f"api key {key_id!r}: expected the SHA-256 of the key as 64 hex digits "
                "(see `facetrust api-key`), never the key itself"
            )
        if key_id in seen:
            raise ValueError(f"api key id {key_id!r} is listed twice")
        seen.add(key_id)
        entries.append((key_id, digest))
    return tuple(entries)


class ServeSettings(BaseSettings):
    """Configuration of ``facetrust serve`` (environment prefix ``FACETRUST_``)."""

    model_config = SettingsConfigDict(env_prefix="FACETRUST_", extra="ignore", validate_default=True)

    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(8000, ge=1, le=65535, description="TCP port")
    workers: int = Field(
        default_factory=lambda: min(2, _cpu_count()),
        ge=1,
        le=64,
        description="analysis worker processes = analyses that run at the same time",
    )
    worker_threads: int = Field(
        0, ge=0, le=256, description="onnxruntime threads per worker (0: CPU cores / workers)"
    )
    model: Path | None = Field(None, description="ONNX classifier with a model card (default: shipped model)")
    multi_crop: Literal["none", "images", "all"] = Field(
        "images",
        description="media whose faces are scored as the mean of 4 crops (box moved 2%, 2 mirrored) "
        "instead of one: none, images (default) or all",
    )
    min_face: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="look for faces from this box side in pixels, at least the model card's "
        "min_face_size (default: that); larger is faster, smaller faces are not reported",
    )
    api_keys: Annotated[tuple[tuple[str, str], ...], NoDecode] = Field(
        (), description="'id:sha256hex,...' - SHA-256 (hex) of each accepted X-API-Key, with its id"
    )
    allow_no_auth: bool = Field(
        False, description="dev mode: accept requests without a key (only when bound to loopback)"
    )
    max_upload_bytes: int = Field(100 * 1024**2, ge=1024, le=16 * 1024**3, description="largest upload")
    queue_size: int = Field(
        8, ge=0, le=10_000, description="analyses that may wait for a worker; beyond that: 503"
    )
    timeout: float = Field(60.0, gt=0, le=86_400, description="seconds per synchronous analysis")
    upload_timeout: float = Field(120.0, gt=0, le=86_400, description="seconds to receive an upload")
    job_timeout: float = Field(900.0, gt=0, le=86_400, description="seconds per job analysis")
    job_ttl: float = Field(3600.0, gt=0, le=7 * 86_400, description="seconds a job and its result are kept")
    max_jobs: int = Field(1000, ge=1, le=1_000_000, description="jobs kept at once (any state)")
    sync_max_frames: int = Field(
        64, ge=1, le=100_000, description="most sampled video frames /v1/analyze runs; more: use /v1/jobs"
    )
    worker_memory_mb: int = Field(
        3072, ge=0, le=1_048_576, description="address-space limit per worker in MiB (0: none)"
    )
    temp_dir: Path = Field(
        default_factory=lambda: Path(tempfile.gettempdir()),
        description="where uploads are streamed while they are analysed",
    )
    log_level: str = Field("info", description="uvicorn/server log level")
    test_faults: bool = Field(
        False, description="TESTS ONLY: file names 'facetrust-fault-{crash,hang,oom}*' trigger faults"
    )

    @field_validator("min_face", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        """``FACETRUST_MIN_FACE=`` (empty, as ``${VAR:-}`` in a compose file gives) means unset."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: object) -> object:
        if value is None:
            return ()
        if isinstance(value, str):
            return parse_api_keys(value)
        return value

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        value = value.strip()
        if not value or any(c.isspace() for c in value):
            raise ValueError("host must be an address or host name")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in ("critical", "error", "warning", "info", "debug"):
            raise ValueError("log_level must be critical, error, warning, info or debug")
        return value

    @field_validator("worker_memory_mb")
    @classmethod
    def _check_memory(cls, value: int) -> int:
        if value and value < 1024:
            raise ValueError("worker_memory_mb must be 0 (no limit) or at least 1024 (models need room)")
        return value

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"model file not found: {value}")
        return value

    @field_validator("temp_dir")
    @classmethod
    def _check_temp(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"temp_dir {value} is not a directory")
        if not os.access(value, os.W_OK | os.X_OK):
            raise ValueError(f"temp_dir {value} is not writable")
        return value.resolve()

    @model_validator(mode="after")
    def _check_auth(self) -> ServeSettings:
        if self.allow_no_auth and not is_loopback(self.host):
            raise ValueError(
                f"allow_no_auth is a development mode for a loopback address only; refusing it on "
                f"host {self.host!r}: configure FACETRUST_API_KEYS instead"
            )
        if not self.api_keys and not self.allow_no_auth:
            raise ValueError(
                "no API key configured: set FACETRUST_API_KEYS='id:sha256hex,...' "
                "(`facetrust api-key ID` makes one), or FACETRUST_ALLOW_NO_AUTH=1 on 127.0.0.1 "
                "for development"
            )
        return self

    @property
    def threads_per_worker(self) -> int:
        """onnxruntime intra-op threads each worker uses."""
        return self.worker_threads or max(1, _cpu_count() // self.workers)

    @property
    def capacity(self) -> int:
        """Analyses admitted at once (running + waiting); one more gets 503."""
        return self.workers + self.queue_size


def format_validation_error(exc: ValidationError) -> str:
    """One line per invalid setting, naming the environment variable."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        lines.append(f"  FACETRUST_{loc.upper()}: {msg}" if loc else f"  {msg}")
    return "invalid server settings:\n" + "\n".join(lines)
