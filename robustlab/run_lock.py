"""One process per run directory: an OS file lock (``fcntl.flock``) held for the run's lifetime.

``RunLock(run_dir).acquire()`` creates the directory if needed, writes the holder's PID into ``<run_dir>/.lock``
and holds an exclusive lock on it until :meth:`release` or the process ends (the OS drops the lock of a killed
process, so a stale file never blocks a later run). A second process gets one :class:`ConfigError` naming the
holder's PID. On systems without ``fcntl`` the lock is a no-op.
"""

from __future__ import annotations

import os
from pathlib import Path

from robustlab.errors import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_FILE = ".lock"


class RunLock:
    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"cannot use {self.path.parent} as the run directory: {exc.strerror or exc}") from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise ConfigError(f"{self.path.parent} is in use by another robustlab process (PID {holder}); "
                                  f"wait for it, or use another run.out_dir") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise ConfigError(f"cannot write to the run directory {self.path.parent}: {exc.strerror or exc}") from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def __del__(self):
        self.release()
