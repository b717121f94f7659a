"""Atomic file writes: a temp file in the target folder, then ``os.replace``; nothing half-written is ever visible.

Only regular files are written: a target that is a folder, a device, a FIFO or a socket is refused with one line (a
rename would replace ``/dev/full`` or a pipe with a plain file). A symlink is written through: its target file is
replaced, the link stays."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import ITIError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it is renamed onto ``path``, on error it is removed."""
    target = regular_file_target(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
    except OSError as exc:
        raise ITIError(f"{path}: cannot write there ({exc.strerror or type(exc).__name__}"
                       f"{': ' + str(exc.filename) if exc.filename else ''})") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def regular_file_target(path: str | os.PathLike, what: str = "") -> Path:
    """The file an atomic write replaces: ``path``, or the file a symlink points to; anything else is refused (the
    message names ``what``, e.g. the option, when given)."""
    target = Path(path).expanduser()
    if target.is_symlink():
        target = Path(os.path.realpath(target))
    if target.exists() and not target.is_file():
        kind = "a folder" if target.is_dir() else "not a regular file (a device, pipe or socket)"
        raise ITIError(f"{what + ' ' if what else ''}{path}: is {kind}; refusing to replace it with a file")
    return target


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


# JSON records whose content is checked on read (fold results): an edited or truncated file is not reused as is ------
SEAL_KEY = "content_sha256"


def _seal(obj: dict) -> str:
    import hashlib

    body = {k: v for k, v in obj.items() if k != SEAL_KEY}
    canonical = json.dumps(json.loads(json.dumps(body, default=str)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def write_json_sealed(path: str | os.PathLike, obj: dict) -> None:
    """``write_json_atomic`` plus the sha256 of the content, which ``read_json_sealed`` checks."""
    write_json_atomic(path, {**obj, SEAL_KEY: _seal(obj)})


def read_json_sealed(path: str | os.PathLike) -> tuple[dict | None, str | None]:
    """(record, None) when ``path`` holds a sealed record whose content matches its seal; (None, why) otherwise
    (missing, unreadable, unsealed or edited); the caller recomputes and says why."""
    p = Path(path)
    if not p.is_file():
        return None, "missing"
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None, f"{p}: unreadable JSON"
    if not isinstance(obj, dict):
        return None, f"{p}: not a JSON object"
    if SEAL_KEY not in obj:
        return None, f"{p}: no {SEAL_KEY} (written by an older version)"
    if obj[SEAL_KEY] != _seal(obj):
        return None, f"{p}: content does not match its {SEAL_KEY} (edited after it was written)"
    return obj, None
