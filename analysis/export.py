"""Commit the evaluation tables behind RESULTS.md: a results folder's eval/ tables, without the completion
text or this machine's paths, as a folder the repository can hold and `analysis.rebuild` reads.

poetry run python -m analysis.export results/tiny-frontier docs/data/tiny-frontier

Writes, whole (staged beside the target, then renamed into place):
- results.csv: eval/results.csv as evaluation wrote it, an absolute path in a cell made relative to the
  results folder (or cut to its last part when it lies elsewhere);
- samples.csv.gz: per completion, SAMPLE_COLUMNS only (no completion text);
- pairs.csv.gz: per held-out pair, PAIR_COLUMNS only (where evaluation scored pairs);
- manifest.json: the source folder's name, the date, each table's rows, columns and SHA-256.

Every number is copied as the text evaluation wrote, never parsed and printed again, so the committed
tables read back into the very floats the results folder gives (`analysis.report.load`). Prompts are kept
as text: the bootstrap draws prompts in their sorted order, and temperature scaling picks its fitting
half by the SHA-256 of each prompt's text (`calibration.fit_half`); a short id would change both.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import gzip
import hashlib
import json
import logging
import os
import typing
from pathlib import Path

import pandas as pd

from analysis.report import COMMITTED, EXPORT_MANIFEST, TEXT_TABLE
from common.atomic import replace_dir, staging_dir
from common.errors import InputError, exits_cleanly, first_line
from common.readers import check_field_counts, read_json_object

logger = logging.getLogger("export")

MADE_BY = "analysis.export"  # the manifest's mark: only a folder bearing it is ever replaced
# The columns of samples.csv that analysis/ reads (matched KL, entropy, rewards; `kl` is the log-ratio).
SAMPLE_COLUMNS = ["model", "prompt", "reward", "gold_reward", "logratio", "predictive_entropy"]
# Those of pairs.csv: the probability for the ECEs, the margin for accuracy and temperature scaling.
PAIR_COLUMNS = ["model", "prompt", "prob_chosen", "margin"]
SIZE_LIMIT = 10 * 1024 * 1024  # bytes: what a grid's committed tables should stay under (199 models: ~3 MB)


class Parser(argparse.ArgumentParser):
    """argparse whose bad flag is one InputError line (exit status 2), with no abbreviated flags.
    (`common.cli.ArgParser` does the same but imports TRL, hence torch, which these commands never need.)"""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        raise InputError(message)


def read_source(path: Path, required: list[str]) -> pd.DataFrame:
    """A table of a results folder with every cell as the text written ("" where empty); InputError naming
    it when it is missing, unparsable, or lacks a `required` column."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        check_field_counts(path)
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, lineterminator="\n")
    except (ValueError, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
        raise InputError(f"{path}: unreadable table ({first_line(error)})") from None
    lacking = [column for column in required if column not in frame]
    if lacking:
        raise InputError(f"{path}: no {', '.join(lacking)} column")
    return frame


def portable(value: str, root: Path) -> str:
    """`value` with an absolute path made relative to `root` (the results folder) when inside it, else cut
    to its last part: the committed tables name no folder of this machine."""
    if not os.path.isabs(value):
        return value
    path = Path(value)
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def tables_of(source: Path) -> dict[str, pd.DataFrame]:
    """The committed tables of a results folder, by file name (pairs only where evaluation wrote them)."""
    root = source.resolve()
    results = read_source(source / "eval" / "results.csv", ["model", "loss", "divergence", "alpha"])
    results = results.map(lambda cell: portable(cell, root))
    samples = read_source(source / "eval" / "samples.csv", ["model", "prompt"])
    tables = {
        COMMITTED["results"]: results,
        COMMITTED["samples"]: samples[[c for c in SAMPLE_COLUMNS if c in samples]],
    }
    if (source / "eval" / "pairs.csv").is_file():
        pairs = read_source(source / "eval" / "pairs.csv", ["model", "prompt"])
        tables[COMMITTED["pairs"]] = pairs[[c for c in PAIR_COLUMNS if c in pairs]]
    return tables


def encode(name: str, frame: pd.DataFrame) -> bytes:
    """A table's bytes: results.csv quoted as evaluation quotes it; the per-unit tables with every cell
    quoted (a prompt's bare "\\r" then reads back inside its cell) and gzipped without a name or time in
    the header, so one table always gives the same bytes and the same SHA-256."""
    if not name.endswith(".gz"):
        return frame.to_csv(index=False, lineterminator="\n").encode("utf-8")
    text = frame.to_csv(index=False, quoting=csv.QUOTE_ALL, lineterminator="\n")
    return gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0)


def check_ours(target: Path) -> None:
    """Refuse a `target` that exists, is not empty, and was not written by this command (its manifest does
    not say MADE_BY): replacing it would delete someone's folder."""
    if not (target.exists() or target.is_symlink()):
        return
    if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
        return
    manifest = target / EXPORT_MANIFEST
    made_by = None
    if manifest.is_file():
        try:
            made_by = read_json_object(manifest).get("made_by")
        except InputError:
            made_by = None
    if made_by != MADE_BY:
        raise InputError(
            f"{target}: exists and was not written by {MADE_BY} (no {EXPORT_MANIFEST} saying so); it is "
            "left alone: move it away or choose another folder"
        )


def export(source: Path, target: Path) -> dict:
    """Write `target` from the results folder `source` (the module docstring says what), whole: staged
    beside it and renamed into place, replacing only a folder this command wrote. Returns the manifest."""
    source, target = Path(source), Path(target)
    check_ours(target)
    tables = {name: (frame, encode(name, frame)) for name, frame in tables_of(source).items()}
    manifest = {
        "made_by": MADE_BY,
        "source": source.resolve().name,
        "exported": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
        "tables": {
            name: {
                "rows": len(frame),
                "columns": list(frame.columns),
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
            for name, (frame, data) in tables.items()
        },  # fmt: skip
    }
    with staging_dir(target) as staging:
        for name, (_, data) in tables.items():
            (staging / name).write_bytes(data)
        (staging / EXPORT_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        read_back(staging)
        for path in staging.iterdir():  # on disk before the rename that makes them the committed tables
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        replace_dir(staging, target, EXPORT_MANIFEST)
    return manifest


def read_back(target: Path) -> None:
    """InputError unless pandas reads every table staged in `target` as it is (gzip by its suffix) into
    the rows the manifest records: checked before the tables are renamed into place."""
    manifest = read_json_object(target / EXPORT_MANIFEST)
    for name, recorded in manifest["tables"].items():
        rows = len(pd.read_csv(target / name, **TEXT_TABLE))
        if rows != recorded["rows"]:
            raise InputError(f"{target / name}: reads back {rows} rows, not {recorded['rows']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command's flags; a bad one raises InputError."""
    parser = Parser(prog="python -m analysis.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a results folder (with eval/results.csv)")
    parser.add_argument("target", type=Path, help="the folder to write, e.g. docs/data/<grid>")
    return parser.parse_args(argv)


@exits_cleanly
def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = parse_args(argv)
    manifest = export(args.source, args.target)
    total = sum(table["bytes"] for table in manifest["tables"].values())
    sizes = ", ".join(f"{name} ({table['rows']} rows)" for name, table in manifest["tables"].items())
    logger.info("wrote %s: %s; %.2f MB in all", args.target, sizes, total / 1e6)
    if total > SIZE_LIMIT:
        logger.warning("%s holds %.1f MB, more than the %d MB the committed tables should stay under",
                       args.target, total / 1e6, SIZE_LIMIT // (1024 * 1024))  # fmt: skip


if __name__ == "__main__":
    main()
