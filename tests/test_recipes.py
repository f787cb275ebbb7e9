"""Presets as data: each recipe under recipes/ parses, fills in config's folders, loses to --config and
flags, and a wrong value in it is one line naming the recipe."""

from dataclasses import dataclass, field
from pathlib import Path

import pytest

import config
from common import cli
from common.errors import InputError
from reproduce import as_flags, read_grid_recipe


@dataclass
class Demo:
    preset: str | None = None
    out_dir: str = "default"
    steps: int = 1
    rate: float = field(default=0.5)


@pytest.fixture
def recipes(tmp_path, monkeypatch):
    root = tmp_path / "recipes"
    monkeypatch.setattr(cli, "RECIPES_DIR", root)
    (root / "small").mkdir(parents=True)
    (root / "small" / "demo.yaml").write_text('out_dir: "{datasets_dir}/small"\nsteps: 7\n')
    (root / "broken").mkdir()
    (root / "broken" / "demo.yaml").write_text("steps: many\n")
    return root


def test_a_recipe_sets_defaults_that_config_files_and_flags_override(recipes, tmp_path, monkeypatch):
    monkeypatch.setattr(config, "DATASETS_DIR", tmp_path / "elsewhere")
    (args,) = cli.parse_with_presets(Demo, "demo", ["--preset", "small"])
    assert (args.out_dir, args.steps, args.rate) == (str(tmp_path / "elsewhere" / "small"), 7, 0.5)
    yaml_file = tmp_path / "mine.yaml"
    yaml_file.write_text("preset: small\nsteps: 9\n")
    (args,) = cli.parse_with_presets(Demo, "demo", ["--config", str(yaml_file)])
    assert args.steps == 9  # YAML > preset
    (args,) = cli.parse_with_presets(Demo, "demo", ["--config", str(yaml_file), "--steps", "11"])
    assert (args.steps, args.out_dir) == (11, str(tmp_path / "elsewhere" / "small"))  # flag > YAML > preset


def test_a_wrong_value_in_a_recipe_is_one_line_naming_it(recipes):
    with pytest.raises(InputError) as error:
        cli.parse_with_presets(Demo, "demo", ["--preset", "broken"])
    assert str(error.value) == (
        f"--preset broken ({recipes / 'broken' / 'demo.yaml'}): argument --steps: invalid int value: 'many'"
    )
    (recipes / "typo").mkdir()
    (recipes / "typo" / "demo.yaml").write_text('out_dir: "{dataset_dir}/x"\n')
    with pytest.raises(
        InputError, match=r"--preset typo \(.*typo/demo.yaml\): bad placeholder 'dataset_dir'"
    ):
        cli.parse_with_presets(Demo, "demo", ["--preset", "typo"])
    with pytest.raises(InputError, match="invalid choice: 'absent'"):
        cli.parse_with_presets(Demo, "demo", ["--preset", "absent"])


@pytest.mark.parametrize("preset", ["tiny", "paper"])
def test_every_shipped_recipe_parses(preset, tmp_path):
    from dataset.main import parse_args as parse_dataset
    from train_dpo.train import parse_args as parse_train

    assert cli.presets("train") == cli.presets("dataset") == cli.presets("grid") == ["paper", "tiny"]
    dataset_args = parse_dataset(["--preset", preset])
    script_args, training_args = parse_train(["--preset", preset, "--output_dir", str(tmp_path)])
    grid = read_grid_recipe(preset)
    if preset == "tiny":
        assert dataset_args.out_dir == str(config.TINY_DATASET_DIR)
        assert script_args.dataset == str(config.TINY_DATASET_DIR / "dataset" / "hf")
        assert (script_args.model, training_args.learning_rate) == ("tiny", 2e-3)
        assert grid["dataset"][:2] == ["--preset", "tiny"] and grid["lr"] == {"reverse_kl": 5e-3, "f": 5e-4}
    else:
        assert dataset_args.sft_model == script_args.model == grid["sft"] == config.SFT_MODEL
        assert grid["gold_reward"] == config.GOLD_REWARD_MODEL


def test_a_grid_stage_becomes_the_flags_that_set_it():
    assert as_flags({"steps": 3, "bf16": True, "models": ["a", "b"], "rate": 5e-4}) == [
        "--steps", "3", "--bf16", "true", "--models", "a", "b", "--rate", "0.0005"
    ]  # fmt: skip
    assert Path(cli.recipe_path("tiny", "grid")).is_file()
