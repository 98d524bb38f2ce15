"""A rules document (the --rules YAML file, or the same as a mapping), validated as a RuleSet."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from service.errors import ConfigError
from service.rules.envoy import is_envoy_document, parse_envoy
from service.rules.model import DEFAULT_RULE, Rule, RuleSet


def parse_rules(data: Any, fallback_default: Rule, source: str = "rules") -> RuleSet:
    """Validate a parsed rules document; ConfigError explains what is wrong and where.

    A document with a top-level `domain` is Envoy ratelimit configuration
    (`service.rules.envoy`): its descriptors become named rules beside the default.
    """
    if data is None:
        data = {}
    if is_envoy_document(data):
        return envoy_rules([data], fallback_default, source)
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
        documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise ConfigError(f"rules file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"rules file {path}: not valid YAML: {exc}") from exc
    source = f"rules file {path}"
    if len(documents) > 1 or (documents and is_envoy_document(documents[0])):
        # Envoy ratelimit configuration: one domain per YAML document.
        return envoy_rules(documents, fallback_default, source)
    return parse_rules(documents[0] if documents else None, fallback_default, source=source)


def envoy_rules(documents: list[Any], fallback_default: Rule, source: str) -> RuleSet:
    """The rules of Envoy ratelimit documents beside the default rule."""
    for index, data in enumerate(documents):
        if not is_envoy_document(data):
            raise ConfigError(
                f"{source} (document {index + 1}): several YAML documents are Envoy ratelimit "
                "configuration, one domain each; this one has no 'domain'"
            )
    rules = parse_envoy(documents, source)
    try:
        return RuleSet(default=fallback_default, rules=tuple(rules))
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_problems(exc)}") from exc
