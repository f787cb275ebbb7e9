"""The tiny base policy's SFT stage: one folder per setting, built once under a lock, never replaced.

Every stage of a sweep reads the base policy by path for as long as the sweep runs. A second sweep with
other SFT settings must therefore build into a folder of its own and leave the first one's bytes alone;
a second builder of the same setting must not train it again; and an explicit folder holding another
model is refused, not rewritten under its readers.
"""

import json
import threading
from pathlib import Path

import pytest
from conftest import hold_lock

import config
from train_dpo import sft
from train_dpo.sft import sft_model_dir, train_sft

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 0.25  # 10 steps of 32 packed 128-token rows on the 800 texts below, ~2 s


@pytest.fixture(scope="module")
def first_model(sft_data, tmp_path_factory) -> tuple[Path, Path]:
    """(models folder, the model trained there with the default folder for EPOCHS and seed 0)."""
    models = tmp_path_factory.mktemp("models")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(config, "MODELS_DIR", models)
        return models, train_sft(data_dir=sft_data, epochs=EPOCHS)


def snapshot(folder: Path) -> tuple[int, dict]:
    """The folder's inode and every file's bytes: a replaced folder or a rewritten file changes it."""
    return folder.stat().st_ino, {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*")}


@pytest.mark.slow
def test_other_settings_build_their_own_folder_and_the_same_ones_never_train_twice(
    first_model, sft_data, monkeypatch
):
    models, first = first_model
    monkeypatch.setattr(config, "MODELS_DIR", models)
    assert first == sft_model_dir(EPOCHS, sft_data) == models / first.name
    assert first.name.startswith("tiny-gpt2-sft-") and first.name != sft_model_dir(2 * EPOCHS, sft_data).name
    before = snapshot(first)

    # Another process is building a third setting meanwhile: it blocks neither of the others.
    busy = sft_model_dir(EPOCHS, sft_data, seed=2)
    holder = hold_lock(sft.lock_dir(busy))
    try:
        other = train_sft(data_dir=sft_data, epochs=EPOCHS, seed=1)
        assert other == sft_model_dir(EPOCHS, sft_data, seed=1) != first
        assert json.loads((other / "sft_manifest.json").read_text())["settings"]["seed"] == 1
        assert snapshot(first) == before  # not one byte of the model in use changed, nor its folder

        # A second builder of the busy setting (a second sweep needing the same base policy) waits for the
        # first, writing nothing where the model will be, and goes on once the lock is let go.
        waiting = threading.Thread(
            target=train_sft, kwargs={"data_dir": sft_data, "epochs": EPOCHS, "seed": 2}
        )
        waiting.start()
        waiting.join(timeout=3)
        assert waiting.is_alive() and not busy.exists()
    finally:
        holder.stdin.close()  # the holder ends and releases its lock
        holder.wait()
    waiting.join(timeout=600)
    assert not waiting.is_alive() and (busy / "sft_manifest.json").is_file()  # the holder built none: it did

    def trains(*args, **kwargs):
        raise AssertionError("a finished model was trained again")

    monkeypatch.setattr(sft, "build", trains)
    assert train_sft(data_dir=sft_data, epochs=EPOCHS) == first
    assert train_sft(None, sft_data, EPOCHS, seed=1) == other
    assert snapshot(first) == before
    assert sorted(path.name for path in models.iterdir()) == sorted(
        [first.name, other.name, busy.name]
    )  # no litter


@pytest.mark.slow
def test_an_explicit_folder_holding_another_model_is_refused_not_replaced(first_model, sft_data, error_line):
    _, first = first_model
    before = snapshot(first)
    argv = ["--out_dir", str(first), "--data_dir", str(sft_data), "--epochs", str(2 * EPOCHS)]
    line = error_line(sft.cli, argv, alone=True)
    assert line.startswith(f"error: {first}: holds an SFT model made with other settings (epochs 0.25 → 0.5)")
    assert "leave out --out_dir for a folder per setting, or remove it first" in line
    assert snapshot(first) == before
