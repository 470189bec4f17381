"""Secrets never leave memory: credentials in URLs, query tokens and ``pipe:`` commands become ``***``
wherever a value is written (MLflow params and tags, config.yaml, checkpoints, logs, error lines).

The real value stays in the config object the run uses; only what is written or printed goes
through here.

    https://user:token@host/d?sig=abc  ->  https://***@host/d?sig=***
    pipe:aws s3 cp s3://b/train-000001.tar -  ->  pipe:*** (train-000001.tar)
"""
from __future__ import annotations

import re
from typing import Any

MASK = "***"
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s'\"]+)@")
_QUERY_VALUE = re.compile(r"(?P<key>[?&;][^=&#\s'\"/?]+=)(?P<value>(?:(?!::)[^&#\s'\"])+)")  # `::` joins specs
_SHARD_NAME = re.compile(r"[\w.{}-]+\.tar\b")
# a pipe: command inside a line of text ends where our messages go on: ": ", " (", a quote, the end
_PIPE_IN_TEXT = re.compile(r"pipe:(?:(?!: | \(|['\"]).)*")


def redact_urls(text: str) -> str:
    """``scheme://user:pass@`` -> ``scheme://***@``, ``?key=value`` -> ``?key=***``."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    return _QUERY_VALUE.sub(lambda m: f"{m['key']}{MASK}", text)


def _pipe(command: str) -> str:
    names = _SHARD_NAME.findall(command)
    return f"pipe:{MASK}" + (f" ({names[-1]})" if names else "")


def redact_spec(spec: str) -> str:
    """A value that may be a URL, a URL list or a ``pipe:`` command, safe to store."""
    if spec.lstrip().startswith("pipe:") or "::pipe:" in spec:
        return _pipe(spec)
    return redact_urls(spec)


def redact_text(text: str) -> str:
    """A line of free text (an error, a command line): every URL and ``pipe:`` command in it redacted."""
    return _PIPE_IN_TEXT.sub(lambda m: _pipe(m.group(0)), redact_urls(text))


def redact_value(value: Any) -> Any:
    """Every string inside a config dump (dicts, lists) redacted as a spec."""
    if isinstance(value, str):
        return redact_spec(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v) for v in value)
    return value


def redact_argv(argv: list[str]) -> str:
    """A command line to store (the ``command`` tag): each argument redacted on its own, so a
    ``data.shards=pipe:...`` argument does not swallow the ones after it."""
    def one(arg: str) -> str:
        head, sep, command = arg.partition("pipe:")
        return redact_urls(head) + _pipe(command) if sep else redact_urls(arg)

    return " ".join(one(a) for a in argv)


def redacted_dump(cfg) -> dict:
    """A pydantic config as plain data with every string redacted (params, config.yaml, exports)."""
    return redact_value(cfg.model_dump(mode="json"))


def redacted_yaml(cfg) -> str:
    import yaml

    return yaml.safe_dump(redacted_dump(cfg), sort_keys=False)
