"""The dataset cache folder, its file locks and atomic writes.

Prepared datasets (decoded image tensors) live in the cache folder `$LOP_CACHE`, default
`~/.cache/lop`, never in the dataset folder, which may be read-only shared storage. Writers take
an exclusive lock (`fcntl.flock` on a `.lock` file beside the entry) and write under a name unique
to the process, renamed into place once complete, so readers see either no file or a whole one
and many processes preparing the same dataset at once do the work once.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE_VARIABLE = "LOP_CACHE"  # the cache folder (default: ~/.cache/lop)


def cache_dir() -> Path:
    """`$LOP_CACHE`, else `~/.cache/lop`."""
    configured = os.environ.get(CACHE_VARIABLE)
    return Path(configured) if configured else Path.home() / ".cache" / "lop"


def cache_folder(kind: str) -> Path:
    """`<cache_dir>/<kind>/`, created if missing.

    An unwritable cache raises PermissionError saying how to choose another (`$LOP_CACHE`).
    """
    folder = cache_dir() / kind
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(f"{folder} is not writable")
    except OSError as err:
        raise PermissionError(
            f"cannot write the dataset cache in {folder} ({err}); set {CACHE_VARIABLE} to a "
            "writable folder (on a cluster, one on storage shared by the nodes)"
        ) from err
    return folder


def path_key(path: Path) -> str:
    """16 hex digits naming `path` (absolute, symlinks resolved) in cache file names."""
    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]


@contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive `flock` on `lock_file` (created if missing) for the block.

    The lock dies with its process, so a killed writer never leaves a stale lock behind.
    """
    with open(lock_file, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def temporary_name(target: Path) -> Path:
    """A name beside `target` that no other process or call uses: `<name>.<pid>-<random>.tmp`."""
    return target.with_name(f"{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
