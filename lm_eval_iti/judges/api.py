"""The API judges, through the ``openai`` client against any OpenAI-compatible server.

``openai``: the original protocol on the completions endpoint (one token, temperature 0, top logprobs, P(" yes")).
``chat``: an instruction model on the chat-completions endpoint, answering yes/no to a rubric that shows the
reference answers (not comparable with the fine-tuned judges).

``ask`` makes exactly one request: it returns a Judgment (usable, or unusable for a reason that asking again
would not change), or raises :class:`Transient` (rate limit, server error, timeout, connection, malformed body:
worth retrying) or :class:`Fatal` (bad key, unknown model, bad request: not worth retrying).
"""

from __future__ import annotations

import json
import math
import time

from ..errors import ITIError
from .config import JudgeConfig, redact_url
from .prompts import Item, chat_messages, chat_request_text, completion_prompt
from .scoring import Judgment, judgment_from_reply, judgment_from_top_logprobs


class JudgeError(ITIError):
    """A judge could not be used (after retries, where retrying made sense)."""


TOP_LOGPROBS = 5  # the most the OpenAI completions endpoint returns; the decision needs only the top one
RETRYABLE_STATUS = (408, 409, 425, 429)


class Transient(Exception):
    """A failure worth retrying. ``malformed`` marks a response that arrived but could not be read."""

    def __init__(self, reason: str, malformed: bool = False, retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.malformed, self.retry_after = reason, malformed, retry_after


class Fatal(Exception):
    """A failure that retrying cannot fix."""


def not_json_reason(raw) -> str | None:
    """Why a raw ``openai`` response (``with_raw_response``) is not an API answer: a 200 whose body is not JSON
    (a login page, a proxy, a web UI at that URL), named with its URL; None when it is JSON."""
    content_type = (raw.headers.get("content-type") or "").split(";")[0].strip().lower()
    if "json" in content_type:
        return None
    url = redact_url(str(raw.http_request.url))
    return (f"{url} returned {content_type or 'a body without a content type'}, not JSON: is this an "
            f"OpenAI-compatible endpoint?")


def parsed(raw):
    """The parsed body of a raw ``openai`` response, or Fatal when it is not JSON (retrying would not change it)."""
    reason = not_json_reason(raw)
    if reason is not None:
        raise Fatal(reason)
    return raw.parse()


def make_client(cfg: JudgeConfig, kind: str = "truth"):
    """An ``openai`` client for the server of the ``kind`` judge."""
    import openai

    # Retries are ours (runner.py), so the client's own are off.
    return openai.OpenAI(api_key=cfg.api_key(kind), base_url=cfg.base_url_for(kind) or None, timeout=cfg.timeout,
                         max_retries=0)


def endpoint_label(cfg: JudgeConfig, client=None, kind: str = "truth") -> str:
    if cfg.base_url_for(kind):
        return redact_url(cfg.base_url_for(kind))
    return redact_url(str(getattr(client, "base_url", "") or "https://api.openai.com/v1")).rstrip("/")


def _retry_after(exc) -> float | None:
    try:
        value = exc.response.headers.get("retry-after")
        return None if value is None else max(0.0, float(value))
    except Exception:
        return None


def _short(text, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def translate_error(exc: Exception, timeout: float):
    """Map an ``openai`` exception to Transient / Fatal (or return None if it is not an API error)."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return Transient(f"no response within {timeout:g} s (timeout)")
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        return Transient(f"connection failed ({type(cause).__name__}: {_short(cause)})")
    if isinstance(exc, openai.APIResponseValidationError):
        return Transient(f"malformed response ({_short(exc)})", malformed=True)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status in RETRYABLE_STATUS or status >= 500:
            name = "rate limited" if status == 429 else "server error" if status >= 500 else "retryable error"
            return Transient(f"HTTP {status} {name}", retry_after=_retry_after(exc))
        return Fatal(f"HTTP {status} {_short(exc.message)}")
    if isinstance(exc, json.JSONDecodeError):  # a 200 whose body is not JSON
        return Transient(f"malformed response (body is not JSON: {_short(exc, 80)})", malformed=True)
    return None


class _APIJudge:
    backend = ""

    def __init__(self, kind: str, cfg: JudgeConfig, client):
        self.kind, self.cfg, self.client = kind, cfg, client
        self.model, self.revision = cfg.judge_for(kind)
        self.name = f"{kind} judge {self.model!r} ({self.backend} at {endpoint_label(cfg, client, kind)})"
        self._identity: str | None = None

    def identity(self) -> str:
        """The cache identity: the redacted base URL and the server's ``/models`` entry of this model (asked once)."""
        if self._identity is None:
            entry = models_entry(self.cfg, self.client, self.model, self.name)
            self._identity = json.dumps({"url": endpoint_label(self.cfg, self.client, self.kind), "models": entry},
                                        sort_keys=True)
        return self._identity

    def ask(self, request_text: str) -> Judgment:
        try:
            response = self._call(request_text)
        except (Transient, Fatal):
            raise
        except Exception as exc:  # noqa: BLE001 - classified below, re-raised when unknown
            mapped = translate_error(exc, self.cfg.timeout)
            if mapped is None:
                raise
            raise mapped from None
        return self._read(response)

    def close(self) -> None:
        self.client.close()


class CompletionsJudge(_APIJudge):
    """TruthfulQA's GPT-judge protocol on ``/v1/completions``."""

    backend = "openai"

    def request_text(self, item: Item) -> str:
        return completion_prompt(self.kind, item.question, item.answer)

    def _call(self, prompt: str):
        return parsed(self.client.completions.with_raw_response.create(
            model=self.model, prompt=prompt, max_tokens=1, temperature=0, logprobs=TOP_LOGPROBS))

    @staticmethod
    def _read(response) -> Judgment:
        if isinstance(response, (str, bytes)):
            raise Transient(f"malformed response (not JSON: {_short(response, 60)!r})", malformed=True)
        try:
            top = response.choices[0].logprobs.top_logprobs[0]
        except (AttributeError, IndexError, KeyError, TypeError):
            raise Transient("malformed response (no choices[0].logprobs.top_logprobs[0])", malformed=True) from None
        if not isinstance(top, dict):
            raise Transient("malformed response (top_logprobs[0] is not an object)", malformed=True)
        return judgment_from_top_logprobs(top)


class ChatJudge(_APIJudge):
    """An instruction model on ``/v1/chat/completions``; yes/no read from the reply text."""

    backend = "chat"

    def __init__(self, kind: str, cfg: JudgeConfig, client):
        super().__init__(kind, cfg, client)
        self._messages: dict[str, list] = {}

    def request_text(self, item: Item) -> str:
        text = chat_request_text(self.kind, item)
        self._messages[text] = chat_messages(self.kind, item)
        return text

    def _call(self, request_text: str):
        messages = self._messages.get(request_text)
        if messages is None:
            messages = json.loads(request_text)
        return parsed(self.client.chat.completions.with_raw_response.create(model=self.model, messages=messages,
                                                                            max_tokens=5, temperature=0))

    @staticmethod
    def _read(response) -> Judgment:
        if isinstance(response, (str, bytes)):
            raise Transient(f"malformed response (not JSON: {_short(response, 60)!r})", malformed=True)
        try:
            content = response.choices[0].message.content
        except (AttributeError, IndexError, KeyError, TypeError):
            raise Transient("malformed response (no choices[0].message.content)", malformed=True) from None
        return judgment_from_reply(content)


def build(kind: str, cfg: JudgeConfig, client):
    return (CompletionsJudge if cfg.backend == "openai" else ChatJudge)(kind, cfg, client)


def check_endpoint(cfg: JudgeConfig) -> None:
    """Before any generation: each judge's server answers ``GET /models`` and serves that judge. ITIError if not."""
    served_by: dict[str, list[str]] = {}
    for kind in ("truth", "info"):
        url = cfg.base_url_for(kind)
        if url not in served_by:
            client = make_client(cfg, kind)
            try:
                served_by[url] = _served_models(cfg, client, endpoint_label(cfg, client, kind))
            finally:
                client.close()
        model, _ = cfg.judge_for(kind)
        served = served_by[url]
        if model not in served:
            shown = ", ".join(served[:8]) + (" …" if len(served) > 8 else "") or "none"
            raise ITIError(f"judge={cfg.backend}: {kind}_judge={model!r} is not served by "
                           f"{endpoint_label(cfg, None, kind)} (served: {shown})")


def list_models(client) -> list:
    """The entries of ``GET /models``; Fatal naming the URL when the server answers something other than JSON."""
    return list(getattr(parsed(client.models.with_raw_response.list()), "data", None) or [])


def _served_models(cfg: JudgeConfig, client, where: str) -> list[str]:
    try:
        served = [str(getattr(m, "id", "")) for m in list_models(client)]
    except Fatal as exc:
        raise ITIError(f"judge={cfg.backend}: {exc}") from None
    except Exception as exc:  # noqa: BLE001
        mapped = translate_error(exc, cfg.timeout)
        if mapped is None:
            raise
        reason = str(mapped)
        if reason.startswith(("HTTP 401", "HTTP 403")):
            reason += f" (is the key in ${cfg.api_key_env} right?)"
        elif reason.startswith("HTTP 404"):
            reason += " (no /models endpoint? set judge_check=false to skip this check)"
        raise ITIError(f"judge={cfg.backend}: cannot use {where}: {reason}") from None
    return served


# Fields of a /models entry that change while the same weights are served: vLLM sets ``created`` to the time of each
# listing and gives each listing's ``permission`` a fresh id and time. Left out of the cache identity.
VOLATILE_MODEL_FIELDS = ("created", "permission")


def model_identity(entry) -> dict:
    """What identifies the served model in its ``/models`` entry: every field but the volatile ones (id, owned_by,
    and where the server says them root, parent, max_model_len ...)."""
    # what the server sent (exclude_unset): fields the client merely declares, like shutdown_date, stay out
    fields = entry.model_dump(exclude_unset=True) if hasattr(entry, "model_dump") else dict(entry)
    return {k: v for k, v in fields.items() if k not in VOLATILE_MODEL_FIELDS}


def models_entry(cfg: JudgeConfig, client, model: str, name: str, sleep=time.sleep) -> dict | None:
    """``model_identity`` of ``model`` in the server's ``GET /models`` (retried like a judge request); None when the
    server has no such endpoint or does not list the model. JudgeError when the server is down or not an API."""
    last: Transient | None = None
    for attempt in range(cfg.retries + 1):
        if attempt:
            sleep(backoff_seconds(attempt - 1, cfg.backoff, last.retry_after if last else None))
        try:
            for entry in list_models(client):
                if str(getattr(entry, "id", "")) == model:
                    return model_identity(entry)
            return None
        except Fatal as exc:
            raise JudgeError(f"{name}: GET /models: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - classified below, re-raised when unknown
            mapped = translate_error(exc, cfg.timeout)
            if mapped is None:
                raise
            if isinstance(mapped, Fatal):
                if str(mapped).startswith("HTTP 404"):
                    return None  # no /models endpoint: the URL alone identifies the judge
                raise JudgeError(f"{name}: GET /models: {mapped}") from None
            last = mapped
    raise JudgeError(f"{name}: GET /models: {last.reason}, still failing after {cfg.retries + 1} attempts")


def backoff_seconds(attempt: int, base: float, retry_after: float | None = None, cap: float = 60.0) -> float:
    """Exponential backoff: base·2^attempt (capped), or the server's Retry-After when it is longer."""
    delay = min(cap, base * math.pow(2.0, attempt))
    if retry_after is not None:
        delay = max(delay, min(cap, retry_after))
    return delay
