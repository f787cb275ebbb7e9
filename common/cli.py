"""Settings for every entry point: flags, a YAML `--config` and a `--preset`, read by TrlParser.

Precedence is flag > YAML > preset > dataclass default. TrlParser reads the flags and the `--config`
file itself. A preset is data: `--preset tiny` reads the recipe `recipes/tiny/<stage>.yaml` and sets
it as the parser's defaults, beneath the YAML's. TrlParser hands a YAML value to the dataclass as
written, so each dataclass's `__post_init__` starts with `check_field_types`. Anything wrong (an
unknown flag or option, garbled YAML, a value of the wrong type, a value a `__post_init__` refuses)
becomes one InputError line, naming the file the value came from.
"""

from __future__ import annotations

import argparse
import dataclasses
import reprlib
import sys
import types
import typing
from pathlib import Path

import yaml
from trl import TrlParser

import config
from common.errors import InputError, first_line
from common.secrets import refuse_secret_flags, refuse_secret_keys, refuse_secret_values

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


class FieldTypeError(InputError):
    """A setting of the wrong type; `field` names it, so the parser can name the file it came from."""

    def __init__(self, field: str, why: str, value: object):
        super().__init__(f"{field}: {why}, got {reprlib.repr(value)}")
        self.field = field


YAML_TYPES = (bool, int, float, str, list, dict, type(None))  # what a YAML file (safe_load) can hold
KIND_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _conform(name: str, value: object, hint: object, choices) -> object:
    """`value` as the flag `--name` would have made it, or FieldTypeError. Non-YAML values pass."""
    if not isinstance(value, YAML_TYPES):  # set by code (an enum, a config object), not by a file
        return value
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    members = [m for m in (typing.get_args(hint) if union else (hint,)) if m is not type(None)]
    if value is None:  # refused only where the flag takes one plain value (argparse gives others None)
        optional = len(members) < (len(typing.get_args(hint)) if union else 1)
        plain = all(m in KIND_WORDS or typing.get_origin(m) is typing.Literal for m in members)
        if plain and not optional:
            raise FieldTypeError(name, "expected a value", value)
        return None
    lists = [m for m in members if (typing.get_origin(m) or m) is list]
    item_hint = (typing.get_args(lists[0]) or (object,))[0] if lists else None
    if isinstance(value, list):
        if not lists:
            raise FieldTypeError(name, "expected a single value, not a list", value)
        return [_conform(name, item, item_hint, choices) for item in value]
    if isinstance(value, dict):
        if any((typing.get_origin(m) or m) is dict for m in members):
            return value
        raise FieldTypeError(name, "expected a single value, not a mapping", value)
    scalars = [m for m in members if (typing.get_origin(m) or m) not in (list, dict)]
    for member in scalars:
        literal = typing.get_origin(member) is typing.Literal
        allowed = typing.get_args(member) if literal else choices
        converted = _scalar(value, str if literal else member)
        if converted is not None and allowed and converted not in allowed:
            raise FieldTypeError(name, f"expected one of {', '.join(map(str, allowed))}", value)
        if converted is not None:
            return converted
    if lists:
        return [_conform(name, value, item_hint, choices)]  # one value for a list flag, as `--name v`
    if any(m not in KIND_WORDS and typing.get_origin(m) is not typing.Literal for m in scalars):
        return value  # a type no YAML scalar spells (a class the library converts itself)
    kinds = " or ".join(dict.fromkeys(KIND_WORDS.get(m, "a valid value") for m in scalars))
    raise FieldTypeError(name, f"expected {kinds}", value)


def _scalar(value: object, kind: object) -> object:
    """A YAML scalar as a flag of type `kind` reads it; None when it cannot be one."""
    if kind is bool:
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):
        return None
    if kind is int:
        return value if isinstance(value, int) else None
    if kind is float:
        return float(value) if isinstance(value, int | float) else None
    if kind is str:
        return value if isinstance(value, str) else str(value)
    return None


def check_field_types(settings) -> None:
    """Hold every field of a parsed dataclass to what its flag would accept, before anything reads it.

    Argparse converts a default only when it is a string, so a YAML or recipe value such as
    `seed: 1.5`, `use_peft: [true]` or `beta: null` would otherwise reach the run unchecked. An integer
    for a float field becomes a float, and a single value for a list field a list, as their flags
    make them. A field left at its default is not touched: the libraries' own defaults need not match
    their annotations.

    Raises:
        FieldTypeError: a value no flag of that field could produce.
    """
    hints = typing.get_type_hints(type(settings))
    for field in dataclasses.fields(settings):
        if not field.init or field.name not in hints:
            continue
        value = getattr(settings, field.name)
        default = (
            field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        )
        if default is not dataclasses.MISSING and type(value) is type(default) and value == default:
            continue
        checked = _conform(field.name, value, hints[field.name], field.metadata.get("choices"))
        if checked is not value:
            setattr(settings, field.name, checked)


class ArgParser(argparse.ArgumentParser):
    """argparse for the entry points without config classes (reproduce.py, sft.py, stack.py): a bad flag is
    one InputError line, as with `Parser`, not argparse's usage text, and no flag may be abbreviated."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        argv = list(sys.argv[1:] if args is None else args)
        refuse_secret_flags(argv)  # secrets come from the environment or .env (common/secrets.py)
        refuse_repeated_flags(self, argv)
        return super().parse_known_args(argv, namespace)

    def error(self, message: str) -> typing.NoReturn:
        raise InputError(message)


def refuse_repeated_flags(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """A flag given twice is refused: argparse keeps the last value, so the first would be silently lost."""
    seen: set[str] = set()
    for arg in argv:
        if arg == "--":
            return
        if not arg.startswith("--"):
            continue
        action = parser._option_string_actions.get(arg.split("=", 1)[0])
        if action is None or isinstance(action, argparse._HelpAction | argparse._AppendAction):
            continue
        if action.dest in seen:
            raise InputError(f"argument {arg.split('=', 1)[0]}: given twice (the first value would be lost)")
        seen.add(action.dest)


class Parser(TrlParser):
    """TrlParser whose every error is one InputError line, not argparse's usage text and exit."""

    def __init__(self, dataclass_types):
        # No abbreviations: `--bet 5` would set --beta, and a later `--beta` (a sweep's own) silently win.
        super().__init__(dataclass_types, exit_on_error=False, allow_abbrev=False)

    def error(self, message: str) -> typing.NoReturn:
        raise InputError(message)


def _flag_value(argv: list[str], flag: str) -> str | None:
    for at, arg in enumerate(argv):
        if arg == flag and at + 1 < len(argv):
            return argv[at + 1]
        if arg.startswith(f"{flag}="):
            return arg.split("=", 1)[1]
    return None


def parse_with_presets(dataclass_types, stage: str | None, argv: list[str] | None) -> tuple:
    """Parse dataclass configs with precedence flag > YAML (`--config`) > preset > defaults.

    `stage` names the recipe file a preset has for this command (None: the command takes no preset).
    The preset is `--preset`, else the YAML's `preset`. A bad flag, YAML file or value (a dataclass's
    __post_init__ refusing it) becomes InputError, prefixed with the file a bad value came from.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # TrlParser finds `--config path` only: `--config=path` would reach argparse as an unknown flag.
    argv = [part for arg in argv for part in (arg.split("=", 1) if arg.startswith("--config=") else [arg])]
    refuse_secret_flags(argv)  # secrets come from the environment or .env, in no spelling from a flag
    parser = Parser(dataclass_types)
    path, from_yaml = _flag_value(argv, "--config"), {}
    if "--config" in argv:
        if path is None:
            raise InputError("--config needs a YAML file path")
        from_yaml = read_yaml_mapping(path)  # checked here for one-line errors; TrlParser reads it
        refuse_secret_keys(from_yaml, f"--config {path}")
        if not from_yaml:  # empty or comments only: no settings, which TrlParser refuses as "not a mapping"
            at = argv.index("--config")
            del argv[at : at + 2]
    sources = dict.fromkeys(from_yaml, f"--config {path}")  # option -> where its value was set
    flag_preset = _flag_value(argv, "--preset")
    preset = flag_preset or from_yaml.get("preset")
    if stage is not None and preset is not None and preset not in presets(stage):
        where = "argument --preset" if flag_preset else f"--config {path}: preset"
        raise InputError(f"{where}: invalid choice: {preset!r} (choose from {', '.join(presets(stage))})")
    if stage is not None and preset is not None:
        source, recipe = f"--preset {preset} ({recipe_path(preset, stage)})", read_recipe(preset, stage)
        refuse_secret_keys(recipe, source)
        unused = parser.set_defaults_with_config(**recipe)
        if unused:
            raise InputError(f"{source}: unknown option {reprlib.repr(unused[0][2:])}")
        sources = {**dict.fromkeys(recipe, source), **sources}
    for arg in argv:  # a value given as a flag is reported as the flag
        if arg.startswith("--"):
            sources.pop(arg[2:].split("=", 1)[0], None)
    try:
        *parsed, from_file, from_flags = parser.parse_args_and_config(
            argv, return_remaining_strings=True, separate_remaining_strings=True
        )
    except FieldTypeError as error:
        raise _named(error, sources.get(error.field)) from None
    except argparse.ArgumentError as error:
        raise _named(error, sources.get((error.argument_name or "").split("/")[0].lstrip("-"))) from None
    except (ValueError, OSError, TypeError) as error:
        raise InputError(first_line(error)) from None
    if from_file:
        raise InputError(f"--config {path}: unknown option {reprlib.repr(from_file[0][2:])}")
    if from_flags:
        raise InputError(f"unknown flag(s): {' '.join(from_flags)} (see --help)")
    for settings in parsed:  # whatever channel a secret might still come by, it is not kept
        refuse_secret_values(settings)
    return tuple(parsed)


def _named(error: Exception, source: str | None) -> InputError:
    return InputError(f"{source}: {first_line(error)}" if source else first_line(error))


def count_type(minimum: int = 1, maximum: int | None = None) -> typing.Callable[[str], int]:
    """An argparse `type` for a count: an integer in [minimum, maximum]. Anything else is refused as
    `argument --flag: ...`, which ArgParser makes one error line; a negative count would otherwise slice
    a list from its end (`runs[:-3]`: all but three), and a zero one run nothing."""

    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
            raise argparse.ArgumentTypeError(f"expected an integer {bounds}, got {text}")
        return value

    return count


def number_type(minimum: float = 0.0) -> typing.Callable[[str], float]:
    """An argparse `type` for a finite number >= minimum (nan and inf refused)."""

    def number(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not minimum <= value < float("inf"):  # nan compares false
            raise argparse.ArgumentTypeError(f"expected a finite number >= {minimum:g}, got {text}")
        return value

    return number
