"""The figures of results.ipynb and of `analysis.rebuild`, drawn from `analysis.report`'s tables.

One place draws them, so the notebook (on a results folder) and the rebuild (on the committed tables)
save the same pictures. Each function returns a matplotlib Figure, or the sentence saying why there is
none (a column not evaluated, no trained run), which the caller prints; nothing here reads a file.
Figures are built without pyplot, so drawing them leaves no global state behind and needs no display.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from analysis import report

DPI = 120  # the saved PNGs' resolution; RESULTS.md shows them at this size


def absent(table: pd.DataFrame, *columns: str) -> list[str]:
    """The columns an evaluation left out (`evaluate.py --metrics` chose others): said, never drawn."""
    return [column for column in columns if column not in table]


def save(figure: Figure, folder: Path, name: str) -> Path:
    """`figure` as `folder/name` (PNG at DPI, the folder made if needed); returns the path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    figure.savefig(folder / name, dpi=DPI, bbox_inches="tight")
    return folder / name


def frontier_curves(table: pd.DataFrame, x: str, y: str, xlabel: str, ylabel: str) -> Figure | str:
    """One curve per family of `y` against `x` (`report.curve_points`: per beta, the mean over seeds with
    between-seed 95% intervals), the SFT model as a star."""
    if absent(table, x, y):
        return f"no {y} against {x}: {', '.join(absent(table, x, y))} not evaluated (evaluate.py --metrics)"
    points = report.curve_points(table, x, y)
    if points.empty:
        return f"no {y} against {x}: no trained run"
    figure = Figure(figsize=(7, 5))
    ax = figure.subplots()
    for name, group in points.groupby("family"):
        ax.errorbar(group[x], group[y], xerr=[group[x] - group[x + "_lo"], group[x + "_hi"] - group[x]],
                    yerr=[group[y] - group[y + "_lo"], group[y + "_hi"] - group[y]],
                    fmt="o", capsize=2, label=name, linewidth=2 if name == "reverse_kl" else 1,
                    linestyle="--" if name == "RLOO" else "-")  # fmt: skip
    sft = table[table["family"] == "SFT"]
    if len(sft) and x in sft and y in sft:
        ax.scatter(sft[x], sft[y], marker="*", s=150, color="black", label="SFT", zorder=5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return figure


# The frontier grid's curves (RESULTS.md section 1): file name -> (x, y, x label, y label).
FRONTIER_CURVES = {
    "frontier_reward_vs_kl.png": ("kl", "reward", "KL(π ‖ π_ref), nats per sequence", "mean reward"),
    "frontier_reward_vs_entropy.png": ("predictive_entropy", "reward", "predictive entropy, nats per token",
                                       "mean reward"),
    "frontier_gold_vs_proxy.png": ("reward", "gold_reward", "training reward (proxy)",
                                   "gold reward (never trained on)"),
}  # fmt: skip


def study_reward_vs_kl(table: pd.DataFrame) -> Figure | str:
    """The study grid's runs, reward against KL, one line per family and learning rate (filled markers:
    the larger rate); bars are each run's 95% interval over prompts (one seed)."""
    if absent(table, "kl", "reward"):
        return f"no reward-against-KL plot: {', '.join(absent(table, 'kl', 'reward'))} not evaluated"
    runs = report.trained(table).sort_values("kl")
    if runs.empty:
        return "no reward-against-KL plot: no trained run in the study grid"
    fast = runs["learning_rate"] == runs["learning_rate"].max()
    figure = Figure(figsize=(7, 5))
    ax = figure.subplots()
    for (name, quick), group in runs.groupby(["family", fast]):
        ax.errorbar(group["kl"], group["reward"],
                    xerr=[group["kl"] - group["kl_lo"], group["kl_hi"] - group["kl"]],
                    yerr=[group["reward"] - group["reward_lo"], group["reward_hi"] - group["reward"]],
                    fmt="-o", capsize=2, label=f"{name} (lr {group['learning_rate'].iloc[0]:g})",
                    markerfacecolor=None if quick else "white")  # fmt: skip
    ax.set_xlabel("KL(π ‖ π_ref), nats per sequence")
    ax.set_ylabel("mean reward")
    ax.legend(fontsize=8)
    return figure


def training_curves(logs: pd.DataFrame) -> Figure | str:
    """Loss, margin and implicit rewards per step (`report.training_curves`), seed 0 of each configuration."""
    metrics = [m for m in ("loss", "rewards/margins", "rewards/chosen", "rewards/rejected") if m in logs]
    if not (len(logs) and metrics):
        return "no training curves: no run folder with a trainer_state.json"
    logs = logs[~logs["model"].str.contains("_seed") | logs["model"].str.endswith("_seed0")]
    figure = Figure(figsize=(4.5 * len(metrics), 3.8))
    axes = figure.subplots(1, len(metrics), squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        for _, run in logs.groupby("model"):
            ax.plot(run["step"], run[metric], linewidth=0.8)
        ax.set_title(metric)
        ax.set_xlabel("step")
    return figure


def reliability(table: pd.DataFrame, pairs: pd.DataFrame) -> Figure | str:
    """Reliability diagrams at a shared KL: per family, the beta whose mean KL lies closest to the median
    configuration's (`report.closest_configurations`), its seeds' held-out pairs pooled
    (`report.pooled_reliability`); each bin labelled with its count, the pooled ECE in the title. Without
    KL, each family at each of its betas. A hinge panel says it has no probability."""
    pooled = report.pooled_reliability(table, pairs)
    if pooled.empty:
        return ("no reliability panel: no run with a preference probability (held-out pairs are scored by "
                "evaluate.py --metrics preference; a hinge loss implies none)")  # fmt: skip
    runs = report.trained(table)
    if "kl" in runs:
        shared_kl = float(runs.groupby(["family", "beta"])["kl"].mean().median())
        picks = report.closest_configurations(runs, shared_kl)
    else:
        picks = runs[["family", "beta"]].drop_duplicates()
    columns = 4
    rows = -(-len(picks) // columns)
    figure = Figure(figsize=(3.4 * columns, 3.2 * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax, pick in zip(axes.flat, picks.itertuples(), strict=False):
        ax.plot([0.5, 1], [0.5, 1], color="grey", linewidth=0.5)
        ax.set_xlim(0.5, 1)
        ax.set_ylim(0, 1.05)
        shown = pooled[(pooled["family"] == pick.family) & (pooled["beta"] == pick.beta)]
        if not len(shown):
            ax.set_title(f"{pick.family}, β={pick.beta:g}", fontsize=8)
            ax.text(0.75, 0.5, "no preference probability\n(hinge loss)", ha="center", fontsize=8)
            continue
        filled = shown[shown["count"] > 0]
        ax.bar(filled["lo"], filled["accuracy"], width=filled["hi"] - filled["lo"], align="edge",
               alpha=0.4, edgecolor="black", linewidth=0.5)  # fmt: skip
        ax.plot(filled["confidence"], filled["accuracy"], "o", markersize=3)
        for bin_ in filled.itertuples():
            ax.text((bin_.lo + bin_.hi) / 2, min(bin_.accuracy + 0.03, 1.0), str(bin_.count),
                    ha="center", fontsize=6)  # fmt: skip
        first = shown.iloc[0]
        kl_text = f", KL {pick.kl:.1f}" if hasattr(pick, "kl") else ""
        ax.set_title(f"{pick.family}, β={pick.beta:g}{kl_text}\nECE {first.ece:.3f}, "
                     f"{first.pairs} pairs, {first.seeds} seeds", fontsize=8)  # fmt: skip
    for ax in axes.flat[len(picks) :]:
        ax.axis("off")
    figure.supxlabel("confidence (implied probability of the predicted side)")
    figure.supylabel("accuracy")
    figure.tight_layout()
    return figure


def frontier_figures(table: pd.DataFrame, pairs: pd.DataFrame) -> dict[str, Figure | str]:
    """The figures RESULTS.md section 1 shows, by file name: the three frontier curves and the reliability
    diagrams; each a Figure or why there is none."""
    drawn = {name: frontier_curves(table, *spec) for name, spec in FRONTIER_CURVES.items()}
    drawn["reliability.png"] = reliability(table, pairs)
    return drawn


def default_folder(root: Path) -> Path:
    """Where the figures of `root` are saved: a results folder's own figures/; for committed tables, the
    figures folder beside their data folder (docs/data/<grid> -> docs/figures/<grid>), so the committed
    folder holds only what its manifest lists."""
    root = Path(root)
    if report.is_committed(root):
        return root.parent.parent / "figures" / root.name
    return root / "figures"
