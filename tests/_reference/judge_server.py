"""An independent judge: a real HTTP server on 127.0.0.1 speaking the OpenAI completions, chat-completions and models
endpoints, with injectable faults and a deterministic P(yes) per request (``server_p_yes``), written without the
package's code. The ``fake_server`` fixture (conftest.py) starts one; tests/test_judges_fakeserver.py checks it."""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


FAULTS = ("429", "500", "slow", "malformed")  # per request, by ``plan``; ``down`` and ``html`` hit every request
MALFORMED_BODIES = (
    b"{this is not json",
    json.dumps({"id": "x", "object": "text_completion", "choices": []}).encode(),
    json.dumps({"id": "x", "object": "text_completion",
                "choices": [{"index": 0, "text": " yes", "logprobs": None, "finish_reason": "length"}]}).encode(),
)


def server_p_yes(model: str, text: str) -> float:
    """The server's deterministic P(yes) for a request: what the tests compute their expected metrics from."""
    digest = hashlib.sha256(f"{model}\x00{text}".encode()).digest()
    return 0.02 + 0.96 * int.from_bytes(digest[:4], "big") / 2**32


EVAL_COLUMNS = ("Category", "Source", "Question", "Examples: True", "Examples: False", "Examples: Informative",
                "Examples: Uninformative")


def write_eval_examples(folder, questions: int = 60) -> list[tuple[str, list[str], list[str], list[str], list[str]]]:
    """A small ``eval_examples.csv`` in TruthfulQA's shape (answers joined by "; "): per question 2 true, 2 false,
    2 informative and 2 uninformative answers. Returns (question, true, false, informative, uninformative) rows."""
    import csv
    from pathlib import Path

    rows = [(f"Synthetic question {i}?", [f"True answer {i}a", f"True answer {i}b"],
             [f"False answer {i}a", f"False answer {i}b"], [f"Informative answer {i}a", f"Informative answer {i}b"],
             [f"I have no comment ({i})", f"I don't know ({i})"]) for i in range(questions)]
    path = Path(folder) / "eval_examples.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(EVAL_COLUMNS)
        for q, *answers in rows:
            writer.writerow(["Synthetic", "test", q, *("; ".join(a) for a in answers)])
    return rows


class FakeJudgeServer:
    def __init__(self, models=("truth-judge", "info-judge", "chat-judge"), api_key: str | None = None):
        self.models = list(models)
        self.api_key = api_key
        self.plan = lambda endpoint, key, attempt: None  # -> None or one of FAULTS / "noanswer"
        self.slow_seconds = 1.5
        self.delay = 0.005  # every normal response: lets concurrent requests overlap
        self.p_override: dict[str, float] = {}
        self.p_constant: float | None = None  # every prompt not overridden gets this P(yes): an always-yes/no judge
        self.created, self.owned_by = 0, "test"  # what GET /models says of every model
        self.created_now = False  # vLLM's way: ``created`` is the time of each listing, a new value every call
        self.root = None  # vLLM's root / max_model_len of every model (None: not listed, like OpenAI)
        self.max_model_len = None
        self.listings = 0
        self.html = False  # a web page at this URL: every request answers HTTP 200 with an HTML body
        self.down = False  # an outage: every request, GET /models included, answers HTTP 500
        self.requests = Counter()
        self.attempts = Counter()
        self.bodies: list[dict] = []
        self.auth_seen: set[str] = set()
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def total(self, endpoint=None) -> int:
        return sum(n for (ep, _), n in self.requests.items() if endpoint in (None, ep))

    def p_yes(self, model: str, text: str) -> float:
        if text in self.p_override:
            return self.p_override[text]
        return server_p_yes(model, text) if self.p_constant is None else self.p_constant

    def judge_like_humans(self, rows) -> None:
        """Make this server a perfect judge of labelled answers (``write_eval_examples`` rows, or TruthfulQA's as
        (question, true, false, informative, uninformative)): P(yes) 0.9 for positives, 0.1 for negatives."""
        for q, true, false, informative, uninformative in rows:
            for answers, suffix, p in ((true, "True:", 0.9), (false, "True:", 0.1), (informative, "Helpful:", 0.9),
                                       (uninformative, "Helpful:", 0.1)):
                for a in answers:
                    self.p_override[f"Q: {q}\nA: {a}\n{suffix}"] = p

    # -- responses ---------------------------------------------------------------------------------------------
    def models_entry(self, model: str) -> dict:
        """One ``GET /models`` entry; with ``root`` set, shaped like vLLM's (root, parent, max_model_len and a
        permission list whose id and time are new on every listing)."""
        with self.lock:
            self.listings += 1
            created = int(time.time()) + self.listings if self.created_now else self.created
        entry = {"id": model, "object": "model", "created": created, "owned_by": self.owned_by}
        if self.root is not None:
            entry.update(root=self.root, parent=None, max_model_len=self.max_model_len,
                         permission=[{"id": f"modelperm-{self.listings:08x}", "object": "model_permission",
                                      "created": created, "allow_sampling": True}])
        return entry

    def completion_body(self, model: str, prompt: str, fault) -> dict:
        p = self.p_yes(model, prompt)
        if fault == "noanswer":
            top = {" The": -0.1, " I": -2.5}
        else:
            top = {" yes": math.log(p), " no": math.log1p(-p)}
        best = max(top, key=top.get)
        return {"id": "cmpl-1", "object": "text_completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "text": best, "finish_reason": "length",
                             "logprobs": {"tokens": [best], "token_logprobs": [top[best]], "top_logprobs": [top],
                                          "text_offset": [len(prompt)]}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}}

    def chat_body(self, model: str, key: str, fault) -> dict:
        content = "Perhaps." if fault == "noanswer" else ("Yes." if self.p_yes(model, key) >= 0.5 else "no")
        return {"id": "chat-1", "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, body: bytes, headers=()):
                if getattr(self, "_counted", False):  # the request is answered: no longer in flight, before the
                    self._counted = False              # client can see the reply and send its next request
                    with server.lock:
                        server.in_flight -= 1
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in headers:
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _json(self, status: int, obj, headers=()):
                self._send(status, json.dumps(obj).encode(), headers)

            def _authorized(self) -> bool:
                if server.api_key is None:
                    return True
                if self.headers.get("Authorization") == f"Bearer {server.api_key}":
                    return True
                server.requests[("rejected", "")] += 1
                self._json(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                           "code": "invalid_api_key"}})
                return False

            def _html(self) -> bool:
                if not server.html:
                    return False
                server.requests[("html", "")] += 1
                body = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>Sign in</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return True

            def _outage(self) -> bool:
                if server.down:
                    server.requests[("down", "")] += 1
                    self._json(500, {"error": {"message": "service unavailable", "type": "server_error"}})
                return server.down

            def do_GET(self):
                if self._html() or self._outage():
                    return
                if not self.path.rstrip("/").endswith("/v1/models"):
                    return self._json(404, {"error": {"message": "not found"}})
                if not self._authorized():
                    return
                server.requests[("models", "")] += 1
                self._json(200, {"object": "list", "data": [server.models_entry(m) for m in server.models]})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self._html() or self._outage():
                    return
                if not self._authorized():
                    return
                if self.path.endswith("/v1/completions"):
                    endpoint, key = "completions", body.get("prompt", "")
                elif self.path.endswith("/v1/chat/completions"):
                    endpoint, key = "chat", body["messages"][-1]["content"]
                else:
                    return self._json(404, {"error": {"message": "not found"}})
                model = body.get("model", "")
                if model not in server.models:
                    return self._json(404, {"error": {"message": f"The model `{model}` does not exist."}})
                with server.lock:
                    server.auth_seen.add(self.headers.get("Authorization", ""))
                    attempt = server.attempts[(endpoint, model, key)]
                    server.attempts[(endpoint, model, key)] += 1
                    server.requests[(endpoint, model)] += 1
                    server.bodies.append(body)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    self._counted = True
                try:
                    fault = server.plan(endpoint, key, attempt)
                    if fault == "429":
                        return self._json(429, {"error": {"message": "Rate limit reached", "type": "requests"}},
                                          headers=[("Retry-After", "0")])
                    if fault == "500":
                        return self._json(500, {"error": {"message": "internal error", "type": "server_error"}})
                    if fault == "malformed":
                        return self._send(200, MALFORMED_BODIES[attempt % len(MALFORMED_BODIES)])
                    if fault == "slow":
                        time.sleep(server.slow_seconds)
                    else:
                        time.sleep(server.delay)
                    if endpoint == "completions":
                        self._json(200, server.completion_body(model, key, fault))
                    else:
                        self._json(200, server.chat_body(model, key, fault))
                finally:
                    if self._counted:  # no reply was sent (e.g. the client went away)
                        self._counted = False
                        with server.lock:
                            server.in_flight -= 1

        return Handler
