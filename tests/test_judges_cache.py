"""The SQLite judgment cache: keyed by backend, model, revision, judge identity and exact prompt; WAL; committed
per judgment. How each backend's identity is formed is tested in test_judges_api.py and test_judges_hf.py."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

from lm_eval_iti.judges.cache import JudgmentCache, cache_key
from lm_eval_iti.judges.scoring import Judgment, failed


def test_round_trip_and_key_components(tmp_path):
    path = tmp_path / "c.sqlite"
    cache = JudgmentCache(path)
    cache.put("openai", "m", "r1", "id1", "Q: a\nA: b\nTrue:", Judgment(0.75))
    assert cache.get("openai", "m", "r1", "id1", "Q: a\nA: b\nTrue:") == Judgment(0.75)
    # every key component matters, including the judge identity and a trailing byte of the prompt
    for other in (("hf", "m", "r1", "id1", "Q: a\nA: b\nTrue:"), ("openai", "m2", "r1", "id1", "Q: a\nA: b\nTrue:"),
                  ("openai", "m", "r2", "id1", "Q: a\nA: b\nTrue:"), ("openai", "m", "r1", "id2", "Q: a\nA: b\nTrue:"),
                  ("openai", "m", "r1", "id1", "Q: a\nA: b.\nTrue:")):
        assert cache.get(*other) is None
    cache.close()
    reopened = JudgmentCache(path)
    assert reopened.get("openai", "m", "r1", "id1", "Q: a\nA: b\nTrue:") == Judgment(0.75)
    assert len(reopened) == 1
    reopened.close()


def test_wal_and_each_judgment_committed_at_once(tmp_path):
    path = tmp_path / "c.sqlite"
    cache = JudgmentCache(path)
    cache.put("openai", "m", "", "i", "p1", Judgment(0.1))
    # another connection sees the row while the writer is still open: nothing waits for a close or a batch
    other = sqlite3.connect(str(path))
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    row = other.execute("SELECT backend, model, revision, identity, prompt, p_yes FROM judgments").fetchall()
    assert row == [("openai", "m", "", "i", "p1", 0.1)]
    other.close()
    cache.close()


def test_a_killed_writer_keeps_its_committed_judgments(tmp_path):
    path = tmp_path / "c.sqlite"
    code = (
        "import os\n"
        "from lm_eval_iti.judges.cache import JudgmentCache\n"
        "from lm_eval_iti.judges.scoring import Judgment\n"
        f"c = JudgmentCache({str(path)!r})\n"
        "for i in range(5):\n"
        "    c.put('openai', 'm', '', 'i', f'p{i}', Judgment(i / 10))\n"
        "os._exit(9)  # no close, no cleanup: a crash\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    cache = JudgmentCache(path)
    assert len(cache) == 5 and cache.get("openai", "m", "", "i", "p3") == Judgment(0.3)
    cache.close()


def test_unusable_judgments_are_not_cached(tmp_path):
    cache = JudgmentCache(tmp_path / "c.sqlite")
    cache.put("openai", "m", "", "i", "p", failed("malformed"))
    assert cache.get("openai", "m", "", "i", "p") is None and len(cache) == 0
    cache.close()


def test_cache_off_still_deduplicates_in_memory():
    cache = JudgmentCache(None)
    cache.put("hf", "m", "", "i", "p", Judgment(0.9))
    assert cache.get("hf", "m", "", "i", "p") == Judgment(0.9)


def test_key_is_stable():
    assert cache_key("openai", "m", "", "i", "p") == cache_key("openai", "m", "", "i", "p")
    assert cache_key("openai", "m", "", "i", "p") != cache_key("openai", "m", "", "i", "p ")


def test_an_undecided_no_round_trips(tmp_path):
    cache = JudgmentCache(tmp_path / "c.sqlite")
    cache.put("openai", "m", "", "i", "p", Judgment(0.0, undecided=True))
    cache.close()
    reopened = JudgmentCache(tmp_path / "c.sqlite")
    assert reopened.get("openai", "m", "", "i", "p") == Judgment(0.0, undecided=True)
    reopened.close()


def test_a_cache_file_of_the_old_schema_is_upgraded_and_its_rows_never_match(tmp_path):
    """Rows made before the identity existed were keyed without it: they must not answer for any judge now."""
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(str(path))
    conn.execute("CREATE TABLE judgments (key TEXT PRIMARY KEY, backend TEXT NOT NULL, model TEXT NOT NULL, "
                 "revision TEXT NOT NULL, prompt TEXT NOT NULL, p_yes REAL NOT NULL, created REAL NOT NULL)")
    import hashlib
    import json
    old_key = hashlib.sha256(json.dumps(["openai", "m", "", "p"]).encode()).hexdigest()
    conn.execute("INSERT INTO judgments VALUES (?, 'openai', 'm', '', 'p', 0.9, 0)", (old_key,))
    conn.commit()
    conn.close()
    cache = JudgmentCache(path)
    assert cache.get("openai", "m", "", "", "p") is None and len(cache) == 1
    cache.put("openai", "m", "", "i", "p", Judgment(0.2))
    assert cache.get("openai", "m", "", "i", "p") == Judgment(0.2)
    cache.close()
