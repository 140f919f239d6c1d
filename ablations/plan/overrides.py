"""User overrides (``--set key=value``) parsed and validated against ``pipeline.config.TrialConfig``."""
from __future__ import annotations

from typing import Any

from pipeline.config import ConfigError, check_value, coerce


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """['lr=1e-3', 'augment=strong'] -> {'lr': 0.001, 'augment': 'strong'}, typed and range-checked."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value")
        out[key] = coerce(key, value)
        check_value(key, out[key])
    return out
