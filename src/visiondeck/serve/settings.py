"""Typed server settings, read from the environment (`VISIONDECK_*`) or given in code.

Nothing is read at import time: `create_app(ServeSettings(bundle=...))` in a test and
`visiondeck serve` (which sets the environment for its uvicorn workers) build their own
settings, so two apps in one process never share configuration.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from visiondeck.errors import ConfigError
from visiondeck.serve.api.rules import TOP_K_MAX, TOP_K_MIN

__all__ = ["RateLimit", "ServeSettings", "parse_rate_limit"]

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$", re.I)
_PERIODS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
            "h": 3600.0, "hour": 3600.0}


#: the routes that take one image, and the batch route (their body limits differ)
IMAGE_ROUTES = frozenset({"/predict", "/predict/", "/explain"})
BATCH_ROUTE = "/predict/batch"


class RateLimit:
    """A token bucket's shape: `per_second` refill and `burst` capacity."""

    def __init__(self, per_second: float, burst: int) -> None:
        self.per_second = per_second
        self.burst = burst

    def __repr__(self) -> str:
        return f"RateLimit(per_second={self.per_second:g}, burst={self.burst})"


def parse_rate_limit(text: str | None, burst: int | None = None) -> RateLimit | None:
    """"120/minute" → 2 tokens/s with a burst of `burst` (default: the count, 120)."""
    if text is None or text.strip().lower() in ("", "off", "none", "0"):
        return None
    match = _RATE.match(text)
    if not match:
        raise ConfigError(f"rate limit {text!r} is not COUNT/PERIOD",
                          hint="write e.g. 120/minute, 10/second or 5000/hour, or off")
    count, period = float(match.group(1)), _PERIODS[match.group(2).lower()]
    if count <= 0:
        return None
    # default burst: the whole COUNT at once, so "2/minute" allows two requests per minute
    return RateLimit(count / period, burst if burst is not None else max(1, round(count)))


class ServeSettings(BaseSettings):
    """Everything `visiondeck serve` can be told; env var = VISIONDECK_ + the upper-case name."""

    model_config = SettingsConfigDict(env_prefix="VISIONDECK_", extra="ignore",
                                      validate_default=True)

    # the model
    bundle: str = Field("", description="Bundle folder or models:/NAME@ALIAS | models:/NAME/VER")
    variant: Literal["auto", "fp32", "int8"] = Field(
        "auto", description="which ONNX model of the Bundle; auto: the one bundle.json "
                            "names as default_variant, never one marked not recommended")
    fast_lane: bool = Field(
        True, description="answer POST /predict in front of the framework "
                          "(serve/api/fast_predict.py); false sends it through FastAPI's "
                          "route like every other request")
    top_k: int = Field(3, ge=TOP_K_MIN, le=TOP_K_MAX,
                       description="classes returned per prediction")
    watch_interval_s: float = Field(
        30.0, ge=0.0, description="poll the model source for a new version (0 = never)")

    # the network side
    host: str = Field("127.0.0.1", description="bind address (loopback unless told otherwise)")
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64, description="worker processes")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins allowed by CORS (comma separated)")
    docs: bool = Field(True, description="serve /docs and /openapi.json")

    # speed
    max_batch: int = Field(32, ge=1, le=1024, description="largest micro-batch")
    max_wait_ms: float = Field(
        2.0, ge=0.0, le=1000.0,
        description="longest a request waits for others to join its batch (only while more "
                    "requests are on their way)")
    max_pending: int = Field(
        512, ge=1, description="requests in flight before new ones get 503 (overload guard)")
    intra_op_threads: int = Field(
        0, ge=0, description="ONNX Runtime threads (0 = cores/workers, or one for a model "
                             "whose one-image run is under 2 ms)")
    preprocess_threads: int = Field(0, ge=0, description="decode threads (0 = automatic)")
    decode_nice: int = Field(
        10, ge=0, le=19,
        description="nice value of the decode threads (Linux): when uploads keep every core "
                    "busy, the event loop (health checks, small requests) is scheduled first")
    ort_spinning: bool = Field(
        False, description="let ONNX Runtime threads spin between runs (faster on idle cores, "
                           "wasteful on shared ones)")

    # input safety
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1, description="largest image file")
    max_pixels: int = Field(
        40_000_000, ge=1,
        description="absolute ceiling on decoded pixels; below it the model's own cap applies "
                    "(32x its input side: imaging.model_decode_limits)")
    max_batch_files: int = Field(64, ge=1, le=1024, description="images per /predict/batch")
    max_batch_bytes: int = Field(
        64 * 1024 * 1024, ge=1,
        description="largest /predict/batch body (its images are held in memory together)")
    body_timeout_s: float = Field(
        30.0, gt=0.0, le=3600.0,
        description="seconds a client has to send a request body; slower bodies get 408")

    # prediction history
    store: bool = Field(True, description="record every prediction")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL (default: sqlite file in data_dir)")
    table_prefix: str = Field("visiondeck_", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,40}$")
    store_thumbnails: bool = Field(True, description="keep a small thumbnail with each row")
    thumbnail_size: int = Field(96, ge=16, le=512)
    data_dir: Path = Field(Path(".visiondeck"),
                           description="SQLite file, history journal, API keys, label secret")

    # access
    api_keys_file: Path | None = Field(None, description="default: DATA_DIR/api_keys.json")
    require_api_key: bool = Field(False, description="predict/history need a key too")
    jwt_secret: SecretStr | None = Field(None, description="accept HS256 bearer tokens")
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    label_secret: SecretStr | None = Field(
        None, min_length=32,
        description="signs label tokens; every worker and replica must share it (default: "
                    "DATA_DIR/label_secret, made once with mode 0600 and read by every worker)")
    rate_limit: str | None = Field(
        None, description="per API key (anonymous: per client address), e.g. 600/minute; "
                          "a key's own --rate wins (off)")
    rate_burst: int | None = Field(None, ge=1)
    redis_url: str | None = Field(None, description="share rate limits between replicas")
    redis_prefix: str = Field("visiondeck:rate:", min_length=1,
                              description="namespace of the rate-limit keys in Redis")
    explain: bool = Field(True, description="offer /explain (loads torch on first use)")

    # drift monitoring (docs/monitoring.md)
    monitor: bool = Field(
        True, description="compare live traffic with the Bundle's reference statistics "
                          "(/monitor/summary, visiondeck_drift_* on /metrics)")
    monitor_window: int = Field(1000, ge=10, le=100_000,
                                description="predictions in the sliding drift window")
    monitor_min_window: int = Field(30, ge=1, description="predictions before any alarm")
    monitor_min_accuracy: float | None = Field(
        None, ge=0.0, le=1.0, description="live accuracy below this raises the alarm too")
    monitor_refresh_s: float = Field(
        15.0, gt=0.0, description="how often live accuracy is re-read from the labels")
    keep_uploads: Path | None = Field(
        None, description="keep uploaded images in this folder, content-addressed, so "
                          "labelled predictions can be retrained on (off by default)")

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("rate_limit")
    @classmethod
    def _check_rate(cls, value: str | None) -> str | None:
        parse_rate_limit(value)
        return value

    # ---------------------------------------------------------------- derived values

    @property
    def rate(self) -> RateLimit | None:
        return parse_rate_limit(self.rate_limit, self.rate_burst)

    @property
    def keys_path(self) -> Path:
        return self.api_keys_file or self.data_dir / "api_keys.json"

    @property
    def journal_dir(self) -> Path:
        """Each worker's journal of answered predictions not yet in the database
        (serve/history/journal.py); keep it on a disk that outlives the process."""
        return self.data_dir / "history-journal"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'predictions.db'}"

    @property
    def ort_threads(self) -> int:
        if self.intra_op_threads:
            return self.intra_op_threads
        return max(1, (os.cpu_count() or 1) // self.workers)

    @property
    def decode_threads(self) -> int:
        if self.preprocess_threads:
            return self.preprocess_threads
        return max(2, min(8, (os.cpu_count() or 1) // self.workers))

    def body_limit(self, path: str) -> int:
        """Largest request body of the route at `path`: one image base64-inflated plus form
        overhead for /predict and /explain, the batch cap for /predict/batch, 1 MiB for the
        rest (labels, JSON queries)."""
        one = self.max_upload_bytes * 4 // 3 + 64 * 1024
        if path in IMAGE_ROUTES:
            return one
        if path == BATCH_ROUTE:
            return min(self.max_batch_bytes, self.max_batch_files * one)
        return 1 << 20

    def files_for(self, path: str) -> int:
        """Images one request to `path` may carry."""
        return self.max_batch_files if path == BATCH_ROUTE else 1
