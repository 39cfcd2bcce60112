"""One process per data directory: a peer's key, checkpoints and logs are its own.

Two peers started on the same ``--data-dir`` would share a key, so the swarm would see one peer id at two
addresses (one of them then fails and the other waits for a partner that never comes). A peer therefore
holds an exclusive ``flock`` on ``<data-dir>/peer.lock`` for as long as it runs. The kernel releases such
a lock when the process exits in any way, kill -9 included, so a crashed peer never locks out its own
restart; the pid written into the file only names the holder in the error a second user gets.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from ppaia.network.errors import NetworkError

__all__ = ["LOCK_FILE", "DataDirError", "DataDirInUse", "hold"]

LOCK_FILE = "peer.lock"


class DataDirError(NetworkError):
    """A data directory that cannot be used: not a directory, not writable, ..."""


class DataDirInUse(DataDirError):
    """Another running process holds the data directory."""


@contextlib.contextmanager
def hold(data_dir: Path) -> Iterator[Path]:
    """Lock `data_dir` (created if missing) for this process until the block ends; DataDirInUse, naming
    the directory and the holder's pid, if another process holds it."""
    path = Path(data_dir) / LOCK_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as err:
        raise DataDirError(f"cannot use data directory {data_dir}: {err.strerror or err}") from err
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
            raise DataDirInUse(
                f"data directory {data_dir} is in use by another peer (pid {holder}); "
                "give each peer its own --data-dir"
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(descriptor)  # releases the lock
