"""Where a rule sits in Envoy ratelimit's configuration: its domain and descriptor path.

A rule loaded from Envoy ratelimit YAML carries one of these (`Rule.envoy`), so the rules
topic and `--rules` files hold everything the gRPC service needs to match a request's
descriptors against the rules (`service.rules.descriptors.DescriptorIndex`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Unit = Literal["second", "minute", "hour", "day", "week", "month"]
MAX_DEPTH = 16  # nested descriptor levels
MAX_NAME = 128  # a domain, an entry key
MAX_VALUE = 256  # an entry value


class EnvoyDescriptor(BaseModel):
    """A configured descriptor: entries from the top level down (value None: any value;
    a value ending in `*`: any value starting with what precedes it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    domain: str = Field(min_length=1, max_length=MAX_NAME)
    path: tuple[tuple[str, str | None], ...] = Field(min_length=1, max_length=MAX_DEPTH)
    # None with `unlimited`; requests_per_unit 0 denies every request.
    unit: Unit | None = None
    requests_per_unit: int | None = Field(None, ge=0, le=2**32 - 1)
    unlimited: bool = False
    name: str | None = Field(None, min_length=1, max_length=MAX_NAME)  # rate_limit.name
    replaces: tuple[str, ...] = ()
