"""Secrets enter only from the environment or `.env`: every other channel that could carry one is refused.

A token given as a flag, in a `--config` YAML or in a recipe would be recorded wherever a run records its
settings: `run_config.json`, a sweep's `reproduce.json` and manifests, a stack's `runs.json`, and
TrainingArguments' own pickle (`training_args.bin`) in the run folder and in every checkpoint. So each
channel is checked where all of a command's settings pass (`common.cli`), whatever the spelling
(`--hub_token`, `--hub-token`, `--hub_token=...`), and a config keeps no secret in what it pickles.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from common.errors import InputError

# Settings whose value is a secret, and the environment variable that carries it instead.
SECRET_SETTINGS = {
    "hub_token": "HF_TOKEN",
    "push_to_hub_token": "HF_TOKEN",
    "token": "HF_TOKEN",
    "hf_token": "HF_TOKEN",
    "use_auth_token": "HF_TOKEN",
    "wandb_api_key": "WANDB_API_KEY",
    "api_key": "WANDB_API_KEY",
}


def setting_name(flag: str) -> str:
    """A flag or YAML key as the setting it names: `--hub-token=x` and `hub_token` are both `hub_token`."""
    return flag.split("=", 1)[0].lstrip("-").replace("-", "_").lower()


def refusal(name: str, where: str) -> InputError:
    variable = SECRET_SETTINGS[setting_name(name)]
    return InputError(
        f"{where}: {name} is a secret and would be recorded with the run's settings; set {variable} in the "
        "environment or .env instead"
    )


def refuse_secret_flags(argv: Iterable[str], where: str = "flag") -> None:
    """InputError for the first flag in `argv` that names a secret setting, in any spelling."""
    for item in argv:
        if item.startswith("-") and setting_name(item) in SECRET_SETTINGS:
            raise refusal(item.split("=", 1)[0], where)


def refuse_secret_keys(values: Mapping, where: str) -> None:
    """InputError for the first key of a YAML mapping (a `--config` file, a recipe) naming a secret."""
    for key in values:
        if isinstance(key, str) and setting_name(key) in SECRET_SETTINGS:
            raise refusal(key, where)


def refuse_secrets_in_configs(argv: list[str], where: str) -> None:
    """The flags of `argv` and the keys of every `--config` YAML they name (a stage's extra flags carry
    their own `--config`), refused where they name a secret."""
    from common.cli import read_yaml_mapping

    refuse_secret_flags(argv, where)
    for at, item in enumerate(argv):
        path = item.split("=", 1)[1] if item.startswith("--config=") else None
        if item == "--config" and at + 1 < len(argv):
            path = argv[at + 1]
        if path and Path(path).is_file():
            refuse_secret_keys(read_yaml_mapping(path), f"{where} --config {path}")


def refuse_secret_values(settings: object, where: str = "settings") -> None:
    """InputError when a parsed config holds a secret (a channel the checks above did not see)."""
    for name in SECRET_SETTINGS:
        if getattr(settings, name, None):
            raise refusal(name, where)


class PicklesNoSecrets:
    """Mixin for a TrainingArguments subclass: its pickle (`training_args.bin`, written in the run folder and
    in every checkpoint) keeps no secret, even when one was set in Python rather than through a parser."""

    def __getstate__(self):
        state = dict(self.__dict__)
        for name in SECRET_SETTINGS:
            if state.get(name):
                state[name] = None
        return state
