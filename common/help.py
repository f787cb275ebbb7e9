"""`-h`, `--help` and `--help-all` for the entry points, answered before torch, transformers and TRL load.

argparse prints help only once its parser exists, and the parsers of train.py, dataset/main.py,
generate.py and evaluate.py are built from config classes that need those libraries: 15-25 s of imports
on 2 CPU cores, for a page of text. So each entry point's help is rendered from its live parser by
`scripts/build_help.py` and stored in `common/help_text/` (tests/test_help.py fails when a stored text
no longer matches the parser), and each entry module imports this module before anything heavy:

    import common.help  # noqa: F401  (first: answers --help before the heavy imports below)

On that import, when the program being run is an entry point with a stored text and a help flag is on its
command line, the text is printed and the process exits 0. Imported by anything else (a test, another
entry point's import of that module), it does nothing. Only the standard library is imported here.
"""

import sys
from pathlib import Path

TEXT_DIR = Path(__file__).with_name("help_text")
ROOT = Path(__file__).resolve().parents[1]  # the checkout, or site-packages when installed
FLAGS = ("-h", "--help", "--help-all")


def running_module() -> str | None:
    """The dotted name of the program being run: `train_dpo.train` for `python train_dpo/train.py`,
    `python -m train_dpo.train` and a console script that calls into it; None when it is not a file."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:  # python -m
        return spec.name
    file = getattr(main, "__file__", None)
    if not file:  # python -c, the interactive prompt
        return None
    path = Path(file).resolve()
    if path.suffix == ".py" and path.is_relative_to(ROOT):
        return ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return console_script_module(path.name)


def console_script_module(name: str) -> str | None:
    """The module behind an installed console script (`fdpo-train` -> `train_dpo.train`), else None."""
    from importlib.metadata import entry_points  # only on the way to printing help

    found = entry_points(group="console_scripts", name=name)
    return next(iter(found)).module if found else None


def help_text(module: str, argv: list[str]) -> str | None:
    """The stored text that `argv` asks `module` for, or None (no help flag, or no text stored for it)."""
    flags = set(argv[: argv.index("--")] if "--" in argv else argv) & set(FLAGS)
    if not flags:
        return None
    names = ([f"{module}.all.txt"] if "--help-all" in flags else []) + [f"{module}.txt"]
    path = next((TEXT_DIR / name for name in names if (TEXT_DIR / name).is_file()), None)
    return path.read_text(encoding="utf-8") if path else None


def answer_help() -> None:
    """Print the running entry point's stored help and exit 0, when its command line asks for help."""
    if not set(sys.argv[1:]) & set(FLAGS):
        return
    module = running_module()
    text = help_text(module, sys.argv[1:]) if module else None
    if text is not None:
        sys.stdout.write(text)
        sys.exit(0)


answer_help()
