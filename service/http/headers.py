"""The IETF RateLimit headers (`RateLimit-Policy`, `RateLimit`) and `Retry-After` of a decision."""

from __future__ import annotations

import functools
import math

from service.engine import Decision
from service.rules.model import Rule

# Durations are differences of clock readings and carry float noise (2.0000000000000226 s
# for an empty bucket of 20 at 10/s): rounding up must not turn that into 3 s or 2001 ms.
_NOISE_S = 1e-6
RETRY_NEVER_S = 86_400  # Retry-After for a cost that can never fit


def ceil_seconds(seconds: float) -> int:
    """Whole seconds rounded up, ignoring float noise below a microsecond."""
    return math.ceil(seconds - _NOISE_S)


def ceil_ms(seconds: float) -> int | None:
    """Milliseconds rounded up (None for never), ignoring float noise below a microsecond."""
    return None if math.isinf(seconds) else math.ceil((seconds - _NOISE_S) * 1000)


def policy_header(rule: Rule) -> bytes:
    """`RateLimit-Policy` (IETF httpapi ratelimit-headers): quota q per window w seconds."""
    return f'"{rule.name}";q={rule.capacity};w={max(1, ceil_seconds(rule.window))}'.encode()


@functools.lru_cache(maxsize=65536)
def _ratelimit_values(rule: str, remaining: int, reset: int, retry: int) -> tuple[bytes, bytes]:
    return f'"{rule}";r={remaining};t={reset}'.encode(), str(retry).encode()


def ratelimit_headers(decision: Decision, policy: bytes) -> list[tuple[bytes, bytes]]:
    """RateLimit-Policy, RateLimit (remaining r, seconds to full t), on 429 Retry-After."""
    reset = max(0, ceil_seconds(decision.reset_after_s))
    retry = 0
    if not decision.allowed:
        seconds = decision.retry_after_s
        retry = RETRY_NEVER_S if math.isinf(seconds) else max(1, ceil_seconds(seconds))
    # Cached: the header values repeat (remaining 0..burst, a few reset/retry seconds).
    ratelimit, retry_after = _ratelimit_values(decision.rule.name, decision.remaining, reset, retry)
    headers = [(b"ratelimit-policy", policy), (b"ratelimit", ratelimit)]
    if retry:
        headers.append((b"retry-after", retry_after))
    return headers
