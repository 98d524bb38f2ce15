"""`ratelimiter rules put|delete|list|import`: change rules on the rules topic; every node
follows it. `import FILE` writes Envoy ratelimit configuration (service.rules.envoy) as
rules: a domain imported again replaces that domain's rules (those gone are deleted)."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import orjson
import yaml

from crdt.limiter import RULE_ALGORITHMS
from crdt.periods import CALENDAR_UNITS
from service.errors import ConfigError, UnknownRule
from service.rules.envoy import parse_envoy
from service.rules.log import Changes, read_rules, write_rules
from service.rules.model import MAX_RULES, InvalidRule, Rule, rule_from_mapping
from service.settings import Settings, load_settings

# flag -> rule field; only the flags given are sent
_RULE_FLAGS = {
    "algorithm": "algorithm",
    "rate": "rate",
    "burst": "burst",
    "limit": "limit",
    "window_s": "window_s",
    "period": "period",
    "prefix": "prefix",
    "tier": "tier",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """put NAME [limits], delete NAME, list; each with --kafka and --topic."""
    actions = parser.add_subparsers(dest="action", required=True)
    put = actions.add_parser("put", help="create or replace a rule (validated before writing)")
    put.add_argument("name", help="rule name; `default` changes the default rule")
    put.add_argument("--json", dest="document", help="the rule as a JSON object")
    put.add_argument("--algorithm", choices=RULE_ALGORITHMS)
    put.add_argument("--rate", type=float, help="tokens per second (token_bucket)")
    put.add_argument("--burst", type=int, help="bucket capacity (token_bucket)")
    put.add_argument("--limit", type=int, help="cost per window (window algorithms)")
    put.add_argument("--window-s", dest="window_s", type=float, help="window seconds")
    put.add_argument("--period", choices=CALENDAR_UNITS, help="UTC calendar period (calendar)")
    put.add_argument("--prefix", help="applies to user ids starting with this")
    put.add_argument("--tier", help="applies to requests with this X-User-Tier")
    put.add_argument(
        "--shadow",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="count would-be denials without denying (default: enforce)",
    )
    delete = actions.add_parser("delete", help="delete a rule (a --rules file rule comes back)")
    delete.add_argument("name")
    listing = actions.add_parser("list", help="the rules on the topic")
    listing.add_argument("--json", action="store_true", help="print JSON")
    imported = actions.add_parser(
        "import", help="write Envoy ratelimit YAML as rules (replacing its domains' rules)"
    )
    imported.add_argument("file", type=Path, help="Envoy ratelimit config (one domain a document)")
    for child in (put, delete, listing, imported):
        child.add_argument("--kafka", help="HOST:PORT (env RATELIMITER_KAFKA)")
        child.add_argument("--topic", help="rules topic (env RATELIMITER_RULES_TOPIC)")


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(kafka=args.kafka, rules_topic=args.topic)
    if settings.standalone:
        raise ConfigError("give the broker: --kafka HOST:PORT (or RATELIMITER_KAFKA)")
    if settings.rules_topic == "none":
        raise ConfigError("give the rules topic: --topic NAME (RATELIMITER_RULES_TOPIC is none)")
    return settings


def rule_from_args(args: argparse.Namespace) -> Rule:
    """The rule of `rules put`: --json, then each flag given over it; InvalidRule if bad."""
    data: dict[str, Any] = {}
    if args.document is not None:
        try:
            loaded = orjson.loads(args.document)
        except orjson.JSONDecodeError as exc:
            raise InvalidRule(f"--json is not JSON: {exc}") from exc
        if not isinstance(loaded, dict):
            raise InvalidRule("--json must be a JSON object")
        data.update(loaded)
    for flag, field in _RULE_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            data[field] = value
    if args.shadow is not None:
        data["shadow"] = args.shadow
    return rule_from_mapping(data, args.name)


def _describe(rule: Rule) -> str:
    if rule.algorithm == "token_bucket":
        limits = f"rate={rule.rate:g}/s burst={rule.burst}"
    elif rule.period is not None:
        limits = f"limit={rule.limit} per {rule.period}"
    else:
        limits = f"limit={rule.limit} per {rule.window_s:g}s"
    match = f"prefix={rule.prefix!r}" if rule.prefix else f"tier={rule.tier!r}" if rule.tier else ""
    parts = [f"{rule.name:<20}", f"{rule.algorithm:<15}", f"{limits:<28}", f"{match:<20}"]
    if rule.shadow:
        parts.append("shadow")
    return " ".join(parts).rstrip()


def envoy_file_rules(path: Path) -> list[Rule]:
    """The rules of an Envoy ratelimit configuration file; ConfigError names the field."""
    try:
        documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    documents = [doc for doc in documents if doc is not None]
    if not documents:
        raise ConfigError(f"{path}: no configuration (expected 'domain' and 'descriptors')")
    return parse_envoy(documents, str(path))


def import_changes(held: dict[str, Rule], imported: list[Rule]) -> Changes:
    """What to write: the imported rules, and deletions of rules of the imported domains
    that the file no longer has. InvalidRule when the topic would hold too many rules."""
    domains = {rule.envoy.domain for rule in imported if rule.envoy is not None}
    changes: Changes = {rule.name: rule for rule in imported}
    for name, rule in held.items():
        if rule.envoy is not None and rule.envoy.domain in domains and name not in changes:
            changes[name] = None
    total = len({*held, *changes}) - sum(1 for rule in changes.values() if rule is None)
    if total > MAX_RULES:
        raise InvalidRule(f"the rules topic would hold {total} rules, at most {MAX_RULES}")
    return changes


def run(args: argparse.Namespace) -> int:
    """Validate, then write or read the rules topic."""
    rule = rule_from_args(args) if args.action == "put" else None
    imported = envoy_file_rules(args.file) if args.action == "import" else None
    settings = _settings(args)
    options = settings.kafka_options()
    where = f"{settings.rules_topic} at {settings.kafka}"
    if args.action == "put":
        assert rule is not None
        asyncio.run(write_rules(settings.kafka, settings.rules_topic, {rule.name: rule}, options))
        print(f"put {_describe(rule)}\n  on {where}")
        return 0
    rules, skipped = asyncio.run(read_rules(settings.kafka, settings.rules_topic, options))
    if imported is not None:
        changes = import_changes(rules, imported)
        asyncio.run(write_rules(settings.kafka, settings.rules_topic, changes, options))
        deleted = sorted(name for name, value in changes.items() if value is None)
        print(f"imported {len(imported)} rules from {args.file}\n  on {where}")
        for listed in imported:
            print("  " + _describe(listed))
        if deleted:
            print(f"  deleted (no longer in the file): {', '.join(deleted)}")
        return 0
    if args.action == "delete":
        if args.name not in rules:
            known = ", ".join(sorted(rules)) or "none"
            raise UnknownRule(f"no rule {args.name!r} on {where} (rules there: {known})")
        asyncio.run(write_rules(settings.kafka, settings.rules_topic, {args.name: None}, options))
        print(f"deleted rule {args.name!r} from {where}")
        return 0
    if args.json:
        print(json.dumps([r.model_dump(exclude_none=True) for r in rules.values()], indent=2))
    else:
        print(f"{len(rules)} rules on {where}")
        for listed in rules.values():
            print("  " + _describe(listed))
    for message in skipped:
        print(f"  skipped bad record: {message}")
    return 0
