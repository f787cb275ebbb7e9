"""The study's grid, and reproduce.py: plan, skip finished runs, finish a killed sweep."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from synthetic import scored_file

from train_dpo.sweep import select, study_grid

REPO = Path(__file__).resolve().parents[1]


def test_the_study_grid_has_19_models():
    grid = study_grid()
    assert len(grid) + 1 == 19  # plus the SFT baseline
    assert Counter(spec.family for spec in grid) == {
        "sigmoid": 4,
        "hinge": 4,
        "jsd": 2,
        "forward_kl": 2,
        "alpha": 6,
    }
    names = [spec.name(with_seed=False) for spec in grid]
    assert len(set(names)) == 18 and "gpt_imdb_jsd_beta1e-1" in names and "gpt_imdb_alpha03_beta1" in names


def test_extended_grid_and_seeds():
    extended = study_grid(extended=True, seeds=3)
    assert len(extended) == 3 * (18 + 4 + 4)
    assert {spec.alpha for spec in extended if spec.family == "alpha"} == {0.1, 0.3, 0.5, 0.7, 0.9}
    assert len({spec.name(with_seed=True) for spec in extended}) == len(extended)


def test_only_filters_and_rejects_unknown_families():
    assert {spec.family for spec in select(study_grid(), "jsd,alpha")} == {"jsd", "alpha"}
    with pytest.raises(ValueError, match="unknown run family or name ipo"):
        select(study_grid(), "jsd,ipo")


# A reduced tiny preset: 2 runs, few prompts and steps, so the whole command takes about a minute.
FAST = ["--preset", "tiny", "--only", "jsd", "--sft_epochs", "0.02",
        "--dataset_args", "--num_prompts 24 --num_eval_prompts 6 --max_new_tokens 12",
        "--train_args", "--max_steps 6 --save_steps 2 --max_length 64 --max_eval_pairs 8",
        "--generate_args", "--samples 2 --max_new_tokens 8",
        "--evaluate_args", "--max_test_pairs 8"]  # fmt: skip


def reproduce(root, env, log, *extra):
    """Start reproduce.py; its output goes to `log` (a pipe could fill up and stall it). An `--only` in
    `extra` replaces FAST's (a flag given twice is refused)."""
    fast = [*FAST[:2], *FAST[4:]] if "--only" in extra else FAST  # FAST[2:4] is its `--only jsd`
    command = [sys.executable, "reproduce.py", *fast, "--results_dir", str(root), *extra]
    with open(log, "w") as handle:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)


def finish(process, log) -> str:
    assert process.wait(timeout=600) == 0, Path(log).read_text()[-3000:]
    return Path(log).read_text()


@pytest.mark.slow
def test_killed_sweep_finishes_the_rest_and_a_rerun_trains_nothing(tmp_path):
    """One run at a time: killed between two runs, the finished one is kept, the other resumes."""
    env = {**os.environ, "FDPO_MODELS_DIR": str(tmp_path / "models")}
    root = tmp_path / "tiny"
    runs = root / "runs"

    # Kill the sweep once the first run has finished and the second has started.
    log = tmp_path / "log.txt"
    process = reproduce(root, env, log, "--stack_size", "1")
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        if (runs / "gpt_imdb_jsd_beta1" / "manifest.json").is_file() and (
            runs / "gpt_imdb_jsd_beta1e-1"
        ).is_dir():
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (root / "eval" / "results.csv").exists(), "the kill should land mid-sweep"
    first = (runs / "gpt_imdb_jsd_beta1" / "manifest.json").stat().st_mtime_ns

    output = finish(reproduce(root, env, log, "--stack_size", "1"), log)
    assert "run gpt_imdb_jsd_beta1: cached" in output
    assert (runs / "gpt_imdb_jsd_beta1" / "manifest.json").stat().st_mtime_ns == first
    for name in ("gpt_imdb_jsd_beta1", "gpt_imdb_jsd_beta1e-1"):
        state = json.loads((runs / name / "trainer_state.json").read_text())
        assert state["global_step"] == 6
    table = (root / "eval" / "results.csv").read_text()
    assert table.count("\n") == 1 + 3  # header, SFT and the two runs
    assert (root / "results.ipynb").is_file() and (root / "figures" / "reliability.png").is_file()
    executed = json.loads((root / "results.ipynb").read_text())
    assert executed["metadata"]["language_info"]["name"] == "python"  # as nbclient's execute() records it
    record = json.loads((root / "reproduce.json").read_text())
    assert record["wall_time_s"] >= 0
    stages = ["base_policy", "dataset", "train", "generate", "evaluate", "notebook"]
    assert list(record["stage_s"]) == stages and all(seconds >= 0 for seconds in record["stage_s"].values())

    # Everything is cached now: the plan says so and no run is touched.
    output = finish(reproduce(root, env, log, "--stack_size", "1", "--dry-run"), log)
    assert output.count("cached") == 3  # the base policy and both runs
    stamps = {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file()}
    finish(reproduce(root, env, log, "--stack_size", "1"), log)
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file()} == stamps


@pytest.mark.slow
def test_killed_stacked_sweep_resumes_its_stack_and_a_rerun_trains_nothing(tmp_path):
    """Stacked (the default): killed after the stack's first checkpoint, the same stack resumes; no run is
    trained twice or lost."""
    env = {**os.environ, "FDPO_MODELS_DIR": str(tmp_path / "models")}
    root, log = tmp_path / "tiny", tmp_path / "log.txt"
    process = reproduce(root, env, log)
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        if any(root.glob("stacks/*/checkpoint-*/trainer_state.json")):
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not any(root.glob("runs/*/manifest.json")), "the kill should land while the stack trains"
    (stack,) = [path.parent for path in root.glob("stacks/*/members.json")]

    finish(reproduce(root, env, log), log)
    assert [path.parent for path in root.glob("stacks/*/members.json")] == [stack]  # resumed, not restarted
    for name in ("gpt_imdb_jsd_beta1", "gpt_imdb_jsd_beta1e-1"):
        assert json.loads((root / "runs" / name / "trainer_state.json").read_text())["global_step"] == 6
    assert (root / "eval" / "results.csv").read_text().count("\n") == 1 + 3
    output = finish(reproduce(root, env, log, "--dry-run"), log)
    assert output.count("cached") == 3
    stamps = {p: p.stat().st_mtime_ns for p in root.glob("runs/**/*") if p.is_file()}
    finish(reproduce(root, env, log), log)
    assert {p: p.stat().st_mtime_ns for p in root.glob("runs/**/*") if p.is_file()} == stamps


def test_bad_only_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "reproduce.py", "--preset", "tiny", "--only", "ipo", "--dry-run"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --only: unknown run family or name ipo")


def readme_divergence_module() -> str:
    """The README's example module of a divergence of your own, as the README shows it."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.index("# my_divergences.py")
    return readme[start : readme.index("```", start)]


def test_a_bad_divergence_of_your_own_is_one_line_before_anything_runs(tmp_path):
    result = subprocess.run([sys.executable, "reproduce.py", "--preset", "tiny", "--divergences", "nowhere:f",
                             "--results_dir", str(tmp_path / "r"), "--dry-run"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: divergence 'nowhere:f': cannot import module")
    )
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_the_readme_divergence_of_your_own_reaches_every_run_of_a_sweep(tmp_path):
    """Side by side, each run is a process of its own: every one of them must import the user's module."""
    mine = tmp_path / "mine"
    mine.mkdir()
    imports = tmp_path / "imports.txt"
    (mine / "my_divergences.py").write_text(
        readme_divergence_module()
        + f"\nimport os\nwith open({str(imports)!r}, 'a') as _log:\n    _log.write(f'{{os.getpid()}}\\n')\n"
    )
    paths = [str(mine), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "FDPO_MODELS_DIR": str(tmp_path / "models"), "PYTHONPATH": os.pathsep.join(paths)}
    root, log = tmp_path / "tiny", tmp_path / "log.txt"
    spec = "my_divergences:kl_plus_chi2"
    finish(
        reproduce(
            root,
            env,
            log,
            "--divergences",
            spec,
            "--only",
            "kl_plus_chi2",
            "--parallel_runs",
            "2",
            "--stack_size",
            "1",
        ),
        log,
    )
    names = sorted(path.name for path in (root / "runs").iterdir())
    assert names == ["gpt_imdb_kl_plus_chi2_beta1", "gpt_imdb_kl_plus_chi2_beta1e-1"]
    for name in names:
        assert (
            json.loads((root / "runs" / name / "run_config.json").read_text())["training"]["divergence"]
            == spec
        )
        assert json.loads((root / "runs" / name / "trainer_state.json").read_text())["global_step"] == 6
    # reproduce.py itself and each of the two training runs: at least three processes imported it.
    assert len(set(imports.read_text().split())) >= 3
    table = (root / "eval" / "results.csv").read_text()
    assert all(name in table for name in names)
    # Editing the function's code (not its name) makes its runs stale.
    source = (mine / "my_divergences.py").read_text()
    (mine / "my_divergences.py").write_text(source.replace("clamp(max=50.0)", "clamp(max=49.0)"))
    output = finish(
        reproduce(root, env, log, "--divergences", spec, "--only", "kl_plus_chi2", "--dry-run"), log
    )
    assert output.count("retrain (config changed: divergence_source_sha256") == 2, output[-2000:]


@pytest.fixture
def one_thread(monkeypatch):
    """One thread in this process and in the runs it starts: float32 sums then add up in the same order."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_runs_side_by_side_match_runs_one_after_another(tiny_model_dir, tmp_path, one_thread):
    from safetensors.torch import load_file

    from train_dpo.sweep import RunSpec, run_flags, train_runs

    common = ["--model", str(tiny_model_dir), "--dataset", scored_file(), "--max_train_pairs", "32", "--max_eval_pairs", "8", "--max_length", "64",
              "--max_steps", "3", "--save_steps", "2", "--logging_steps", "1"]  # fmt: skip
    specs = [RunSpec("sigmoid", "reverse_kl", 0.1), RunSpec("sigmoid", "jsd", 1.0)]
    weights = {}
    for mode, parallel in (("one_after_another", 1), ("side_by_side", 2)):
        cache = ["--ref_logps_cache", str(tmp_path / mode / "ref_logps")]
        jobs = [(run_dir := tmp_path / mode / spec.name(False), run_flags(spec, [*common, *cache], 5e-3, run_dir), {"h": 1})
                for spec in specs]  # fmt: skip
        train_runs(jobs, print, parallel=parallel)
        assert all(
            json.loads((run_dir / "manifest.json").read_text())["inputs"] == {"h": 1}
            for run_dir, _, _ in jobs
        )
        # Filled once, before the runs: one file for the training pairs, one for the held-out ones.
        assert len(list((tmp_path / mode / "ref_logps").glob("*.npz"))) == 2
        weights[mode] = [load_file(run_dir / "adapter_model.safetensors") for run_dir, _, _ in jobs]
    for sequential, parallel in zip(weights["one_after_another"], weights["side_by_side"], strict=True):
        for key in sequential:
            torch.testing.assert_close(parallel[key], sequential[key], rtol=0, atol=0)


@pytest.mark.slow
def test_a_failed_side_by_side_run_ends_the_sweep_in_one_line(tiny_model_dir, tmp_path, capfd):
    """Its own error line, then one line naming the run; the exit status is the run's own."""
    from common.errors import exits_cleanly
    from train_dpo.sweep import train_runs

    common = ["--model", str(tiny_model_dir), "--dataset", scored_file(), "--max_train_pairs", "16", "--max_eval_pairs", "8", "--max_length", "64",
              "--max_steps", "2", "--save_strategy", "no"]  # fmt: skip
    jobs = [(tmp_path / name, [*common, "--beta", beta, "--output_dir", str(tmp_path / name)], {})
            for name, beta in (("good", "0.1"), ("bad", "-1"))]  # fmt: skip
    with pytest.raises(SystemExit) as ended:
        exits_cleanly(train_runs)(jobs, print, parallel=2)
    assert ended.value.code == 2  # the bad run's InputError status
    # The run beside it may leave its progress bar mid-line, so an error can follow a bar on its line.
    errors = re.findall(r"error: [^\r\n]*", capfd.readouterr().err)
    assert len(errors) == 2, errors
    assert errors[0] == "error: --beta must be > 0, got -1.0" and "run bad failed" in errors[1], errors
    assert not (tmp_path / "bad" / "manifest.json").exists()


def test_a_run_killed_by_a_signal_fails_the_sweep_with_status_1():
    from common.errors import RunFailed

    assert RunFailed("run killed", -9).status == 1 and RunFailed("run refused", 2).status == 2


def test_ctrl_c_while_the_notebook_runs_is_one_line_and_status_130(tmp_path, monkeypatch, capfd):
    """SIGINT reaches the sweep while a cell runs: it ends as any Ctrl-C does (one line, 130), with no
    traceback from the sweep or its kernel, and the kernel is gone."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    import reproduce
    from common.errors import exits_cleanly

    kernel_pid = tmp_path / "kernel.pid"
    cell = (f"import os, signal, time\nopen({str(kernel_pid)!r}, 'w').write(str(os.getpid()))\n"
            f"os.kill({os.getpid()}, signal.SIGINT)\ntime.sleep(60)")  # fmt: skip
    monkeypatch.setattr(nbformat, "read", lambda *args, **kwargs: new_notebook(cells=[new_code_cell(cell)]))
    started = time.monotonic()
    with pytest.raises(SystemExit) as ended:
        exits_cleanly(reproduce.execute_notebook)(tmp_path / "tiny", "tiny", "study")
    assert ended.value.code == 130 and time.monotonic() - started < 50  # not after the cell's sleep
    err = capfd.readouterr().err
    assert "Traceback" not in err, err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        "error: interrupted; finished work and the last checkpoint are kept, rerun the command to resume"
    ], err
    with pytest.raises(ProcessLookupError):
        os.kill(int(kernel_pid.read_text()), 0)
    assert not (tmp_path / "tiny" / "results.ipynb").exists()
