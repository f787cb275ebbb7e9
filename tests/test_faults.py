"""Faults while a stage writes its output: SIGKILL at seeded points, a full disk, a refused write.

A killed stage (scoring, SFT, DPO training) is rerun and must end byte-identical to an uninterrupted
run, resuming from its manifest or checkpoint: nothing lost, nothing written twice. A write that fails
(ENOSPC, EACCES; simulated, since tests run as root) must end the command with one `error:` line naming
the file and the reason, and leave the previous output byte-identical with no temporary file behind.
"""

import builtins
import errno
import functools
import importlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from fnmatch import fnmatch
from pathlib import Path

import peft.peft_model
import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import save
from synthetic import scored_file

from common import errors
from common.appendlog import AppendLog
from common.atomic import staging_dir, write_atomic
from dataset.main import cli as dataset_cli
from train_dpo.sft import train_sft
from train_dpo.train import cli as train_cli
from train_dpo.train import parse_args, train

# Killed stages run in processes forked from a server that imported the entry points once: a fresh
# interpreter would spend ~10 s per kill on imports. The server only imports, so forking it is safe.
ENTRY_POINTS = {"dataset": "dataset.main", "sft": "train_dpo.sft", "train": "train_dpo.train"}
FORKSERVER = multiprocessing.get_context("forkserver")
FORKSERVER.set_forkserver_preload(list(ENTRY_POINTS.values()))


def run_stage(stage: str, argv: list[str], log: str, spot: str | None = None, n: int = 0, how: str = "kill"):
    """The child process: run `stage`'s CLI with its output in `log`.

    With `spot` ("module:attribute"), the n-th call of that attribute SIGKILLs the process before the call
    runs, so the kill lands exactly in the window under test. With how="tear" (for os.fsync), the file
    being synced first loses its last 10 bytes, as if the kill had cut its write short.
    """
    handle = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(handle, 1)
    os.dup2(handle, 2)
    if spot is not None:
        module, _, qualname = spot.partition(":")
        owner = importlib.import_module(module)
        *parents, name = qualname.split(".")
        for parent in parents:
            owner = getattr(owner, parent)
        original, calls = getattr(owner, name), []

        @functools.wraps(original)
        def dying(*args, **kwargs):
            calls.append(spot)
            if len(calls) == n:
                if how == "tear":
                    os.ftruncate(args[0], os.fstat(args[0]).st_size - 10)
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)

        setattr(owner, name, dying)
    importlib.import_module(ENTRY_POINTS[stage]).cli(argv)


def killed_on_call(stage: str, argv: list[str], log: Path, spot: str, n: int, how: str = "kill") -> None:
    """Run a stage until the n-th call of `spot` kills it; fail if it finished or died otherwise."""
    process = FORKSERVER.Process(target=run_stage, args=(stage, argv, str(log), spot, n, how))
    process.start()
    process.join(timeout=300)
    assert process.exitcode == -signal.SIGKILL, Path(log).read_text()[-3000:]


def killed_when(stage: str, argv: list[str], log: Path, ready, delay: float) -> None:
    """Start a stage, wait until `ready()` (progress on disk), then SIGKILL it `delay` seconds later."""
    process = FORKSERVER.Process(target=run_stage, args=(stage, argv, str(log)))
    process.start()
    deadline = time.time() + 300
    while time.time() < deadline and process.is_alive() and not ready():
        time.sleep(0.02)
    assert ready() or not process.is_alive(), "no progress on disk to kill after"
    time.sleep(delay)
    process.kill()
    process.join()
    assert process.exitcode == -signal.SIGKILL, (
        "the stage ended before the kill: " + Path(log).read_text()[-3000:]
    )


def leftovers(folder: Path) -> list[str]:
    """Temporary files and folders of atomic writes (their names start with a dot) under `folder`."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- scoring: the study's answers (6 per prompt) scored by a tiny classifier in batches of 64 prompts


def score_flags(out_dir: Path, classifier: Path) -> list[str]:
    return ["--stages", "score", "--out_dir", str(out_dir), "--reward_model", str(classifier)]


def with_generations(out_dir: Path, data_dir: Path, prompts: int = 6 * 64) -> Path:
    """`out_dir` with a finished generate stage: the study's answers to its first `prompts` prompts."""
    records = json.loads((data_dir / "scored_gpt_dataset.json").read_text())[:prompts]
    log = AppendLog(out_dir / "generations.jsonl", {"source": "the study's scored_gpt_dataset.json"})
    log.open()
    log.append({"idx": i, "prompt": r["prompt"], "answers": r["answers"]} for i, r in enumerate(records))
    log.finish()
    return out_dir


@pytest.fixture(scope="module")
def scored(data_dir, tiny_classifier_dir, tmp_path_factory) -> Path:
    """The uninterrupted score stage."""
    out = with_generations(tmp_path_factory.mktemp("scored") / "straight", data_dir)
    dataset_cli(score_flags(out, tiny_classifier_dir))
    return out


def scored_state(out_dir: Path) -> dict:
    return json.loads((out_dir / "scored.jsonl.state.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["timed", "torn_batch", "stale_manifest"])
def test_scoring_killed_resumes_to_the_same_bytes(fault, scored, data_dir, tiny_classifier_dir, tmp_path):
    out = with_generations(tmp_path / "killed", data_dir)
    argv = score_flags(out, tiny_classifier_dir)
    rng = random.Random(f"score-{fault}")
    state_path = out / "scored.jsonl.state.json"
    if fault == "timed":  # from outside, a moment after a seeded number of batches (of 6) is recorded
        batches = rng.randint(1, 2)

        def ready():
            return state_path.is_file() and scored_state(out)["records"] >= 64 * batches

        killed_when("dataset", argv, tmp_path / "killed.log", ready, rng.uniform(0.0, 0.2))
        assert not scored_state(out)["complete"]
    else:
        batch = rng.randint(2, 5)  # the seeded batch (of 6) the kill lands in
        # os.fsync's calls: the fresh manifest (1), then per batch k its records (2k) and manifest (2k + 1).
        if fault == "torn_batch":  # the batch's records cut off mid-line, the manifest one batch behind
            killed_on_call("dataset", argv, tmp_path / "killed.log", "os:fsync", 2 * batch, how="tear")
            assert not (out / "scored.jsonl").read_bytes().endswith(b"\n")
        else:  # the batch's records complete, its manifest written to the temp file but not renamed
            killed_on_call("dataset", argv, tmp_path / "killed.log", "os:fsync", 2 * batch + 1)
            assert (out / "scored.jsonl").read_text().count("\n") == 64 * batch
            assert (out / ".scored.jsonl.state.json.tmp").is_file()
        assert scored_state(out)["records"] == 64 * (batch - 1)

    dataset_cli(argv)
    for name in ("scored.jsonl", "scored.jsonl.state.json"):
        assert (out / name).read_bytes() == (scored / name).read_bytes()
    assert leftovers(out) == []


# --- SFT: the tiny GPT-2 trained from scratch on a slice of the study's text; cached only once finished

SFT_EPOCHS = 0.25  # 10 steps of 32 packed 128-token rows, ~2 s


@pytest.fixture(scope="module")
def sft_model(sft_data, tmp_path_factory) -> Path:
    return train_sft(tmp_path_factory.mktemp("sft") / "straight", sft_data, epochs=SFT_EPOCHS)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["training", "before_the_final_rename"])
def test_sft_killed_then_rerun_gives_the_same_model(fault, sft_model, sft_data, tmp_path):
    out = tmp_path / "tiny-gpt2-sft"
    argv = ["--out_dir", str(out), "--data_dir", str(sft_data), "--epochs", str(SFT_EPOCHS)]
    if fault == "training":  # from outside, seeded seconds after the model was initialised

        def ready():
            return any(tmp_path.glob(".tiny-gpt2-sft-*/init/model.safetensors"))

        killed_when("sft", argv, tmp_path / "killed.log", ready, random.Random("sft").uniform(0.0, 0.5))
    else:  # the trained model and its manifest are staged, not yet moved into place
        killed_on_call("sft", argv, tmp_path / "killed.log", "train_dpo.sft:replace_dir", 1)
        assert any(tmp_path.glob(".tiny-gpt2-sft-*/final/sft_manifest.json"))
    assert not out.exists()  # nothing half-made where the model belongs

    train_sft(out, sft_data, epochs=SFT_EPOCHS)
    assert not list(tmp_path.glob(".tiny-gpt2-sft-*"))  # the killed run's scratch folder is gone too
    assert (out / "model.safetensors").read_bytes() == (sft_model / "model.safetensors").read_bytes()
    manifest, expected = (json.loads((d / "sft_manifest.json").read_text()) for d in (out, sft_model))
    assert {k: v for k, v in manifest.items() if k != "runtime_s"} == {
        k: v for k, v in expected.items() if k != "runtime_s"
    }


# --- DPO training: 8 steps, a checkpoint every 2, resumed with --resume from the last complete one


def dpo_flags(model_dir: Path, out_dir: Path, *extra: str) -> list[str]:
    return ["--model", str(model_dir), "--dataset", scored_file(), "--output_dir", str(out_dir), "--divergence", "jsd", "--beta", "0.1",
            "--max_train_pairs", "64", "--max_eval_pairs", "8", "--max_length", "96", "--learning_rate", "5e-3",
            "--max_steps", "8", "--save_steps", "2", "--logging_steps", "1", "--seed", "0", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def dpo_run(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dpo") / "straight"
    train(*parse_args(dpo_flags(tiny_model_dir, out)))
    return out


def logged_losses(run_dir: Path) -> list[tuple[int, float]]:
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    return [(entry["step"], entry["loss"]) for entry in history if "loss" in entry]


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["timed", "checkpoint_without_state", "final_save"])
def test_dpo_killed_resumes_to_the_same_weights(fault, dpo_run, tiny_model_dir, tmp_path):
    out = tmp_path / "killed"
    argv = dpo_flags(tiny_model_dir, out, "--resume", "true")
    rng = random.Random(f"dpo-{fault}")
    if fault == "timed":  # from outside, a moment after a seeded checkpoint is complete
        step = rng.choice([2, 4])

        def ready():
            return (out / f"checkpoint-{step}" / "trainer_state.json").is_file()

        killed_when("train", argv, tmp_path / "killed.log", ready, rng.uniform(0.0, 0.1))
    elif fault == "checkpoint_without_state":  # the Trainer writes a checkpoint's trainer_state.json last
        step = 2 * rng.randint(2, 3)
        spot = "transformers.trainer_callback:TrainerState.save_to_json"
        killed_on_call("train", argv, tmp_path / "killed.log", spot, step // 2)
        assert (out / f"checkpoint-{step}" / "optimizer.pt").is_file()
        assert not (out / f"checkpoint-{step}" / "trainer_state.json").exists()
    else:  # peft writes adapter_model.safetensors once per checkpoint (4), then for the final save
        killed_on_call("train", argv, tmp_path / "killed.log", "peft.peft_model:safe_save_file", 5)
        assert (out / "checkpoint-8" / "trainer_state.json").is_file()
    assert not (out / "adapter_model.safetensors").exists()

    train(*parse_args(argv))
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (out / name).read_bytes() == (dpo_run / name).read_bytes()
    assert logged_losses(out) == logged_losses(dpo_run)  # every step logged once, with the same loss
    assert [step for step, _ in logged_losses(out)] == list(range(1, 9))
    checkpoints = sorted(p.name for p in out.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-2", "checkpoint-4", "checkpoint-6", "checkpoint-8"]
    assert leftovers(out) == []


# --- write failures: a full disk (ENOSPC) and a refused write (EACCES)


def no_space() -> OSError:
    """What a write() on a full disk raises: ENOSPC, naming no file."""
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FullDiskFile:
    """A file object on a full disk: half of each write lands, then ENOSPC."""

    def __init__(self, handle):
        self._handle = handle

    def write(self, data):
        self._handle.write(data[: len(data) // 2])
        self._handle.flush()
        raise no_space()

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._handle.close()


def fail_writes(monkeypatch, pattern: str, code: int, skip: int = 0) -> None:
    """Writes to files whose name matches `pattern` fail with `code` (ENOSPC on write, EACCES on open),
    from the (skip + 1)-th such open on."""
    real_open, opened = builtins.open, []

    def failing_open(file, mode="r", *args, **kwargs):
        writes = any(flag in mode for flag in "wax+")
        if not (writes and isinstance(file, str | os.PathLike) and fnmatch(Path(file).name, pattern)):
            return real_open(file, mode, *args, **kwargs)
        opened.append(file)
        if len(opened) <= skip:
            return real_open(file, mode, *args, **kwargs)
        if code == errno.EACCES:
            raise PermissionError(code, os.strerror(code), str(file))
        return FullDiskFile(real_open(file, mode, *args, **kwargs))

    monkeypatch.setattr(builtins, "open", failing_open)


# What safetensors (Rust) raises on a full disk: not an OSError, the errno only in its message.
SAFETENSORS_DISK_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"


def fails_cleanly(entry_point, argv: list[str], error_line, path: Path, code: int) -> None:
    """The command ends with status 4 and one line naming `path` and the reason."""
    assert error_line(entry_point, argv, status=4) == f"error: {path}: {os.strerror(code)}"


def test_a_build_removes_only_the_scratch_folders_of_dead_builds_of_its_host(tmp_path):
    host = socket.gethostname()
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    dead = tmp_path / f".dataset-{host}-{finished.pid}-a1"
    running = tmp_path / f".dataset-{host}-{os.getpid()}-b2"
    other_host = tmp_path / f".dataset-not-{host}-{finished.pid}-c3"
    for folder in (dead, running, other_host):
        (folder / "train.jsonl").parent.mkdir()
        (folder / "train.jsonl").write_text("{}")
    with staging_dir(tmp_path / "dataset") as staging:
        assert staging.name.startswith(f".dataset-{host}-{os.getpid()}-")
        assert sorted(tmp_path.iterdir()) == sorted([running, other_host, staging])
    assert sorted(tmp_path.iterdir()) == sorted([running, other_host])


@pytest.mark.parametrize("fault", ["write_no_space", "open_no_permission", "rename_no_permission"])
def test_write_atomic_that_fails_keeps_the_old_file_and_no_temp_file(fault, tmp_path, monkeypatch):
    path = tmp_path / "prompts.json"
    path.write_text("the previous, complete file")
    code = errno.ENOSPC if fault == "write_no_space" else errno.EACCES
    if fault == "rename_no_permission":

        def refused(src, dst):
            raise PermissionError(code, os.strerror(code), str(src), str(dst))

        monkeypatch.setattr(os, "replace", refused)
    else:
        fail_writes(monkeypatch, ".prompts.json.tmp", code)
    with pytest.raises(OSError) as info:
        write_atomic(path, "the new file")
    assert (info.value.errno, info.value.filename) == (code, str(path))
    assert path.read_text() == "the previous, complete file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.json"]


@pytest.mark.parametrize(
    ("pattern", "code", "named"),
    [("scored.jsonl", errno.ENOSPC, "scored.jsonl"),
     (".scored.jsonl.state.json.tmp", errno.EACCES, "scored.jsonl.state.json")],
)  # fmt: skip
def test_score_log_that_cannot_be_written_keeps_its_records(
    pattern, code, named, scored, data_dir, tiny_classifier_dir, tmp_path, monkeypatch, error_line
):
    out = with_generations(tmp_path / "out", data_dir, prompts=192)  # three batches
    argv = score_flags(out, tiny_classifier_dir)
    expected = (scored / "scored.jsonl").read_bytes().splitlines(keepends=True)
    # The first batch is written; the second fails: its records, or the manifest that would count them
    # (written once for the empty log, then once per batch).
    fail_writes(monkeypatch, pattern, code, skip=1 if pattern == "scored.jsonl" else 2)
    fails_cleanly(dataset_cli, argv, error_line, out / named, code)
    assert (out / "scored.jsonl").read_bytes() == b"".join(expected[:64])
    assert scored_state(out)["records"] == 64 and leftovers(out) == []

    monkeypatch.undo()  # space again: the rerun finishes what is missing
    dataset_cli(argv)
    assert (out / "scored.jsonl").read_bytes() == b"".join(expected[:192])


def test_generation_log_that_cannot_be_written_keeps_its_records(
    tiny_model_dir, tmp_path, monkeypatch, error_line
):
    flags = ["--preset", "tiny", "--sft_model", str(tiny_model_dir), "--stages", "prompts,generate",
             "--num_prompts", "8", "--num_eval_prompts", "2", "--batch_size", "4", "--max_new_tokens", "4"]  # fmt: skip
    dataset_cli([*flags, "--out_dir", str(tmp_path / "straight")])
    expected = (tmp_path / "straight" / "generations.jsonl").read_bytes()
    out = tmp_path / "out"
    fail_writes(monkeypatch, "generations.jsonl", errno.ENOSPC, skip=1)
    fails_cleanly(
        dataset_cli, [*flags, "--out_dir", str(out)], error_line, out / "generations.jsonl", errno.ENOSPC
    )
    assert (out / "generations.jsonl").read_bytes() == b"".join(expected.splitlines(keepends=True)[:4])
    assert leftovers(out) == []
    monkeypatch.undo()
    dataset_cli([*flags, "--out_dir", str(out)])
    assert (out / "generations.jsonl").read_bytes() == expected


@pytest.mark.parametrize("fault", ["train.jsonl", "rename"])
def test_dataset_that_cannot_be_written_leaves_the_previous_one(
    fault, data_dir, tmp_path, monkeypatch, error_line
):
    scored_file = str(data_dir / "scored_gpt_dataset.json")
    flags = ["--stages", "pair", "--scored_file", scored_file, "--out_dir", str(tmp_path)]
    dataset_cli(flags)
    before = snapshot(tmp_path / "dataset")
    if fault == "rename":  # the staged dataset cannot be moved in, after the old one was moved aside
        real_rename = Path.rename

        def rename(self, target):
            if Path(target) == tmp_path / "dataset" and self.name.startswith(".dataset-"):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self), str(target))
            return real_rename(self, target)

        monkeypatch.setattr(Path, "rename", rename)
    else:
        fail_writes(monkeypatch, fault, errno.ENOSPC)
    code = errno.EACCES if fault == "rename" else errno.ENOSPC
    fails_cleanly(dataset_cli, [*flags, "--test_size", "0.3"], error_line, tmp_path / "dataset", code)
    assert snapshot(tmp_path / "dataset") == before
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_training_that_cannot_write_keeps_the_previous_run(tiny_model_dir, tmp_path, monkeypatch, error_line):
    flags = dpo_flags(tiny_model_dir, tmp_path / "run", "--max_steps", "2", "--save_strategy", "no")
    train(*parse_args(flags))
    before = snapshot(tmp_path / "run")
    again = [*flags, "--learning_rate", "1e-3"]

    fail_writes(monkeypatch, ".run_config.json.tmp", errno.ENOSPC)
    fails_cleanly(train_cli, again, error_line, tmp_path / "run" / "run_config.json", errno.ENOSPC)
    assert snapshot(tmp_path / "run") == before
    monkeypatch.undo()

    # The final save runs out of space part-way through the adapter's weights, and safetensors reports
    # it as it does on a full disk: not as an OSError.
    def half_saved(tensors, filename, metadata=None):
        Path(filename).write_bytes(save(tensors, metadata)[:1000])
        raise SafetensorError(SAFETENSORS_DISK_FULL)

    monkeypatch.setattr(peft.peft_model, "safe_save_file", half_saved)
    fails_cleanly(train_cli, again, error_line, tmp_path / "run", errno.ENOSPC)
    after = snapshot(tmp_path / "run")
    assert after.pop("run_config.json") != before.pop("run_config.json")  # saved before training, as ever
    assert after == before  # the earlier adapter, its config and metrics: byte-identical, nothing added


@pytest.mark.slow
def test_a_checkpoint_that_cannot_be_written_ends_in_one_line(
    tiny_model_dir, tmp_path, monkeypatch, error_line
):
    """safetensors' own disk-full error at a checkpoint: status 4 naming the run, no traceback."""

    def no_space_left(tensors, filename, metadata=None):
        raise SafetensorError(SAFETENSORS_DISK_FULL)

    monkeypatch.setattr(peft.peft_model, "safe_save_file", no_space_left)
    flags = dpo_flags(tiny_model_dir, tmp_path / "run", "--max_steps", "2", "--save_steps", "1")
    fails_cleanly(train_cli, flags, error_line, tmp_path / "run", errno.ENOSPC)
    assert not (tmp_path / "run" / "adapter_model.safetensors").exists()


def test_free_space_is_read_where_the_file_would_go(tmp_path):
    # A run directory not made yet: the space that counts is that of its nearest existing parent.
    assert errors.free_bytes(tmp_path / "run" / "checkpoint-1") == pytest.approx(
        shutil.disk_usage(tmp_path).free, abs=64 << 20
    )


@pytest.mark.slow
@pytest.mark.parametrize(("free", "code"), [(4096, errno.ENOSPC), (50 << 30, errno.EIO)])
def test_a_checkpoint_that_torch_cannot_write_ends_in_one_line(
    tiny_model_dir, tmp_path, monkeypatch, error_line, free, code
):
    """torch.save's own short-write error (a RuntimeError without errno) at a checkpoint: one line, status 4.

    The message is the one torch.save gave on a full tmpfs. The disk then counts as full when under
    1 MiB is left on it, and as failing (EIO) otherwise.
    """
    real_save = torch.save

    def short_write(obj, f, *args, **kwargs):
        if not str(f).startswith(str(tmp_path)):
            return real_save(obj, f, *args, **kwargs)
        Path(f).write_bytes(b"PK\x03\x04")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", short_write)
    monkeypatch.setattr(errors, "free_bytes", lambda path: free)  # read for real: the test above
    flags = dpo_flags(tiny_model_dir, tmp_path / "run", "--max_steps", "2", "--save_steps", "1")
    fails_cleanly(train_cli, flags, error_line, tmp_path / "run", code)
    assert not (tmp_path / "run" / "adapter_model.safetensors").exists()
