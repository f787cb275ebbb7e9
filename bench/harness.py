"""What the benchmarks share: the models they run on, clocks that wait for the GPU, memory peaks, and how a
script ends: with one error line for a bad flag, and on Ctrl-C, SIGTERM or a failure with its child
processes stopped and its scratch folder removed (`stops_cleanly`, `scratch_folder`, `stop_process`)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

import config
from common import imdb
from common.errors import exits_cleanly, report
from common.tiny import ensure_tiny_gpt2

# GPT-2 small (124 M parameters), the study's policy; random weights, since speed does not depend on them.
GPT2_SMALL = {"n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 1024, "vocab_size": 50257}

# Dense bf16 matrix peak from the data sheets, in TFLOP/s: the denominator of model FLOPs utilisation.
BF16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}

GRACE_S = 30.0  # seconds a stopped child process has after SIGTERM to save and exit, before SIGKILL
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")  # what stops a script the way Ctrl-C does


def preference_pairs() -> str:
    """The pairs the benchmarks train on: the study's 3,612 (its scored file, paired on the fly) when
    FDPO_DATA_DIR names a local copy, else the dataset `dataset/main.py` builds by default."""
    folder = imdb.local_data_dir()
    return str(folder / config.SCORED_FILE) if folder else str(config.DATASET_DIR / "dataset" / "hf")


def model_dir(name: str, scratch: Path) -> str:
    """`tiny` (the offline tiny GPT-2), `gpt2-124m` (GPT-2 small, random weights), or a dir / Hub id."""
    if name == "tiny":
        return str(ensure_tiny_gpt2())
    if name != "gpt2-124m":
        return name
    out = scratch / "gpt2-124m"
    if not (out / "model.safetensors").is_file():
        tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_gpt2())  # ids < 2,048 fit GPT-2's vocabulary
        torch.manual_seed(0)
        ids = {f"{kind}_token_id": tokenizer.eos_token_id for kind in ("bos", "eos", "pad")}
        GPT2LMHeadModel(GPT2Config(**GPT2_SMALL, **ids)).save_pretrained(out)
        tokenizer.save_pretrained(out)
    return str(out)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> float:
    """Seconds `fn()` takes, GPU work included."""
    synchronize()
    start = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - start


def reset_gpu_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def gpu_peak_gib() -> float | None:
    """Most GPU memory allocated since the last reset, in GiB (None on CPU)."""
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def peak_rss_gib() -> float:
    """This process's peak resident memory so far, in GiB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def bf16_peak_flops() -> float | None:
    """The GPU's dense bf16 peak in FLOP/s, when it is one we know."""
    name = device_name()
    return next((tflops * 1e12 for chip, tflops in BF16_PEAK_TFLOPS.items() if chip in name), None)


def base_parameters(model: str) -> int:
    """Parameters of a causal LM (tied embeddings counted once), from its config alone."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model)).num_parameters()


def frozen_base_mfu(parameters: int, tokens_per_s: float | None) -> float | None:
    """Model FLOPs utilisation of LoRA training over a frozen base: 4 x parameters x tokens/s (a forward
    pass and the input gradients; the base has no weight gradient) over the GPU's dense bf16 peak. None
    off a GPU whose peak we know."""
    peak = bf16_peak_flops()
    return round(4 * parameters * tokens_per_s / peak, 4) if peak and tokens_per_s else None


def trained_tokens(run_dirs) -> int:
    """Tokens the runs' training saw (prompt and answers, padding excluded), from their logs."""
    total = 0
    for run_dir in run_dirs:
        history = json.loads((Path(run_dir) / "trainer_state.json").read_text())["log_history"]
        total += max((entry.get("num_tokens", 0) for entry in history), default=0)
    return total


def loop_seconds(run_dirs, stacks_dir: Path) -> float:
    """Seconds the runs spent in training loops (`train_runtime`), without each one's set-up and split:
    a stack's once, from its final/stack.json; a run trained alone from its train_results.json."""
    wanted = {Path(run_dir).resolve() for run_dir in run_dirs}
    seconds = 0.0
    for path in Path(stacks_dir).glob("*/final/stack.json"):
        record = json.loads(path.read_text())
        members = {Path(run["output_dir"]).resolve() for run in record["runs"]}
        if members & wanted:
            seconds += record["runs"][0]["train"]["train_runtime"]
            wanted -= members
    for run_dir in wanted:
        seconds += json.loads((run_dir / "train_results.json").read_text())["train_runtime"]
    return seconds


class Terminated(BaseException):
    """SIGTERM or SIGHUP, raised where the script is, so that its `finally` blocks and context managers run
    (the signal's default action ends the process at once, its children and scratch folder left behind).
    A BaseException, as KeyboardInterrupt is: no `except Exception` swallows it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def signals_unwind() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt and SIGTERM or SIGHUP `Terminated`, once: a second signal while the
    script stops is ignored, so that stopping its children and removing its scratch folder finish. A
    signal the caller ignores (`nohup`, a background job's SIGINT) stays ignored."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread sets handlers
        yield
        return
    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        if stopping:
            return
        stopping = True
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)

    wanted = [getattr(signal, name) for name in STOP_SIGNALS if hasattr(signal, name)]
    previous = {signum: signal.getsignal(signum) for signum in wanted}
    for signum, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def stops_cleanly(main: Callable[..., None]) -> Callable[..., None]:
    """A bench script's entry point: a bad flag or file is one `error:` line with status 2
    (`exits_cleanly`); Ctrl-C, SIGTERM and SIGHUP unwind it, so that it stops its children and removes
    its scratch folder on the way out, and end it in one line with status 130 (Ctrl-C) or 128 + the
    signal's number."""
    wrapped = exits_cleanly(main)

    @functools.wraps(main)
    def entry(*args, **kwargs) -> None:
        with signals_unwind():
            try:
                wrapped(*args, **kwargs)
            except Terminated as stopped:
                report(
                    f"stopped by {stopped}; its child processes stopped, its scratch folder removed",
                    128 + stopped.signum,
                )

    return entry


def stop_process(process: subprocess.Popen, grace_s: float | None = None, group: bool = False) -> None:
    """Stop a child process: SIGTERM, then SIGKILL if it has not exited after `grace_s` seconds (default
    GRACE_S); waited for, so it leaves no zombie. `group`: the signals go to its process group (one it
    leads, started with `start_new_session=True`), so what it started stops with it."""
    grace_s = GRACE_S if grace_s is None else grace_s

    def send(signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(process.pid, signum)
            else:
                process.send_signal(signum)

    if process.poll() is None or group:  # a group may outlive its leader
        send(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        process.wait()
    if group:  # members that ignored SIGTERM and outlived the leader
        send(signal.SIGKILL)


def stop_children(keep: set[int] = frozenset(), grace_s: float | None = None) -> None:
    """Stop every process this one started, at any depth, but those in `keep`: SIGTERM, then SIGKILL
    after `grace_s` seconds (default GRACE_S). What a library started (a sweep's runs side by side) is
    stopped too, where no handle of ours reaches it."""
    grace_s = GRACE_S if grace_s is None else grace_s
    children = [child for child in psutil.Process().children(recursive=True) if child.pid not in keep]
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=grace_s)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(alive, timeout=5)


@contextlib.contextmanager
def scratch_folder(prefix: str = "bench-") -> Iterator[Path]:
    """A temporary folder for a script's models and runs, removed however the script ends. On a failure,
    Ctrl-C or SIGTERM (under `stops_cleanly`) the processes it started meanwhile are stopped first: they
    may still be writing into the folder."""
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield folder
    except BaseException:
        stop_children(keep=before)
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)
