"""`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` answered by the node.

Each descriptor is matched against the Envoy rules (`service.rules.descriptor_index`):
its limit key is `domain/key=value/...`, its cost `hits_addend`. All limited descriptors
of one request are decided at once by `Node.decide_all`: admitted only if every limit
admits, and only then taken from every limit; a denial takes nothing, and the statuses
say which descriptor was over its limit. Same engine, replication and fail modes as HTTP.

A descriptor without a rule, `unlimited`, or a rule without `rate_limit` is OK without
counting (`limit_remaining` is 2^32-1 for `unlimited`, as in Envoy ratelimit); a rule
replaced (`replaces`) by another matching one is OK and not counted; `requests_per_unit:
0` is always over the limit. A descriptor's own `limit` replaces its rule only with
--allow-limit-override (a fixed window per unit, or a calendar quota per week or month,
shared by every node seeing it).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from service.engine import Check, Decision
from service.errors import BadRequest, RateLimiterError, Unavailable, UnknownRule
from service.grpc.forward import GrpcForwarder, was_forwarded
from service.grpc.request import UNITS, Asked, read_request
from service.http.headers import ceil_ms, policy_header, ratelimit_headers
from service.node import Node
from service.observability.request_id import METADATA_KEY, RequestIds
from service.observability.request_id import current as current_request_id
from service.observability.tracing import Tracing, grpc_status
from service.rules.descriptor_index import DescriptorIndex
from service.rules.model import Rule, RuleSet
from service.rules.override import UNIT_SECONDS, override_rule

Code = rls_pb2.RateLimitResponse.Code
MAX_UINT32 = 2**32 - 1
SERVICE = "envoy.service.ratelimit.v3.RateLimitService"
METHOD = "ShouldRateLimit"
SPAN_ATTRIBUTES = {"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": METHOD}
Failure = tuple[grpc.StatusCode, str]
NO_LIMIT = "no limit"  # no rule, a rule without rate_limit, or a replaced rule
UNLIMITED = "unlimited"


@dataclass(frozen=True, slots=True)
class Limit:
    """The limit a descriptor is decided under."""

    rule: Rule  # what the engine decides with (at least 1 per unit)
    unit: str
    requests_per_unit: int  # as configured: 0 is always over the limit
    name: str | None = None  # rate_limit.name, for `replaces`
    replaces: tuple[str, ...] = ()

    @property
    def blocks(self) -> bool:
        """0 per unit, enforced: every request is over the limit."""
        return self.requests_per_unit == 0 and not self.rule.shadow

    def policy(self) -> bytes:
        """RateLimit-Policy of this limit."""
        if self.requests_per_unit == self.rule.capacity:
            return policy_header(self.rule)
        return f'"{self.rule.name}";q={self.requests_per_unit};w={UNIT_SECONDS[self.unit]}'.encode()


Plan = Limit | str
Planned = tuple[list[Asked], list[Plan]]


class RateLimitService(rls_pb2_grpc.RateLimitServiceServicer):
    """ShouldRateLimit over a node; follows the node's rules as they change.

    Every call gets a request id (its `x-request-id` metadata when usable, else a new one)
    that is current in the log while it is answered and sent back in trailing metadata;
    with `tracing`, the call is a span (child of a `traceparent` in its metadata) with a
    span per decision.
    """

    def __init__(
        self,
        node: Node,
        allow_limit_override: bool,
        tracing: Tracing | None = None,
        request_ids: RequestIds | None = None,
        forwarder: GrpcForwarder | None = None,
    ) -> None:
        self.node = node
        self.forwarder = forwarder
        self.allow_limit_override = allow_limit_override
        self.tracing = tracing
        self.request_ids = request_ids or RequestIds(f"{node.settings.node_id}/grpc")
        self.index = DescriptorIndex(node.rules)
        node.rules_listeners.append(self._rules_changed)

    def _rules_changed(self, rules: RuleSet) -> None:
        self.index = DescriptorIndex(rules)

    async def ShouldRateLimit(self, request: Any, context: Any) -> Any:  # the name is gRPC's
        metadata = context.invocation_metadata() or ()
        rid = self.request_ids.take_metadata(metadata)
        trailing = ((METADATA_KEY, rid),)
        context.set_trailing_metadata(trailing)
        token = current_request_id.set(rid)
        try:
            planned: Planned | None = None
            if self.node.placement is not None and not was_forwarded(metadata):
                with contextlib.suppress(RateLimiterError):  # then answered here, as an error
                    planned = self._planned(request)
            routed = None if planned is None else await self._route(request, planned, rid)
            if routed is not None:
                response, failure = routed
                if failure is None:
                    return response
                await context.abort(failure[0], failure[1], trailing)
            tracing = self.tracing
            if tracing is None:
                response, failure = self._respond(request, planned)
            else:
                with tracing.request(f"{SERVICE}/{METHOD}", metadata, rid, SPAN_ATTRIBUTES) as span:
                    response, failure = self._respond(request, planned)
                    code = grpc.StatusCode.OK if failure is None else failure[0]
                    grpc_status(span, code.value[0])
        finally:
            current_request_id.reset(token)
        if failure is None:
            return response
        await context.abort(failure[0], failure[1], trailing)
        raise AssertionError("unreachable: abort raises")

    async def _route(
        self, request: Any, planned: Planned, rid: str
    ) -> tuple[Any, Failure | None] | None:
        """With --replicas N, the answer of a member answering for every key of the
        request (or a refusal); None: answer it here."""
        placement = self.node.placement
        asked, plans = planned
        keys = [asked[i].key for i, plan in enumerate(plans) if isinstance(plan, Limit)]
        if placement is None or self.forwarder is None or not keys:
            return None
        targets = placement.route(keys[0]) if len(keys) == 1 else placement.route_all(keys)
        if targets is None:
            return None
        if not targets and len(keys) > 1 and placement.spans_owners(keys):
            self.forwarder.counted.outcomes.labels("spans_owners").inc()
            return None, (
                grpc.StatusCode.INVALID_ARGUMENT,
                "with --replicas N one node must answer for every descriptor of a request, "
                "and no node answers for all of these (their partitions are owned by "
                "different nodes)",
            )
        response = await self.forwarder.forward(targets, request, ((METADATA_KEY, rid),))
        if response is not None:
            return response, None
        if self.node.settings.fail_mode == "closed":
            return None, (
                grpc.StatusCode.UNAVAILABLE,
                "no node answering for these descriptors is reachable and this node runs "
                "with --fail-mode closed",
            )
        return None  # decided here under the fail mode, as HTTP does

    def _planned(self, request: Any) -> Planned:
        """Each descriptor of the request and the limit it is decided under (BadRequest)."""
        domain, asked = read_request(request)
        return asked, [self._plan(domain, item) for item in asked]

    def _respond(self, request: Any, planned: Planned | None) -> tuple[Any, Failure | None]:
        try:
            return self.answer(request, planned), None
        except (BadRequest, UnknownRule) as exc:
            return None, (grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Unavailable as exc:
            return None, (grpc.StatusCode.UNAVAILABLE, str(exc))
        except RateLimiterError as exc:
            return None, (grpc.StatusCode.FAILED_PRECONDITION, str(exc))

    def answer(self, request: Any, planned: Planned | None = None) -> Any:
        """The RateLimitResponse to a RateLimitRequest (BadRequest, Unavailable raised);
        `planned`: its descriptors' limits when already worked out."""
        asked, plans = planned if planned is not None else self._planned(request)
        replaced = {name for plan in plans if isinstance(plan, Limit) for name in plan.replaces}
        for i, plan in enumerate(plans):
            if isinstance(plan, Limit) and plan.name is not None and plan.name in replaced:
                plans[i] = NO_LIMIT
        limits = [(i, plan) for i, plan in enumerate(plans) if isinstance(plan, Limit)]
        blocked = any(limit.blocks for _, limit in limits)
        checks = [
            Check(
                asked[i].key,
                0 if blocked or not limit.requests_per_unit else asked[i].hits,
                limit.rule,
            )
            for i, limit in limits
        ]
        started_ns = time.time_ns()
        decided = dict(zip((i for i, _ in limits), self.node.decide_all(checks), strict=True))
        tracing = self.tracing
        response = rls_pb2.RateLimitResponse()
        shown: tuple[Decision, Limit] | None = None  # the decision the headers report
        for i, plan in enumerate(plans):
            status = response.statuses.add()
            status.code = Code.OK
            if plan == UNLIMITED:
                status.limit_remaining = MAX_UINT32
            if not isinstance(plan, Limit):
                continue
            decision = decided[i]
            if plan.blocks:
                decision = decision._replace(allowed=False, remaining=0)
            _fill(status, plan, decision)
            if tracing is not None:
                tracing.decision(asked[i].key, asked[i].hits, plan.rule.name, decision, started_ns)
            if shown is None or _worse(decision, shown[0]):
                shown = (decision, plan)
        over = any(status.code == Code.OVER_LIMIT for status in response.statuses)
        response.overall_code = Code.OVER_LIMIT if over else Code.OK
        if tracing is not None and over:
            tracing.denied_by(
                [s.current_limit.name for s in response.statuses if s.code == Code.OVER_LIMIT]
            )
        if shown is not None:
            decision, limit = shown
            for name, value in ratelimit_headers(decision, limit.policy()):
                response.response_headers_to_add.append(
                    base_pb2.HeaderValue(key=name.decode(), value=value.decode())
                )
        return response

    def _plan(self, domain: str, item: Asked) -> Plan:
        override = item.override
        if override is not None and self.allow_limit_override:
            window = override_rule(override.unit, max(override.requests_per_unit, 1))
            return Limit(window, override.unit, override.requests_per_unit)
        rule = self.index.match(domain, item.entries)
        if rule is None or rule.envoy is None:
            return NO_LIMIT
        envoy = rule.envoy
        if envoy.unlimited:
            return UNLIMITED
        if envoy.unit is None or envoy.requests_per_unit is None:
            return NO_LIMIT
        return Limit(rule, envoy.unit, envoy.requests_per_unit, envoy.name, envoy.replaces)


def _worse(decision: Decision, than: Decision) -> bool:
    """Denied before admitted, then less remaining: what the RateLimit headers report."""
    if decision.allowed != than.allowed:
        return not decision.allowed
    return decision.remaining < than.remaining


def _fill(status: Any, limit: Limit, decision: Decision) -> None:
    status.code = Code.OK if decision.allowed else Code.OVER_LIMIT
    current = status.current_limit
    current.name = limit.rule.name
    current.requests_per_unit = limit.requests_per_unit
    current.unit = UNITS[limit.unit]
    status.limit_remaining = min(max(decision.remaining, 0), MAX_UINT32)
    reset_ms = ceil_ms(decision.reset_after_s)
    status.duration_until_reset.FromMilliseconds(max(reset_ms or 0, 0))
