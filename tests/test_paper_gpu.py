"""The prepared GPU check (`bench/paper_gpu.py`), run in its `--quick` mode on the CPU: its stand-ins are
the study's layouts, and its report has every stage of the paper preset, the training rates, the device
and the library versions. Speed is not asserted (docs/performance.md's business)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, RobertaConfig, RobertaForSequenceClassification

from bench.standins import ROBERTA_LARGE

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = {"torch", "transformers", "trl", "peft", "datasets", "accelerate", "huggingface_hub"}


def positive(value) -> bool:
    return isinstance(value, (int, float)) and value > 0


def test_the_full_size_standins_have_the_study_models_sizes():
    """GPT-2 small (as gpt2-imdb) and RoBERTa-large with a two-label head (as sentiment-roberta-large-english),
    counted on the meta device: the full-size stand-ins are built only where a GPU runs the check."""
    with torch.device("meta"):
        gpt2 = GPT2LMHeadModel(GPT2Config())
        roberta = RobertaForSequenceClassification(RobertaConfig(**ROBERTA_LARGE, num_labels=2))
    assert gpt2.config.vocab_size == 50_257 and gpt2.num_parameters() == 124_439_808
    assert roberta.num_parameters() == 355_361_794
    assert (
        roberta.config.num_hidden_layers,
        roberta.config.hidden_size,
        roberta.config.num_attention_heads,
    ) == (24, 1024, 16)


@pytest.mark.slow
def test_the_quick_gpu_check_reports_every_stage_device_and_versions(tmp_path, data_dir):
    out, hub = tmp_path / "check", tmp_path / "hub"
    command = [
        sys.executable,
        str(ROOT / "bench" / "paper_gpu.py"),
        "--quick",
        "--data_dir",
        str(data_dir),
        "--out",
        str(out),
        "--standins_dir",
        str(hub),
        "--minutes",
        "0",
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "paper preset:" in done.stdout and "frontier grid:" in done.stdout

    assert not list(hub.rglob("*.safetensors")) and len(list(hub.rglob("pytorch_model.bin"))) == 3
    gold = json.loads((hub / "sentiment-roberta-large-english" / "config.json").read_text())
    assert gold["model_type"] == "roberta" and gold["id2label"] == {"0": "NEGATIVE", "1": "POSITIVE"}

    report = json.loads((out / "paper_gpu.json").read_text())
    stages = report["paper"]["stage_s"]
    assert set(stages) == {"dataset", "train", "generate", "evaluate", "notebook"}
    assert all(positive(seconds) for seconds in stages.values()), stages
    assert report["paper"]["exit_status"] == 0 and (out / "paper" / "eval" / "results.csv").is_file()
    train = report["paper"]["train"]
    assert train["runs"] == 2 and train["steps_per_run"] == 2 and positive(train["tokens_per_s"])
    assert positive(train["projected_full_length_s"])
    # One run of the paper preset's online-RL baseline, on the prompts of the pairs the sweep built.
    assert "RLOO run (beta 0.1):" in done.stdout
    rloo = report["rloo"]
    assert rloo["exit_status"] == 0 and not rloo["cut_at_deadline"] and positive(rloo["wall_s"])
    online = rloo["train"]
    assert online["steps"] == 2 and online["completions_per_step"] == 4 and positive(online["loop_s"])
    assert online["full_length_steps"] == 180 and online["grid_runs"] == 4 * 5
    assert online["projected_grid_s"] == pytest.approx(20 * online["projected_full_length_s"], abs=20)
    assert online["projected_full_length_s"] >= rloo["wall_s"] - online["loop_s"] - 1
    recorded = json.loads((out / "rloo" / "run_config.json").read_text())
    assert recorded["training"]["loss_type"] == "rloo" and recorded["training"]["beta"] == 0.1
    assert recorded["script"]["model"] == str(hub / "gpt2-imdb")
    frontier = report["frontier"]["train"]
    assert frontier["mode"] == "stacked by 3" and frontier["steps_per_run"] == 2
    assert positive(frontier["tokens_per_s"]) and positive(frontier["projected_grid_full_length_s"])
    assert isinstance(report["device"], str) and report["device"]
    assert set(report["versions"]) == VERSIONS and all(report["versions"].values())
    if not torch.cuda.is_available():
        assert report["paper"]["gpu_memory_peak_gib"] is None and train["mfu"] is None


def test_a_negative_run_count_is_refused_before_anything_runs(tmp_path):
    """`--frontier_runs -3` trained all but three of the frontier grid's runs; now, as its own process,
    status 2, one `error:` line naming the flag, and no `--out` folder."""
    out = tmp_path / "check"
    # No data: were the count taken, the check would stop at its data, not start the paper preset.
    command = [sys.executable, str(ROOT / "bench" / "paper_gpu.py"), "--out", str(out),
               "--data_dir", str(tmp_path / "no-data"), "--frontier_runs", "-3"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines() == [
        "error: argument --frontier_runs: expected an integer >= 1, got -3"
    ]
    assert not out.exists()


# bench/paper_gpu.py with its parts replaced: stand-ins without weights, and a first part that starts a
# process of its own, writes both pids and sleeps (ignoring SIGTERM if asked, so only SIGKILL stops it).
DRIVER = """
import sys
from pathlib import Path

import bench.harness
import bench.paper_gpu as paper_gpu

pids, ignore_term, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
bench.harness.GRACE_S = 3.0


def build_standins(folder, tiny, data_dir):
    folder.mkdir(parents=True, exist_ok=True)
    return {role: folder / role for role in ("policy", "reward", "gold_reward")}


SLEEPER = '''
import os, signal, subprocess, sys, time
if sys.argv[2] == "1":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by the process it starts
started = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(sys.argv[1] + ".part", "w") as out:
    out.write(f"{os.getpid()} {started.pid}")
os.replace(sys.argv[1] + ".part", sys.argv[1])
time.sleep(600)
'''
paper_gpu.build_standins = build_standins
paper_gpu.base_parameters = paper_gpu.classifier_parameters = lambda model: 1
paper_gpu.paper_command = lambda args, root: [sys.executable, "-c", SLEEPER, pids, ignore_term]
paper_gpu.cli(argv)
"""


def running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie, ended but not yet reaped, is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def stopped_in_time(pid: int, seconds: float = 10.0) -> bool:
    """Whether `pid` is gone within `seconds`."""
    deadline = time.monotonic() + seconds
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not running(pid)


@pytest.mark.parametrize(
    ("stop", "ignores_sigterm", "status", "line"),
    [
        (signal.SIGINT, True, 130, "error: interrupted"),
        (signal.SIGTERM, False, 143, "error: stopped by SIGTERM"),
    ],
    ids=["ctrl-c, a part that ignores SIGTERM", "sigterm"],
)
def test_stopping_the_check_stops_its_part_and_removes_its_scratch_folder(
    stop, ignores_sigterm, status, line, tmp_path, data_dir
):
    """Its parts run in sessions of their own, out of reach of a signal to its group: before, a stopped
    check left its grid.py or reproduce.py running, and its scratch folder behind."""
    scratch, pids = tmp_path / "tmp", tmp_path / "pids"
    scratch.mkdir()
    argv = ["--out", str(tmp_path / "check"), "--data_dir", str(data_dir), "--minutes", "0"]
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(pids), "1" if ignores_sigterm else "0", *argv],
        cwd=ROOT, env={**os.environ, "TMPDIR": str(scratch)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    part = started = None
    try:
        deadline = time.monotonic() + 240
        while not pids.exists() and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pids.exists(), driver.communicate(timeout=60)
        part, started = map(int, pids.read_text().split())
        assert running(part) and running(started)
        assert len(list(scratch.glob("paper-gpu-*/standins"))) == 1  # its scratch folder, in use
        driver.send_signal(stop)
        _, err = driver.communicate(timeout=120)
        assert driver.returncode == status, err[-3000:]
        assert err.strip().splitlines()[-1].startswith(line) and "Traceback" not in err, err[-3000:]
        assert stopped_in_time(part) and stopped_in_time(started)
        assert not list(scratch.glob("paper-gpu-*"))
    finally:  # whatever failed, nothing of this test is left running
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        for pid in (part, started):
            if pid is not None and running(pid):
                os.kill(pid, signal.SIGKILL)


def test_the_projection_counts_the_frontier_grid_as_reproduce_py_runs_it():
    import reproduce
    from bench.paper_gpu import FRONTIER_RUNS
    from train_dpo.sweep import frontier_grid

    assert len(frontier_grid(seeds=reproduce.DEFAULT_SEEDS["frontier"])) == FRONTIER_RUNS
