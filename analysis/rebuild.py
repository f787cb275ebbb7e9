"""Every table, interval, verdict and figure of RESULTS.md section 1, rebuilt from the committed tables:
no training, no model, no torch.

poetry run python -m analysis.rebuild docs/data/tiny-frontier                          # one pair source
poetry run python -m analysis.rebuild docs/data/tiny-frontier docs/data/tiny-frontier-sampled --full

Per folder (a grid's tables from `analysis.export`, or a results folder itself) it prints, as Markdown a
reader can paste: the verdict on the paper's three claims by the corrected and the uncorrected rule
(`report.verdict`), the range and the difference at both ends of every matched table
(`report.claim_tables`, `report.endpoints`: reward, gold reward, entropy, ECE, debiased ECE,
temperature-scaled ECE and preference accuracy at matched KL; reward at matched entropy; against RLOO),
and each family's absolute ECE at a shared KL; `--full` adds every matched table at all its targets. It
saves the figures (`analysis.figures`) under `--figures`/<grid>/, by default docs/figures/<grid>/. Every
folder is read and checked before anything is drawn, so a damaged table stops the command, naming the
file, with nothing written.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import figures, report
from analysis.export import Parser
from common.errors import InputError, exits_cleanly
from common.readers import read_json_object

N_BOOT = 1000  # bootstrap replicates per matched table: RESULTS.md's intervals were drawn with 1,000


@dataclass
class Rebuilt:
    """What RESULTS.md section 1 reports for one folder, recomputed."""

    root: Path
    families: list[str]
    tables: dict[str, pd.DataFrame]
    verdict: pd.DataFrame
    endpoints: dict[str, pd.DataFrame]
    missing: dict[str, str]  # matched table -> why it could not be computed
    absolute_ece: pd.DataFrame
    about: str = ""
    drawn: dict = field(default_factory=dict)  # file name -> Figure, or why there is none


@dataclass
class Loaded:
    """One folder's tables, read and checked."""

    root: Path
    table: pd.DataFrame
    samples: pd.DataFrame
    pairs: pd.DataFrame


def load(root: Path) -> Loaded:
    """`root`'s tables through `report.load` and `report.load_pairs` (either layout); InputError naming a
    missing or damaged file."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")
    if not report.has_tables(root):
        raise InputError(f"{report.table_paths(root)['results']}: no such file")
    table, samples = report.load(root)
    return Loaded(root, table, samples, report.load_pairs(root))


def absolute_ece(table: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """Per family with a preference probability: the ECE of its seeds' held-out pairs pooled, at the beta
    whose mean KL lies nearest the median configuration's (the reliability diagrams' panels)."""
    pooled = report.pooled_reliability(table, pairs)
    runs = report.trained(table)
    if pooled.empty or "kl" not in runs:
        return pd.DataFrame(columns=["family", "beta", "kl", "ece", "pairs", "seeds"])
    shared_kl = float(runs.groupby(["family", "beta"])["kl"].mean().median())
    picks = report.closest_configurations(runs, shared_kl)
    first = pooled.groupby(["family", "beta"], as_index=False).first()
    shown = picks.merge(first[["family", "beta", "ece", "pairs", "seeds"]], on=["family", "beta"])
    shown = shown.sort_values("ece", kind="stable")
    return shown.assign(shared_kl=shared_kl).reset_index(drop=True)


def rebuild(loaded: Loaded, n_boot: int = N_BOOT) -> Rebuilt:
    """Every number of RESULTS.md section 1 for one folder's tables, and its figures (not yet saved)."""
    table, samples, pairs = loaded.table, loaded.samples, loaded.pairs
    families = list(report.trained(table)["family"].unique())
    tables = report.claim_tables(table, samples, pairs, n_boot=n_boot)
    ends = {name: report.endpoints(tables[name], *report.MATCHED_TABLES[name][:3]) for name in tables}
    missing = {name: report.why_missing(name, table, samples, pairs)
               for name in report.MATCHED_TABLES if name not in tables}  # fmt: skip
    about = f"{table['model'].nunique()} models, {len(samples)} samples, {len(pairs)} held-out pair rows"
    if report.is_committed(loaded.root):
        manifest = read_json_object(loaded.root / report.EXPORT_MANIFEST)
        about += f"; exported from `{manifest.get('source')}` on {manifest.get('exported')}"
    return Rebuilt(root=loaded.root, families=families, tables=tables,
                   verdict=report.verdict(tables, families), endpoints=ends, missing=missing,
                   absolute_ece=absolute_ece(table, pairs), about=about,
                   drawn=figures.frontier_figures(table, pairs))  # fmt: skip


def cell(value) -> str:
    """A Markdown table cell: floats to 3 decimals, missing as –, pipes escaped."""
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
        return "–" if np.isnan(value) else f"{value:.3f}"
    if value is None or (isinstance(value, str) and not value):
        return "–"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame) -> str:
    """`frame` as a GitHub Markdown table."""
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + " --- |" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def markdown(rebuilt: Rebuilt, full: bool = False) -> str:
    """The Markdown `main` prints for one folder."""
    out = [f"## {rebuilt.root.name} (`{rebuilt.root}`)", "", rebuilt.about, "",
           "### The verdict on the paper's three claims", ""]  # fmt: skip
    columns = ["claim", "verdict", "gold_verdict", "uncorrected_verdict", "changed", "standings"]
    out += [markdown_table(rebuilt.verdict[columns]), ""]
    for name, (*_, title) in report.MATCHED_TABLES.items():
        if name not in rebuilt.tables:
            continue
        out += [f"### {title} (`{name}`)", ""]
        ends = rebuilt.endpoints[name]
        out += [markdown_table(ends) if len(ends) else "no family shares a range with the reference", ""]
        if full:
            out += [markdown_table(rebuilt.tables[name]), ""]
    if len(rebuilt.absolute_ece):
        kl = rebuilt.absolute_ece["shared_kl"].iloc[0]
        out += [f"### Absolute ECE, seeds pooled, at the β whose mean KL lies nearest {kl:.2f} nats", ""]
        shown = rebuilt.absolute_ece.drop(columns="shared_kl")
        out += [markdown_table(shown.assign(beta=shown["beta"].map("{:g}".format))), ""]
    if rebuilt.missing:
        out += ["### Not computed", ""]
        out += [f"- {report.MATCHED_TABLES[name][3]}: {why}" for name, why in rebuilt.missing.items()] + [""]
    return "\n".join(out)


def save_figures(rebuilt: Rebuilt, folder: Path) -> list[str]:
    """The figures saved under `folder`; returns a line per figure: its path, or why there is none."""
    lines = []
    for name, drawn in rebuilt.drawn.items():
        lines.append(f"- {drawn}" if isinstance(drawn, str) else f"- `{figures.save(drawn, folder, name)}`")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command's flags; a bad one raises InputError."""
    parser = Parser(prog="python -m analysis.rebuild", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "folders",
        type=Path,
        nargs="+",
        help="committed tables (docs/data/<grid>, one per pair source), or results folders",
    )
    parser.add_argument("--figures", type=Path, default=None,
                        help="save each folder's figures under <this>/<grid>/ (default: docs/figures/<grid>/ "
                             "beside docs/data/; a results folder's own figures/)")  # fmt: skip
    parser.add_argument("--n_boot", type=int, default=N_BOOT, help="bootstrap replicates per matched table")
    parser.add_argument("--full", action="store_true", help="print every matched table at all its targets")
    args = parser.parse_args(argv)
    if args.n_boot < 1:
        raise InputError(f"--n_boot {args.n_boot}: must be at least 1")
    names = [folder.resolve().name for folder in args.folders]
    if len(set(names)) < len(names):
        raise InputError(f"folders named alike ({', '.join(names)}): one's figures would overwrite another's")
    return args


@exits_cleanly
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    loaded = [load(folder) for folder in args.folders]  # every folder checked before anything is written
    for one in loaded:
        rebuilt = rebuild(one, args.n_boot)
        grid = one.root.resolve().name
        folder = figures.default_folder(one.root) if args.figures is None else args.figures / grid
        print(markdown(rebuilt, args.full))
        print("### Figures", "", *save_figures(rebuilt, folder), "", sep="\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
