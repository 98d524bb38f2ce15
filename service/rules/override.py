"""Limits given with a request (Envoy's per-descriptor `limit`), as rules named by their limits.

An override is a fixed window of `requests_per_unit` per second, minute, hour or day, or a
calendar quota per UTC week or month. Its rule name (and so its name in state records) is a
function of the limits alone, `override.<unit>.<n>`, so every node that sees a request with
the same override, or a peer's record of one, shares one budget for it without any rule
being written anywhere.
"""

from __future__ import annotations

import re

from crdt.periods import PERIOD_SECONDS
from service.rules.model import Rule

FIXED_UNITS = ("second", "minute", "hour", "day")  # fixed windows from the clock's origin
CALENDAR_UNITS = ("week", "month")  # calendar quotas: ISO weeks, calendar months (UTC)
REFUSED_UNITS = ("year",)  # Envoy's unit not offered (a key would be held for two years)
# Seconds a unit states as its window (RateLimit-Policy w=): a month at its longest.
UNIT_SECONDS: dict[str, int] = {
    "second": 1,
    "minute": 60,
    "hour": 3_600,
    "day": 86_400,
    "week": PERIOD_SECONDS["week"],
    "month": PERIOD_SECONDS["month"],
}
OVERRIDE_PREFIX = "override."
MAX_REQUESTS_PER_UNIT = 2**32 - 1  # Envoy's requests_per_unit is a uint32
_OVERRIDE = re.compile(r"^override\.(second|minute|hour|day|week|month)\.([1-9][0-9]{0,9})$")


def window_rule(
    name: str, unit: str, requests_per_unit: int, *, shadow: bool = False, **extra: object
) -> Rule:
    """A fixed window of `requests_per_unit` (>= 1) per `unit` (second, minute, hour, day),
    or a calendar quota per `unit` week or month (resetting at the UTC boundary)."""
    if unit in CALENDAR_UNITS:
        return Rule.model_validate(
            {
                "name": name,
                "algorithm": "calendar",
                "limit": requests_per_unit,
                "period": unit,
                "shadow": shadow,
                **extra,
            }
        )
    return Rule.model_validate(
        {
            "name": name,
            "algorithm": "fixed_window",
            "limit": requests_per_unit,
            "window_s": float(UNIT_SECONDS[unit]),
            "shadow": shadow,
            **extra,
        }
    )


def override_rule(unit: str, requests_per_unit: int) -> Rule:
    """The rule of a request's limit override (requests_per_unit >= 1)."""
    return window_rule(f"{OVERRIDE_PREFIX}{unit}.{requests_per_unit}", unit, requests_per_unit)


def rule_of_override(name: str) -> Rule | None:
    """The override rule a state record names (None: not an override name)."""
    found = _OVERRIDE.match(name)
    if found is None or int(found[2]) > MAX_REQUESTS_PER_UNIT:
        return None
    return override_rule(found[1], int(found[2]))
