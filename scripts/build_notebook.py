"""Write results.ipynb (cells only, no outputs). Run it, then execute the notebook to fill the outputs:

poetry run python scripts/build_notebook.py
poetry run jupyter nbconvert --to notebook --execute --inplace results.ipynb   # or nbclient
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    new_markdown_cell(
        "# f-DPO on IMDb: results\n\n"
        "Reads what `train_dpo/evaluate.py` wrote (`eval/results.csv`, one row per model, and "
        "`eval/samples.csv`, one row per completion) and plots it; nothing is trained or generated here. "
        "The results folder is `results/tiny` (what `reproduce.py --preset tiny` writes) unless "
        "`FDPO_RESULTS_DIR` names another. Figures are also saved as PNG under `<results folder>/figures/`."
    ),
    new_code_cell(
        "import os\n"
        "from pathlib import Path\n\n"
        "import matplotlib.pyplot as plt\n"
        "import pandas as pd\n\n"
        "RESULTS = Path(os.environ.get('FDPO_RESULTS_DIR', 'results/tiny'))\n"
        "FIGURES = RESULTS / 'figures'\n"
        "FIGURES.mkdir(parents=True, exist_ok=True)\n"
        "table = pd.read_csv(RESULTS / 'eval' / 'results.csv')\n"
        "samples = pd.read_csv(RESULTS / 'eval' / 'samples.csv')\n\n\n"
        "def label(row):\n"
        "    if pd.isna(row['loss']):\n"
        "        return 'SFT'\n"
        "    name = row['loss'] if row['divergence'] == 'reverse_kl' else row['divergence']\n"
        "    if row['divergence'] == 'alpha':\n"
        "        name = f\"alpha={row['alpha']:g}\"\n"
        "    return f\"{name} β={row['beta']:g}\"\n\n\n"
        "def family(row):\n"
        "    if pd.isna(row['loss']):\n"
        "        return 'SFT'\n"
        "    return row['loss'] if row['divergence'] == 'reverse_kl' else row['divergence']\n\n\n"
        "table['label'] = table.apply(label, axis=1)\n"
        "table['family'] = table.apply(family, axis=1)\n"
        "table = table.sort_values(['family', 'beta'], na_position='first').reset_index(drop=True)\n"
        "samples = samples.merge(table[['model', 'label', 'family']], on='model')\n"
        "print(f'{len(table)} models, {len(samples)} completions')"
    ),
    new_markdown_cell("## The table, with 95% bootstrap intervals"),
    new_code_cell(
        "def with_ci(column):\n"
        "    if column not in table:\n"
        "        return pd.Series([''] * len(table))\n"
        "    return table.apply(lambda r: '' if pd.isna(r[column]) else\n"
        "                       f\"{r[column]:.3f} [{r[column + '_lo']:.3f}, \"\n"
        "                       f\"{r[column + '_hi']:.3f}]\", axis=1)\n\n\n"
        "shown = pd.DataFrame({'model': table['label']})\n"
        "for column in ['reward', 'predictive_entropy', 'kl', 'pref_accuracy']:\n"
        "    shown[column] = with_ci(column)\n"
        "for column in ['unigram_entropy_policy_tokens', 'distinct_1', 'distinct_2', 'length', 'ece']:\n"
        "    if column in table:\n"
        "        shown[column] = table[column].round(3)\n"
        "shown"
    ),
    new_markdown_cell("## Reward per model, grouped by loss and β"),
    new_code_cell(
        "order = list(table['label'])\n"
        "fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(order)), 4))\n"
        "ax.boxplot([samples.loc[samples['label'] == name, 'reward'] for name in order], showfliers=False)\n"
        "ax.set_xticks(range(1, len(order) + 1), order, rotation=45, ha='right')\n"
        "ax.set_ylabel('reward of the continuation')\n"
        "ax.set_title('Reward per model')\n"
        "fig.tight_layout()\n"
        "fig.savefig(FIGURES / 'reward_boxplot.png', dpi=120)"
    ),
    new_markdown_cell(
        "## Reward against diversity (the study's figure) and against KL (the DPO paper's frontier)\n\n"
        "Each point is a model's mean with its 95% interval; colours are loss families."
    ),
    new_code_cell(
        "def scatter(x, filename, xlabel):\n"
        "    fig, ax = plt.subplots(figsize=(6, 4.5))\n"
        "    for name, group in table.groupby('family'):\n"
        "        ax.errorbar(group[x], group['reward'],\n"
        "                    xerr=[group[x] - group[x + '_lo'], group[x + '_hi'] - group[x]],\n"
        "                    yerr=[group['reward'] - group['reward_lo'],\n"
        "                          group['reward_hi'] - group['reward']],\n"
        "                    fmt='o', capsize=3, label=name)\n"
        "        for _, row in group.iterrows():\n"
        "            ax.annotate(row['label'], (row[x], row['reward']), fontsize=7, alpha=0.7)\n"
        "    ax.set_xlabel(xlabel)\n"
        "    ax.set_ylabel('mean reward')\n"
        "    ax.legend(fontsize=8)\n"
        "    fig.tight_layout()\n"
        "    fig.savefig(FIGURES / filename, dpi=120)\n\n\n"
        "if 'predictive_entropy' in table:\n"
        "    scatter('predictive_entropy', 'reward_vs_entropy.png', 'predictive entropy (nats / token)')\n"
        "if 'kl' in table:\n"
        "    scatter('kl', 'reward_vs_kl.png', 'KL(π ‖ π_ref), nats per sequence')"
    ),
]


def build(path: Path) -> None:
    notebook = new_notebook(cells=CELLS)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)


if __name__ == "__main__":
    build(Path(__file__).resolve().parent.parent / "results.ipynb")
