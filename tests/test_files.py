"""The shared file helpers and the layout module's table writers."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tunesweep.errors import UserError
from tunesweep.files import atomic_path, read_jsonl, write_text
from tunesweep.layout import format_cell, markdown_table


def test_atomic_path_keeps_the_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old contents\n")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half a new ta")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old contents\n"
    assert os.listdir(tmp_path) == ["table.csv"]  # no temporary file left behind


def test_atomic_writes_replace_and_keep_the_usual_mode(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    write_text(target, "one")
    write_text(target, "two")
    assert target.read_text() == "two"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_read_jsonl_names_the_broken_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n\n{"a": \n')
    with pytest.raises(UserError, match=rf"^{path}: line 3: not valid JSON"):
        read_jsonl(path)


def test_format_cell():
    assert format_cell(None) == "" and format_cell(float("nan"), blank="–") == "–"
    assert format_cell(3) == "3" and format_cell(np.int64(400)) == "400"
    assert format_cell(0.5) == "0.500000" and format_cell(np.float32(0.25), 2) == "0.25"
    assert format_cell("top_k_50") == "top_k_50"


def test_markdown_table_escapes_pipes_and_newlines():
    text = markdown_table(["a", "b"], [["x|y", "two\nlines"]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| x\\|y | two lines |"]
