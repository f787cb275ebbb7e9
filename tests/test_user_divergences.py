"""A divergence of one's own (`--divergences module:function`): refused in one line, fingerprinted by what
it computes."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from train_dpo.divergences import get_divergence, values_sha256

REPO = Path(__file__).resolve().parents[1]

BAD = (
    "import torch\n\n"
    "def raises(logu):\n    return logu / 0 + {}['missing']\n\n"
    "def two_args(logu, beta):\n    return beta * logu\n\n"
    "def returns_float(logu):\n    return float(logu.mean())\n\n"
    "def returns_0d(logu):\n    return logu.sum()\n\n"
    "def returns_row(logu):\n    return logu[None]\n\n"
    "def returns_ints(logu):\n    return logu.long()\n\n"
    "def minus_log(logu):\n    return -logu\n\n"
    "def bowl(logu):\n    return logu**2\n"
)


@pytest.fixture
def user_modules(tmp_path, monkeypatch):
    """Write modules into a folder on sys.path; each `write` makes the next import read the file again."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # a same-size edit in the same second reads stale
    written = []

    def write(name: str, source: str) -> None:
        (tmp_path / f"{name}.py").write_text(source)
        written.append(name)
        for module in written:
            sys.modules.pop(module, None)
        importlib.invalidate_caches()

    yield write
    for module in written:
        sys.modules.pop(module, None)


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("raises", r"f' raised KeyError when called on a tensor of log u \('missing'\)"),
        ("two_args", r"f' raised TypeError .*missing 1 required positional argument: 'beta'"),
        ("returns_float", r"f' returned float, not a floating-point tensor"),
        ("returns_0d", r"f' returned shape \(\) for log u of shape \(1401,\)"),
        ("returns_row", r"f' returned shape \(1, 1401\) for log u of shape \(1401,\)"),
        ("returns_ints", r"f' returned a tensor of torch.int64"),
    ],
)
def test_a_function_that_fails_or_returns_no_tensor_like_log_u_is_a_value_error_naming_it(
    user_modules, function, message
):
    """Every caller of get_divergence turns a ValueError into one line; anything else is a traceback."""
    user_modules("bad_user_divergences", BAD)
    with pytest.raises(ValueError, match=rf"^divergence 'bad_user_divergences:{function}': {message}"):
        get_divergence(f"bad_user_divergences:{function}")


@pytest.mark.parametrize("function", ["minus_log", "bowl"])
def test_a_decreasing_f_prime_is_refused_as_not_increasing_not_as_bounded(user_modules, function):
    """-log u runs to +inf as u -> 0: it is not bounded there, it decreases."""
    user_modules("bad_user_divergences", BAD)
    with pytest.raises(ValueError, match="not strictly increasing"):
        get_divergence(f"bad_user_divergences:{function}")


def settings_of(spec: str) -> dict:
    from train_dpo.fingerprint import run_settings
    from train_dpo.train import parse_args

    return run_settings(*parse_args(["--model", "m", "--output_dir", "unused", "--divergence", spec]))


def test_editing_a_helper_the_divergence_calls_changes_the_run_settings(user_modules):
    """Only the named module's source is hashed; its helper's code reaches the weights all the same."""
    helper = "import torch\n\ndef fprime(logu):\n    return {} * logu\n"
    user_modules("fdpo_helper_c", helper.format("2.0"))
    user_modules(
        "fdpo_mod_b", "import fdpo_helper_c\n\ndef viahelper(logu):\n    return fdpo_helper_c.fprime(logu)\n"
    )
    before = settings_of("fdpo_mod_b:viahelper")
    assert before["divergence_values_sha256"] == values_sha256(get_divergence("fdpo_mod_b:viahelper"))

    user_modules("fdpo_helper_c", helper.format("2.0"))  # written again, unchanged
    assert settings_of("fdpo_mod_b:viahelper") == before

    user_modules("fdpo_helper_c", helper.format("5.0"))
    after = settings_of("fdpo_mod_b:viahelper")
    assert after["divergence_source_sha256"] == before["divergence_source_sha256"]  # fdpo_mod_b is as it was
    assert after["divergence_values_sha256"] != before["divergence_values_sha256"]
    assert after != before


def test_builtin_runs_record_no_values_hash():
    """Their code is the repository's: their recorded fingerprints stay as they were."""
    assert "divergence_values_sha256" not in settings_of("jsd")


def test_a_failing_divergence_is_one_line_from_reproduce(tmp_path):
    (tmp_path / "raising_divergences.py").write_text("def bad(logu):\n    raise RuntimeError('boom')\n")
    paths = [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]
    result = subprocess.run(
        [sys.executable, "reproduce.py", "--preset", "tiny", "--divergences", "raising_divergences:bad",
         "--results_dir", str(tmp_path / "r"), "--dry-run"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: divergence 'raising_divergences:bad': f' raised RuntimeError "), last
    assert not (tmp_path / "r").exists()
