"""One writer per run directory: an advisory lock file holding the owner's PID and host.

The file is held with `fcntl.flock` for the owner's lifetime, so on one host a crashed owner's lock
is released by the kernel; its leftover content (PID, host) then marks it stale and it is taken
over with a message. A lock written on another host cannot be probed from here: it is refused
with a message naming the file to remove once that run is known to be dead.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Optional

from nestar.errors import RunLockedError

LOCK_NAME = ".nestar.lock"
_held: dict[str, "RunLock"] = {}  # realpath -> the lock this process holds on it


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _read_owner(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    try:
        owner = json.loads(raw.decode() or "{}")
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {"unreadable": raw[:80].decode(errors="replace")}
    return owner if isinstance(owner, dict) else {}


class RunLock:
    """The lock on one directory. `acquire()` raises RunLockedError when another live process holds it."""

    def __init__(self, directory: str | Path, purpose: str = "run"):
        self.dir = Path(directory)
        self.path = self.dir / LOCK_NAME
        self.purpose = purpose
        self._fd: Optional[int] = None
        self.note: Optional[str] = None  # set when a stale lock was taken over

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunLock":
        """Take the lock (idempotent; within one process a newer RunLock on the same directory takes over)."""
        if self.held:
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.dir)
        other = _held.get(key)
        if (
            other is not None and other.held
        ):  # same process (e.g. a second Trainer object): hand over
            self._fd, other._fd = other._fd, None
            _held[key] = self
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd)
                os.close(fd)
                raise RunLockedError(
                    f"{self.dir} is in use by {self._describe(owner)}; two processes writing one "
                    f"run directory would corrupt it. Wait for that run to end, stop it, or use "
                    f"another --run-dir"
                ) from None
            if self._same_file(fd):
                break
            os.close(fd)  # the previous owner removed the file between our open and flock: retry
        owner = _read_owner(fd)
        try:
            self._check_stale(owner)
        except RunLockedError:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "purpose": self.purpose,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.write(fd, (json.dumps(me) + "\n").encode())
        os.fsync(fd)
        self._fd = fd
        _held[key] = self
        return self

    def _same_file(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def _check_stale(self, owner: dict) -> None:
        """We hold the flock; old content means its writer died without releasing (or runs on another host)."""
        if not owner or "pid" not in owner:
            return
        host, pid = owner.get("host"), owner.get("pid")
        if host != socket.gethostname():
            raise RunLockedError(
                f"{self.dir} is locked by {self._describe(owner)}, which cannot be checked from this "
                f"host; if no run uses the directory any more, delete {self.path}"
            )
        state = (
            "is no longer running"
            if not isinstance(pid, int) or not _pid_alive(pid)
            else "no longer holds the lock (the PID was reused)"
        )
        self.note = f"took over the stale lock {self.path}: PID {pid} {state}"

    @staticmethod
    def _describe(owner: dict) -> str:
        if "pid" not in owner:
            return "another process"
        purpose, since = owner.get("purpose", "run"), owner.get("since")
        return f"PID {owner.get('pid')} on {owner.get('host')} ({purpose} since {since})"

    def release(self) -> None:
        """Remove the lock file and drop the lock (a no-op when not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        _held.pop(os.path.realpath(self.dir), None)
        try:
            if self._same_file(fd):
                os.unlink(self.path)  # unlink before unlocking: a waiter then re-opens a fresh file
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
