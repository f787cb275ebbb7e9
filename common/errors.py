"""Errors a user can fix, and the one-line report every entry point gives for them."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn, ParamSpec

P = ParamSpec("P")


class InputError(Exception):
    """Bad input (file, flag, value): reported as one line naming it, exit status 2, no traceback."""


class TrainingDiverged(Exception):
    """A non-finite loss or gradient: the run stops before the optimizer uses it (exit status 3).

    `runs` names the folders of the runs that failed, where known: in a stack, the others are healthy and a
    sweep trains them on without it."""

    def __init__(self, message: str, runs: list[str] | None = None):
        super().__init__(message)
        self.runs = runs


class RunFailed(Exception):
    """A run started as its own process failed, having printed its own error; its exit status is passed on."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status if 0 < status < 256 else 1  # negative: killed by a signal


def exits_cleanly(main: Callable[P, None]) -> Callable[P, None]:
    """Wrap a CLI entry point: InputError ends it with `error: <message>`, status 2; TrainingDiverged, 3;
    an OSError (disk full, permission denied), `error: <file>: <reason>`, status 4; RunFailed, the
    failed run's own status; Ctrl-C, one line saying how to resume, status 130 (as a shell reports it)."""

    @functools.wraps(main)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            main(*args, **kwargs)
        except InputError as error:
            report(str(error), 2)
        except TrainingDiverged as error:
            report(str(error), 3)
        except RunFailed as error:
            report(str(error), error.status)
        except KeyboardInterrupt:  # Ctrl-C: every stage keeps what it finished, so a rerun resumes
            report(
                "interrupted; finished work and the last checkpoint are kept, rerun the command to resume",
                130,
            )
        except OSError as error:
            where = f"{error.filename}: " if error.filename else ""
            report(where + (error.strerror or str(error).split("\n")[0] or type(error).__name__), 4)

    return wrapper


def report(message: str, status: int) -> NoReturn:
    """End the process with `error: <message>` on a line of its own (after any open progress bar)."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):  # a bar cut short leaves the cursor mid-line
        bar.close()
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


@contextlib.contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Name `path` in any OSError raised inside: a failed write() names no file, a temp file the wrong one.

    Also for the I/O errors of native writers that are not OSErrors (safetensors', torch.save's).
    """
    try:
        yield
    except OSError as error:
        # OSError(errno, ...) picks the subclass again: EACCES stays a PermissionError.
        raise OSError(error.errno, error.strerror or str(error), str(path)) from error
    except Exception as error:
        code = native_io_errno(error, path)
        if code is None:
            raise
        raise OSError(code, os.strerror(code), str(path)) from error


# torch.save's C++ writer checks its position after each write and reports a short one in these words,
# without the errno: "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598".
TORCH_WRITER_FAILED = re.compile(r"inline_container\.cc|PytorchStreamWriter failed writing")
FULL_DISK_BYTES = 1 << 20  # less free space than this after a short write: the disk filled up


def native_io_errno(error: BaseException, path: Path | str) -> int | None:
    """The errno behind a native library's failed write under `path`, or None if it was not one.

    safetensors (Rust) keeps it in its message: "I/O error: No space left on device (os error 28)".
    torch.save loses it, so a short write counts as ENOSPC when the disk holding `path` is now all but
    full, and as EIO otherwise.
    """
    message = str(error)
    found = re.search(r"\(os error (\d+)\)", message)
    if found:
        return int(found.group(1))
    if isinstance(error, RuntimeError) and TORCH_WRITER_FAILED.search(message):
        return errno.ENOSPC if free_bytes(Path(path)) < FULL_DISK_BYTES else errno.EIO
    return None


def free_bytes(path: Path) -> int:
    """Free space, for an unprivileged writer, on the filesystem that holds `path` (or would hold it)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def check_model_source(name: str, flag: str) -> None:
    """Fail early on a model given as a local path that is not a model directory (Hub ids pass)."""
    path = Path(name).expanduser()
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1
    if path.is_file():
        raise InputError(
            f"{flag} {name}: is a file; expected a model directory (with config.json) or a Hub id"
        )
    if path.exists() and not (path / "config.json").is_file():
        raise InputError(f"{flag} {name}: directory has no config.json (not a model directory)")
    if not path.exists() and looks_local:
        raise InputError(f"{flag} {name}: no such directory")
    if path.is_dir():  # a damaged file in it: one line naming that file, before any loader meets it
        from common.readers import check_model_folder

        check_model_folder(path)


def is_system_error(error: BaseException) -> bool:
    """An OSError with an errno (permission, disk full) is the system's, not a malformed file's: the
    readers let it through to `exits_cleanly` (status 4) rather than call the file unparsable."""
    return isinstance(error, OSError) and error.errno is not None


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    return (str(error).splitlines() or [type(error).__name__])[0]
