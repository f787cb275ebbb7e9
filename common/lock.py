"""One writer per output folder: an exclusive lock that names its holder and dies with it.

Two processes writing one dataset, run or sweep folder interleave their records and their renames, and
leave a folder whose state files describe neither. Each writer therefore holds `flock` on `<folder>/.lock`
while it writes, and puts its pid in the file so that a second writer is refused with the holder's name.
The kernel drops the lock when its process ends, however it ends, so a lock file left by a killed process
is simply taken over: the pid in the file is only ever a name, never a claim.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from common.errors import InputError, writing

LOCK_FILE = ".lock"


@contextlib.contextmanager
def output_lock(folder: Path | str, wait: bool = False) -> Iterator[None]:
    """Hold the folder's write lock for the block (the folder is created if needed).

    The lock file is removed on release, so a finished writer leaves nothing behind (nor the folder, if
    the lock made it and nothing was written: a writer that failed on bad input leaves no trace); a
    writer that locked a file another one removed meanwhile tries again on the file now at that path.

    `wait`: block until another holder lets go, instead of refusing (for a shared input that a second
    command needs as much as the first, such as the tiny base policy both sweeps build). For a folder that
    exists only to be locked (one beside its output): a waiter removes it, left empty, as its holder would.

    Raises:
        InputError: another live process holds it (and `wait` is false); the message names its pid.
    """
    folder = Path(folder)
    path = folder / LOCK_FILE
    made = False
    while True:
        with writing(path):
            if not folder.exists():  # again after a wait: its holder may have removed it
                folder.mkdir(parents=True, exist_ok=True)
                made = True
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            except FileNotFoundError:  # the holder we waited for removed the folder just now: make it again
                continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            if wait:
                logging.getLogger("fdpo").info("%s: waiting for pid %s, which is writing it", folder, holder)
                fcntl.flock(fd, fcntl.LOCK_EX)
                # The holder removes the folder it made as it lets go, unless this waiter's lock file is
                # already in it: the waiter then removes it in its place, if it is left empty.
                made = True
            else:
                os.close(fd)
                raise InputError(
                    f"{folder}: another process (pid {holder}) is writing here; wait for it to end or use "
                    "another folder"
                ) from None
        if same_file(fd, path):
            break
        os.close(fd)  # its holder removed it while we waited for it: lock the one at `path` now
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still locked, so no one can be holding the removed file
        os.close(fd)
        if made:
            with contextlib.suppress(OSError):  # not empty: something was written, and stays
                folder.rmdir()


def same_file(fd: int, path: Path) -> bool:
    """Whether the open file `fd` is still the one at `path`."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def lock_beside(folder: Path | str) -> Path:
    """The folder whose lock guards a `folder` that is written whole and renamed into place: beside it, since
    a lock file inside it would be renamed away with it. `.<name>.lock/`, itself holding LOCK_FILE."""
    folder = Path(os.path.abspath(folder))  # `.` and `..` named: `--out_dir .` has a name to put it beside
    return folder.with_name(f".{folder.name}.lock")
