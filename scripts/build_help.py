"""Write every entry point's `--help` text to common/help_text/, rendered from the parser it builds.

    poetry run python scripts/build_help.py            # after adding, renaming or re-documenting a flag
    poetry run python scripts/build_help.py --check    # exit 1 naming each stale file (tests/test_help.py)

The entry points print these files through common/help.py, before importing torch, transformers or TRL:
argparse can print help only once the parser exists, and the parsers of train.py, dataset/main.py,
generate.py and evaluate.py are built from config classes that need those libraries (15-25 s to import
on 2 CPU cores). Each text lists the project's own flags first, one line each, grouped by the dataclass
(or argparse group) that declares them. The training flags train.py inherits from TRL's DPOConfig and
transformers' TrainingArguments are counted there and listed, under their own headings, by `--help-all`.

Defaults are config.py's own: FDPO_* variables and `.env` are ignored here, and paths inside the checkout
are shown relative to it, so the texts are the same on every machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import inspect
import os
import re
import sys
import textwrap
import types
import typing
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
TEXT_DIR = REPO / "common" / "help_text"  # where common/help.py reads them
ENTRY_POINTS = {  # module -> how its docstring says to run it
    "reproduce": "reproduce.py",
    "dataset.main": "dataset/main.py",
    "train_dpo.train": "train_dpo/train.py",
    "train_dpo.sft": "train_dpo/sft.py",
    "train_dpo.generate": "train_dpo/generate.py",
    "train_dpo.evaluate": "train_dpo/evaluate.py",
    "train_dpo.stack": "train_dpo/stack.py",
    "train_dpo.rloo": "train_dpo/rloo.py",
}
PROJECT_PACKAGES = {"reproduce", "config", "common", "dataset", "train_dpo"}
WIDTH = 110  # as ruff's line length; a flag's line may run longer rather than wrap
FLAG_COLUMN = 34  # flags longer than this push their text along instead of widening every line


class _Parser(BaseException):
    """Carries the parser out of an entry point's main(["--help"]), before it prints or exits."""


def live_parser(module_name: str) -> argparse.ArgumentParser:
    """The parser an entry point builds, caught where argparse would print its help.

    Runs the module's `main(["--help"])` (or `main()` with that command line) with
    `ArgumentParser.print_help` stopped, so nothing is printed, loaded or written.
    """
    module = importlib.import_module(module_name)
    argv = [module.__file__, "--help"]

    def caught(parser, file=None):
        raise _Parser(parser)

    with (
        mock.patch.object(argparse.ArgumentParser, "print_help", caught),
        mock.patch.object(sys, "argv", argv),
    ):
        try:
            module.main(["--help"]) if inspect.signature(module.main).parameters else module.main()
        except _Parser as found:
            return found.args[0]
    raise RuntimeError(f"{module_name}.main(['--help']) returned without printing help")


def _declared_by(parser: argparse.ArgumentParser) -> dict[str, type]:
    """Each dataclass field's dest -> the class whose body declares it (the last to redeclare it), or for a
    library's field the library's most derived class among the parser's bases (trl's DPOConfig, not the
    private base class TRL declares some of DPOConfig's fields in)."""
    owners = {}
    for kind in getattr(parser, "dataclass_types", ()):
        for field in dataclasses.fields(kind):
            owner = next(k for k in kind.__mro__ if field.name in k.__dict__.get("__annotations__", {}))
            if not _ours(owner):
                owner = next(k for k in kind.__mro__ if _library(k) == _library(owner))
            owners[field.name] = owner
    return owners


def _library(kind: type) -> str:
    return kind.__module__.split(".")[0]


def _ours(kind: type | None) -> bool:
    return kind is None or _library(kind) in PROJECT_PACKAGES


def _hints(parser: argparse.ArgumentParser) -> dict[str, object]:
    return {
        name: hint
        for kind in getattr(parser, "dataclass_types", ())
        for name, hint in typing.get_type_hints(kind).items()
    }


def _type_word(hint: object) -> str:
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return _type_word(args[0]) if len(args) == 1 else "VALUE"
    if (typing.get_origin(hint) or hint) is list:
        return _type_word(args[0] if args else str) + "..."
    if typing.get_origin(hint) is typing.Literal:
        return "{" + ",".join(map(str, args)) + "}"
    return {bool: "BOOL", int: "INT", float: "FLOAT", str: "STR"}.get(hint, "VALUE")


def _metavar(action: argparse.Action, hint: object) -> str:
    if action.nargs == 0:
        return ""
    if action.choices:
        listed = "{" + ",".join(map(str, action.choices)) + "}"
        return listed if len(listed) <= 32 else f"{{{len(action.choices)} choices}}"
    if action.metavar:
        return str(action.metavar)
    if hint is not None:
        return _type_word(hint)
    word = {int: "INT", float: "FLOAT", None: "STR", str: "STR"}.get(action.type, "VALUE")
    return f"{word}..." if action.nargs in ("+", "*") else word


def _shown(value: object) -> str:
    if isinstance(value, list | tuple):
        return " ".join(_shown(item) for item in value)
    if isinstance(value, bool):
        return str(value).lower()  # as the flag is written
    text = str(value)
    root = str(REPO)
    return "." if text == root else text.replace(root + os.sep, "")


def _plain(text: str | None) -> str:
    """Help text on one line: markdown links and code marks of the libraries' docstrings dropped."""
    text = re.sub(r"\[`~?([^`\]]+)`\]", r"\1", text or "")
    return " ".join(text.replace("`", "").split())


def _first_sentence(text: str) -> str:
    return re.split(r"(?<=[a-z0-9)\]])\. (?=[A-Z`(])", text, maxsplit=1)[0].rstrip(".") + "."


def _line(action: argparse.Action, hint: object, inherited: bool) -> tuple[str, str]:
    """(flag and value, one-line text); an inherited flag's text is its first sentence, cut to fit."""
    flag = f"{action.option_strings[0]} {_metavar(action, hint)}".rstrip()
    text, default = _plain(action.help), action.default
    shown = ""
    if default not in (None, False, "", [], argparse.SUPPRESS) and "default" not in text.lower():
        shown = f" (default: {_shown(default)})"
    if inherited and text:
        room = WIDTH - 4 - max(FLAG_COLUMN, len(flag)) - len(shown)
        text = textwrap.shorten(_first_sentence(text), max(room, 20), placeholder=" ...")
    return flag, (text + shown).lstrip()


def _heading(kind: type | None, title: str | None) -> str:
    if kind is None:
        return (title or "options").capitalize()
    if not _ours(kind):
        return f"Inherited from {_library(kind)}.{kind.__name__}"
    doc = kind.__dict__.get("__doc__") or ""
    if doc.startswith(f"{kind.__name__}("):  # the signature dataclasses writes when a class has no docstring
        doc = ""
    summary = " ".join(doc.strip().split("\n\n")[0].split()).rstrip(".")
    return f"{kind.__name__}: {summary}" if summary else kind.__name__


def _examples(doc: str) -> list[str]:
    """The indented command lines that follow the summary of an entry point's docstring."""
    lines, started = [], False
    for line in doc.splitlines()[1:]:
        if line.startswith("    ") and line.strip():
            lines.append("  " + line[4:])
            started = True
        elif started:
            break
    return lines


def render(module_name: str, everything: bool = False) -> str:
    """The help text of one entry point: `--help`, or with `everything` `--help-all`."""
    parser = live_parser(module_name)
    module = sys.modules[module_name]
    owners, hints = _declared_by(parser), _hints(parser)
    groups: dict[tuple, list[tuple[str, str]]] = {}
    general = ("Options", False)
    groups[general] = [("-h, --help", "this text, printed without loading the training libraries")]
    inherited_count = 0
    for group in parser._action_groups:
        for action in group._group_actions:
            if action.help == argparse.SUPPRESS or action.dest == "help":
                continue
            if action.option_strings[0].startswith("--no_") and action.nargs == 0 and action.dest in owners:
                continue  # HfArgumentParser's complement of a true-by-default BOOL flag, noted below
            kind = owners.get(action.dest)
            inherited = not _ours(kind)
            inherited_count += inherited
            if inherited and not everything:
                continue
            key = (
                general
                if kind is None and group.title == "options"
                else (_heading(kind, group.title), inherited)
            )
            groups.setdefault(key, []).append(_line(action, hints.get(action.dest), inherited))
    if inherited_count:
        groups[general].append(
            ("--help-all", f"also the {inherited_count} training flags inherited from TRL and transformers")
        )
    if hasattr(parser, "parse_args_and_config"):  # TrlParser reads --config itself, outside argparse
        groups[general].append(
            ("--config PATH", "YAML file of flag: value; a flag given on the command line wins")
        )

    path = ENTRY_POINTS[module_name]
    required = [
        f"{a.option_strings[0]} {_metavar(a, None)}"
        for a in parser._actions
        if a.required and a.option_strings
    ]
    out = [
        f"usage: python {path} {' '.join([*required, '[flags]'])}",
        f"   or: python -m {module_name} ...",
        "",
    ]
    out += [" ".join(module.__doc__.split("\n\n")[0].split()), ""]
    if examples := _examples(module.__doc__):
        out += ["Examples:", *examples, ""]
    column = min(FLAG_COLUMN, max(len(flag) for lines in groups.values() for flag, _ in lines))
    for (heading, _), lines in sorted(groups.items(), key=lambda item: item[0][1]):  # the project's first
        out.append(f"{heading}:")
        out += [f"  {flag:<{column}}  {text}".rstrip() for flag, text in lines]
        out.append("")
    if owners and any(a.option_strings[0].startswith("--no_") for a in parser._actions if a.option_strings):
        out.append("A BOOL flag takes true or false; one that defaults to true also has --no_<flag>.")
    out.append("Defaults shown are config.py's; FDPO_* variables (in the environment or .env) override them.")
    return "\n".join(out).rstrip() + "\n"


def texts() -> dict[str, str]:
    """File name -> text, for every entry point; `<module>.all.txt` only where --help-all adds flags."""
    files = {}
    for name in ENTRY_POINTS:
        files[f"{name}.txt"] = render(name)
        everything = render(name, everything=True)
        if everything != files[f"{name}.txt"]:
            files[f"{name}.all.txt"] = everything
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a stored text is stale"
    )
    args = parser.parse_args()
    # config.py's defaults as written, not this shell's: set before any entry point imports config.
    for name in [name for name in os.environ if name.startswith("FDPO_")]:
        del os.environ[name]
    os.environ["PYTHON_DOTENV_DISABLED"] = "1"
    wanted = texts()
    stored = {path.name: path.read_text(encoding="utf-8") for path in TEXT_DIR.glob("*.txt")}
    if args.check:
        stale = sorted(
            set(wanted) ^ set(stored) | {name for name in wanted if stored.get(name) != wanted[name]}
        )
        for name in stale:
            diff = difflib.unified_diff(
                stored.get(name, "").splitlines(),
                wanted.get(name, "").splitlines(),
                name,
                "live parser",
                lineterm="",
            )
            print("\n".join(list(diff)[:40]))
        if stale:
            sys.exit(f"stale help text: {', '.join(stale)} (run: poetry run python scripts/build_help.py)")
        return
    TEXT_DIR.mkdir(exist_ok=True)
    for name in set(stored) - set(wanted):
        (TEXT_DIR / name).unlink()
    for name, text in wanted.items():
        (TEXT_DIR / name).write_text(text, encoding="utf-8")
    print(f"wrote {len(wanted)} files to {TEXT_DIR.relative_to(REPO)}")


if __name__ == "__main__":
    main()
