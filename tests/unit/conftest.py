"""Hypothesis profiles for the unit suite: `default` here, `ci` for CI, `thorough` by hand.

Choose one with HYPOTHESIS_PROFILE=<name>; heavy properties scale their own example
counts from the profile's max_examples (see tests.strategies.examples).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# Cluster-playing properties take milliseconds per example, far beyond the default
# deadline on a loaded 2-core machine; their cost is bounded by example counts instead.
_SLOW_OK = [HealthCheck.too_slow]

settings.register_profile(
    "default", max_examples=200, deadline=None, suppress_health_check=_SLOW_OK
)
settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=_SLOW_OK, derandomize=True
)
settings.register_profile(
    "thorough", max_examples=2_000, deadline=None, suppress_health_check=_SLOW_OK
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
