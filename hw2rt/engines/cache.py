"""A content-addressed cache of built artefacts: exported ONNX graphs now, TensorRT plans next.

Layout: `<root>/<kind>/<label>-<key[:24]>/{<artefact>, manifest.json}` with root = `cache_dir`,
else `$HW2RT_CACHE`, else `~/.cache/hw2rt`. The key is the SHA-256 of the canonical JSON of
everything the artefact's bytes depend on (see `onnx_key_parts`). The manifest records the key,
its parts and the artefact's own SHA-256 and size; every load re-hashes the artefact, so a
truncated, edited or half-replaced entry, or one whose manifest belongs to another key, is
rebuilt and never used. Artefact and manifest are each written to a temporary file and renamed
into place, artefact first: a crash between the two leaves an entry that fails verification.
"""
import atexit
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hw2rt.checkpoints import file_sha256
from hw2rt.errors import Hw2rtError, first_line
from hw2rt.io import atomic_path

log = logging.getLogger("hw2rt.cache")
MANIFEST = "manifest.json"


def cache_root(cache_dir=None) -> Path:
    """The cache folder: `cache_dir`, else $HW2RT_CACHE, else ~/.cache/hw2rt. A file in its place is a
    one-line error; an unwritable folder is handled by `get_or_build`."""
    if cache_dir:
        root, what = Path(cache_dir), "the cache folder"
    elif os.environ.get("HW2RT_CACHE"):
        root, what = Path(os.environ["HW2RT_CACHE"]), "HW2RT_CACHE"
    else:
        root, what = Path.home() / ".cache" / "hw2rt", "the cache folder"
    for folder in (root, *root.parents):
        if folder.exists():
            if not folder.is_dir():
                raise Hw2rtError(f"{root}: {what} is not a folder ({folder} is a file)")
            break
    return root


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    path: Path  # the artefact
    key: str
    built: bool  # True when this call (re)built it, False on a verified hit
    reason: str  # "hit", "new", or why an existing entry was rebuilt

    @property
    def manifest(self) -> Path:
        return self.path.parent / MANIFEST


def verify_entry(folder: Path, key: str, filename: str) -> str | None:
    """None when the entry is sound, else why not (for the log)."""
    manifest, artefact = folder / MANIFEST, folder / filename
    if not manifest.is_file() and not artefact.exists():
        return "new"
    try:
        m = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return "unreadable manifest"
    if not isinstance(m, dict) or m.get("key") != key or m.get("artefact") != filename:
        return "stale manifest"
    if not artefact.is_file():
        return "artefact missing"
    if artefact.stat().st_size != m.get("bytes"):
        return "artefact size differs from its manifest"
    if file_sha256(artefact) != m.get("sha256"):
        return "artefact hash differs from its manifest"
    return None


def get_or_build(kind: str, label: str, parts: dict, filename: str, build: Callable[[Path], None], *,
                 cache_dir=None) -> CacheEntry:
    """The verified cached artefact for `parts`, or a fresh one made by `build(tmp_path)`."""
    key = cache_key(parts)
    folder = cache_root(cache_dir) / kind / f"{label}-{key[:24]}"
    artefact = folder / filename
    problem = verify_entry(folder, key, filename)
    if problem is None:
        log.debug("cache hit: %s", artefact)
        return CacheEntry(artefact, key, built=False, reason="hit")
    if problem != "new":
        log.warning("cache entry %s is unusable (%s): rebuilding", folder, problem)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(f"{folder} is not writable")
        with atomic_path(artefact) as tmp:
            build(tmp)
    except (PermissionError, FileExistsError, NotADirectoryError) as exc:
        # An unwritable cache must not stop the work: build where we can write, and say it is not cached.
        scratch = Path(tempfile.mkdtemp(prefix=f"hw2rt-{kind}-"))
        atexit.register(shutil.rmtree, scratch, True)
        # Printed, not logged: the user must see it whatever logging is configured to do.
        print(f"hw2rt: the cache folder {folder.parent} cannot be written ({first_line(exc, 120)}): built in "
              f"{scratch}, not cached", file=sys.stderr)
        artefact = scratch / filename
        build(artefact)
        return CacheEntry(artefact, key, built=True, reason=f"{problem}; not cached")
    manifest = {"key": key, "parts": parts, "artefact": filename, "sha256": file_sha256(artefact),
                "bytes": artefact.stat().st_size, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with atomic_path(folder / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return CacheEntry(artefact, key, built=True, reason=problem)


def onnx_key_parts(model: str, config: dict, source_sha256: str, precision: str, opset: int,
                   dims: dict) -> dict:
    """Everything an exported graph depends on: weights, network, precision, opset, traced sizes
    and the exporter's, torch's, onnx's and hw2rt's versions."""
    from hw2rt.export.onnx_export import exporter_versions

    return {"kind": "onnx", "model": model, "config": config, "source_sha256": source_sha256,
            "precision": precision, "opset": int(opset), "dims": dims, **exporter_versions()}
