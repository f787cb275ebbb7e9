"""Errors a user can fix, and the one-line report every entry point gives for them."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec

P = ParamSpec("P")


class InputError(Exception):
    """Bad input (file, flag, value): reported as one line naming it, exit status 2, no traceback."""


class TrainingDiverged(Exception):
    """A non-finite loss or gradient: the run stops before the optimizer uses it (exit status 3)."""


def exits_cleanly(main: Callable[P, None]) -> Callable[P, None]:
    """Wrap a CLI entry point: InputError ends it with `error: <message>`, status 2; TrainingDiverged, 3."""

    @functools.wraps(main)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            main(*args, **kwargs)
        except InputError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        except TrainingDiverged as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(3)

    return wrapper


def check_model_source(name: str, flag: str) -> None:
    """Fail early on a model given as a local path that is not a model directory (Hub ids pass)."""
    path = Path(name).expanduser()
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1
    if path.exists() and not (path / "config.json").is_file():
        raise InputError(f"{flag} {name}: directory has no config.json (not a model directory)")
    if not path.exists() and looks_local:
        raise InputError(f"{flag} {name}: no such directory")


def parse_with_presets(parser, presets: dict[str, dict], argv: list[str] | None) -> tuple:
    """Parse dataclass configs with precedence flag > YAML (`--config`) > `--preset` > defaults.

    `parser` is a TrlParser; a bad value (a dataclass's __post_init__ refusing it) becomes InputError.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if presets:
            peek = argparse.ArgumentParser(add_help=False)
            peek.add_argument("--preset", choices=list(presets))
            preset = peek.parse_known_args(argv)[0].preset
            if preset:
                parser.set_defaults_with_config(**presets[preset])
        return parser.parse_args_and_config(argv)
    except (ValueError, OSError, TypeError) as error:
        raise InputError(str(error).splitlines()[0]) from None
