"""What a researcher gets from a bare clone: the README's commands find their inputs or say in one line how to
get them, the default paths stay inside the checkout, and the wheel Poetry builds holds every module."""

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import config

REPO = Path(__file__).resolve().parents[1]


def bare_clone(tmp_path: Path) -> Path:
    """The checkout's files as `git clone` would give them (tracked and new, not ignored), alone in a folder."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")  # fmt: skip
    clone = tmp_path / "alone" / "fdpo-imdb"
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, clone / name)
    assert not (clone.parent.parent / "shared").exists() and [p.name for p in clone.parent.iterdir()] == [
        clone.name
    ]
    return clone


def user_env(tmp_path: Path, **extra: str) -> dict:
    """A user's shell, offline: none of the project's variables, an empty Hugging Face cache."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FDPO_")}
    return {**env, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"), **extra}


def test_a_bare_clone_dry_run_names_the_missing_data_then_finds_it(tmp_path, data_dir):
    clone = bare_clone(tmp_path)
    command = [sys.executable, "reproduce.py", "--preset", "tiny", "--dry-run"]
    result = subprocess.run(
        command, cwd=clone, env=user_env(tmp_path), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stdout == "" and "Traceback" not in result.stderr  # one line, no plan
    lines = result.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith("error: IMDb text: stanfordnlp/imdb")
        and "FDPO_DATA_DIR" in lines[0]
    )

    env = user_env(tmp_path, FDPO_DATA_DIR=str(data_dir))
    result = subprocess.run(command, cwd=clone, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    inputs = [line.strip() for line in result.stdout.splitlines() if "IMDb" in line or "reward model" in line]
    assert inputs == [
        f"IMDb data: found {data_dir}",
        "reward model: found vader",
        "gold reward model: found textblob",
    ]
    assert f"base policy: train {clone / 'models' / 'tiny-gpt2-sft-'}" in result.stdout
    assert not (clone / "results").exists() and not (clone / "models").exists()  # a dry run writes nothing


def test_no_default_path_points_outside_the_checkout():
    """The study's data is a local override (FDPO_DATA_DIR), never a default: a clone has no ../shared."""
    sources = [REPO / "config.py", REPO / "reproduce.py",
               *(path for package in ("common", "dataset", "train_dpo", "analysis") for path in (REPO / package).rglob("*.py"))]  # fmt: skip
    hits = [f"{path.name}:{number}" for path in sources
            for number, line in enumerate(path.read_text().splitlines(), 1)
            if re.search(r"""['"/]shared['"/]""", line)]  # fmt: skip
    assert hits == []
    for directory in (config.MODELS_DIR, config.RESULTS_DIR, config.DATASETS_DIR):
        assert directory.name in ("models", "results", "data")  # under the checkout unless a variable says so


@pytest.mark.slow
def test_the_wheel_holds_every_module_the_entry_points_import(tmp_path):
    """Build the wheel as Poetry does and import every module from it in a fresh venv, away from the checkout."""
    from poetry.core.masonry.api import build_wheel

    clone = bare_clone(tmp_path)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    cwd = os.getcwd()
    os.chdir(clone)
    try:
        wheel = wheels / build_wheel(str(wheels))
    finally:
        os.chdir(cwd)
    modules = sorted(
        name.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
        for name in zipfile.ZipFile(wheel).namelist()
        if name.endswith(".py")
    )
    source = {path.relative_to(REPO).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__")
              for package in ("common", "dataset", "train_dpo", "analysis") for path in (REPO / package).rglob("*.py")}  # fmt: skip
    assert source <= set(modules), source - set(modules)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # The project's dependencies come from this environment's site-packages, listed plainly: its .pth files
    # (the editable install that puts the checkout on sys.path) are not read.
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    here = next(p for p in sys.path if p.endswith("site-packages"))
    Path(site, "dependencies.pth").write_text(here + "\n")
    subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", str(wheel)], check=True
    )
    probe = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\nprint(len(sys.argv) - 1)"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([str(python), "-c", probe, *modules], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == str(len(modules))
    located = subprocess.run([str(python), "-c", "import config; print(config.__file__)"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert str(venv) in located  # the installed copy, not the checkout's
