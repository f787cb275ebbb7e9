"""The layout the design rests on: `common/` beneath both stages, the stages independent of each other, and
entry points that import the installed project rather than editing sys.path."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "dataset", "train_dpo", "analysis")
ENTRY_POINTS = ("reproduce.py", "dataset/main.py", "train_dpo/train.py", "train_dpo/sft.py", "train_dpo/generate.py",
                "train_dpo/evaluate.py", *(p.relative_to(REPO).as_posix() for p in (REPO / "bench").glob("*.py")))  # fmt: skip


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every module `path` imports, at module level or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("common", {"dataset", "train_dpo", "analysis"}), ("dataset", {"train_dpo", "analysis"}),
     ("train_dpo", {"dataset"}), ("analysis", {"dataset"})],
)  # fmt: skip
def test_each_package_imports_only_what_lies_beneath_it(package, forbidden):
    crossing = {
        path.relative_to(REPO).as_posix(): sorted(imported_packages(path) & forbidden)
        for path in sorted((REPO / package).rglob("*.py"))
    }
    assert {name: found for name, found in crossing.items() if found} == {}


def imported_modules(path: Path) -> set[str]:
    """Full dotted names of every project module `path` imports (`from analysis import report` counts as
    analysis.report)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.update({node.module, *(f"{node.module}.{alias.name}" for alias in node.names)})
    return names


def test_analysis_and_train_dpo_meet_in_two_places_only():
    """train_dpo/evaluate.py alone imports analysis/, and only its interval and calibration modules, which
    import nothing of the project; analysis/ takes from train_dpo/ only the loss names in loss_names.py (no torch). So
    neither package can start an import cycle through the other."""
    project = {"analysis", "common", "dataset", "train_dpo", "config"}
    uses = {
        path.relative_to(REPO).as_posix(): {m for m in imported_modules(path) if m.split(".")[0] in project}
        for package in ("analysis", "train_dpo")
        for path in sorted((REPO / package).rglob("*.py"))
    }
    into_analysis = {name: sorted(m for m in found if m.startswith("analysis.") and m.count(".") == 1)
                     for name, found in uses.items() if name.startswith("train_dpo/")}  # fmt: skip
    assert {name: found for name, found in into_analysis.items() if found} == {
        "train_dpo/evaluate.py": ["analysis.calibration", "analysis.intervals"]
    }
    into_train_dpo = {name: sorted(m for m in found if m.startswith("train_dpo"))
                      for name, found in uses.items() if name.startswith("analysis/")}  # fmt: skip
    assert {name: found for name, found in into_train_dpo.items() if found} == {
        "analysis/frontier.py": ["train_dpo.loss_names", "train_dpo.loss_names.ONLINE_LOSS"]
    }
    assert uses["analysis/intervals.py"] == uses["analysis/calibration.py"] == set()


def test_no_entry_point_edits_sys_path():
    edits = [name for name in ENTRY_POINTS if "sys.path" in (REPO / name).read_text(encoding="utf-8")]
    assert edits == []


def test_only_config_and_reproduce_sit_at_the_top_level():
    assert sorted(path.name for path in REPO.glob("*.py")) == ["config.py", "reproduce.py"]


def test_the_layout_test_sees_a_crossing(tmp_path):
    """The import scan finds imports inside functions and `import x.y` forms, not only `from x import y`."""
    probe = tmp_path / "probe.py"
    probe.write_text("import os\n\ndef f():\n    import train_dpo.trainer\n    from dataset.build import x\n")
    assert imported_packages(probe) == {"os", "train_dpo", "dataset"}


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_the_code_passes_ruff_as_pyproject_configures_it(command):
    """Lint and formatting stay clean, so a contributor's diff shows their change and not a reformat."""
    done = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "."], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]


def test_env_example_names_the_variables_the_project_reads():
    """`.env` is loaded by config.py, so what it can set is what config.py and common/ read: .env.example
    lists each of those (set or commented out) and nothing the code ignores."""
    read = {
        name
        for path in [REPO / "config.py", *sorted((REPO / "common").glob("*.py"))]
        for name in re.findall(r"[\"'](FDPO_[A-Z_]+)[\"']", path.read_text(encoding="utf-8"))
    }
    example = (REPO / ".env.example").read_text(encoding="utf-8")
    assert set(re.findall(r"^#? ?(FDPO_[A-Z_]+)=", example, flags=re.MULTILINE)) == read
