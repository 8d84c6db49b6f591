"""The data dir's files are private: the dir 0700, its files 0600, written atomically.

`dagnats.sqlite` holds run inputs in clear, the NATS store holds every message, and the data
dir holds credentials: none of it is for other local users. `make_private_dir` creates the dir
0700 (and tightens an existing one this user owns), `private_umask` makes what is created
meanwhile (the nats-server child's store, its log and config) owner-only, `write_private`
writes a file 0600 by an atomic rename, and `remove_if_ours` removes a file only while it still
holds what this process wrote (a refused second serve never deletes the running one's files).

This module touches only the paths it is given.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final

PRIVATE_DIR_MODE: Final = 0o700
PRIVATE_FILE_MODE: Final = 0o600
PRIVATE_UMASK: Final = 0o077
OTHERS_BITS: Final = 0o077  # group and other permission bits


def make_private_dir(path: Path) -> None:
    """Create `path` (and its parents) with mode 0700; tighten it when it exists, is this
    user's and others may read it.

    Raises:
        OSError: it cannot be created.
    """
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    _tighten(path, PRIVATE_DIR_MODE)


def tighten_files(paths: Iterable[Path]) -> None:
    """Make each existing file (or dir) among `paths` owner-only (0600 / 0700)."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            mode = PRIVATE_DIR_MODE if path.is_dir() else PRIVATE_FILE_MODE
            _tighten(path, mode)


def _tighten(path: Path, mode: int) -> None:
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) or info.st_uid != os.getuid():
        return  # not ours to change
    if stat.S_IMODE(info.st_mode) & OTHERS_BITS:
        path.chmod(mode)


def create_private_file(path: Path) -> None:
    """Create `path` empty with mode 0600 if it does not exist; tighten it if it does."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE_MODE)
    os.close(fd)
    _tighten(path, PRIVATE_FILE_MODE)


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` with mode 0600, atomically (a temporary file, then a rename)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def remove_if_ours(path: Path, text: str) -> bool:
    """Remove `path` only if it still holds exactly `text` (what this process wrote);
    True when removed. Another server's file (it wrote since) is left alone."""
    try:
        current = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    if current != text:
        return False
    path.unlink(missing_ok=True)
    return True


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Within the block, files and dirs this process (and a child started here) creates are
    owner-only. The umask is per process: restored on exit."""
    previous = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(previous)


__all__ = [
    "PRIVATE_DIR_MODE", "PRIVATE_FILE_MODE", "create_private_file", "make_private_dir",
    "private_umask", "remove_if_ours", "tighten_files", "write_private",
]  # fmt: skip
