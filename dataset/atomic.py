"""Writes that never leave a half-written output behind: temp file or folder, then rename."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from errors import writing


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` via a temporary file and rename: readers see the old or the new file.

    A failed write (disk full, no permission) leaves `path` as it was, removes the temporary file, and
    raises an OSError naming `path`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with writing(path):
        try:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise


def replace_dir(new: Path, target: Path) -> None:
    """Put `new` at `target`; an existing `target` is moved aside first and removed only afterwards.

    If `new` cannot be moved in, the old `target` is put back before the error propagates.
    """
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
