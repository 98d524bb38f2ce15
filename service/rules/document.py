"""A rules document (the --rules YAML file, or the same as a mapping), validated as a RuleSet."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from service.errors import ConfigError
from service.rules.model import DEFAULT_RULE, Rule, RuleSet


def parse_rules(data: Any, fallback_default: Rule, source: str = "rules") -> RuleSet:
    """Validate a parsed rules document; ConfigError explains what is wrong and where."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping with 'default' and 'rules'")
    document = dict(data)
    if "default" in document and isinstance(document["default"], Mapping):
        document["default"] = {"name": DEFAULT_RULE, **document["default"]}
    else:
        document.setdefault("default", fallback_default)
    try:
        return RuleSet.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_problems(exc)}") from exc


def _problems(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "document"
        problems.append(f"{where}: {error['msg']}")
    return "; ".join(problems)


def load_rules(path: Path | None, fallback_default: Rule) -> RuleSet:
    """The rules file at `path` (YAML), or just the default rule."""
    if path is None:
        return RuleSet(default=fallback_default)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"rules file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"rules file {path}: not valid YAML: {exc}") from exc
    return parse_rules(data, fallback_default, source=f"rules file {path}")
