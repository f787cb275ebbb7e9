"""Append-only JSONL output whose progress lives in a manifest, so a killed stage resumes exactly.

Records are appended one batch at a time and fsynced; only then is the manifest (records, bytes,
settings hash) replaced atomically. On restart, anything after the manifest's byte count (a batch cut
off mid-write) is truncated away and work resumes at the next record: nothing lost, nothing repeated.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from common.atomic import write_atomic
from common.errors import InputError, writing

logger = logging.getLogger("dataset")


def settings_hash(settings: dict) -> str:
    """Stable hash of the settings that determine a stage's output."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def describe_changes(old: dict, new: dict, shown: int = 6) -> str:
    """What differs between two settings dicts, as `key old → new` items; a refusal or a retrain names it.

    At most `shown` items, then a count: a library upgrade can add dozens of fields at once, and one
    line per run should stay readable. The full settings are in the run's `run_config.json`.
    """
    keys = sorted(set(old) | set(new), key=str)
    changed = [key for key in keys if json.dumps(old.get(key), sort_keys=True, default=str)
               != json.dumps(new.get(key), sort_keys=True, default=str)]  # fmt: skip
    items = [f"{key} {_short(old.get(key))} → {_short(new.get(key))}" for key in changed[:shown]]
    if len(changed) > shown:
        items.append(f"and {len(changed) - shown} more")
    return ", ".join(items)


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


class AppendLog:
    """A JSONL file plus `<name>.state.json` recording how much of it is complete."""

    def __init__(self, path: Path | str, settings: dict):
        self.path = Path(path)
        self.state_path = self.path.with_name(self.path.name + ".state.json")
        self.settings = settings
        self.hash = settings_hash(settings)
        self.records = 0
        self.bytes = 0
        self.complete = False

    def check(self, overwrite: bool = False) -> dict | None:
        """The saved state to resume, if any; InputError naming what changed if other settings made it.

        Writes nothing, so a command can check every stage before any of them writes.
        """
        if overwrite or not self.state_path.is_file():
            return None
        state = json.loads(self.state_path.read_text(encoding="utf-8"))
        if state.get("settings_hash") != self.hash:
            changes = describe_changes(state.get("settings") or {}, self.settings)
            raise InputError(
                f"{self.path}: made with other settings ({changes or state.get('settings_hash')}); "
                "use another --out_dir or --overwrite"
            )
        return state

    def open(self, overwrite: bool = False, batch: int = 1) -> int:
        """Prepare to append; returns how many records are already done (0 on a fresh start).

        A data file that disagrees with its state file (records cut off, out of order or repeated, as
        two writers of one folder left them) is said so in one line and kept up to its last consistent
        record, rounded down to whole batches of `batch` so that a resumed stage draws what it would have.
        """
        state = self.check(overwrite)
        if state is None or not self.path.is_file():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_bytes(b"")
            self._save_state()
            return 0
        self.records, self.bytes, self.complete = (
            state["records"],
            state["bytes"],
            state.get("complete", False),
        )
        records, size = consistent_prefix(self.path.read_bytes()[: self.bytes])
        if (records, size) != (self.records, self.bytes):
            kept = records // batch * batch
            logger.warning(
                "%s: its state file counts %d records, but only the first %d read back in order; "
                "rebuilding from record %d",
                self.path,
                self.records,
                records,
                kept,
            )
            self.records, self.bytes, self.complete = (
                kept,
                consistent_prefix(self.path.read_bytes(), kept)[1],
                False,
            )
            self._save_state()
        with open(self.path, "r+b") as handle:  # drop a batch that was cut off after the last state save
            handle.truncate(self.bytes)
        return self.records

    def read(self) -> list[dict]:
        """The complete records."""
        with open(self.path, "rb") as handle:
            data = handle.read(self.bytes)
        return [json.loads(line) for line in data.decode("utf-8").split("\n") if line]

    def append(self, records: Iterable[dict]) -> None:
        """Append one batch, then count it in the manifest.

        If either write fails (disk full), the file is cut back to the records the manifest counts.
        """
        payload = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode("utf-8")
        done = self.records, self.bytes
        try:
            with writing(self.path), open(self.path, "ab") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            self.bytes += len(payload)
            self.records += payload.count(b"\n")
            self._save_state()
        except OSError:
            self.records, self.bytes = done
            with contextlib.suppress(OSError):  # else the next open() truncates it, as after a kill
                os.truncate(self.path, self.bytes)
            raise

    def finish(self) -> None:
        self.complete = True
        self._save_state()

    def _save_state(self) -> None:
        state = {
            "records": self.records,
            "bytes": self.bytes,
            "complete": self.complete,
            "settings_hash": self.hash,
            "settings": self.settings,
        }
        write_atomic(self.state_path, json.dumps(state, indent=2, default=str))


def read_complete(path: Path | str, stage: str) -> list[dict]:
    """The records of a finished AppendLog; InputError if `stage` has not run or has not finished."""
    path = Path(path)
    state_path = path.with_name(path.name + ".state.json")
    if not state_path.is_file():
        raise InputError(f"{path}: no {stage} output here (run the {stage} stage first)")
    state = json.loads(state_path.read_text(encoding="utf-8"))
    if not state.get("complete"):
        raise InputError(
            f"{path}: the {stage} stage is unfinished ({state['records']} records); rerun it to resume"
        )
    log = AppendLog(path, state["settings"])
    log.bytes = state["bytes"]
    records, _ = consistent_prefix(path.read_bytes()[: log.bytes] if path.is_file() else b"")
    if records != state["records"]:
        raise InputError(
            f"{path}: its state file counts {state['records']} complete records, but only the first "
            f"{records} read back in order; rerun the {stage} stage to rebuild it from there"
        )
    return log.read()


def consistent_prefix(data: bytes, limit: int | None = None) -> tuple[int, int]:
    """(records, bytes) of the longest start of `data` made of whole records that read back in order.

    A record must be one JSON object on its own line and, where it has an `idx`, carry its position.
    `limit`: stop after that many records.
    """
    count, size = 0, 0
    for line in data.split(b"\n")[:-1]:  # what follows the last newline is a cut-off record, or nothing
        if limit is not None and count == limit:
            break
        try:
            record = json.loads(line)
        except ValueError:
            break
        if not isinstance(record, dict) or record.get("idx", count) != count:
            break
        count, size = count + 1, size + len(line) + 1
    return count, size
