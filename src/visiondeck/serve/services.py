"""Everything one app instance owns, built from its settings and torn down with it.

`Services` is stored on `app.state.services`; routes reach it through the `ServicesDep`
dependency (serve/api/deps.py). Start-up order: history writer (takes over the journals
left by earlier runs), engine (loads and warms the model), model watcher. Shutdown reverses
it and flushes the history last, so predictions answered during shutdown are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visiondeck.serve.api.auth import Authenticator, KeyRing, load_label_key
from visiondeck.serve.api.rate_limit import RateLimiter
from visiondeck.serve.history.journal import DurableHistoryWriter
from visiondeck.serve.history.store import PredictionStore
from visiondeck.serve.inference.engine import Engine, source_fingerprint
from visiondeck.serve.metrics import ServeMetrics
from visiondeck.serve.monitoring.observers import ObserverHub, PredictionObserver
from visiondeck.serve.settings import ServeSettings

__all__ = ["STATIC_DIR", "TEMPLATES_DIR", "Services"]

log = logging.getLogger("visiondeck.serve")
TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"


@dataclass
class Services:
    settings: ServeSettings
    metrics: ServeMetrics
    engine: Engine
    auth: Authenticator
    limiter: RateLimiter
    observers: ObserverHub
    store: PredictionStore | None
    writer: DurableHistoryWriter | None
    started_at: float = field(default_factory=time.monotonic)
    explainer: Any = None
    #: set by `build` from the shared secret (auth.load_label_key); empty = no tokens at all
    _label_key: bytes = field(default=b"", repr=False)
    _watch_task: asyncio.Task[None] | None = field(default=None, repr=False)

    @classmethod
    def build(cls, settings: ServeSettings,
              observers: list[PredictionObserver] | None = None) -> Services:
        metrics = ServeMetrics()
        store = writer = None
        if settings.store:
            if settings.database_url is None:
                settings.data_dir.mkdir(parents=True, exist_ok=True)
            store = PredictionStore(settings.db_url, prefix=settings.table_prefix)
            writer = DurableHistoryWriter(store, settings.journal_dir, metrics=metrics)
        auth = Authenticator(
            KeyRing(settings.keys_path), require_for_predict=settings.require_api_key,
            jwt_secret=settings.jwt_secret.get_secret_value() if settings.jwt_secret else None,
            jwt_audience=settings.jwt_audience, jwt_issuer=settings.jwt_issuer)
        hub = ObserverHub(observers)
        hub.bind_metrics(metrics.registry)
        services = cls(settings, metrics, Engine(settings, metrics), auth,
                       RateLimiter(settings.rate, settings.redis_url,
                                   prefix=settings.redis_prefix), hub, store, writer)
        services._label_key = load_label_key(settings.label_secret, settings.data_dir)
        return services

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.writer is not None:
            self.writer.start()
        try:
            await self.engine.start()
        except Exception as exc:  # keep serving /health and /ready (503) with the reason
            log.error("the model could not be loaded: %s", exc)
        if self.settings.watch_interval_s > 0 and self.settings.bundle:
            self._watch_task = asyncio.create_task(self._watch(), name="visiondeck-watch")

    async def stop(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        await self.engine.stop()
        if self.explainer is not None:
            self.explainer.close()
            self.explainer = None  # a restarted lifespan builds a fresh one on demand
        self.observers.close()
        await self.limiter.close()
        if self.writer is not None:
            await asyncio.to_thread(self.writer.close)
        if self.store is not None:
            self.store.dispose()

    async def _watch(self) -> None:
        """Reload when the model source changes (a new export, or an alias moved)."""
        while True:
            await asyncio.sleep(self.settings.watch_interval_s)
            try:
                current = await asyncio.to_thread(source_fingerprint, self.settings.bundle)
                model = self.engine._model
                if model is None or current != model.fingerprint:
                    await self.engine.reload()
            except Exception as exc:
                log.warning("model watch: %s", exc)

    # ------------------------------------------------------------------ helpers

    def label_token(self, prediction_id: str) -> str:
        if not self._label_key:  # an HMAC under an empty key is a token anyone can make
            raise RuntimeError("no label key: build Services with Services.build")
        # hmac.digest: OpenSSL's one-shot HMAC, the same value as hmac.new(...) without
        # building an HMAC object on every prediction
        return hmac.digest(self._label_key, prediction_id.encode(), "sha256").hex()[:32]

    def check_label_token(self, prediction_id: str, token: str) -> bool:
        # as bytes: compare_digest refuses str with non-ASCII characters (a TypeError, so a
        # 500, for a token like "\x80" that any client can send)
        return hmac.compare_digest(self.label_token(prediction_id).encode(),
                                   token.encode("utf-8", "surrogatepass"))

    def get_explainer(self) -> Any:
        if self.explainer is None:
            from visiondeck.serve.inference.explainer import Explainer

            self.explainer = Explainer()
        return self.explainer
