"""Atomic writes: nothing half-written, nothing left behind, ordinary permissions."""

from __future__ import annotations

import os

import pytest

from lm_eval_iti.atomic import atomic_path, write_json_atomic


def test_written_file_has_umask_permissions_and_no_temp_left(tmp_path):
    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "out.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "out.json").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out.bin") as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
