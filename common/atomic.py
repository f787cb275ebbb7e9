"""Writes that never leave a half-written output behind: temp file or folder, then rename."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path

from common.errors import InputError, writing
from common.lock import LOCK_FILE


@contextlib.contextmanager
def atomic_file(path: Path, shared: bool = False) -> Iterator[Path]:
    """A temporary path beside `path` to write; renamed onto `path` only if the block succeeds.

    Readers see the old or the new file. A failed write (disk full, no permission) leaves `path` as it
    was, removes the temporary file, and raises an OSError naming `path`. `shared`: several processes
    may write `path` at once, so each gets a temporary name of its own.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp" if shared else f".{path.name}.tmp")
    with writing(path):
        try:
            yield tmp
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through `atomic_file`, synced to disk before the rename."""
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def check_replaceable(target: Path, manifest: str, legacy: Collection[str] = ()) -> None:
    """Refuse to replace a `target` folder that this project did not write, as its `manifest` file shows.

    An output path can name a folder of something else (`--out_dir .`, a link to a clone of the repo):
    replacing it would delete that folder for good. `legacy`: the file names that the project wrote there
    before it wrote a manifest; a folder of such plain files only is the project's too (it used to
    rewrite them in place).
    """
    target = Path(target)
    if not (target.exists() or target.is_symlink()) or (target / manifest).is_file():
        return
    ours = {LOCK_FILE, *legacy}
    if target.is_dir() and all(
        entry.name == LOCK_FILE or (entry.name in ours and entry.is_file() and not entry.is_symlink())
        for entry in target.iterdir()
    ):
        return  # nothing in it to lose, or only what the project wrote
    raise InputError(
        f"{target}: exists and was not written by this project (it has no {manifest}); it is left "
        "alone: move it away or choose another output folder"
    )


def replace_dir(new: Path, target: Path, manifest: str, legacy: Collection[str] = ()) -> None:
    """Put `new` at `target`; an existing `target` is moved aside first and removed only afterwards.

    Only a `target` that holds `manifest` (the project wrote it) is replaced (`check_replaceable`, with
    its `legacy`). If `new` cannot be moved in, the old `target` is put back before the error propagates.
    """
    check_replaceable(target, manifest, legacy)
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    try:
        new.rename(target)
    except OSError:
        if old.exists() and not target.exists():
            old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staging_dir(target: Path) -> Iterator[Path]:
    """A fresh scratch folder beside `target` to build it in (then `replace_dir`); removed at the end.

    A killed build cannot remove its scratch folder, so the folder is named after its host and process,
    and the ones beside `target` whose process on this host has died are removed first. A folder
    whose process still runs, or that another host made on a shared disk, is left alone.
    """
    prefix = f".{target.name}-{socket.gethostname()}-"
    for stale in target.parent.glob(glob.escape(prefix) + "*"):
        pid = stale.name.removeprefix(prefix).split("-", 1)[0]
        if pid.isdigit() and stale.is_dir() and not process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=target.parent))
    path.chmod(0o777 & ~current_umask())  # mkdtemp's 0700 would become the final folder's mode
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def current_umask() -> int:
    """The process's umask (reading it means setting it: put straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True
