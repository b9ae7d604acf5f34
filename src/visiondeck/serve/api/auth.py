"""API keys (hashed at rest) and optional HS256 bearer tokens.

A key looks like `vd_<id>_<secret>`: the id finds the entry, the secret is checked against
its SHA-256 (keys are 256-bit random, so a fast hash is the right tool - there is nothing
to brute-force - and comparison is constant-time). The key file holds only hashes; the
key itself is shown once, by `visiondeck keys create`. The server re-reads the file when
it changes, so a new or revoked key takes effect without a restart.

Scopes: "predict" (predict, explain, history, thumbnails, monitoring, /metrics, labels with
the prediction's token) and "admin" (reload, labels of any row, /ready's database error).
Admin endpoints always need a credential; predict ones only with `require_api_key`. Public
whatever the settings: /health, /ready (readiness, model, coarse database state), the
served model's description (/model, the page shells and their static files), /docs.
tests/serve/test_access.py walks every route to hold that line.
A key may carry its own rate limit (`visiondeck keys create NAME --rate 10/s`), which
replaces the server's `rate_limit` for that key (see `serve.limits`).
JWTs (when `jwt_secret` is set) must be HS256, carry `exp` and `sub`, and list scopes in
`scope` (space separated) or `scopes`.

Label tokens (`Services.label_token`) are HMACs under one label key that every worker and
replica must share: `label_secret` when configured, else DATA_DIR/label_secret, created once
(mode 0600) by whichever process starts first (`load_label_key`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from visiondeck.errors import ConfigError
from visiondeck.serve.errors import Forbidden, Unauthorized
from visiondeck.serve.settings import RateLimit, parse_rate_limit

__all__ = ["LABEL_SECRET_FILE", "SCOPES", "ApiKey", "Authenticator", "KeyRing", "Principal",
           "create_key", "load_label_key"]

SCOPES = ("predict", "admin")
_PREFIX = "vd_"
LABEL_SECRET_FILE = "label_secret"  # in DATA_DIR, when `label_secret` is not configured
_MIN_SECRET_CHARS = 32  # as ServeSettings.label_secret: a short HMAC key is guessable offline


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key id, a token subject, or "anonymous"."""

    id: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    kind: str = "anonymous"  # "key" | "jwt" | "anonymous"
    #: the key's own rate limit; None = the server's `rate_limit`
    rate: RateLimit | None = field(default=None, compare=False)

    @property
    def anonymous(self) -> bool:
        return self.kind == "anonymous"


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    hash: str
    scopes: tuple[str, ...]
    created_at: str
    revoked: bool = False
    rate: str | None = None  # e.g. "10/second"; None = the server's rate_limit


@lru_cache(maxsize=1024)
def _key_rate(text: str | None) -> RateLimit | None:
    """A key's rate, parsed once per distinct text (keys are checked on every request)."""
    try:
        return parse_rate_limit(text)
    except ConfigError:  # a hand-edited file: the server's limit applies, never none
        return None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class KeyRing:
    """The key file (JSON): read with mtime caching, written atomically by the CLI."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._keys: dict[str, ApiKey] = {}
        self._stamp: tuple[float, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()

    def keys(self) -> dict[str, ApiKey]:
        now = time.monotonic()
        if now - self._checked > 1.0 or self._stamp is None:
            self._checked = now
            self._reload()
        return self._keys

    def _reload(self) -> None:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            self._keys, self._stamp = {}, None
            return
        stamp = (info.st_mtime, info.st_size)
        if stamp == self._stamp:
            return
        with self._lock:
            self._keys = {k.id: k for k in self._read()}
            self._stamp = stamp

    def _read(self) -> list[ApiKey]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            return [ApiKey(e["id"], e.get("name", ""), e["hash"], tuple(e.get("scopes", [])),
                           e.get("created_at", ""), bool(e.get("revoked", False)),
                           e.get("rate") or None)
                    for e in raw.get("keys", [])]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"cannot read the API key file {self.path}: {exc}",
                              hint="fix or delete it, then `visiondeck keys create`") from None

    def verify(self, key: str) -> ApiKey | None:
        if not key.startswith(_PREFIX) or key.count("_") < 2:
            return None
        key_id, _, _secret = key[len(_PREFIX):].partition("_")
        entry = self.keys().get(key_id)
        if entry is None or entry.revoked:
            return None
        return entry if hmac.compare_digest(entry.hash, _digest(key)) else None

    # ---------------------------------------------------------------- writing (CLI)

    def add(self, name: str, scopes: tuple[str, ...], rate: str | None = None
            ) -> tuple[ApiKey, str]:
        """Create a key; returns the stored entry and the key (shown once, never stored).

        `rate` ("10/second", "600/minute") is this key's own limit.
        """
        bad = [s for s in scopes if s not in SCOPES]
        if bad:
            raise ConfigError(f"unknown scope(s) {bad}", hint=f"use {', '.join(SCOPES)}")
        if rate is not None and parse_rate_limit(rate) is None:
            raise ConfigError(f"--rate {rate!r} would mean no limit at all",
                              hint="give COUNT/PERIOD, e.g. 10/second, or leave it out")
        key_id = secrets.token_hex(4)
        key = f"{_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        entry = ApiKey(key_id, name, _digest(key), tuple(scopes),
                       datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), rate=rate)
        self._write([*self._read_existing(), entry])
        return entry, key

    def revoke(self, key_id: str) -> bool:
        entries = self._read_existing()
        found = False
        updated = []
        for entry in entries:
            if entry.id == key_id and not entry.revoked:
                entry, found = ApiKey(**{**entry.__dict__, "revoked": True}), True
            updated.append(entry)
        if found:
            self._write(updated)
        return found

    def list(self) -> list[ApiKey]:
        return self._read_existing()

    def _read_existing(self) -> list[ApiKey]:
        return self._read() if self.path.exists() else []

    def _write(self, entries: list[ApiKey]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        rows = [{k: v for k, v in e.__dict__.items() if k != "rate" or v is not None}
                | {"scopes": list(e.scopes)} for e in entries]
        data = {"format": "visiondeck.api_keys", "keys": rows}
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.path)


def create_key(path: Path, name: str, scopes: tuple[str, ...] = ("predict",),
               rate: str | None = None) -> tuple[ApiKey, str]:
    """`visiondeck keys create`: add a key to the file at `path`."""
    return KeyRing(path).add(name, scopes, rate)


class Authenticator:
    """Turns request headers into a `Principal`, and checks scopes."""

    def __init__(self, keyring: KeyRing, *, require_for_predict: bool = False,
                 jwt_secret: str | None = None, jwt_audience: str | None = None,
                 jwt_issuer: str | None = None) -> None:
        self.keyring = keyring
        self.require_for_predict = require_for_predict
        self.jwt_secret = jwt_secret
        self.jwt_audience = jwt_audience
        self.jwt_issuer = jwt_issuer

    def identify(self, headers: Any) -> Principal | None:
        """The caller from `X-API-Key` or `Authorization: Bearer`; None when none was sent.

        A credential that was sent but is wrong is a 401, never silently anonymous.
        """
        key = headers.get("x-api-key")
        auth = headers.get("authorization")
        if key is None and auth:
            scheme, _, value = auth.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise Unauthorized("the Authorization header must be 'Bearer <key or token>'")
            key = value.strip()
        if key is None:
            return None
        if key.startswith(_PREFIX):
            entry = self.keyring.verify(key)
            if entry is None:
                raise Unauthorized("unknown or revoked API key",
                                   hint="create one with `visiondeck keys create NAME`")
            return Principal(f"key:{entry.id}", frozenset(entry.scopes), "key",
                             _key_rate(entry.rate))
        if key.count(".") == 2 and self.jwt_secret:
            return self._from_jwt(key)
        raise Unauthorized("unrecognised credential",
                           hint="send an API key (X-API-Key) or, when enabled, a JWT")

    def _from_jwt(self, token: str) -> Principal:
        import jwt

        try:
            claims = jwt.decode(token, self.jwt_secret, algorithms=["HS256"],
                                audience=self.jwt_audience, issuer=self.jwt_issuer,
                                options={"require": ["exp", "sub"]})
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired", hint="get a new token") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token ({exc})") from None
        scopes = claims.get("scopes") or str(claims.get("scope", "")).split()
        return Principal(f"jwt:{claims['sub']}", frozenset(str(s) for s in scopes), "jwt")

    def authorize(self, principal: Principal | None, scope: str) -> Principal:
        """The principal allowed to act with `scope`, or 401/403."""
        if principal is None:
            if scope == "predict" and not self.require_for_predict:
                return Principal("anonymous")
            what = "this endpoint" if scope == "admin" else "predictions on this server"
            raise Unauthorized(f"{what} need an API key",
                               hint="send X-API-Key: <key> (`visiondeck keys create NAME"
                                    + (" --admin`)" if scope == "admin" else "`)"))
        if scope not in principal.scopes and "admin" not in principal.scopes:
            raise Forbidden(f"this credential lacks the {scope!r} scope",
                            hint="create a key with that scope")
        return principal


# ------------------------------------------------------------------------ the label key


def load_label_key(configured: SecretStr | None, data_dir: Path) -> bytes:
    """The key that signs label tokens, the same in every worker and replica.

    A configured secret wins (replicas on several hosts must be given one). Otherwise the
    key is DATA_DIR/label_secret, created by the first process to start: `--workers N`
    start their apps at the same moment, so the file is written whole under a temporary
    name and linked into place - `link` fails when the name exists, so exactly one
    secret wins and nobody reads a half-written file. A file that group or others can
    read or write is refused, as ssh refuses such a private key: whoever reads it can
    forge a label for any prediction.
    """
    if configured is not None:
        return configured.get_secret_value().encode()
    path = data_dir / LABEL_SECRET_FILE
    if not os.path.lexists(path):
        _create_label_secret(path)
    return _read_label_secret(path)


def _create_label_secret(path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise _uncreatable(path, exc) from None
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(secrets.token_hex(32) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):  # another worker's link won: all read it
            os.link(tmp, path)
    except OSError as exc:
        raise _uncreatable(path, exc) from None
    finally:
        tmp.unlink(missing_ok=True)


def _uncreatable(path: Path, exc: OSError) -> ConfigError:
    return ConfigError(f"cannot create the label secret file {path}: {exc}",
                       hint="make the data folder writable, or set VISIONDECK_LABEL_SECRET "
                            "(the same long random string on every replica)")


def _read_label_secret(path: Path) -> bytes:
    hint = (f"delete {path} to have a new one made (label tokens handed out so far stop "
            "working), or set VISIONDECK_LABEL_SECRET")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise ConfigError(f"cannot read the label secret file {path}: {exc}",
                          hint=hint) from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if os.name == "posix" and info.st_mode & 0o077:  # elsewhere ACLs, not mode bits
            raise ConfigError(
                f"the label secret file {path} is open to group or others "
                f"(mode {info.st_mode & 0o777:o}): anyone who reads it can label any prediction",
                hint=f"chmod 600 {path}, or set VISIONDECK_LABEL_SECRET")
        secret = fh.read(4096).strip()
    if len(secret) < _MIN_SECRET_CHARS:
        raise ConfigError(f"the label secret file {path} holds {len(secret)} characters, "
                          f"fewer than {_MIN_SECRET_CHARS}", hint=hint)
    return secret
