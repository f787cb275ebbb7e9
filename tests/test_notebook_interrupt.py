"""Ctrl-C while the notebook stage runs a cell: one error line, and nothing of the cell's left to print
a DeadKernelError traceback later."""

import asyncio
import gc
import logging

import nbformat
import pytest
from jupyter_core.utils import ensure_event_loop
from nbformat.v4 import new_code_cell, new_notebook

import reproduce
from common.errors import exits_cleanly


def test_ctrl_c_in_a_cell_leaves_no_task_of_it_to_fail_later(tmp_path, monkeypatch, capfd, caplog):
    import os

    cell = f"import os, signal, time\nos.kill({os.getpid()}, signal.SIGINT)\ntime.sleep(60)"
    monkeypatch.setattr(nbformat, "read", lambda *args, **kwargs: new_notebook(cells=[new_code_cell(cell)]))
    with caplog.at_level(logging.ERROR, logger="asyncio"), pytest.raises(SystemExit) as ended:
        exits_cleanly(reproduce.execute_notebook)(tmp_path / "tiny", "tiny", "study")
    assert ended.value.code == 130
    loop = ensure_event_loop()
    assert [
        task for task in asyncio.all_tasks(loop) if not task.done()
    ] == []  # the kernel-alive poll included
    loop.run_until_complete(asyncio.sleep(1.5))  # past the poll's period, had it been left
    gc.collect()  # a task's unretrieved exception is reported when it is collected
    err = capfd.readouterr().err
    assert "DeadKernelError" not in err + caplog.text and "Traceback" not in err, err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        "error: interrupted; finished work and the last checkpoint are kept, rerun the command to resume"
    ]
