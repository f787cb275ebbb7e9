"""Real TRL training on the study's pairs with a tiny GPT-2: every study loss learns, runs resume."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from synthetic import scored_file

from train_dpo.divergences import get_divergence
from train_dpo.train import build_trainer, cli, parse_args, train
from train_dpo.trainer import FDPOConfig, format_beta, run_name

REPO = Path(__file__).resolve().parents[1]

# The five losses of the study's grid. As in the study, the f-divergences get a 10x lower learning rate:
# forward KL's f'(u) = -1/u makes its gradient grow like e^-log(u) once a rejected answer is pushed down.
STUDY_LOSSES = {
    "sigmoid": ["--loss_type", "sigmoid", "--learning_rate", "5e-3"],
    "hinge": ["--loss_type", "hinge", "--learning_rate", "5e-3"],
    "jsd": ["--divergence", "jsd", "--learning_rate", "5e-4"],
    "forward_kl": ["--divergence", "forward_kl", "--learning_rate", "5e-4"],
    "alpha": ["--divergence", "alpha", "--alpha", "0.5", "--learning_rate", "5e-4"],
}


def tiny_args(model_dir, out_dir, *extra):
    return [
        "--model", str(model_dir),
        "--dataset", scored_file(),
        "--output_dir", str(out_dir),
        "--max_train_pairs", "64",
        "--max_eval_pairs", "16",
        "--max_length", "96",
        "--learning_rate", "5e-3",
        "--beta", "0.1",
        "--save_strategy", "no",
        "--logging_steps", "4",
        "--seed", "0",
        *extra,
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("loss", list(STUDY_LOSSES))
def test_each_study_loss_raises_preference_accuracy_on_its_training_pairs(loss, tiny_model_dir, tmp_path):
    script_args, training_args = parse_args(
        tiny_args(tiny_model_dir, tmp_path, "--num_train_epochs", "3", *STUDY_LOSSES[loss])
    )
    trainer = build_trainer(script_args, training_args)
    trainable = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
    before = trainer.evaluate(trainer.train_dataset)
    trainer.train()
    after = trainer.evaluate(trainer.train_dataset)

    # Policy = reference at the start: every log-ratio is 0, so no pair is ranked right and loss is log 2.
    assert before["eval_rewards/accuracies"] == 0.0
    assert after["eval_rewards/accuracies"] >= 0.75
    assert after["eval_loss"] < before["eval_loss"]
    assert all(name.find("lora_") >= 0 for name in trainable)  # LoRA by default: only adapters train
    changed = [
        not torch.equal(p, trainable[n]) for n, p in trainer.model.named_parameters() if p.requires_grad
    ]
    assert all(changed)
    # The logged implicit reward is beta * f'(u), not TRL's beta * log u.
    divergence = training_args.get_divergence()
    expected = 0.1 * divergence.f_prime(torch.tensor(after["eval_logratios/chosen"]))
    if loss in ("sigmoid", "hinge"):  # linear f': the mean of rewards is the reward of the mean
        assert after["eval_rewards/chosen"] == pytest.approx(expected.item(), rel=1e-4)


@pytest.mark.slow
def test_resumed_run_ends_with_the_same_weights(tiny_model_dir, tmp_path):
    common = ["--max_steps", "8", "--save_strategy", "steps", "--save_steps", "4", "--divergence", "jsd"]
    straight = tiny_args(tiny_model_dir, tmp_path / "straight", *common)
    interrupted = tiny_args(tiny_model_dir, tmp_path / "resumed", *common)
    train(*parse_args(straight))
    train(*parse_args(interrupted))
    # Lose everything after step 4, as if the process died there, then resume.
    resumed_dir = tmp_path / "resumed"
    for leftover in ["checkpoint-8", "adapter_model.safetensors", "adapter_config.json"]:
        target = resumed_dir / leftover
        subprocess.run(["rm", "-rf", str(target)], check=True)
    train(*parse_args([*interrupted, "--resume", "true"]))

    state = json.loads((resumed_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    expected = load_file(tmp_path / "straight" / "adapter_model.safetensors")
    resumed = load_file(resumed_dir / "adapter_model.safetensors")
    assert expected.keys() == resumed.keys()
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name])


def test_run_config_is_saved_before_training_and_names_follow_the_study(tiny_model_dir, tmp_path):
    script_args, training_args = parse_args(
        ["--model", str(tiny_model_dir), "--divergence", "jsd", "--beta", "0.1"]
    )
    assert Path(training_args.output_dir).name == "gpt_imdb_jsd_beta1e-1"
    out = tmp_path / "run"
    script_args, training_args = parse_args(
        tiny_args(tiny_model_dir, out, "--divergence", "alpha", "--alpha", "0.3")
    )
    build_trainer(script_args, training_args)
    saved = json.loads((out / "run_config.json").read_text())
    assert saved["training"]["divergence"] == "alpha" and saved["training"]["alpha"] == 0.3
    assert saved["script"]["model"] == str(tiny_model_dir)


def test_only_the_saving_process_writes_the_run_config(tiny_model_dir, tmp_path, monkeypatch):
    """Under `accelerate launch` every process builds the trainer; two of them renaming one temporary file
    onto run_config.json race, and the loser dies with an OSError."""
    from train_dpo.train import record_run

    script_args, training_args = parse_args(tiny_args(tiny_model_dir, tmp_path / "run"))
    monkeypatch.setattr(FDPOConfig, "should_save", property(lambda self: False))  # a rank other than 0
    record_run(script_args, training_args, {"settings": "any"})
    assert not (tmp_path / "run" / "run_config.json").exists()


@pytest.mark.parametrize(
    ("divergence", "alpha", "loss", "beta", "expected"),
    [
        ("reverse_kl", None, "sigmoid", 10.0, "gpt_imdb_sigmoid_beta10"),
        ("reverse_kl", None, "hinge", 0.5, "gpt_imdb_hinge_beta5e-1"),
        ("jsd", None, "sigmoid", 0.1, "gpt_imdb_jsd_beta1e-1"),
        ("alpha", 0.3, "sigmoid", 1.0, "gpt_imdb_alpha03_beta1"),
        ("forward_kl", None, "hinge", 0.25, "gpt_imdb_forward_kl_hinge_beta0.25"),
    ],
)
def test_run_names(divergence, alpha, loss, beta, expected):
    assert run_name(get_divergence(divergence, alpha), loss, beta) == expected
    assert format_beta(0.01) == "1e-2"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--divergence", "nope"], "unknown divergence 'nope'"),
        (["--divergence", "alpha", "--alpha", "1.5"], "alpha must lie in (0, 1)"),
        (["--divergence", "alpha"], "needs --alpha"),
        (["--alpha", "0.3"], "only used with --divergence alpha"),
        (["--beta", "0"], "--beta must be > 0"),
        (["--divergence", "jsd", "--loss_type", "ipo"], "has no f-divergence form"),
        (["--f_divergence_type", "js_divergence"], "not TRL's --f_divergence_type"),
        (["--dataset", "missing.jsonl"], "missing.jsonl: no such file"),
        (["--model", "/nonexistent/model"], "no such directory"),
    ],
)
def test_bad_input_is_one_clear_line(flags, message, tiny_model_dir, tmp_path, error_line):
    base = ["--model", str(tiny_model_dir), "--output_dir", str(tmp_path / "out")]
    assert message in error_line(cli, [*base, *flags])
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_model_dir_without_weights_is_refused(tmp_path, error_line):
    (tmp_path / "empty").mkdir()
    assert "no config.json" in error_line(
        cli, ["--model", str(tmp_path / "empty"), "--output_dir", str(tmp_path / "out")]
    )


def test_script_exits_with_status_2_from_the_shell(tmp_path):
    result = subprocess.run(
        [sys.executable, "train_dpo/train.py", "--divergence", "alpha", "--alpha", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: alpha must lie in (0, 1), got 2.0"
    assert "Traceback" not in result.stderr


def test_config_defaults_follow_the_study_not_trl():
    args = FDPOConfig(output_dir="unused")
    assert (args.max_length, args.per_device_train_batch_size, args.bf16, args.activation_checkpointing) == (
        256,
        8,
        False,
        False,
    )
    assert args.report_to == []  # W&B is not configured in tests (WANDB_MODE=disabled): report nowhere


@pytest.mark.slow
def test_shared_reference_log_probs_change_nothing_but_the_work(tiny_model_dir, tmp_path):
    common = ["--max_steps", "4", "--divergence", "jsd"]
    cache = ["--ref_logps_cache", str(tmp_path / "ref_cache")]
    runs = {
        "on_the_fly": tiny_args(tiny_model_dir, tmp_path / "a", *common),
        "fills_cache": tiny_args(tiny_model_dir, tmp_path / "b", *common, *cache),
        "reads_cache": tiny_args(tiny_model_dir, tmp_path / "c", *common, *cache),
    }
    weights = {}
    for name, flags in runs.items():
        trainer = train(*parse_args(flags))
        weights[name] = load_file(Path(trainer.args.output_dir) / "adapter_model.safetensors")
        if name == "fills_cache":  # one file for the training pairs, one for the held-out ones
            stamps = {path: path.stat().st_mtime_ns for path in (tmp_path / "ref_cache").glob("*.npz")}
            assert len(stamps) == 2
    stored = {path: path.stat().st_mtime_ns for path in (tmp_path / "ref_cache").glob("*.npz")}
    assert stored == stamps  # the same keys: read, not rewritten
    # On the fly, a pair's reference log-prob is summed in a batch of another width than the cache's, and
    # differs by up to one float32 step (1.5e-5 at ~130 nats); four Adam steps carry that into up to 5e-5
    # on a few percent of the weights.
    for key in weights["on_the_fly"]:
        torch.testing.assert_close(weights["reads_cache"][key], weights["fills_cache"][key], rtol=0, atol=0)
        torch.testing.assert_close(
            weights["reads_cache"][key], weights["on_the_fly"][key], rtol=1e-4, atol=1e-4
        )


@pytest.mark.parametrize("launcher", [None, "bf16"])
def test_a_float32_run_after_a_bf16_run_in_one_process_stays_float32(
    tiny_model_dir, tmp_path, monkeypatch, launcher
):
    """A bf16 config leaves nothing behind for the next run; only `accelerate launch`'s setting counts."""
    if launcher is None:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launcher)
    bf16 = build_trainer(
        *parse_args(tiny_args(tiny_model_dir, tmp_path / "a", "--bf16", "true", "--use_cpu", "true"))
    )
    assert bf16.accelerator.mixed_precision == "bf16"
    fp32 = build_trainer(*parse_args(tiny_args(tiny_model_dir, tmp_path / "b")))
    assert fp32.args.bf16 is False
    assert fp32.accelerator.mixed_precision == (launcher or "no")


def test_cache_gives_trls_precomputed_reference_log_probs(tiny_model_dir, tmp_path):
    """A run that fills the cache and one that reads it see TRL's own precomputed numbers, bit for bit
    (at the batch size the cache is filled with: sums over batches of other widths differ in the last bit)."""
    trl_flags = ["--precompute_ref_log_probs", "true", "--precompute_ref_batch_size", "64"]
    trl_own = build_trainer(*parse_args(tiny_args(tiny_model_dir, tmp_path / "a", *trl_flags)))
    cache = ["--ref_logps_cache", str(tmp_path / "cache")]
    fills = build_trainer(*parse_args(tiny_args(tiny_model_dir, tmp_path / "b", *cache)))
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2  # the training pairs and the held-out ones
    reads = build_trainer(*parse_args(tiny_args(tiny_model_dir, tmp_path / "c", *cache)))
    for trainer in (fills, reads):
        for dataset, expected_dataset in ((trainer.train_dataset, trl_own.train_dataset),
                                          (trainer.eval_dataset, trl_own.eval_dataset)):  # fmt: skip
            for column in ("ref_chosen_logps", "ref_rejected_logps"):
                expected = torch.tensor(expected_dataset[column])
                assert bool((expected < 0).all())
                torch.testing.assert_close(torch.tensor(dataset[column]), expected, rtol=0, atol=0)
    assert len(trl_own.train_dataset) == 64 and len(trl_own.eval_dataset) == 16


@pytest.mark.slow
def test_the_gpu_default_precision_trains_the_same_run_on_the_cpu(tiny_model_dir, tmp_path):
    """bf16 autocast (the default on a GPU) through TRL's fused LM head and the reference cache filled
    under autocast. Losses follow the float32 run's to bf16 precision."""
    losses = {}
    for precision, flags in (("fp32", []), ("bf16", ["--bf16", "true", "--use_cpu", "true"])):
        cache = ["--ref_logps_cache", str(tmp_path / precision / "cache")]
        trainer = train(
            *parse_args(tiny_args(tiny_model_dir, tmp_path / precision, "--max_steps", "8", *cache, *flags))
        )
        assert trainer.args.bf16 == (precision == "bf16") and not trainer.trl_computes_loss
        reference = torch.tensor(trainer.train_dataset["ref_chosen_logps"])
        assert reference.dtype == torch.float32 and bool(torch.isfinite(reference).all())
        losses[precision] = torch.tensor([e["loss"] for e in trainer.state.log_history if "loss" in e])
    assert len(losses["bf16"]) == 2 and bool(torch.isfinite(losses["bf16"]).all())
    # Both learn, not just start at ln 2.
    assert all(run[1] < run[0] - 0.02 for run in losses.values()), losses
    torch.testing.assert_close(losses["bf16"], losses["fp32"], rtol=0.05, atol=0.02)


def poison_training_losses(monkeypatch, factors: dict[int, float]) -> None:
    """Multiply the training loss of the given optimizer steps (1-based) by a factor such as NaN or inf."""
    from train_dpo.trainer import FDPOTrainer

    original, calls = FDPOTrainer.compute_loss, {"n": 0}

    def poisoned(self, model, inputs, *args, **kwargs):
        loss = original(self, model, inputs, *args, **kwargs)
        if self.model.training:
            calls["n"] += 1
            loss = loss * factors.get(calls["n"], 1.0)
        return loss

    monkeypatch.setattr(FDPOTrainer, "compute_loss", poisoned)


@pytest.mark.slow
def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    tiny_model_dir, tmp_path, monkeypatch, error_line
):
    poison_training_losses(monkeypatch, {3: float("nan")})
    out = tmp_path / "run"
    flags = tiny_args(
        tiny_model_dir, out, "--max_steps", "6", "--save_strategy", "steps", "--save_steps", "2"
    )
    message = error_line(cli, flags, status=3)
    assert "error: non-finite loss at optimizer step 3" in message and "batch starting with prompt" in message
    assert not (out / "adapter_model.safetensors").exists()  # no final save
    assert sorted(path.name for path in out.glob("checkpoint-*")) == ["checkpoint-2"]  # none after the NaN
    assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2
    good = load_file(out / "checkpoint-2" / "adapter_model.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in good.values())


@pytest.mark.slow
def test_skip_nonfinite_batches_drops_the_batch_and_finishes_with_finite_weights(
    tiny_model_dir, tmp_path, monkeypatch, caplog
):
    poison_training_losses(monkeypatch, {2: float("inf"), 4: float("inf")})
    out = tmp_path / "run"
    with caplog.at_level("WARNING", logger="train_dpo.trainer"):
        cli(tiny_args(tiny_model_dir, out, "--max_steps", "6", "--skip_nonfinite_batches", "true",
                      "--save_strategy", "steps", "--save_steps", "1"))  # fmt: skip
    skipped = [r.getMessage() for r in caplog.records if "batch skipped" in r.getMessage()]
    assert len(skipped) == 2 and "optimizer step 2 " in skipped[0] and "optimizer step 4 " in skipped[1]
    final = load_file(out / "adapter_model.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in final.values())
    # A skipped step leaves every weight as it was; the steps around it move them.
    after = [load_file(out / f"checkpoint-{step}" / "adapter_model.safetensors") for step in range(1, 7)]
    for step, (before, now) in enumerate(zip(after, after[1:], strict=False), start=2):
        same = all(torch.equal(before[key], now[key]) for key in before)
        assert same == (step in (2, 4)), f"step {step}"
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 6


@pytest.mark.slow
def test_a_run_that_skips_most_of_its_steps_fails_resumed_or_not(
    tiny_model_dir, tmp_path, monkeypatch, error_line
):
    """3 of 4 steps skipped: status 3, a line with the count, no final weights. The checkpoint keeps the
    count, so resuming the finished-looking run fails the same way instead of saving it."""
    poison_training_losses(monkeypatch, {1: float("inf"), 2: float("nan"), 4: float("inf")})
    out = tmp_path / "gpt_imdb_poisoned"
    flags = tiny_args(tiny_model_dir, out, "--max_steps", "4", "--skip_nonfinite_batches", "true",
                      "--save_strategy", "steps", "--save_steps", "4")  # fmt: skip
    message = error_line(cli, flags, status=3)
    assert message.startswith("error: run gpt_imdb_poisoned skipped 3 of 4 steps on a non-finite loss")
    assert not (out / "adapter_model.safetensors").exists()
    assert (out / "checkpoint-4").is_dir()
    # Resumed, its 3 skips are counted from the checkpoint.
    resumed = error_line(cli, [*flags, "--resume", "true"], status=3)
    assert resumed.startswith("error: run gpt_imdb_poisoned skipped 3 of "), resumed


def test_group_by_length_gives_narrower_batches_of_every_pair(tiny_model_dir, tmp_path):
    widths = {}
    for grouped in ("false", "true"):
        flags = tiny_args(
            tiny_model_dir, tmp_path / grouped, "--group_by_length", grouped, "--max_train_pairs", "256"
        )
        trainer = build_trainer(*parse_args(flags))
        batches = list(trainer.get_train_dataloader())
        pairs = sorted(  # prompt + chosen of each pair the batches hold (the first half of their rows)
            tuple(row[mask.bool()].tolist())
            for b in batches
            for row, mask in zip(
                *(b[key].chunk(2)[0] for key in ("input_ids", "attention_mask")), strict=True
            )
        )
        dataset = trainer.train_dataset
        assert pairs == sorted(
            tuple((p + c)[:96]) for p, c in zip(dataset["prompt_ids"], dataset["chosen_ids"], strict=True)
        )  # each pair once
        widths[grouped] = sum(b["input_ids"].shape[1] for b in batches)
    assert widths["true"] < 0.95 * widths["false"]  # 9 % narrower on these pairs
