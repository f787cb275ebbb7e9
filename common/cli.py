"""Settings for every entry point: flags, a YAML `--config` and a `--preset`, in one parser.

Precedence is flag > YAML > preset > dataclass default. A preset is data: `--preset tiny` reads the
recipe `recipes/tiny/<stage>.yaml`, checked like any `--config` file. Anything wrong (an unknown flag,
garbled YAML, a value of the wrong type, a value a dataclass's __post_init__ refuses) becomes one
InputError line.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import reprlib
import sys
import typing
from pathlib import Path

import yaml

import config
from common.errors import InputError, first_line

RECIPES_DIR = config.REPO_ROOT / "recipes"


def recipe_path(preset: str, stage: str) -> Path:
    return RECIPES_DIR / preset / f"{stage}.yaml"


def presets(stage: str) -> list[str]:
    """The presets that have a recipe for `stage` (`recipes/<preset>/<stage>.yaml`)."""
    return sorted(path.parent.name for path in RECIPES_DIR.glob(f"*/{stage}.yaml"))


def placeholders() -> dict[str, str]:
    """What a recipe's `{name}` stands for: config's folders and models, as this environment sets them."""
    return {
        "datasets_dir": str(config.DATASETS_DIR),
        "models_dir": str(config.MODELS_DIR),
        "results_dir": str(config.RESULTS_DIR),
        "sft_model": config.SFT_MODEL,
        "reward_model": config.REWARD_MODEL,
        "gold_reward_model": config.GOLD_REWARD_MODEL,
    }


def expand(value: object) -> object:
    """`value` with `{name}` placeholders filled in, inside strings, lists and mappings."""
    if isinstance(value, str):
        return value.format_map(placeholders())
    if isinstance(value, list):
        return [expand(item) for item in value]
    if isinstance(value, dict):
        return {key: expand(item) for key, item in value.items()}
    return value


def read_recipe(preset: str, stage: str) -> dict:
    """A preset's recipe for one stage as plain values, placeholders filled in (not yet checked)."""
    path = recipe_path(preset, stage)
    if not path.is_file():
        raise InputError(f"--preset {preset}: no recipe {path} for this command")
    try:
        return expand(read_yaml_mapping(path, "--preset"))
    except (KeyError, ValueError, IndexError) as error:  # str.format: an unknown or malformed {name}
        raise InputError(
            f"--preset {preset} ({path}): bad placeholder {first_line(error)}; known: "
            f"{', '.join('{' + name + '}' for name in placeholders())}"
        ) from None


def _refuse(message: str) -> typing.NoReturn:
    raise InputError(message)


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key written twice in one mapping (plain YAML keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (set it once)", mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _config_value(source: str, key: str, value: object, action: argparse.Action, hint: object) -> object:
    """A YAML value checked and converted as the flag `--key` would be; InputError naming both otherwise."""
    members = typing.get_args(hint) or (hint,)
    origins = {typing.get_origin(member) or member for member in members}

    def bad(why: str) -> InputError:
        return InputError(f"{source}: {key}: {why}, got {reprlib.repr(value)}")

    def convert(item: object) -> object:
        if isinstance(item, list | dict):
            raise bad("expected plain values inside the list")
        try:
            converted = action.type(str(item)) if callable(action.type) else item
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            kinds = ((bool, "true or false"), (int, "an integer"), (float, "a number"))
            kind = next((words for t, words in kinds if t in origins), "a valid value")
            raise bad(f"expected {kind}") from None
        if action.choices is not None and converted not in action.choices:
            raise bad(f"expected one of {', '.join(map(str, action.choices))}")
        return converted

    if value is None:
        if type(None) in members:
            return None
        raise bad("expected a value")
    if isinstance(value, dict):
        if dict in origins:
            return value
        raise bad("expected a single value, not a mapping")
    if isinstance(value, list):
        if action.nargs in ("+", "*") or list in origins:
            return [convert(item) for item in value]
        raise bad("expected a single value, not a list")
    return [convert(value)] if action.nargs in ("+", "*") else convert(value)


def read_config_file(parser, path: str) -> dict:
    """The `--config` YAML as {option: value}, each value checked and converted like its flag's.

    Replaces TRL's reading, which turns garbled YAML or a list into a traceback and lets a value of the
    wrong type through unchecked. As in TRL, an `env` mapping sets environment variables.

    Raises:
        InputError: unreadable file, invalid YAML, not a mapping, unknown option, or a bad value.
    """
    return check_values(parser, f"--config {path}", read_yaml_mapping(path))


def read_yaml_mapping(path: str | Path, flag: str = "--config") -> dict:
    """A YAML file's top-level mapping; InputError naming `flag` and the file for anything else."""
    try:
        with open(path, encoding="utf-8-sig") as handle:  # a BOM, as some Windows editors write, is fine
            values = yaml.load(handle, Loader=UniqueKeyLoader)
    except OSError as error:
        raise InputError(f"{flag} {path}: cannot read ({error.strerror or first_line(error)})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        problem = getattr(error, "problem", None) or first_line(error)
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InputError(f"{flag} {path}: not valid YAML ({problem}{where})") from None
    if values is None:  # an empty file, or comments only
        return {}
    if not isinstance(values, dict):
        raise InputError(f"{flag} {path}: expected a mapping of option: value, got a {type(values).__name__}")
    return values


def check_values(parser, source: str, values: dict) -> dict:
    """{option: value} checked and converted as the flags would be; InputError naming `source` otherwise."""
    hints = {}
    for dataclass_type in parser.dataclass_types:
        resolved = typing.get_type_hints(dataclass_type)
        hints.update({field.name: resolved[field.name] for field in dataclasses.fields(dataclass_type)})
    actions = {}
    for action in parser._actions:  # a boolean's `--no_<flag>` twin comes second: keep the first
        actions.setdefault(action.dest, action)
    checked = {}
    for key, value in values.items():
        if key == "env":
            if not isinstance(value, dict):
                raise InputError(f"{source}: env: expected a mapping of variable: value")
            os.environ.update({str(name): str(setting) for name, setting in value.items()})
        elif key not in hints or key not in actions:
            raise InputError(f"{source}: unknown option {reprlib.repr(key)}")
        else:
            checked[key] = _config_value(source, key, value, actions[key], hints[key])
    return checked


def parse_with_presets(parser, stage: str | None, argv: list[str] | None) -> tuple:
    """Parse dataclass configs with precedence flag > YAML (`--config`) > preset > defaults.

    `parser` is a TrlParser; `stage` names the recipe file a preset has for this command (None: the
    command takes no preset). The preset is `--preset`, else the YAML's `preset`. A bad flag, YAML file or
    value (a dataclass's __post_init__ refusing it) becomes InputError.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # argparse would print the whole usage (hundreds of lines for DPOConfig) above its one-line error.
    parser.error = _refuse
    try:
        config_values = {}
        if "--config" in argv:
            at = argv.index("--config")
            if at + 1 == len(argv):
                raise InputError("--config needs a YAML file path")
            config_values = read_config_file(parser, argv.pop(at + 1))
            argv.pop(at)
        if stage is not None:
            peek = argparse.ArgumentParser(add_help=False)
            peek.error = _refuse
            peek.add_argument("--preset", choices=presets(stage))
            preset = peek.parse_known_args(argv)[0].preset or config_values.get("preset")
            if preset:
                source = f"--preset {preset} ({recipe_path(preset, stage)})"
                parser.set_defaults_with_config(**check_values(parser, source, read_recipe(preset, stage)))
        parser.set_defaults_with_config(**config_values)
        return parser.parse_args_and_config(argv)
    except (ValueError, OSError, TypeError) as error:
        raise InputError(first_line(error)) from None
