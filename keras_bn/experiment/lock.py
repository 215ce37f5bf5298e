"""`RunLock`: a run folder belongs to one process, from reading its checkpoints to its results.

Two processes in one run folder (a command started twice, a scheduler that
restarts a job before the old process has died) would each resume from
checkpoints the other keeps rewriting, and the last to finish would write
numbers of a run that never happened. `run_experiment` therefore holds an
exclusive lock on `run.lock` in the folder while it reads checkpoints, trains
and writes the results. The lock is `fcntl.flock`'s: the operating system drops
it when the process ends, however it ends (`kill -9` included), so a dead run
never leaves a stale lock; the file itself stays, and says who holds it.
"""

import datetime
import errno
import json
import os
import shlex
import socket
import sys
import warnings

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no fcntl: see `RunLock`.
    fcntl = None

from keras_bn.experiment.config import ExperimentError

__all__ = ["LOCK_FILE", "RunFolderBusy", "RunLock", "read_holder"]

#: The lock file's name in a run folder.
LOCK_FILE = "run.lock"


class RunFolderBusy(ExperimentError):
    """Another process holds the run folder: it is training or writing results there now.

    Attributes:
        folder: The run folder.
        holder: What the holder wrote in the lock file (`pid`, `host`,
            `started`, `command`), or `None` when it had not written it yet.
    """

    def __init__(self, folder, holder):
        super().__init__(
            f"The run folder {folder} is in use by {describe_holder(holder)}: one process at a "
            "time may train in a run folder, since a second one would resume from checkpoints "
            "that the first keeps rewriting. Wait for that process to finish, or start this "
            "one with --wait (`wait=True` in Python) to wait for it and then resume or reuse "
            "what it leaves."
        )
        self.folder, self.holder = folder, holder


def describe_holder(holder):
    """Returns `"process 4242 on host gpu1 (since ...: keras-bn ...)"` for a lock file's content."""
    if not holder:
        return "another process (it has not written its id to the lock file yet)"
    text = f"process {holder.get('pid')} on host {holder.get('host')}"
    details = [str(holder[key]) for key in ("started", "command") if holder.get(key)]
    return text + (f" (since {': '.join(details)})" if details else "")


def read_holder(path):
    """Returns the JSON a lock holder wrote to `path`, or `None` if it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            holder = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


class RunLock:
    """A context manager that holds a run folder for this process, or refuses.

    Entering creates the folder if needed, opens `run.lock` in it and takes an
    exclusive `fcntl.flock` without blocking. If another process holds it, it
    raises `RunFolderBusy` naming that process (its id, host, start time and
    command, which each holder writes into the file) or, with `wait=True`,
    says so through `print_fn` and blocks until the lock is free. Leaving
    empties the file and releases the lock; so does the end of the process.

    The lock is advisory: it binds the processes that take it (every
    `run_experiment`), not a user who edits the folder by hand. On Windows,
    which has no `fcntl`, nothing is locked and entering warns
    (`RuntimeWarning`). On a network file system the lock spans hosts where
    the file system supports it (NFSv4; NFSv3 with its lock manager); mounted
    without locks (`nolock`), each host only sees its own locks. A file system
    that refuses locks makes entering raise `ExperimentError`.

    Attributes:
        held: Whether this process holds the lock now (never on Windows).

    Args:
        folder: The run folder.
        wait: Whether to wait for another holder instead of raising. Defaults
            to `False`.
        print_fn: Receives the line that says whom it waits for. Defaults to
            `print`.

    Raises:
        RunFolderBusy: on entering, if another process holds the folder and
            `wait` is `False`.
        ExperimentError: on entering, if the file system cannot lock the file.

    Example:

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder, RunLock(folder):
    ...     read_holder(os.path.join(folder, LOCK_FILE))["pid"] == os.getpid()
    True
    """

    def __init__(self, folder, *, wait=False, print_fn=print):
        self.folder, self.wait, self.print_fn = os.fspath(folder), bool(wait), print_fn
        self.path = os.path.join(self.folder, LOCK_FILE)
        self.held, self._fd = False, None

    def __enter__(self):
        os.makedirs(self.folder, exist_ok=True)
        if fcntl is None:  # pragma: no cover - Windows.
            warnings.warn(
                f"Run folders are not locked on this system (no fcntl): nothing stops a second "
                f"process from training in {self.folder} at the same time. Start one process "
                "per run folder.", RuntimeWarning, stacklevel=2)
            return self
        # Not inheritable (Python's default): a program this process starts does not hold it.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not self._flock(fd, blocking=False):
                holder = read_holder(self.path)
                if not self.wait:
                    raise RunFolderBusy(self.folder, holder)
                self.print_fn(f"Waiting for {describe_holder(holder)} to finish with the run "
                              f"folder {self.folder}.")
                self._flock(fd, blocking=True)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(_holder()).encode("utf-8"), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self.held = fd, True
        return self

    def _flock(self, fd, *, blocking):
        """Takes the exclusive lock on `fd`; returns `False` if another process holds it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as error:
            if error.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise ExperimentError(
                f"Cannot lock the run folder {self.folder}: flock on {self.path} failed with "
                f"{errno.errorcode.get(error.errno, error.errno)} ({error.strerror}). keras-bn "
                "locks a run folder so that only one process trains in it, and this file system "
                "does not support locks: put `out_dir` (--out) on a local disk, or mount the "
                "network file system with locking."
            ) from error
        return True

    def __exit__(self, *exc_info):
        fd, self._fd, self.held = self._fd, None, False
        if fd is not None:
            try:
                os.ftruncate(fd, 0)  # The next process to be refused finds no stale holder.
            finally:
                os.close(fd)  # Releases the lock.
        return False


def _holder():
    """Returns what a holder writes into the lock file: who it is, since when, running what."""
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": shlex.join([os.path.basename(sys.argv[0]), *sys.argv[1:]])
            if sys.argv and sys.argv[0] else None}
