"""Judge settings from lm-eval ``--metadata`` keys, with environment variables as fallback.

Every option has a metadata key and an environment variable (metadata wins):

=======================  ====================================  ===============================================
metadata key             environment variable                  meaning
=======================  ====================================  ===============================================
judge                    LM_EVAL_ITI_JUDGE                     openai | hf | chat | none (default none)
truth_judge              LM_EVAL_ITI_TRUTH_JUDGE               truth judge: served model name, or hf id/path
info_judge               LM_EVAL_ITI_INFO_JUDGE                info judge: served model name, or hf id/path
judge_model              LM_EVAL_ITI_JUDGE_MODEL               one model for both (typical for chat)
truth_judge_revision     LM_EVAL_ITI_TRUTH_JUDGE_REVISION      revision (hf: git revision; API: your label)
info_judge_revision      LM_EVAL_ITI_INFO_JUDGE_REVISION       same for the info judge
judge_base_url           LM_EVAL_ITI_JUDGE_BASE_URL            OpenAI-compatible server, e.g. http://host:8000/v1
truth_judge_base_url     LM_EVAL_ITI_TRUTH_JUDGE_BASE_URL      the truth judge's own server (default judge_base_url)
info_judge_base_url      LM_EVAL_ITI_INFO_JUDGE_BASE_URL       the info judge's own server (default judge_base_url)
judge_api_key_env        LM_EVAL_ITI_JUDGE_API_KEY_ENV         NAME of the variable holding the key
                                                               (default OPENAI_API_KEY); never the key itself
judge_cache              LM_EVAL_ITI_JUDGE_CACHE               SQLite file, or "off"
judge_concurrency        LM_EVAL_ITI_JUDGE_CONCURRENCY         parallel API requests (default 8)
judge_timeout            LM_EVAL_ITI_JUDGE_TIMEOUT             seconds per API request (default 60)
judge_retries            LM_EVAL_ITI_JUDGE_RETRIES             retries per request (default 6)
judge_backoff            LM_EVAL_ITI_JUDGE_BACKOFF             first backoff in seconds, doubled per retry (1)
judge_batch_size         LM_EVAL_ITI_JUDGE_BATCH_SIZE          hf: prompts per forward (default 8)
judge_device             LM_EVAL_ITI_JUDGE_DEVICE              hf: device (default cuda if available, else cpu)
judge_dtype              LM_EVAL_ITI_JUDGE_DTYPE               hf: auto | float32 | float16 | bfloat16
judge_check              LM_EVAL_ITI_JUDGE_CHECK               check endpoint / model and the judges' accuracy on
                                                               human-labelled answers before any judging (true);
                                                               false skips both and is recorded in the results
judge_check_examples     LM_EVAL_ITI_JUDGE_CHECK_EXAMPLES      labelled answers per judge for that check, half of
                                                               them positive (even, default 100: 50 + 50)
judge_check_data         LM_EVAL_ITI_JUDGE_CHECK_DATA          TruthfulQA's eval_examples.csv or its folder
                                                               (default: the raw file of the TruthfulQA repo)
judge_check_min_accuracy LM_EVAL_ITI_JUDGE_CHECK_MIN_ACCURACY  below it the check fails (default 0.7; so does a
                                                               judge deciding fewer than 90% of the answers)
judge_check_allow_fail   LM_EVAL_ITI_JUDGE_CHECK_ALLOW_FAIL    true: a failed check warns instead of stopping
judge_check_seed         LM_EVAL_ITI_JUDGE_CHECK_SEED          which labelled answers are drawn (default 0)
=======================  ====================================  ===============================================

The API key is read from the environment only when a client is built; it is never stored in the config, logged
or recorded. ``judge_api_key`` in the metadata is refused, because lm-eval records metadata in the results.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..choices import JUDGE_BACKENDS
from ..errors import ITIError
from ..options import JUDGE_DEFAULTS

BACKENDS = JUDGE_BACKENDS
ALLENAI_TRUTH = "allenai/truthfulqa-truth-judge-llama2-7B"
ALLENAI_INFO = "allenai/truthfulqa-info-judge-llama2-7B"
DEFAULT_KEY_ENV = JUDGE_DEFAULTS["api_key_env"]
ENV_PREFIX = "LM_EVAL_ITI_"
DEFAULT_CHECK_EXAMPLES = JUDGE_DEFAULTS["check_examples"]  # per judge: 50 positive + 50 negative human-labelled answers

def _model_dtypes() -> tuple[str, ...]:
    from ..choices import DTYPES

    return DTYPES


# metadata key -> (JudgeConfig field, parser name)
OPTIONS = {
    "judge": ("backend", "backend"),
    "truth_judge": ("truth_judge", "str"),
    "info_judge": ("info_judge", "str"),
    "judge_model": ("judge_model", "str"),
    "truth_judge_revision": ("truth_revision", "str"),
    "info_judge_revision": ("info_revision", "str"),
    "judge_base_url": ("base_url", "str"),
    "truth_judge_base_url": ("truth_base_url", "str"),
    "info_judge_base_url": ("info_base_url", "str"),
    "judge_api_key_env": ("api_key_env", "env_name"),
    "judge_cache": ("cache", "str"),
    "judge_concurrency": ("concurrency", "pos_int"),
    "judge_timeout": ("timeout", "pos_float"),
    "judge_retries": ("retries", "nonneg_int"),
    "judge_backoff": ("backoff", "nonneg_float"),
    "judge_batch_size": ("batch_size", "pos_int"),
    "judge_device": ("device", "str"),
    "judge_dtype": ("dtype", "dtype"),
    "judge_check": ("check", "bool"),
    "judge_check_examples": ("check_examples", "check_examples"),
    "judge_check_data": ("check_data", "str"),
    "judge_check_min_accuracy": ("check_min_accuracy", "unit_float"),
    "judge_check_allow_fail": ("check_allow_fail", "bool"),
    "judge_check_seed": ("check_seed", "nonneg_int"),
}
SECRET_KEYS = ("judge_api_key", "judge_key", "judge_token", "api_key", "openai_api_key")


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def default_cache_path() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lm_eval_iti", "judgments.sqlite")


@dataclass(frozen=True)
class JudgeConfig:
    backend: str = "none"
    truth_judge: str = ""
    info_judge: str = ""
    judge_model: str = ""
    truth_revision: str = ""
    info_revision: str = ""
    base_url: str = ""
    truth_base_url: str = ""
    info_base_url: str = ""
    api_key_env: str = DEFAULT_KEY_ENV
    cache: str = ""
    concurrency: int = JUDGE_DEFAULTS["concurrency"]
    timeout: float = JUDGE_DEFAULTS["timeout"]
    retries: int = JUDGE_DEFAULTS["retries"]
    backoff: float = JUDGE_DEFAULTS["backoff"]
    batch_size: int = JUDGE_DEFAULTS["batch_size"]
    device: str = ""
    dtype: str = JUDGE_DEFAULTS["dtype"]
    check: bool = True
    check_examples: int = DEFAULT_CHECK_EXAMPLES
    check_data: str = ""
    check_min_accuracy: float = JUDGE_DEFAULTS["check_min_accuracy"]
    check_allow_fail: bool = False
    check_seed: int = JUDGE_DEFAULTS["check_seed"]

    @property
    def enabled(self) -> bool:
        return self.backend != "none"

    @property
    def is_api(self) -> bool:
        return self.backend in ("openai", "chat")

    @property
    def cache_path(self) -> str | None:
        """The SQLite file, or None when the cache is off."""
        if self.cache.lower() in ("off", "false", "no", "0"):
            return None
        return self.cache or default_cache_path()

    def judge_for(self, kind: str) -> tuple[str, str]:
        """(model id, revision) of the ``truth`` or ``info`` judge."""
        return (self.truth_judge, self.truth_revision) if kind == "truth" else (self.info_judge, self.info_revision)

    def base_url_for(self, kind: str) -> str:
        """The server of the ``truth`` or ``info`` judge ("" = the ``openai`` client's default, api.openai.com)."""
        own = self.truth_base_url if kind == "truth" else self.info_base_url
        return own or self.base_url

    def api_key(self, kind: str = "truth") -> str:
        """The key from the environment (never stored). Local servers without auth get a placeholder."""
        key = os.environ.get(self.api_key_env, "")
        if key:
            return key
        if not self.base_url_for(kind):
            raise ITIError(f"judge={self.backend}: environment variable {self.api_key_env} is not set (the key for "
                           f"api.openai.com; for another server set judge_base_url, or judge_api_key_env=NAME)")
        return "EMPTY"

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("base_url", "truth_base_url", "info_base_url"):
            shown[name] = redact_url(shown[name])
        return "JudgeConfig(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    def record(self) -> dict:
        """Everything that defines the judgments, safe to log and to write into results (no secret)."""
        out = asdict(self)
        out["base_url"] = redact_url(self.base_url)
        out["truth_base_url"] = redact_url(self.base_url_for("truth"))
        out["info_base_url"] = redact_url(self.base_url_for("info"))
        out["cache"] = self.cache_path or "off"
        for name in ("judge_model",):
            out.pop(name)
        if not self.is_api:
            for name in ("base_url", "truth_base_url", "info_base_url", "api_key_env", "concurrency", "timeout",
                         "retries", "backoff"):
                out.pop(name)
        if self.backend != "hf":
            for name in ("batch_size", "device", "dtype"):
                out.pop(name)
        # The judge check gates a run but changes no judgment: its settings stay out of the record (and so out of
        # the experiments' settings hash); its report is recorded apart (glue.judge_provenance, offline reports).
        for name in ("check_examples", "check_data", "check_min_accuracy", "check_allow_fail", "check_seed"):
            out.pop(name)
        if not self.enabled:
            out = {"backend": "none"}
        return out


def redact_url(url: str) -> str:
    """Hide a password in the URL's user part and every query value (keys sometimes travel there)."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"***@{host}"
    query = urlencode([(k, "***") for k, _ in parse_qsl(parts.query, keep_blank_values=True)])
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _parse(kind: str, key: str, value):
    if kind == "str" or kind == "backend" or kind == "env_name" or kind == "dtype":
        text = "" if value is None else str(value).strip()
        if kind == "backend":
            text = text.lower() or "none"
            if text not in BACKENDS:
                raise ITIError(f"{key}={value!r} is not one of {', '.join(BACKENDS)}")
        if kind == "dtype" and text and text not in _model_dtypes():
            raise ITIError(f"{key}={value!r} is not one of {', '.join(_model_dtypes())}")
        if kind == "env_name" and text and not text.replace("_", "").isalnum():
            raise ITIError(f"{key}={value!r} must be the NAME of an environment variable, not a key")
        return text
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ITIError(f"{key}={value!r} must be true or false")
    if kind == "check_examples":
        return _check_examples(key, value)
    is_int = kind.endswith("_int")
    try:
        if isinstance(value, bool):
            raise ValueError
        number = int(str(value)) if is_int else float(value)
    except (TypeError, ValueError):
        raise ITIError(f"{key}={value!r} must be a{' whole' if is_int else ''} number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ITIError(f"{key}={value!r} must be finite")
    if kind.startswith("pos") and number <= 0:
        raise ITIError(f"{key}={value!r} must be greater than 0")
    if kind.startswith("nonneg") and number < 0:
        raise ITIError(f"{key}={value!r} must not be negative")
    if kind == "unit_float" and not 0 <= number <= 1:
        raise ITIError(f"{key}={value!r} must be between 0 and 1")
    return number


def _check_examples(key: str, value) -> int:
    """An even count of at least 2: the check draws half positive, half negative answers."""
    number = _parse("nonneg_int", key, value)
    if number == 0:
        raise ITIError(f"{key}=0: to skip the judge check pass judge_check=false (recorded in the results)")
    if number % 2:
        raise ITIError(f"{key}={value!r} must be even: half of the labelled answers are positive, half negative")
    return number


def _looks_like_judge_key(key: str) -> bool:
    return key.startswith("judge") or key.startswith("truth_judge") or key.startswith("info_judge")


def _unknown(key: str, where: str) -> ITIError:
    close = difflib.get_close_matches(key, list(OPTIONS), n=1)
    hint = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(OPTIONS)})"
    return ITIError(f"unknown judge option {key!r} in {where}{hint}")


def from_sources(metadata: dict | None = None, environ: dict | None = None) -> JudgeConfig:
    """Parse and validate the judge settings (no network). Unknown ``judge*`` keys are typos and raise ITIError."""
    metadata = dict(metadata or {})
    environ = os.environ if environ is None else environ
    for key in metadata:
        if str(key).lower() in SECRET_KEYS:
            raise ITIError(f"{key} is not accepted in --metadata (lm-eval records metadata in the results): put the "
                           f"key in an environment variable and name it with judge_api_key_env=NAME")
    for key in metadata:
        if _looks_like_judge_key(str(key)) and key not in OPTIONS:
            raise _unknown(str(key), "--metadata")
    env_keys = {env_name(k): k for k in OPTIONS}
    for name in environ:
        if name.startswith((ENV_PREFIX + "JUDGE", ENV_PREFIX + "TRUTH_JUDGE", ENV_PREFIX + "INFO_JUDGE")):
            if name.endswith(("_API_KEY", "_KEY", "_TOKEN")) and name not in env_keys:
                continue  # a variable that holds a key, named by judge_api_key_env: not an option
            if name not in env_keys:
                raise _unknown(name[len(ENV_PREFIX):].lower(), f"environment variable {name}")

    for key in ("judge_base_url", "truth_judge_base_url", "info_judge_base_url"):
        url = metadata.get(key)
        if isinstance(url, str) and redact_url(url) != url:
            raise ITIError(f"{key}={redact_url(url)!r} carries credentials, and lm-eval records --metadata in the "
                           f"results: pass the URL in {env_name(key)}, or the key via judge_api_key_env")
    values: dict = {}
    for key, (attr, kind) in OPTIONS.items():
        if key in metadata and metadata[key] is not None and metadata[key] != "":
            raw, where = metadata[key], key
        elif environ.get(env_name(key), "") != "":
            raw, where = environ[env_name(key)], env_name(key)
        else:
            continue
        values[attr] = _parse(kind, where, raw)
    cfg = JudgeConfig(**values)
    return _complete(cfg)


def _complete(cfg: JudgeConfig) -> JudgeConfig:
    """Fill defaults that depend on the backend and check the combination."""
    if not cfg.enabled:
        return cfg
    updates = {}
    truth = cfg.truth_judge or cfg.judge_model
    info = cfg.info_judge or cfg.judge_model
    if cfg.backend in ("openai", "hf"):
        truth, info = truth or ALLENAI_TRUTH, info or ALLENAI_INFO
    if not truth or not info:
        missing = "truth_judge" if not truth else "info_judge"
        raise ITIError(f"judge={cfg.backend} needs {missing}=MODEL (or judge_model=MODEL for both)")
    updates.update(truth_judge=truth, info_judge=info)
    for key, url in (("judge_base_url", cfg.base_url), ("truth_judge_base_url", cfg.truth_base_url),
                     ("info_judge_base_url", cfg.info_base_url)):
        if url and cfg.backend == "hf":
            raise ITIError(f"{key} is for the openai and chat judges, not judge=hf (a local model)")
        if url and not url.startswith(("http://", "https://")):
            raise ITIError(f"{key}={redact_url(url)!r} must start with http:// or https://")
    return JudgeConfig(**{**{f.name: getattr(cfg, f.name) for f in fields(cfg)}, **updates})


def is_local_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or Path(model).expanduser().exists()
