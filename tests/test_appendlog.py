"""The append-only JSONL log: exact round trips, truncation of a cut-off batch, settings checks."""

import json

import pytest

from common.appendlog import AppendLog, describe_changes, read_complete
from common.errors import InputError

# Line and paragraph separators that str.splitlines() would split on inside a JSON string.
TRICKY = {"text": "a\u2028b\x85c\x1cd\re", "n": 1}


def test_round_trip_keeps_unicode_line_separators(tmp_path):
    log = AppendLog(tmp_path / "out.jsonl", {"k": 1})
    log.open()
    log.append([TRICKY, {"text": "plain"}])
    log.finish()
    assert read_complete(tmp_path / "out.jsonl", "test") == [TRICKY, {"text": "plain"}]


def test_a_batch_cut_off_after_the_last_state_save_is_dropped(tmp_path):
    path = tmp_path / "out.jsonl"
    log = AppendLog(path, {"k": 1})
    log.open()
    log.append([{"i": 0}, {"i": 1}])
    with open(path, "a") as handle:  # a crash mid-write: bytes beyond the manifest's count
        handle.write('{"i": 2}\n{"i": 3')
    resumed = AppendLog(path, {"k": 1})
    assert resumed.open() == 2
    assert path.read_text() == '{"i": 0}\n{"i": 1}\n'
    resumed.append([{"i": 2}])
    assert [r["i"] for r in resumed.read()] == [0, 1, 2]


def test_other_settings_are_refused_and_unfinished_logs_are_not_read(tmp_path):
    path = tmp_path / "out.jsonl"
    AppendLog(path, {"k": 1}).open()
    with pytest.raises(InputError, match="made with other settings"):
        AppendLog(path, {"k": 2}).open()
    with pytest.raises(InputError, match="unfinished"):
        read_complete(path, "generate")
    assert json.loads((tmp_path / "out.jsonl.state.json").read_text())["records"] == 0


def test_a_change_list_names_six_settings_and_counts_the_rest():
    old = {f"setting_{i:02d}": i for i in range(10)}
    new = {key: value + 1 for key, value in old.items()}

    said = describe_changes(old, new)

    assert said.startswith("setting_00 0 → 1, setting_01 1 → 2"), said
    assert said.count("→") == 6 and said.endswith("setting_05 5 → 6, and 4 more"), said
    assert describe_changes({"a": 1}, {"a": 2}) == "a 1 → 2"
