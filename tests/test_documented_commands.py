"""Every command README.md and docs/*.md show names an entry point that exists, and its flags parse.

The files are read as Markdown (markdown-it-py): shell code blocks line by line, `\\` continuations joined
and `# comments` dropped, and inline code. A command is a `python` or `accelerate launch` invocation
(after any VAR=value and `poetry run`); `python -c` and other tools are not entry points and are left
out. Its flags are parsed, and nothing run, by the entry point's own `parse_args` where it has one (the
dataclasses' checks included), else by the argparse parser its main() builds (scripts/build_help.py's
`live_parser`). `[--flag value]` is an optional part, checked as if written out. A command with a
placeholder (`<run_dir>`, `...`, `…`) is a template: only its flag names are checked. A `--config` file
that does not exist is left out of the parse, being the reader's own YAML. A Python block that opens with
`# name.py` is a module the docs have the reader write (a divergence of their own): it is put on the
path, so a command naming it parses as it would for the reader.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from common.errors import InputError
from scripts.build_help import live_parser

REPO = Path(__file__).resolve().parents[1]
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console", "zsh"}  # a fence's language; others hold code or data
SEPARATORS = {"&&", "||", "|", ";", "&"}
ELLIPSES = {"...", "…"}
FLAG = re.compile(r"^--?[A-Za-z][\w-]*(=.*)?$")


@dataclass
class Command:
    where: str  # file:line
    text: str
    target: str | None = None  # the module run: `train_dpo.train`
    argv: list[str] = field(default_factory=list)
    template: bool = False


class CommandError(Exception):
    """A documented command that names no entry point, or whose flags do not parse."""


def doc_files() -> list[Path]:
    return [path for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))] if path.is_file()]


def snippets(text: str) -> list[tuple[int, str]]:
    """(line number, shell text) of every shell code block line and inline code span of a Markdown text."""
    found = []
    for token in MarkdownIt("commonmark").parse(text):
        if token.type in ("fence", "code_block") and token.info.strip().split(" ")[0] in SHELL_BLOCKS:
            first = token.map[0] + (2 if token.type == "fence" else 1)
            found += logical_lines(token.content, first)
        elif token.type == "inline" and token.children:
            at = 0  # where in the paragraph the last span began, for the line a span starts on
            for child in token.children:
                if child.type == "code_inline":
                    at = max(token.content.find(child.content.split(" ")[0], at), at)
                    found.append((token.map[0] + 1 + token.content.count("\n", 0, at), child.content))
    return found


def logical_lines(block: str, first: int) -> list[tuple[int, str]]:
    """A shell block's commands: lines ending in `\\` joined to the next, a `$ ` prompt dropped."""
    lines, pending, start = [], "", first
    for number, line in enumerate(block.splitlines(), first):
        if not pending:
            start = number
            line = line.removeprefix("$ ")
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        lines.append((start, pending + line))
        pending = ""
    return lines + ([(start, pending)] if pending else [])


def commands(where: str, text: str) -> list[Command]:
    """The python / accelerate launch commands in one line of shell, each with its target and flags."""
    if not re.search(r"\b(python3?|accelerate\s+launch)\b", text):
        return []
    lexer = shlex.shlex(text, posix=True, punctuation_chars="&|;")
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError as error:  # an unclosed quote
        return [Command(where, text, target=f"!unreadable shell: {error}")]
    found, simple = [], []
    for token in [*tokens, ";"]:
        if token not in SEPARATORS:
            simple.append(token)
            continue
        while simple and re.match(r"^[A-Za-z_]\w*=", simple[0]):  # VAR=value before the command
            simple.pop(0)
        if simple[:2] == ["poetry", "run"]:
            simple = simple[2:]
        if simple[:1] in (["python"], ["python3"]) and len(simple) > 1:
            found.append(python_command(where, text, simple[1:]))
        elif simple[:2] == ["accelerate", "launch"] and len(simple) > 2:
            found.append(accelerate_command(where, text, simple[2:]))
        simple = []
    return [command for command in found if command is not None]


def python_command(where: str, text: str, words: list[str]) -> Command | None:
    at = 0
    while at < len(words) and words[at].startswith("-"):
        if words[at] == "-c":  # inline code, no entry point
            return None
        if words[at] == "-m" and at + 1 < len(words):
            return with_args(Command(where, text, target=words[at + 1]), words[at + 2 :])
        at += 2 if words[at] in ("-X", "-W") else 1
    if at == len(words):
        return None
    return with_args(Command(where, text, target=module_of(words[at])), words[at + 1 :])


def accelerate_command(where: str, text: str, words: list[str]) -> Command:
    """The script after accelerate's own options, walked with accelerate's parser (values not checked)."""
    options = accelerate_options()
    at, module = 0, False
    while at < len(words) and words[at].startswith("-"):
        name = words[at].split("=")[0]
        if name not in options:
            return Command(where, text, target=f"!accelerate launch has no option {name}")
        module = module or name in ("-m", "--module")
        at += 1 if options[name] == 0 or "=" in words[at] else 2
    if at == len(words):
        return Command(where, text, target="!accelerate launch names no script")
    return with_args(
        Command(where, text, target=words[at] if module else module_of(words[at])), words[at + 1 :]
    )


@functools.cache
def accelerate_options() -> dict[str, object]:
    from accelerate.commands.launch import launch_command_parser

    return {name: action.nargs for name, action in launch_command_parser()._option_string_actions.items()}


def module_of(script: str) -> str:
    return (
        ".".join(Path(script).with_suffix("").parts)
        if script.endswith(".py")
        else f"!not a .py file: {script}"
    )


def with_args(command: Command, words: list[str]) -> Command:
    for word in words:
        word = word.removeprefix("[").removesuffix("]")  # an optional part, checked as written out
        if word in ELLIPSES or re.search(r"<[^>]*>", word):
            command.template = True
        if word and word not in ELLIPSES:
            command.argv.append(word)
    return command


def documented_commands() -> list[Command]:
    return [
        command
        for path in doc_files()
        for line, text in snippets(path.read_text(encoding="utf-8"))
        for command in commands(f"{path.relative_to(REPO)}:{line}", text)
    ]


def entry_module(name: str):
    """The entry point's module; CommandError when there is no such file or it has no `__main__` guard."""
    if name.startswith("!"):
        raise CommandError(name[1:])
    path = REPO.joinpath(*name.split(".")).with_suffix(".py")
    if not path.is_file():
        raise CommandError(f"no such entry point: {path.relative_to(REPO)}")
    source = path.read_text(encoding="utf-8")
    if 'if __name__ == "__main__":' not in source:
        raise CommandError(f"{path.relative_to(REPO)} is not an entry point (no __main__ guard)")
    return importlib.import_module(name), source


@functools.cache
def flag_names(name: str) -> frozenset[str]:
    parser = live_parser(name)
    extra = {"--config"} if hasattr(parser, "parse_args_and_config") else set()  # TrlParser reads it itself
    return frozenset(parser._option_string_actions) | extra


def check(command: Command) -> None:
    """Raise CommandError unless the command's entry point exists and its flags parse."""
    module, source = entry_module(command.target)
    own_parse = getattr(module, "parse_args", None)
    own_parse = own_parse if getattr(own_parse, "__module__", None) == module.__name__ else None
    if own_parse is None and not ("ArgumentParser(" in source or "ArgParser(" in source):
        if command.argv:
            raise CommandError(f"{command.target} takes no flags, given {' '.join(command.argv)}")
        return
    if command.template:
        unknown = [
            w for w in command.argv if FLAG.match(w) and w.split("=")[0] not in flag_names(command.target)
        ]
        if unknown:
            raise CommandError(f"{command.target} has no flag {', '.join(unknown)}")
        return
    argv = without_missing_config(command.argv)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            own_parse(argv) if own_parse else live_parser(command.target).parse_args(argv)
    except InputError as error:
        raise CommandError(f"{command.target}: {error}") from None
    except SystemExit as exit_:
        if exit_.code not in (0, None):  # 0: the command asks for --help
            raise CommandError(f"{command.target}: {err.getvalue().strip().splitlines()[-1]}") from None


def without_missing_config(argv: list[str]) -> list[str]:
    """`argv` without a `--config PATH` whose file is not in the checkout (the reader's own YAML)."""
    argv = list(argv)
    for at, word in enumerate(argv):
        path = word.split("=", 1)[1] if word.startswith("--config=") else None
        if word == "--config" and at + 1 < len(argv):
            path = argv[at + 1]
        if path is not None and not (REPO / path).is_file():
            del argv[at : at + (1 if "=" in word else 2)]
            break
    return argv


def doc_modules() -> dict[str, str]:
    """File name -> source of the Python blocks that open with `# name.py` (modules the reader writes)."""
    modules = {}
    for path in doc_files():
        for token in MarkdownIt("commonmark").parse(path.read_text(encoding="utf-8")):
            named = re.match(r"#\s*(\w+\.py)\b", token.content) if token.type == "fence" else None
            if named and token.info.strip().split(" ")[0] in ("python", "py"):
                modules[named.group(1)] = token.content
    return modules


@pytest.fixture(scope="module")
def readers_modules(tmp_path_factory):
    folder = tmp_path_factory.mktemp("readers_modules")
    for name, source in doc_modules().items():
        (folder / name).write_text(source, encoding="utf-8")
    sys.path.insert(0, str(folder))
    yield
    sys.path.remove(str(folder))


COMMANDS = documented_commands()


def test_the_docs_show_commands():
    assert COMMANDS, "no `poetry run python` or `accelerate launch` command found in README.md or docs/*.md"


@pytest.mark.parametrize("command", COMMANDS, ids=[command.where for command in COMMANDS])
def test_documented_command_parses(command, monkeypatch, readers_modules):
    monkeypatch.chdir(REPO)  # the docs' relative paths are the checkout's
    try:
        check(command)
    except CommandError as error:
        pytest.fail(f"{command.where}: {command.text.strip()}\n  -> {error}", pytrace=False)


SAMPLE = """\
Run it:

```bash
poetry run python dataset/main.py --preset tiny && poetry run python train_dpo/train.py --preset tiny
ACCELERATE_USE_CPU=true poetry run accelerate launch --multi_gpu --num_processes 2 \\
    train_dpo/train.py --preset tiny --beta 0.5          # 2 CPU processes
poetry run python bench/train.py [--quick]   # optional flag
poetry run pytest tests/test_layout.py
```

Then `python -m train_dpo.stack --stack_dir … --runs runs.json` or `python -c "import torch"`; `accelerate launch`
does the rest.
"""


def test_commands_are_read_from_blocks_continuations_and_inline_code():
    found = [c for line, text in snippets(SAMPLE) for c in commands(f"sample:{line}", text)]
    assert [(c.where, c.target, c.argv, c.template) for c in found] == [
        ("sample:4", "dataset.main", ["--preset", "tiny"], False),
        ("sample:4", "train_dpo.train", ["--preset", "tiny"], False),
        ("sample:5", "train_dpo.train", ["--preset", "tiny", "--beta", "0.5"], False),
        ("sample:7", "bench.train", ["--quick"], False),
        ("sample:11", "train_dpo.stack", ["--stack_dir", "--runs", "runs.json"], True),
    ]


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("poetry run python train_dpo/train.py --preset tiny --divergense jsd", "--divergense"),
        ("poetry run python train_dpo/train.py --divergense <name> ...", "has no flag --divergense"),
        ("poetry run python dataset/main.py --decodng sample", "--decodng"),
        ("poetry run python reproduce.py --preset tiny --seed 3", "--seed"),
        ("poetry run python -m train_dpo.stack --stack_dir a --run runs.json", "--run"),
        ("poetry run python train_dpo/sft.py --epoch 3", "--epoch"),
        ("poetry run python bench/train.py --stpes 5", "--stpes"),
        ("poetry run python train_dpo/trian.py --preset tiny", "no such entry point: train_dpo/trian.py"),
        ("poetry run python common/cli.py", "not an entry point"),
        ("poetry run accelerate launch --num_proceses 2 train_dpo/train.py", "no option --num_proceses"),
    ],
)
def test_a_misspelt_flag_or_script_fails_the_check(line, error, monkeypatch):
    monkeypatch.chdir(REPO)
    (command,) = commands("sample:1", line)
    with pytest.raises(CommandError, match=re.escape(error)):
        check(command)
