"""Secrets enter only from the environment or `.env` (common/secrets.py). Every other channel is walked:
each entry point's flags in each spelling, a `--config` YAML for each stage, a recipe, a sweep stage's
extra flags and the `--config` files they name, and a config set in Python. A distinct canary is planted in
each; each is refused in one line that never prints it. Then one sweep with a DPO stack, an RLOO run and
checkpoints runs with tokens in the environment and in `.env`: no byte written, nor anything printed,
holds either."""

import os
import pickle
import subprocess
import sys

import pytest
import yaml
from test_fresh_clone import bare_clone

import dataset.main
import reproduce
import train_dpo.evaluate
import train_dpo.generate
import train_dpo.rloo
import train_dpo.sft
import train_dpo.stack
import train_dpo.train
from common import cli as common_cli
from common.secrets import SECRET_SETTINGS

# Every entry point, with the least it needs to reach its parser.
ENTRY_POINTS = {
    "reproduce.py": (reproduce.cli, ["--preset", "tiny", "--dry-run"]),
    "train_dpo/train.py": (train_dpo.train.cli, ["--preset", "tiny"]),
    "train_dpo/rloo.py": (train_dpo.rloo.cli, ["--preset", "tiny"]),
    "dataset/main.py": (dataset.main.cli, ["--preset", "tiny"]),
    "train_dpo/generate.py": (train_dpo.generate.cli, []),
    "train_dpo/evaluate.py": (train_dpo.evaluate.cli, []),
    "train_dpo/sft.py": (train_dpo.sft.cli, []),
    "train_dpo/stack.py": (train_dpo.stack.cli, []),
}
CONFIG_STAGES = ["train_dpo/train.py", "train_dpo/rloo.py", "dataset/main.py", "train_dpo/generate.py",
                 "train_dpo/evaluate.py"]  # fmt: skip
SPELLINGS = ["--{name} {value}", "--{dashed} {value}", "--{name}={value}", "--{dashed}={value}"]


def canary(*where: str) -> str:
    """A token unique to one channel, so a leak names its channel."""
    return "hf_CANARY_" + "_".join(part.replace("/", "-").replace(".", "-") for part in where)


def refused(cli, argv: list[str], value: str, capfd) -> str:
    with pytest.raises(SystemExit) as ended:
        cli(argv)
    out, err = capfd.readouterr()
    assert ended.value.code == 2, err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in err, err
    assert value not in out + err
    return lines[-1]


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("name", sorted(SECRET_SETTINGS))
@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_a_secret_flag_is_refused_by_every_entry_point_in_every_spelling(
    entry, name, spelling, capfd, tmp_path
):
    cli, base = ENTRY_POINTS[entry]
    value = canary(entry, name, str(SPELLINGS.index(spelling)))
    flag = spelling.format(name=name, dashed=name.replace("_", "-"), value=value).split(" ")
    where = ["--results_dir", str(tmp_path / "results")] if entry == "reproduce.py" else []
    line = refused(cli, [*base, *flag, *where], value, capfd)
    assert "is a secret" in line and SECRET_SETTINGS[name] in line, line
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("entry", CONFIG_STAGES)
def test_a_secret_in_a_config_yaml_is_refused_for_every_stage(entry, capfd, tmp_path):
    cli, base = ENTRY_POINTS[entry]
    value = canary(entry, "config")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"hub_token": value}))
    line = refused(cli, [*base, "--config", str(path)], value, capfd)
    assert line.startswith(f"error: --config {path}: hub_token is a secret"), line


@pytest.mark.parametrize("stage", ["dataset", "train", "rloo", "generate", "evaluate"])
@pytest.mark.parametrize("channel", ["flag", "dashed", "config"])
def test_a_secret_in_a_sweep_stage_s_flags_or_their_config_is_refused_before_anything_is_recorded(
    stage, channel, capfd, tmp_path
):
    value = canary(stage, channel)
    extra = {"flag": f"--hub_token {value}", "dashed": f"--hub-token={value}"}.get(channel)
    if channel == "config":
        (tmp_path / "stage.yaml").write_text(yaml.safe_dump({"hub_token": value}))
        extra = f"--config {tmp_path / 'stage.yaml'}"
    grid = ["--grid", "frontier"] if stage == "rloo" else []
    root = tmp_path / "results"
    line = refused(reproduce.cli, ["--preset", "tiny", *grid, "--results_dir", str(root), f"--{stage}_args",
                                   extra], value, capfd)  # fmt: skip
    assert line.startswith(f"error: --{stage}_args") and "HF_TOKEN" in line, line
    assert not root.exists()


@pytest.mark.parametrize("stage", ["train", "rloo", "dataset"])
def test_a_secret_in_a_recipe_is_refused(stage, capfd, tmp_path, monkeypatch):
    value = canary("recipe", stage)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / f"{stage}.yaml").write_text(yaml.safe_dump({"hub_token": value}))
    monkeypatch.setattr(common_cli, "RECIPES_DIR", tmp_path)
    cli = ENTRY_POINTS[
        {"train": "train_dpo/train.py", "rloo": "train_dpo/rloo.py", "dataset": "dataset/main.py"}[stage]
    ][0]
    line = refused(cli, ["--preset", "mine"], value, capfd)
    assert "--preset mine" in line and "hub_token is a secret" in line, line


@pytest.mark.parametrize("config_class", [train_dpo.train.FDPOConfig, train_dpo.rloo.OnlineRLConfig])
def test_a_secret_set_in_python_is_never_pickled(config_class, tmp_path):
    value = canary("python", config_class.__name__)
    settings = config_class(output_dir=str(tmp_path), hub_token=value, report_to="none")
    assert value.encode() not in pickle.dumps(settings)
    assert settings.hub_token == value  # still there for the process that set it


@pytest.mark.slow
def test_a_sweep_with_tokens_in_the_environment_and_dotenv_writes_and_prints_neither(tmp_path, data_dir):
    """DPO runs in a stack, an RLOO run, checkpoints, generation, evaluation and the notebook, run from a
    clone whose `.env` holds one token while the shell holds another."""
    clone = bare_clone(tmp_path)
    shipped = {path for path in clone.rglob("*") if path.is_file()}  # the code, not written by the sweep
    salt = os.urandom(8).hex()  # so that no file of the code holds the canaries either
    env_value, dotenv_value = canary("environment", salt), f"wandbCANARYdotenv{salt}"
    (clone / ".env").write_text(f"WANDB_API_KEY={dotenv_value}\n")
    env = {**os.environ, "HF_TOKEN": env_value, "FDPO_MODELS_DIR": str(tmp_path / "models"),
           "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb")}  # fmt: skip
    env.pop("WANDB_API_KEY", None)
    (tmp_path / "wandb").mkdir()
    root = tmp_path / "results"
    command = [sys.executable, "reproduce.py", "--preset", "tiny", "--grid", "frontier", "--seeds", "1",
               "--sft_epochs", "0.02", "--results_dir", str(root),
               "--only", "gpt_imdb_jsd_beta1,gpt_imdb_jsd_beta1e-1,gpt_imdb_rloo_beta1e-1",
               "--dataset_args", "--num_prompts 24 --num_eval_prompts 6 --max_new_tokens 12",
               "--train_args", "--max_steps 2 --save_steps 1 --max_length 64 --max_eval_pairs 8",
               "--rloo_args", "--max_steps 2 --save_steps 1 --max_completion_length 8 --num_generations 2 "
                              "--per_device_train_batch_size 4 --max_length 64",
               "--generate_args", "--samples 2 --max_new_tokens 8", "--evaluate_args", "--max_test_pairs 8"]  # fmt: skip
    result = subprocess.run(command, cwd=clone, env=env, capture_output=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    written = [
        path for path in tmp_path.rglob("*") if path.is_file() and path not in shipped | {clone / ".env"}
    ]
    kinds = {path.name for path in written}
    assert {"training_args.bin", "runs.json", "manifest.json", "reproduce.json", "run_config.json"} <= kinds
    assert any("checkpoint-" in str(path) for path in written if path.name == "training_args.bin")
    for value in (env_value, dotenv_value):
        assert value.encode() not in result.stdout + result.stderr
        for path in written:
            assert value.encode() not in path.read_bytes(), f"{value[:12]}... leaked into {path}"


def test_the_secret_table_names_every_token_field_of_the_configs():
    """A library upgrade that adds a token field to a config is caught here, not by a leak."""
    import dataclasses

    from train_dpo.trainer import FDPOConfig

    fields = {f.name for config_class in (FDPOConfig, train_dpo.rloo.OnlineRLConfig)
              for f in dataclasses.fields(config_class)}  # fmt: skip
    tokens = {name for name in fields if name.endswith(("_token", "api_key")) and "pad" not in name}
    assert tokens <= set(SECRET_SETTINGS), tokens - set(SECRET_SETTINGS)
