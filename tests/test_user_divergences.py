"""A divergence of one's own (`--divergences module:function`): refused in one line, fingerprinted by what
it computes."""

import importlib
import os
import re
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
    """The helper's code is hashed with the named module's (train_dpo/user_code.py), and its values too."""
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
    assert after["divergence_source_sha256"] != before["divergence_source_sha256"]  # fdpo_helper_c changed
    assert after["divergence_values_sha256"] != before["divergence_values_sha256"]
    assert after != before


def test_builtin_runs_record_no_values_hash():
    """Their code is the repository's: their recorded fingerprints stay as they were."""
    assert "divergence_values_sha256" not in settings_of("jsd")


def dry_run_with(tmp_path, module: str, source: str, attribute: str) -> subprocess.CompletedProcess:
    """`reproduce.py --dry-run --divergences module:attribute` as its own process, the module written to
    `tmp_path` and put on its PYTHONPATH; results would go to `tmp_path / "r"`."""
    (tmp_path / f"{module}.py").write_text(source)
    paths = [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]
    return subprocess.run(
        [sys.executable, "reproduce.py", "--preset", "tiny", "--divergences", f"{module}:{attribute}",
         "--results_dir", str(tmp_path / "r"), "--dry-run"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)},
    )  # fmt: skip


def test_a_failing_divergence_is_one_line_from_reproduce(tmp_path):
    result = dry_run_with(
        tmp_path, "raising_divergences", "def bad(logu):\n    raise RuntimeError('boom')\n", "bad"
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: divergence 'raising_divergences:bad': f' raised RuntimeError "), last
    assert not (tmp_path / "r").exists()


# Every way a user's module or f' can end an import or a call abnormally, and how the refusal names it.
# A SystemExit or a GeneratorExit is no Exception: before, `sys.exit(0)` at import ended a sweep with
# status 0 and no output.
ABNORMAL_ENDS = [
    ("exit0_at_import", "import sys\nsys.exit(0)\n", "f", r"cannot import module 'exit0_at_import' \(SystemExit: 0\)"),
    ("exit3_at_import", "raise SystemExit(3)\n", "f", r"cannot import module 'exit3_at_import' \(SystemExit: 3\)"),
    ("exit_text_at_import", "import sys\nsys.exit('bye')\n", "f", r"\(SystemExit: bye\)"),
    ("generator_exit_at_import", "raise GeneratorExit\n", "f", r"\(GeneratorExit: no message\)"),
    ("base_exception_at_import", "class Stop(BaseException):\n    pass\n\nraise Stop('x\\ny')\n", "f",
     r"\(Stop: x\)$"),  # one line of its message: the report is one line
    ("unprintable_at_import",
     "class Odd(Exception):\n    def __str__(self):\n        raise SystemExit(0)\n\nraise Odd()\n", "f",
     r"\(Odd: its message could not be printed\)"),
    ("not_a_module", "import sys\nsys.modules[__name__] = 42\n", "f",
     r"importing 'not_a_module' gave int, not a module"),
    ("getattr_exits", "import sys\n\ndef __getattr__(name):\n    sys.exit(0)\n", "f",
     r"reading 'f' from module 'getattr_exits' \(SystemExit: 0\)"),
    ("not_callable", "f = 3\n", "f", r"expected a Divergence or a function of log u, not int"),
    ("f_prime_not_callable", "from train_dpo.divergences import Divergence\nf = Divergence('f', 3)\n", "f",
     r"its f_prime is int, not a function of log u"),
    ("call_exits", "import sys\n\ndef f(logu):\n    sys.exit(0)\n", "f",
     r"f' raised SystemExit when called on a tensor of log u \(0\)"),
    ("call_generator_exit", "def f(logu):\n    raise GeneratorExit\n", "f",
     r"f' raised GeneratorExit when called on a tensor of log u \(no message\)"),
    ("call_unprintable",
     "class Odd(Exception):\n    def __str__(self):\n        raise SystemExit(0)\n\n"
     "def f(logu):\n    raise Odd()\n", "f",
     r"f' raised Odd when called on a tensor of log u \(its message could not be printed\)"),
    ("call_tensor_subclass_exits",
     "import sys\nimport torch\n\nclass Exiting(torch.Tensor):\n    @classmethod\n"
     "    def __torch_function__(cls, func, types, args=(), kwargs=None):\n        sys.exit(0)\n\n"
     "def f(logu):\n    return (logu + 1).as_subclass(Exiting)\n", "f",
     r"f' returned Exiting, not a floating-point tensor"),  # its methods are never called
]  # fmt: skip


@pytest.fixture(params=ABNORMAL_ENDS, ids=[case[0] for case in ABNORMAL_ENDS])
def abnormal(request, user_modules) -> tuple[str, str]:
    """(spec, expected message) of one case, its module written where the import finds it."""
    name, source, attribute, message = request.param
    user_modules(name, source)
    return f"{name}:{attribute}", message


def test_a_divergence_ending_abnormally_is_one_line_from_reproduce(abnormal, tmp_path, error_line):
    """`reproduce.py --dry-run --divergences mod:f`: status 2, one `error:` line naming the spec, no folder."""
    import reproduce

    spec, message = abnormal
    results = tmp_path / "r"
    argv = ["--preset", "tiny", "--divergences", spec, "--results_dir", str(results), "--dry-run"]
    line = error_line(reproduce.cli, argv, alone=True)
    assert re.search(rf"^error: divergence '{re.escape(spec)}': .*{message}", line), line
    assert not results.exists()


def test_a_divergence_ending_abnormally_is_one_line_from_train(abnormal, tmp_path, error_line):
    """`train_dpo/train.py --divergence mod:f`: refused while its flags are parsed, before any folder."""
    from train_dpo.train import cli

    spec, message = abnormal
    out = tmp_path / "run"
    line = error_line(cli, ["--model", "m", "--output_dir", str(out), "--divergence", spec], alone=True)
    assert re.search(rf"^error: divergence '{re.escape(spec)}': .*{message}", line), line
    assert not out.exists()


def test_ctrl_c_in_a_divergence_module_is_still_an_interrupt(user_modules, error_line):
    """KeyboardInterrupt is the user's Ctrl-C, wherever it lands: status 130, not a refused divergence."""
    import reproduce

    user_modules("interrupted_at_import", "raise KeyboardInterrupt\n")
    argv = ["--preset", "tiny", "--divergences", "interrupted_at_import:f", "--dry-run"]
    assert error_line(reproduce.cli, argv, status=130).startswith("error: interrupted")


def test_sys_exit_0_at_import_fails_reproduce_as_its_own_process(tmp_path):
    """The reported case end to end: before, status 0 and no output at all."""
    result = dry_run_with(tmp_path, "exiting_divergences", "import sys\nsys.exit(0)\n", "f")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        "error: divergence 'exiting_divergences:f': cannot import module 'exiting_divergences' (SystemExit: 0)"
    ]
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("ending", ["sys.exit(0)", "raise GeneratorExit", "raise RuntimeError('late')"])
def test_a_divergence_ending_abnormally_only_in_training_is_one_line_not_a_silent_success(
    ending, user_modules, tiny_model_dir, tmp_path, error_line
):
    """f' passes the theorem's check (called without gradients) and ends the process at the first training
    step: where sys.exit(0) ended train.py with status 0 and no weights, it is one line, status 2."""
    from synthetic import scored_file

    from train_dpo.train import cli

    user_modules("fdpo_late_divs", f"import sys\n\n\ndef late(logu):\n    if logu.requires_grad:\n"
                                   f"        {ending}\n    return logu\n")  # fmt: skip
    out = tmp_path / "run"
    line = error_line(cli, ["--model", str(tiny_model_dir), "--dataset", scored_file(), "--output_dir", str(out),
                            "--divergence", "fdpo_late_divs:late", "--max_steps", "1", "--max_length", "64",
                            "--max_eval_pairs", "4"])  # fmt: skip
    assert line.startswith("error: divergence 'fdpo_late_divs:late': its f' failed"), line
    assert not (out / "adapter_model.safetensors").exists()
