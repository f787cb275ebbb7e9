"""Print a results folder's evaluation table as Markdown (for RESULTS.md).

poetry run python scripts/results_table.py results/tiny
"""

import sys
from pathlib import Path

import pandas as pd


def cell(row, column: str) -> str:
    if column not in row or pd.isna(row[column]):
        return "–"
    if f"{column}_lo" in row and pd.notna(row[f"{column}_lo"]):
        return f"{row[column]:.2f} [{row[f'{column}_lo']:.2f}, {row[f'{column}_hi']:.2f}]"
    return f"{row[column]:.3f}"


def main(root: Path) -> None:
    table = pd.read_csv(root / "eval" / "results.csv")
    columns = ["reward", "predictive_entropy", "unigram_entropy_policy_tokens", "kl", "pref_accuracy", "ece"]
    print("| model | " + " | ".join(columns) + " |")
    print("| --- |" + " --- |" * len(columns))
    keys = ["_sft", "divergence", "loss", "alpha", "beta"]
    table["_sft"] = table["loss"].isna()
    order = table.sort_values(keys, ascending=[False, True, True, True, False])
    for _, row in order.iterrows():
        print(f"| {row['model']} | " + " | ".join(cell(row, c) for c in columns) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
