"""A bundle's file manifest: ``files.json`` lists every file of the bundle with its SHA-256.

Every regular file under the bundle folder whose path has no part starting
with ``.`` (hidden temporaries and done-markers are not part of a bundle)
is listed, ``config.json``, the weights, ``explain/`` and ``interpretable/``
alike. The SHA-256 of ``files.json`` is the bundle's content hash, so two
bundles with the same hash hold the same files. A writer that changes any
file of a bundle calls ``seal_bundle`` afterwards; ``verify_bundle`` refuses
a bundle where a listed file is missing or altered, or an unlisted file was added.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from screenxai.errors import BundleError
from screenxai.io import write_bytes_atomic

MANIFEST_NAME = "files.json"
MANIFEST_VERSION = 1


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def bundle_file_names(path: str | Path) -> list[str]:
    """The bundle's files (not hidden, not ``files.json``) as sorted POSIX paths relative to ``path``."""
    root = Path(path)
    names = (p.relative_to(root) for p in root.rglob("*") if p.is_file())
    return sorted(n.as_posix() for n in names
                  if not any(part.startswith(".") for part in n.parts) and n.as_posix() != MANIFEST_NAME)


def manifest_bytes(path: str | Path) -> bytes:
    """``files.json`` as it should read for the files now in the bundle at ``path``."""
    root = Path(path)
    files = {name: sha256_file(root / name) for name in bundle_file_names(root)}
    return json.dumps({"format_version": MANIFEST_VERSION, "files": files}, indent=2, sort_keys=True).encode()


def seal_bundle(path: str | Path) -> str:
    """Record every file now in the bundle at ``path`` in its ``files.json``; returns the new content hash."""
    data = manifest_bytes(path)
    write_bytes_atomic(Path(path) / MANIFEST_NAME, data)
    return hashlib.sha256(data).hexdigest()


def _recorded(root: Path) -> tuple[dict[str, str], str]:
    """The files ``files.json`` lists and the hash of its bytes."""
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"bundle {root}: {MANIFEST_NAME} is missing, so its files cannot be checked; "
                          "write the bundle again with `screenxai train`")
    data = path.read_bytes()
    try:
        files = json.loads(data)["files"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise BundleError(f"bundle {root}: {MANIFEST_NAME} is not a file manifest: {err}") from err
    return files, hashlib.sha256(data).hexdigest()


def verify_bundle(path: str | Path, replacing: Sequence[str] = ()) -> str:
    """The bundle's content hash, after checking every file against ``files.json``.

    ``BundleError`` naming each file that is missing, altered or not listed.
    ``replacing``: folders (``explain``, ``interpretable``) a writer is about
    to rewrite and seal again; their files are not checked, so a write of
    them that was interrupted before sealing can be redone.
    """
    root = Path(path)
    files, content_hash = _recorded(root)
    skipped = tuple(f"{folder.strip('/')}/" for folder in replacing)
    files = {name: sha for name, sha in files.items() if not name.startswith(skipped)}
    present = {name for name in bundle_file_names(root) if not name.startswith(skipped)}
    problems = [f"{name} is missing" for name in sorted(set(files) - present)]
    problems += [f"{name} is altered (its SHA-256 differs from the one in {MANIFEST_NAME})"
                 for name in sorted(set(files) & present) if sha256_file(root / name) != files[name]]
    problems += [f"{name} is not part of the bundle (not listed in {MANIFEST_NAME})"
                 for name in sorted(present - set(files))]
    if problems:
        raise BundleError(f"bundle {root} is not as it was written: {'; '.join(problems)}. Restore or write it "
                          "again (`screenxai train`, `explain` or `interpret`)")
    return content_hash
