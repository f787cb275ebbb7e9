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
        "Does an f-divergence other than reverse KL buy a better reward–diversity trade-off? This notebook "
        "reads what `reproduce.py` wrote and answers from the data; nothing is trained or generated here.\n\n"
        "- **Study grid** (`results/tiny`, or `FDPO_RESULTS_DIR`): the study's 18 runs with its learning "
        "rates (10× larger for reverse KL), compared with the study's published means.\n"
        "- **Frontier grid** (`results/tiny-frontier`, or `FDPO_FRONTIER_DIR`): every divergence at one "
        "learning rate over one β sweep, 5 seeds each (3 in the first grid): the controlled comparison, reward at "
        "matched KL; `--pairs sampled` puts the same grid on pairs sampled as RLOO samples "
        "(`results/tiny-frontier-sampled`).\n\n"
        "Intervals: `_lo`/`_hi` of a model are 95% bootstrap intervals resampling prompts with their "
        "completions; curve points are means over seeds with between-seed 95% t-intervals; matched-KL "
        "intervals resample prompts and seeds together (`analysis/frontier.py`). Figures are saved under "
        "each results folder's `figures/`.\n\n"
        "Either folder may instead hold the tables committed from one (`docs/data/<grid>`, written by "
        "`python -m analysis.export`): everything below but the training curves and the generations is "
        "drawn from them, and the figures are saved under `docs/figures/<grid>/`."
    ),
    new_code_cell(
        "import os\n"
        "from pathlib import Path\n\n"
        "import pandas as pd\n"
        "from IPython.display import Image, Markdown, display\n\n"
        "from analysis import figures, report\n\n"
        "STUDY = Path(os.environ.get('FDPO_RESULTS_DIR', 'results/tiny'))\n"
        "FRONTIER = Path(os.environ.get('FDPO_FRONTIER_DIR', 'results/tiny-frontier'))\n"
        "PUBLISHED = Path(os.environ.get('FDPO_STUDY_MEANS', 'docs/study_published_means.csv'))\n"
        "have_study = report.has_tables(STUDY)\n"
        "have_frontier = report.has_tables(FRONTIER)\n"
        "print(f'study grid: {STUDY} ({have_study}); frontier grid: {FRONTIER} ({have_frontier})')\n"
        "absent = figures.absent\n\n\n"
        "def show(drawn, root, name):\n"
        '    """A figure of `analysis.figures`, saved (`figures.default_folder`) and shown as saved; or why there is none."""\n'
        "    if isinstance(drawn, str):\n"
        "        print(drawn)\n"
        "        return\n"
        "    display(Image(filename=str(figures.save(drawn, figures.default_folder(root), name))))"
    ),
    new_markdown_cell(
        "## 1. The study grid beside the study's published means\n\n"
        "The study reports, per model, the mean distilbert-imdb logit and the unigram entropy of its 48 "
        "eval samples (DistilBERT tokenizer on prompt + continuation). Our reward is the preset's "
        "(VADER for `tiny`) and our unigram entropy counts the policy's tokens of the continuation, so "
        "values are on other scales: compare the **order** of the models (Spearman ρ below)."
    ),
    new_code_cell(
        "if have_study:\n"
        "    study_table, study_samples = report.load(STUDY)\n"
        "    published = pd.read_csv(PUBLISHED)\n"
        "    side, (rho, lo, hi) = report.versus_study(study_table, published)\n"
        "    display(side.round(3))\n"
        "    for column in absent(study_table, 'reward', 'unigram_entropy_policy_tokens'):\n"
        "        print(f'no {column} of ours: not evaluated (evaluate.py --metrics)')\n"
        "    print(f'Spearman rank correlation of mean rewards, ours vs the study: {rho:.2f} [{lo:.2f}, {hi:.2f}] '\n"
        "          f'(95% bootstrap over the {side.reward_ours.notna().sum()} models)')\n"
        "else:\n"
        "    print('no study-grid results: run `reproduce.py --preset tiny`')"
    ),
    new_markdown_cell(
        "The study's grid trains reverse KL at 10× the f-divergences' learning rate. Reward against KL "
        "shows what that does: filled markers are the larger rate, open ones the smaller; bars are each "
        "run's 95% interval over prompts (one seed)."
    ),
    new_code_cell(
        "drawn = figures.study_reward_vs_kl(study_table) if have_study else None\n"
        "if have_study:\n"
        "    show(drawn, STUDY, 'study_reward_vs_kl.png')\n"
        "if have_study and not isinstance(drawn, str):\n"
        "    runs = report.trained(study_table)\n"
        "    rho_kl, lo_kl, hi_kl = report.rank_correlation(runs['kl'], runs['reward'])\n"
        "    print(f'Spearman(KL, reward) over the {len(runs)} trained runs: {rho_kl:.2f} [{lo_kl:.2f}, {hi_kl:.2f}]')"
    ),
    new_markdown_cell(
        "## 2. The frontier grid: reward against KL and against diversity, one curve per divergence\n\n"
        "Each point is one β (mean over seeds, between-seed 95% interval); lines join a family's β values "
        "in order of KL."
    ),
    new_code_cell(
        "if have_frontier:\n"
        "    frontier_table, frontier_samples = report.load(FRONTIER)\n"
        "    for filename, (x, y, xlabel, ylabel) in figures.FRONTIER_CURVES.items():\n"
        "        show(figures.frontier_curves(frontier_table, x, y, xlabel, ylabel), FRONTIER, filename)\n"
        "else:\n"
        "    print('no frontier-grid results: run `reproduce.py --preset tiny --grid frontier`')"
    ),
    new_markdown_cell(
        "## 3. At matched KL, and at matched predictive entropy\n\n"
        "Each family's curve is interpolated between the β values that were run (never beyond them) at "
        "five values that every seed of it and of the reference reaches; `diff` is the family's value minus "
        "the reference's at the same point, with a 95% interval over prompts and seeds; `differs` says "
        "whether that interval excludes 0. The reference is reverse-KL DPO (sigmoid), or RLOO, the online-RL "
        "baseline. ECE is computed on each run's held-out pairs, whose prompts the interval resamples too.\n\n"
        "Calibration is compared three more ways, so that families with other confidences or pair counts "
        "compare fairly: ECE minus the ECE a perfectly calibrated run with the same confidences would show "
        "(its finite-sample floor, exact), ECE after temperature scaling (fitted on one half of the held-out "
        "prompts, scored on the other), and preference accuracy. Beside the bootstrap's columns, `seeds`, "
        "the `_t_lo`/`_t_hi` intervals and `p` treat the seeds as the small sample they are: a t interval "
        "over the per-seed curves (df from the seeds), with the prompts' variance from the bootstrap added."
    ),
    new_code_cell(
        "if have_frontier:\n"
        "    frontier_pairs = report.load_pairs(FRONTIER)\n"
        "    tables = report.claim_tables(frontier_table, frontier_samples, frontier_pairs)\n"
        "    for name, (x, y, reference, title) in report.MATCHED_TABLES.items():\n"
        "        if name in tables:\n"
        "            display(Markdown(f'**{title}**: the range compared, and the difference at its two ends'))\n"
        "            display(report.endpoints(tables[name], x, y, reference))\n"
        "            display(tables[name].round(3))\n"
        "        else:\n"
        "            why = report.why_missing(name, frontier_table, frontier_samples, frontier_pairs)\n"
        "            print(f'no table of {title}: {why}')"
    ),
    new_markdown_cell(
        "## 4. The verdict on the paper's three claims\n\n"
        "By the corrected rule written in `analysis/frontier.py` before the next grid: a family is *higher* "
        "or *lower* than the reference where, at every compared point, the difference's p-value (seeds as a "
        "small sample, `p` above) survives Holm's correction over all the families and points the claim "
        "tests, on one side of 0; claim 3 rests on the debiased ECE. `gold_verdict` applies the same rule to "
        "the gold reward, which training never saw. `uncorrected_verdict` is the first grid's rule (each "
        "bootstrap interval alone, claim 3 on the raw ECE); `changed` marks the verdicts the correction "
        "changed."
    ),
    new_code_cell(
        "if have_frontier:\n"
        "    families = list(report.trained(frontier_table)['family'].unique())\n"
        "    verdict = report.verdict(tables, families)\n"
        "    with pd.option_context('display.max_colwidth', 400):\n"
        "        display(verdict)\n"
        "    changed = verdict[verdict['changed']]\n"
        "    print('the correction changed no verdict' if changed.empty else 'the correction changed the verdict on '\n"
        "          + '; '.join(f'claim {r.claim} ({r.uncorrected_verdict} -> {r.verdict})' for r in changed.itertuples()))\n"
        "    text = []\n"
        "    for name in ('kl_reward', 'entropy_reward', 'kl_gold', 'online_reward', 'kl_ece', 'kl_ece_debiased'):\n"
        "        x, y, reference, title = report.MATCHED_TABLES[name]\n"
        "        if name in tables:\n"
        "            named = report.probabilistic_families(frontier_table) if y.startswith('ece') else families\n"
        "            text += [f'**{title}**:', report.conclusion(tables[name], x, y, named, reference)]\n"
        "            left = [f for f in families if f not in named]\n"
        "            text += [f'- {f}: no preference probability (hinge loss), so no ECE.' for f in left] + ['']\n"
        "    display(Markdown('\\n'.join(text)))\n"
        "else:\n"
        "    display(Markdown('Without the frontier grid nothing can be said about a divergence-specific '\n"
        "                     'trade-off: the study grid confounds the divergence with its learning rate.'))"
    ),
    new_markdown_cell(
        "## 5. Training curves\n\n"
        "From each run's `trainer_state.json`: the loss, the margin and the implicit rewards β·f′(u) of "
        "chosen and rejected answers (seed 0 of each frontier configuration, or the study grid's runs)."
    ),
    new_code_cell(
        "root = FRONTIER if have_frontier else STUDY\n"
        "logs = report.training_curves(root) if root.exists() else pd.DataFrame()\n"
        "drawn = figures.training_curves(logs)\n"
        "show(f'{drawn} under {root / \"runs\"}' if isinstance(drawn, str) else drawn, root, 'training_curves.png')"
    ),
    new_markdown_cell(
        "## 6. Calibration: reliability diagrams at a shared KL\n\n"
        "The implied probability σ(β(f′(u_w) − f′(u_l))) that the chosen answer of a held-out pair is "
        "preferred (β log u for RLOO, the reward its reverse-KL optimum implies), binned by confidence, "
        "against how often it was. One panel per family, at the β whose mean KL lies closest to a KL every "
        "family's curve passes near; its seeds' pairs are pooled, each bin is labelled with its count, and "
        "the title gives the pooled ECE. A hinge loss implies no probability: its panel says so."
    ),
    new_code_cell(
        "root = FRONTIER if have_frontier else STUDY\n"
        "if not report.has_tables(root):\n"
        "    print('no reliability panel: no evaluation tables')\n"
        "else:\n"
        "    cal_table = report.load(root)[0]\n"
        "    drawn = figures.reliability(cal_table, report.load_pairs(root))\n"
        "    if 'kl' not in report.trained(cal_table) and not isinstance(drawn, str):\n"
        "        print('KL not evaluated (evaluate.py --metrics kl): each family shown at each of its betas')\n"
        "    show(drawn, root, 'reliability.png')"
    ),
    new_markdown_cell("## 7. Generations side by side: the same prompts, one column per model"),
    new_code_cell(
        "root = FRONTIER if have_frontier else STUDY\n"
        "table, samples = report.load(root) if report.has_tables(root) else (None, pd.DataFrame())\n"
        "if 'answer' in samples:\n"
        "    picks = list(table.loc[table['family'] == 'SFT', 'model'])\n"
        "    for name, group in report.trained(table).groupby('family'):\n"
        "        picks.append(group.sort_values('kl' if 'kl' in group else 'beta').iloc[-1]['model'])\n"
        "    if picks:\n"
        "        with pd.option_context('display.max_colwidth', 200):\n"
        "            display(report.side_by_side(samples, picks).T)\n"
        "else:\n"
        "    print('no generations to show: no eval/samples.csv (committed tables hold no completion text)')"
    ),
]


def build(path: Path) -> None:
    notebook = new_notebook(cells=CELLS)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)


if __name__ == "__main__":
    build(Path(__file__).resolve().parent.parent / "results.ipynb")
