"""Judge throughput: bounded parallel requests vs one request at a time (how the reference judged), on a local
OpenAI-compatible server (tests/test_judges_fakeserver.py) that answers each request after a fixed latency.

Prints seconds for N answers x 2 judges at concurrency 1 and 16, the speed-up, and the requests a rerun makes
(the cache should make it zero); last line the JSON figures. Option: --answers N, --latency SECONDS.
The reference additionally slept 0.1 s after each call, so its time would be N x 2 x (latency + 0.1) s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "_reference"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main():
    from _common import emit, figure
    from judge_server import FakeJudgeServer

    from lm_eval_iti.judges.config import from_sources
    from lm_eval_iti.judges.judging import judge_items
    from lm_eval_iti.judges.prompts import Item

    parser = argparse.ArgumentParser()
    parser.add_argument("--answers", type=int, default=80)
    parser.add_argument("--latency", type=float, default=0.05)
    a = parser.parse_args()
    items = [Item(f"Benchmark question {i}?", f"Benchmark answer {i}.") for i in range(a.answers)]
    server = FakeJudgeServer().start()
    server.delay = a.latency
    seconds, rerun_requests = {}, None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for concurrency in (1, 16):
                cfg = from_sources({"judge": "openai", "truth_judge": "truth-judge", "info_judge": "info-judge",
                                    "judge_base_url": server.url, "judge_concurrency": concurrency,
                                    "judge_cache": f"{tmp}/c{concurrency}.sqlite"}, environ={})
                start = time.perf_counter()
                first = judge_items(items, cfg, progress=False)
                seconds[concurrency] = time.perf_counter() - start
                before = server.total("completions")  # judge requests (a rerun still reads GET /models once)
                again = judge_items(items, cfg, progress=False)
                rerun_requests = server.total("completions") - before
                assert again.metrics == first.metrics
    finally:
        server.stop()
    speedup = seconds[1] / seconds[16]
    n_requests = 2 * a.answers
    print(f"{n_requests} judge requests, server latency {a.latency * 1000:.0f} ms")
    print(f"  one at a time:   {seconds[1]:.2f} s")
    print(f"  16 in parallel:  {seconds[16]:.2f} s   speed-up x{speedup:.1f}")
    print(f"  reference (serial + 0.1 s sleep), estimated: {n_requests * (a.latency + 0.1):.2f} s")
    print(f"  rerun with the cache: {rerun_requests} requests")
    emit([figure("judges: 16 parallel vs serial requests, speed-up", speedup, ">= 5", speedup >= 5),
          figure("judges: requests on a cached rerun", float(rerun_requests), "== 0", rerun_requests == 0)])


if __name__ == "__main__":
    main()
