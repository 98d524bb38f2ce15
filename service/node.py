"""One node wired together: rules, engine, metrics and (unless standalone) Kafka sync."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType

from pydantic import ValidationError

from crdt.limiter import Limiter, make_limiter, timing
from service.clock import ORIGIN, Clock
from service.engine import Check, Decision, Engine
from service.errors import BrokerError, RateLimiterError, TopicConfigMismatch, Unavailable
from service.metrics import Metrics
from service.placement import Placement
from service.replication.replicator import Replicator
from service.rules.feed import RulesFeed
from service.rules.model import InvalidRule, Rule, RuleSet, overlay
from service.settings import Settings
from service.supervisor import Supervisor

log = logging.getLogger("ratelimiter.node")

REGIONS_S = 0.1  # how often remote regions' freshness is looked at
SWEEP_INTERVAL_S = 0.25
SWEEP_PASS_S = 2.0  # every key is looked at about this often ...
SWEEP_BUDGET = 20_000  # ... looking at most at this many keys per sweep ...
SWEEP_SLICE = 1_000  # ... a slice at a time, yielding to the event loop in between
RETRY_S = 1.0
OUTCOMES = ("admitted", "denied", "shadow_denied")


def sweep_slices(tracked: int) -> int:
    """Slices of the next sweep: enough to look at every key once per SWEEP_PASS_S, at
    least one and at most SWEEP_BUDGET keys. Looking more often only costs CPU (20,000
    keys every 0.25 s was 9 % of a synced node's samples with 33,000 keys held); an idle
    key is deleted at most a pass later, which only holds its memory that much longer."""
    wanted = min(SWEEP_BUDGET, math.ceil(tracked * SWEEP_INTERVAL_S / SWEEP_PASS_S))
    return max(1, math.ceil(wanted / SWEEP_SLICE))


class Node:
    """Decides locally; replicates through its `replicator` unless standalone.

    Built by `service.bootstrap.build_node`, which makes the engine, metrics and adapters;
    the node only runs them: it connects, bootstraps, decides, follows rule changes.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        replica: str,
        rules: RuleSet,
        engine: Engine,
        metrics: Metrics,
        clock: Clock,
        replicator: Replicator | None = None,
        rules_feed: RulesFeed | None = None,
        placement: Placement | None = None,
    ) -> None:
        """`rules` are the --rules file's (or given) rules; the rules topic overrides them."""
        self.settings = settings
        self.clock = clock
        self.replica = replica
        self.base_rules = rules
        self.rules = rules
        self.topic_rules: dict[str, Rule] = {}  # overrides from the rules topic, by name
        self.rules_listeners: list[Callable[[RuleSet], None]] = []
        self.ready_listeners: list[Callable[[], None]] = []  # called once, when ready
        self.engine = engine
        self.metrics = metrics
        self.metrics.info.labels(settings.node_id, replica).set(1)
        self.replicator = replicator
        self.rules_feed = rules_feed
        self.placement = placement  # --replicas N: the partitions read, where users go
        self.ready = False
        self.phase = "starting"  # what the node is doing before it is ready (/readyz)
        self.fatal: str | None = None
        self._replicating = False
        self._rules_read = False
        self._log_started = False
        self._joined = False
        self._share: dict[str, Limiter] = {}
        # --region-fail-mode share while a remote region is stale: this node's slice of
        # 1/R of every limit (see _share_store), by rule.
        self.region_share = False
        self._region_share: dict[str, Limiter] = {}
        self._remote_started = False
        self.supervisor = Supervisor(metrics, on_change=self._readiness_changed)
        self.decisions: dict[tuple[str, ...], float] = {
            (rule.name, outcome): 0 for rule in rules.all() for outcome in OUTCOMES
        }
        self.metrics.watch(
            "ratelimiter_decisions_total",
            lambda: self.decisions,
            "Decisions by rule and outcome (admitted, denied, shadow_denied)",
            ("rule", "outcome"),
        )
        self.metrics.watch("ratelimiter_tracked_keys", self._tracked, "Keys held, by rule")
        self.metrics.watch(
            "ratelimiter_store_events_total", self._store_events, "Key store events by kind"
        )
        self.metrics.ready.set_function(lambda: 1.0 if self.ready and self.failing is None else 0.0)
        discipline = replicator.discipline if replicator is not None else None
        if discipline is not None:
            self.metrics.clock_offset.set_function(lambda: discipline.raw_offset)
            self.metrics.clock_correction.set_function(lambda: discipline.correction)
            self.metrics.clock_uncertainty.set_function(
                lambda: best.uncertainty if (best := discipline.measured) else math.nan
            )
        if replicator is not None and settings.region is not None:
            regions = replicator.regions
            self.metrics.watch(
                "ratelimiter_region_lag_seconds",
                lambda: {(r,): regions.lag(r, self.clock()) for r in regions.links},
                "Age of the newest record merged from each remote region (its broker's stamp "
                "to this node's now; +Inf before any)",
                ("region",),
            )
            self.metrics.watch(
                "ratelimiter_region_fresh",
                lambda: {
                    (r,): float(regions.state(r, self.clock()) == "fresh") for r in regions.links
                },
                "1 while a remote region's lag is within --region-stale-s",
                ("region",),
            )
            self.metrics.watch(
                "ratelimiter_region_share",
                lambda: {(): float(self.region_share)},
                "1 while this node enforces its region's 1/R share (--region-fail-mode share)",
                (),
            )
        self.metrics.watch(
            "ratelimiter_entries_bounded_total",
            self._entry_problems,
            "Peer entries clamped to the bounds of now and the rule, by kind: epoch_ahead, "
            "floor_ahead, cell_over_rule, refund_over_cell",
        )

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Start background work; readiness follows once bootstrapped (or at once standalone)."""
        spawn = self.supervisor.spawn
        spawn("sweep", self._sweep_loop)
        spawn("loop-lag", self.metrics.probe_loop_lag)
        replicator = self.replicator
        if replicator is None:
            self._set_ready()
            return
        spawn("connect", lambda: self._connect(replicator))

    async def stop(self) -> None:
        """Stop background work; publish what was admitted before disconnecting."""
        await self.supervisor.stop()  # a task that had failed cannot keep stop() from here
        if self.placement is not None:
            await self.placement.membership.stop()  # leave: peers take over at once
            self._joined = False
        if self.rules_feed is not None:
            await self.rules_feed.stop()
        if self.replicator is not None:
            if self._replicating:
                await self.replicator.stop()  # publishes what was admitted
                self._replicating = False
            await self.replicator.log.stop()
            self._log_started = False
            if self.replicator.remote is not None:
                await self.replicator.remote.stop()
                self._remote_started = False
        self._rules_read = False
        self.ready = False

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def wait_ready(self, timeout_s: float) -> None:
        """Return once ready; raise Unavailable after `timeout_s` (or at a fatal error)."""
        deadline = time.monotonic() + timeout_s
        while not self.ready:
            if self.fatal is not None:
                raise Unavailable(self.fatal)
            if time.monotonic() > deadline:
                raise Unavailable(f"not ready after {timeout_s}s")
            await asyncio.sleep(0.01)

    def _set_ready(self) -> None:
        self.ready = True
        self._readiness_changed()
        log.info("node %s ready (replica %s)", self.settings.node_id, self.replica)
        for listener in self.ready_listeners:
            listener()

    @property
    def failing(self) -> str | None:
        """Why the node must not decide though started: background work keeps failing,
        or its clock is off the broker's beyond the bound (--clock-mode refuse); else None."""
        failing = self.supervisor.failing
        if failing is None and self.replicator is not None:
            discipline = self.replicator.discipline
            if discipline is not None:
                failing = discipline.problem()
        return failing

    def _readiness_changed(self) -> None:
        pass  # ratelimiter_ready is computed at scrape time (see __init__)

    async def _connect(self, replicator: Replicator) -> None:
        s = self.settings
        feed = self.rules_feed
        if feed is not None and not self._rules_read:
            self.phase = f"reading the rules topic {s.rules_topic!r}"
            if not await self._read_rules(feed):
                return
            self._rules_read = True
            self.supervisor.spawn("rules", feed.follow)
        self.phase = f"connecting to Kafka at {s.kafka}"
        while not self._log_started:  # a restarted connect reuses the started log
            try:
                await replicator.log.start()
                self._log_started = True
            except TopicConfigMismatch as exc:
                self.fatal = str(exc)
                log.error("%s", exc)
                return
            except RateLimiterError as exc:
                log.warning("waiting for Kafka at %s: %s", s.kafka, exc)
                await asyncio.sleep(RETRY_S)
        remote = replicator.remote
        while remote is not None and not self._remote_started:
            try:
                await remote.start()
                self._remote_started = True
            except RateLimiterError as exc:
                log.warning("waiting for Kafka at %s (remote topics): %s", s.kafka, exc)
                await asyncio.sleep(RETRY_S)
        placement = self.placement
        if placement is not None and not self._joined and not await self._join(placement):
            return
        self.phase = f"reading the state topic {s.topic!r} to its end"
        try:
            await replicator.bootstrap(s.bootstrap_timeout_s)
        except TimeoutError:
            self.fatal = (
                f"the state topic was not read to its end within {s.bootstrap_timeout_s}s "
                "(--bootstrap-timeout-s / RATELIMITER_BOOTSTRAP_TIMEOUT_S)"
            )
            log.error("%s", self.fatal)
            return
        self.metrics.broker_up.set(1)
        self.supervisor.spawn("flush", replicator.flush_loop)
        self.supervisor.spawn("consume", replicator.consume_loop)
        if replicator.region_feed is not None:
            self.supervisor.spawn("remote", replicator.region_feed.follow)
            self.supervisor.spawn("regions", self._regions_loop)
        self._replicating = True
        if placement is not None:
            placement.active = True
            placement.refresh()  # the members may have changed while bootstrapping
            placement.announce_ready()
        self._set_ready()

    async def _join(self, placement: Placement) -> bool:
        """Read the members topic, announce this node, read only the partitions it owns."""
        s = self.settings
        membership = placement.membership
        self.phase = f"joining the members topic {s.members_topic!r}"
        while True:
            try:
                await membership.start(s.bootstrap_timeout_s)
                break
            except TopicConfigMismatch as exc:
                self.fatal = str(exc)
                log.error("%s", exc)
                return False
            except (RateLimiterError, TimeoutError) as exc:
                log.warning("waiting for the members topic at %s: %r", s.kafka, exc)
                await membership.stop()
                await asyncio.sleep(RETRY_S)
        self.supervisor.spawn("heartbeat", membership.heartbeat_loop)
        self.supervisor.spawn("members", membership.follow_loop)
        placement.refresh()
        owned = placement.owned()
        await self._assign(owned)
        self._joined = True
        log.info(
            "replicas %d of %d members: reading partitions %s",
            placement.replicas,
            len(placement.live),
            sorted(owned),
        )
        return True

    async def _assign(self, partitions: frozenset[int]) -> None:
        """Read only `partitions` of the state topic (before bootstrapping)."""
        assert self.replicator is not None
        while True:
            try:
                await self.replicator.assign(partitions)
                return
            except RateLimiterError as exc:
                log.warning("assigning partitions failed: %r", exc)
                await asyncio.sleep(RETRY_S)

    async def _read_rules(self, feed: RulesFeed) -> bool:
        """Apply the rules topic read to its end (before the state: its rules name limiters)."""
        s = self.settings
        while True:
            try:
                await feed.start(s.bootstrap_timeout_s, self.set_topic_rules)
                return True
            except TopicConfigMismatch as exc:
                self.fatal = str(exc)
            except TimeoutError:
                self.fatal = (
                    f"the rules topic {s.rules_topic!r} was not read to its end within "
                    f"{s.bootstrap_timeout_s}s (--bootstrap-timeout-s)"
                )
            except RateLimiterError as exc:
                log.warning("waiting for the rules topic at %s: %s", s.kafka, exc)
                await asyncio.sleep(RETRY_S)
                continue
            log.error("%s", self.fatal)
            return False

    def set_topic_rules(self, changes: Mapping[str, Rule | None]) -> None:
        """Apply rule overrides (None deletes one) over the file rules; InvalidRule when
        the result is not a valid rule set (nothing changes then)."""
        overrides = dict(self.topic_rules)
        for name, rule in changes.items():
            if rule is None:
                overrides.pop(name, None)
            else:
                overrides[name] = rule
        try:
            rules = overlay(self.base_rules, overrides)
        except ValidationError as exc:
            raise InvalidRule(f"the rules would be invalid: {exc}") from exc
        self.topic_rules = overrides
        if rules == self.rules:
            return
        fresh = self.engine.replace_rules(rules)
        self.rules = rules
        for rule in rules.all():
            for outcome in OUTCOMES:
                self.decisions.setdefault((rule.name, outcome), 0)
        self._share.clear()  # share-mode buckets were sized from the old limits
        self._region_share.clear()
        for listener in self.rules_listeners:
            listener(rules)
        log.info(
            "rules in force: %s (starting empty: %s)",
            ", ".join(rule.name for rule in rules.all()),
            ", ".join(fresh) or "none",
        )

    async def change_rule(self, name: str, rule: Rule | None, wait_s: float = 2.0) -> bool:
        """Put (or with None delete) a rule override through the rules topic.

        Returns once this node applied it (True) or after `wait_s` (False: written, not yet
        seen). A node without a rules topic applies the change to itself only.
        """
        feed = self.rules_feed
        if feed is None:
            self.set_topic_rules({name: rule})
            return True
        if not self.ready:
            raise Unavailable("the node is still reading its topics (see /readyz)")
        try:
            await feed.publish(name, rule)
        except BrokerError as exc:
            raise Unavailable(f"the rule was not written: {exc}") from exc
        deadline = time.monotonic() + wait_s
        while self.topic_rules.get(name) != rule:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def maintain(self, budget: int = SWEEP_BUDGET) -> None:
        """Seal old epochs and forget idle keys, looking at `budget` keys (the sweep loop
        calls this periodically)."""
        now = self.clock()
        if self.settings.standalone:
            self.engine.forget_changes(now)
        self.engine.sweep(now, budget)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            if not self.ready:
                # Sealing follows the clock and never moves back: wait until bootstrap has
                # measured the clock against the broker (and corrected it).
                continue
            for _ in range(sweep_slices(self.engine.tracked_keys())):
                self.maintain(SWEEP_SLICE)
                await asyncio.sleep(0)

    # -- decisions -------------------------------------------------------------

    @property
    def mode(self) -> str:
        """`normal`, the fail mode in force while the broker is unreachable, or
        `region_share` while a remote region is stale under --region-fail-mode share."""
        replicator = self.replicator
        if replicator is None or not self._replicating or replicator.broker_ok:
            if self._share:
                self._share.clear()  # the broker is back: the shared limit applies again
            return "region_share" if self.region_share else "normal"
        return self.settings.fail_mode

    # -- regions ---------------------------------------------------------------

    def regions_view(self) -> list[dict[str, object]]:
        """Each remote region: its topics, lag, state (fresh, stale, catching_up), records."""
        if self.replicator is None or self.settings.region is None:
            return []
        regions = self.replicator.regions
        now = self.clock()
        out: list[dict[str, object]] = []
        for name, link in sorted(regions.links.items()):
            lag = regions.lag(name, now)
            out.append(
                {
                    "region": name,
                    "topics": sorted(link.topics),
                    "state": regions.state(name, now),
                    "lag_s": None if math.isinf(lag) else round(lag, 3),
                    "records": link.records,
                }
            )
        return out

    def _update_region_share(self) -> None:
        """Enter or leave the region share (--region-fail-mode share) as regions go stale
        and fresh; the shares start full when entered, and are dropped when left: the
        remote consumption merged meanwhile is in the shared bucket either way."""
        replicator = self.replicator
        if replicator is None or self.settings.region_fail_mode != "share":
            return
        stale = replicator.regions.stale(self.clock()) if self.ready else []
        share = bool(stale)
        if share == self.region_share:
            return
        self.region_share = share
        self._region_share.clear()
        if share:
            log.warning(
                "remote regions %s stale beyond %.1fs: enforcing this region's 1/%d share",
                ", ".join(stale),
                self.settings.region_stale_s,
                replicator.regions.count,
            )
        else:
            log.info("every remote region fresh again: back to the shared limits")

    async def _regions_loop(self) -> None:
        while True:
            self._update_region_share()
            await asyncio.sleep(REGIONS_S)

    def decide(self, key: str, cost: int, rule: Rule) -> Decision:
        """Decide and count one request (honouring the fail mode during a broker outage,
        and the region fail mode while a remote region is stale)."""
        if not self.ready:
            raise Unavailable("the node is still reading the state topic (see /readyz)")
        replicator = self.replicator
        if replicator is None or replicator.broker_ok or self.settings.fail_mode == "local":
            if self.region_share and replicator is not None and replicator.broker_ok:
                decision = self._decide_share(key, cost, rule)
            else:
                decision = self.engine.decide(key, cost, rule)
        elif self.settings.fail_mode == "closed":
            self.decisions[(rule.name, "unavailable")] = (
                self.decisions.get((rule.name, "unavailable"), 0) + 1
            )
            raise Unavailable("Kafka is unreachable and this node runs with --fail-mode closed")
        else:
            decision = self._decide_share(key, cost, rule)
        if decision.shadow_denied:
            outcome = "shadow_denied"
        else:
            outcome = "admitted" if decision.allowed else "denied"
        self.decisions[(rule.name, outcome)] += 1
        return decision

    def decide_all(self, checks: Sequence[Check]) -> list[Decision]:
        """Decide several limits at once, all or nothing (`Engine.decide_all`), honouring
        the fail mode as `decide` does; each check is counted under its rule."""
        if not self.ready:
            raise Unavailable("the node is still reading the state topic (see /readyz)")
        replicator = self.replicator
        if replicator is None or replicator.broker_ok or self.settings.fail_mode == "local":
            if self.region_share and replicator is not None and replicator.broker_ok:
                gates = [self._share_store(check.rule) for check in checks]
                decisions = self.engine.decide_all(checks, gates=gates)
            else:
                decisions = self.engine.decide_all(checks)
        elif self.settings.fail_mode == "closed":
            for check in checks:
                self._count(check.rule.name, "unavailable")
            raise Unavailable("Kafka is unreachable and this node runs with --fail-mode closed")
        else:
            gates = [self._share_store(check.rule) for check in checks]
            decisions = self.engine.decide_all(checks, gates=gates)
        for check, decision in zip(checks, decisions, strict=True):
            if decision.shadow_denied:
                self._count(check.rule.name, "shadow_denied")
            else:
                self._count(check.rule.name, "admitted" if decision.allowed else "denied")
        return decisions

    def _count(self, rule: str, outcome: str) -> None:
        self.decisions[(rule, outcome)] = self.decisions.get((rule, outcome), 0) + 1

    def _share_store(self, rule: Rule) -> Limiter:
        """This node's share of `rule`: 1/N during a broker outage (N = itself and the
        peers heard from before it), and 1/(R*N) while the broker answers but a remote
        region is stale (its region's 1/R, split among the region's N nodes)."""
        assert self.replicator is not None
        regional = self.region_share and self.replicator.broker_ok
        shares = self._region_share if regional else self._share
        store = shares.get(rule.name)
        if store is None:
            n = 1 + self.replicator.alive_peers(self.settings.peer_timeout_s)
            if regional:
                n *= self.replicator.regions.count
            store = make_limiter(
                rule.algorithm,
                f"{self.replica}/share",
                rate=(rule.rate or 1.0) / n,
                burst=max(1, rule.capacity // n),
                window=rule.window_s or 1.0,
                max_keys=self.settings.max_keys,
                period=rule.period,
                origin=ORIGIN,
            )
            shares[rule.name] = store
            if not regional:
                log.warning(
                    "broker unreachable: fail mode share, this node takes 1/%d of limits", n
                )
        return store

    def _decide_share(self, key: str, cost: int, rule: Rule) -> Decision:
        # Lease-style safety while cut off: this node may spend only 1/N of the limit,
        # N = itself plus the peers it heard from before the outage, on top of the
        # shared bucket (which keeps recording consumption for when the broker returns).
        store = self._share_store(rule)
        now = self.clock()
        result = store.acquire(key, cost, now)
        if result < 0:
            retry, reset = timing(store, key, result, cost, now)
            remaining = max(0, math.floor(result + cost + 1e-6))
            return Decision(False, remaining, rule.capacity, retry, reset, rule, False)
        decision = self.engine.decide(key, cost, rule, now)
        if not decision.allowed:
            store.refund(key, cost, now)
        return decision

    # -- metrics callbacks -----------------------------------------------------

    def _tracked(self) -> dict[tuple[str, ...], float]:
        return {(name,): float(len(lim)) for name, lim in self.engine.limiters.items()}

    def _entry_problems(self) -> dict[tuple[str, ...], float]:
        totals: dict[tuple[str, ...], float] = {}
        for lim in self.engine.limiters.values():
            for kind, count in lim.stats.entry_problems.items():
                totals[(kind,)] = totals.get((kind,), 0.0) + count
        return totals

    def _store_events(self) -> dict[tuple[str, ...], float]:
        totals = {
            "deleted_idle": 0.0,
            "evicted_active": 0.0,
            "late_entries": 0.0,
            "late_cost": 0.0,
            "sealed_epochs": 0.0,
            "evicted_cells_forgotten": 0.0,
        }
        for lim in self.engine.limiters.values():
            st = lim.stats
            totals["deleted_idle"] += st.deleted_idle
            totals["evicted_active"] += st.evicted_active
            totals["late_entries"] += st.late_entries
            totals["late_cost"] += st.late_cost
            totals["sealed_epochs"] += st.sealed_epochs
            totals["evicted_cells_forgotten"] += st.evicted_cells_forgotten
        if self.replicator is not None:
            totals["buffer_folded_keys"] = float(self.replicator.folded_keys)
            totals["buffer_shed_keys"] = float(self.replicator.shed_keys)
            totals["buffer_dropped_keys"] = float(self.replicator.dropped_keys)
        return {(kind,): value for kind, value in totals.items()}
