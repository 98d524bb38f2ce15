"""`ratelimiter inspect`: the state topic's config, partitions, newest records, a user's state."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import UTC, datetime
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from service.errors import ConfigError
from service.replication.inspection import inspect_topic
from service.replication.topic import DEFAULT_TOPIC
from service.settings import load_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `ratelimiter inspect` (TLS/SASL from RATELIMITER_KAFKA_* as for `serve`)."""
    parser.add_argument(
        "--kafka",
        default=os.environ.get("RATELIMITER_KAFKA"),
        help="HOST:PORT of the broker (env RATELIMITER_KAFKA)",
    )
    parser.add_argument("--topic", default=DEFAULT_TOPIC, help=f"(default {DEFAULT_TOPIC})")
    parser.add_argument("--user", default=None, help="show this user's partition and state")
    parser.add_argument("--json", action="store_true", help="JSON instead of tables")
    parser.add_argument("--records", type=int, default=10, help="newest records shown (10)")
    parser.add_argument("--rate", type=float, default=10.0, help="rate for tokens (10)")
    parser.add_argument("--burst", type=int, default=20, help="burst for tokens (20)")


def run(args: argparse.Namespace) -> int:
    """Read the topic and print it as tables or JSON."""
    if not args.kafka or args.kafka == "none":
        raise ConfigError("inspect needs --kafka HOST:PORT (or RATELIMITER_KAFKA)")
    settings = load_settings(kafka=args.kafka)
    report = asyncio.run(
        inspect_topic(
            settings.kafka,
            args.topic,
            user=args.user,
            newest=args.records,
            rate=args.rate,
            burst=args.burst,
            options=settings.kafka_options(),
        )
    )
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        render(report, Console())
    return 0


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S.%f")[:-3]


def _records_table(title: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("partition", "offset", "time (UTC)", "kind", "writer", "users", "bytes", "key"):
        table.add_column(
            column, justify="right" if column in ("offset", "users", "bytes") else "left"
        )
    for r in rows:
        table.add_row(
            str(r["partition"]),
            str(r["offset"]),
            _when(r["timestamp_ms"]),
            r["kind"],
            r["replica"] or "",
            str(r["users"]),
            str(r["bytes"]),
            r["key"],
        )
    return table


def render(report: dict[str, Any], console: Console) -> None:
    """Tables: topic config, partitions, the user's state, the newest records."""
    parts = report["partitions"]
    console.print(
        f"[bold]{report['topic']}[/bold] on {report['kafka']}: {len(parts)} partitions, "
        f"replication factor {report['replication_factor']}"
    )
    config = Table(title="config", title_justify="left")
    config.add_column("key")
    config.add_column("value")
    config.add_column("expected by the nodes")
    for key, item in report["config"].items():
        same = item["value"] is not None and item["value"] == item["expected"]
        config.add_row(key, str(item["value"]), "" if same else f"[yellow]{item['expected']}")
    console.print(config)
    table = Table(
        title="partitions",
        title_justify="left",
        caption="offsets = end - beginning, an offset span (compaction leaves gaps, so fewer "
        "records may be held); log bytes = the partition's segments on the broker's disk",
        caption_justify="left",
    )
    for column in ("partition", "beginning", "end", "offsets", "log bytes"):
        table.add_column(column, justify="right")
    for p in parts:
        table.add_row(
            str(p["partition"]),
            str(p["beginning_offset"]),
            str(p["end_offset"]),
            str(p["offsets"]),
            "?" if p["log_bytes"] is None else f"{p['log_bytes']:,}",
        )
    sizes = [p["log_bytes"] for p in parts]
    total_bytes = "?" if None in sizes else f"{sum(sizes):,}"
    table.add_row("total", "", "", str(sum(p["offsets"] for p in parts)), total_bytes)
    console.print(table)
    user = report["user"]
    if user is not None:
        _render_user(user, console)
    console.print(_records_table("newest records", report["newest_records"]))
    if report["mirrored"]:
        console.print(_mirrored_table(report["mirrored"]))


def _mirrored_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(
        title="mirrored from other regions (MirrorMaker 2)",
        title_justify="left",
        caption="lag = now - the source broker's stamp of the newest record; an idle region's "
        "nodes still write heartbeats (--region-heartbeat-s)",
        caption_justify="left",
    )
    for column in ("topic", "region", "partitions", "offsets", "newest (UTC)", "lag s", "stamps"):
        table.add_column(column, justify="right" if column in ("offsets", "lag s") else "left")
    for r in rows:
        restamped = r["timestamp_type"] == "LogAppendTime"
        table.add_row(
            r["topic"],
            r["region"],
            str(r["partitions"]),
            str(r["offsets"]),
            "-" if r["newest_ms"] is None else _when(r["newest_ms"]),
            "-" if r["lag_s"] is None else f"{r['lag_s']:.3f}",
            "[yellow]restamped on arrival" if restamped else "source",
        )
    return table


def _render_user(user: dict[str, Any], console: Console) -> None:
    console.print(
        f"\nuser [bold]{user['id']}[/bold] -> partition {user['partition']} "
        f"(Kafka's murmur2 of the user id); {user['records_naming_user']} of "
        f"{user['records_read']} records there name this user"
    )
    if not user["rules"]:
        console.print("  no state: the user has no admitted cost on the topic (a full bucket)")
    for rule, state in user["rules"].items():
        table = Table(
            title=f"rule {rule}: consumed {state['consumed']}, tokens {state['tokens']} "
            f"(at {user['rate']:g}/s, burst {user['burst']}), {state['open_epochs']} open epochs",
            title_justify="left",
        )
        table.add_column("writer (node/incarnation)")
        table.add_column("contribution", justify="right")
        table.add_column("raw cells", justify="right")
        table.add_column("records", justify="right")
        table.add_column("last write (UTC)")
        for replica, seen in state["replicas"].items():
            table.add_row(
                replica,
                str(seen["contribution"]),
                str(seen["raw_cells"]),
                str(seen["records"]),
                _when(seen["last_ts_ms"]),
            )
        console.print(table)
    if user["newest_records"]:
        console.print(_records_table(f"newest records naming {user['id']}", user["newest_records"]))
