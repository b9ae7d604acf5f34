"""`models:/NAME@ALIAS` and `models:/NAME/VERSION` → a local Bundle folder, cached.

Everything that consumes a model (predict, serve, the Lambda handler) goes through
`resolve_bundle`, usually via `visiondeck.export.bundle.load_bundle`. Downloads are cached
per (store, name, version): a version never changes, so a cached `models:/NAME/3` needs no
network at all, while an alias is looked up on every call (promoting a new champion must
reach every server that restarts or reloads). A download is checked against the digest
recorded at registration before it enters the cache, so a lost or altered artifact is an
error, never a model; a version without a recorded digest is refused too, unless the caller
says `allow_unverified=True` (logged, and kept apart from the verified cache).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from visiondeck.registry.errors import RegistryError
from visiondeck.registry.models import model_version
from visiondeck.registry.names import check_model_name, name_filter
from visiondeck.registry.runlog import DIGEST_TAG, bundle_digest
from visiondeck.registry.store import Store, open_store, resolve_tracking_uri, store_key

__all__ = ["ModelRef", "cache_root", "parse_model_uri", "resolve_bundle"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRef:
    """A parsed `models:/` URI: exactly one of version and alias is set."""

    name: str
    version: str | None = None
    alias: str | None = None

    def __str__(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else \
            f"models:/{self.name}/{self.version}"


def parse_model_uri(uri: str) -> ModelRef:
    """`models:/NAME@ALIAS`, `models:/NAME/VERSION` or `models:/NAME/latest`."""
    body = uri.removeprefix("models:/") if uri.startswith("models:/") else None
    if body:
        if "@" in body and "/" not in body.split("@", 1)[1]:
            name, alias = body.split("@", 1)
            if name and alias:
                return ModelRef(check_model_name(name), alias=alias)
        elif "/" in body:
            name, version = body.rsplit("/", 1)
            if name and (version.isdigit() or version == "latest"):
                return ModelRef(check_model_name(name), version=version)
    raise RegistryError(f"{uri!r} is not a model URI",
                        hint="write models:/NAME@ALIAS (e.g. models:/digits@champion) or "
                             "models:/NAME/VERSION, or give a Bundle folder")


def cache_root() -> Path:
    """$VISIONDECK_MODEL_CACHE, else $XDG_CACHE_HOME/visiondeck/models (~/.cache/...)."""
    explicit = os.environ.get("VISIONDECK_MODEL_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "visiondeck" / "models"


def _cache_dir(root: Path, uri: str, name: str, version: str, *, verified: bool = True) -> Path:
    """Where a version is cached; unverified downloads live beside, never in, the verified
    place, so a later call that did not allow them can never be handed one."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:60] or "model"
    tag = hashlib.sha256(name.encode()).hexdigest()[:8]
    return root / store_key(uri) / f"{safe}-{tag}" / (version if verified else
                                                      f"{version}.unverified")


def resolve_bundle(uri_or_path: str | os.PathLike[str], *, tracking_uri: str | None = None,
                   runs_root: str | os.PathLike[str] = "runs",
                   cache_dir: str | os.PathLike[str] | None = None,
                   allow_unverified: bool = False) -> Path:
    """A local Bundle folder for a Bundle path or a `models:/` URI.

    Paths come back as they are. `models:/NAME/VERSION` is served from the cache without
    contacting the registry once downloaded; `@ALIAS` and `/latest` are resolved on every
    call, then the cache is used if that version is there. A download is checked against
    the digest recorded at registration before it enters the cache; a version with no
    recorded digest raises `RegistryError` unless `allow_unverified` (then a warning is
    logged and the download is cached apart from verified ones).
    """
    text = os.fspath(uri_or_path)
    if not text.startswith("models:/"):
        return Path(text)
    ref = parse_model_uri(text)
    uri = resolve_tracking_uri(tracking_uri, runs_root)
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    if ref.version and ref.version != "latest":
        cached = _cache_dir(root, uri, ref.name, ref.version)
        if (cached / "bundle.json").is_file():
            return cached
    store = open_store(uri, runs_root, must_exist=True)
    version = ref.version if ref.version and ref.version != "latest" else _pick(store, ref)
    target = _cache_dir(root, store.uri, ref.name, version)
    if (target / "bundle.json").is_file():
        return target
    mv = model_version(store, ref.name, version)
    expected = (mv.tags or {}).get(DIGEST_TAG)
    if expected:
        return _download(store, ref.name, version, expected, target)
    if not allow_unverified:
        raise RegistryError(
            f"{ref} (version {version}) has no recorded Bundle digest ({DIGEST_TAG}), so "
            "its download cannot be verified; refusing to load it",
            hint="re-register the Bundle with `visiondeck register`, which records the "
                 "digest; or resolve with allow_unverified=True to load it unchecked "
                 "(logged)")
    logger.warning("loading %s (version %s from %s) WITHOUT a digest check: the version has "
                   "no %s tag and allow_unverified was set", ref, version, store.display,
                   DIGEST_TAG)
    unverified = _cache_dir(root, store.uri, ref.name, version, verified=False)
    if (unverified / "bundle.json").is_file():
        return unverified
    return _download(store, ref.name, version, None, unverified)


def _pick(store: Store, ref: ModelRef) -> str:
    from mlflow.exceptions import MlflowException

    try:
        if ref.alias:
            return str(store.client.get_model_version_by_alias(ref.name, ref.alias).version)
        versions = store.client.search_model_versions(name_filter(ref.name))
    except MlflowException as exc:
        raise RegistryError(f"cannot resolve {ref} in {store.display}: {exc.message}",
                            hint="`visiondeck promote NAME VERSION --alias ALIAS` sets an "
                                 "alias; check the name") from None
    versions = [v for v in versions if v.name == ref.name]  # exactly this model, no other
    if not versions:
        raise RegistryError(f"model {ref.name!r} has no versions in {store.display}")
    return str(max(int(v.version) for v in versions))


def _download(store: Store, name: str, version: str, expected: str | None,
              target: Path) -> Path:
    """Download into a private folder, check it against `expected` (None only when the
    caller allowed an unverified version), then move it into place."""
    import mlflow.artifacts

    target.parent.mkdir(parents=True, exist_ok=True)
    work = target.parent / f".download-{version}-{uuid.uuid4().hex[:8]}"
    try:
        uri = store.client.get_model_version_download_uri(name, version)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(work),
                                                         tracking_uri=store.uri))
        if not (local / "bundle.json").is_file():
            raise RegistryError(f"version {version} of {name!r} is not a Bundle "
                                f"(no bundle.json in {uri})",
                                hint="register Bundles with `visiondeck register`")
        if expected is not None and bundle_digest(local) != expected:
            raise RegistryError(f"the download of {name!r} version {version} does not match "
                                "the Bundle that was registered (digest differs)",
                                hint="an artifact was lost or changed in the store; "
                                     "re-register the Bundle")
        try:
            os.replace(local, target)
        except OSError:  # another process finished the same download first
            if not (target / "bundle.json").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target
