"""Atomic file writes: write to a temp file in the target's folder, then ``os.replace``.

A crash or exception while writing leaves the previous file (if any) untouched and no temp file
behind, so readers never see a half-written artifact. :func:`atomic_dir` does the same for a whole
folder of outputs (build it beside the target, then swap it in).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["KeepPrevious", "atomic_dir", "atomic_path", "atomic_write_bytes", "atomic_write_text"]


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on normal exit it is fsynced and renamed onto ``path``.

    The temp file keeps ``path``'s suffix so writers that infer the format from it still work.
    On any exception the temp file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


class KeepPrevious(Exception):  # noqa: N818 - a signal, not an error
    """Raised inside :func:`atomic_dir` to drop the staging folder and leave ``path`` untouched."""


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder beside ``path``; on normal exit it replaces ``path`` (a folder or file).

    The staging folder lives in a hidden temp folder in ``path``'s parent (same file system, so the swap
    is two renames: the old ``path`` moves into the temp folder, the staging folder onto ``path``). On any
    exception, or once swapped, the temp folder (staging or the old tree) is deleted, and ``path`` is left
    as it was or fully replaced: never half-written. Between the two renames ``path`` is briefly absent.
    Raising :class:`KeepPrevious` inside the block (e.g. the new content equals the old) drops the staging
    folder and leaves ``path`` as it is, without an error.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        staging = tmp / path.name
        staging.mkdir()
        try:
            yield staging
        except KeepPrevious:
            return
        previous = tmp / "previous"
        if path.exists() or path.is_symlink():
            path.rename(previous)
        try:
            staging.rename(path)
        except BaseException:
            if previous.exists() or previous.is_symlink():
                previous.rename(path)  # put the old output back
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
