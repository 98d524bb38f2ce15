"""Which mirrored topics a node merges, and each remote region's lag and freshness."""

from __future__ import annotations

import math

import pytest

from service.regions import RegionTracker, TopicSelector, region_of


def test_region_of_a_mirrored_topic_is_its_source_alias() -> None:
    assert region_of("eu-west.ratelimiter.state") == "eu-west"


def test_default_selector_takes_every_regions_copy_of_the_local_topic() -> None:
    selector = TopicSelector.parse(None, "ratelimiter.state", "a")
    assert selector.matches("b.ratelimiter.state")
    assert selector.matches("us_east-2.ratelimiter.state")
    assert not selector.matches("ratelimiter.state")  # our own
    assert not selector.matches("a.ratelimiter.state")  # our own, mirrored back: never
    assert not selector.matches("b.ratelimiter.rules")
    assert not selector.matches("c.b.ratelimiter.state")  # a copy of a copy
    assert selector.expected_regions() == ()


def test_a_comma_list_is_names_expected_before_they_exist() -> None:
    selector = TopicSelector.parse(
        "b.ratelimiter.state, c.ratelimiter.state", "ratelimiter.state", "a"
    )
    assert selector.names == ("b.ratelimiter.state", "c.ratelimiter.state")
    assert selector.matches("c.ratelimiter.state")
    assert not selector.matches("d.ratelimiter.state")
    assert selector.expected_regions() == ("b", "c")


def test_anything_else_is_a_regular_expression_matched_in_full() -> None:
    selector = TopicSelector.parse(r"(b|c)\.ratelimiter\.state", "ratelimiter.state", "a")
    assert selector.pattern is not None
    assert selector.matches("c.ratelimiter.state")
    assert not selector.matches("c.ratelimiter.state2")


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("ratelimiter.state", "own topic"),
        ("a.ratelimiter.state", "own topic"),
        ("state", "no source region"),
        ("(b", "neither"),
    ],
)
def test_bad_remote_topics_are_refused(value: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        TopicSelector.parse(value, "ratelimiter.state", "a")


def test_lag_is_the_age_of_the_newest_record_and_never_negative() -> None:
    tracker = RegionTracker(stale_s=5.0)
    tracker.add_topic("b.ratelimiter.state")
    assert tracker.lag("b", 100.0) == math.inf
    tracker.observe("b", 98.0)
    tracker.observe("b", 97.0)  # an older record read later does not make it older
    assert tracker.lag("b", 100.0) == 2.0
    assert tracker.lag("b", 97.5) == 0.0  # a source clock ahead of ours: no negative lag
    assert tracker.links["b"].records == 2


def test_a_region_is_stale_beyond_the_threshold_and_fresh_again_with_news() -> None:
    tracker = RegionTracker(stale_s=5.0)
    tracker.observe("b", 100.0)
    assert tracker.state("b", 105.0) == "fresh"
    assert tracker.state("b", 105.1) == "stale"
    assert tracker.stale(105.1) == ["b"]
    tracker.observe("b", 105.05)
    assert tracker.stale(105.1) == []


def test_regions_named_up_front_are_stale_until_heard_and_count_in_r() -> None:
    tracker = RegionTracker(stale_s=5.0, expected=("b", "c"))
    assert tracker.count == 3
    assert tracker.stale(0.0) == ["b", "c"]


def test_a_region_being_read_to_its_end_is_not_stale() -> None:
    tracker = RegionTracker(stale_s=5.0)
    tracker.add_topic("b.ratelimiter.state").catching_up = True
    assert tracker.state("b", 100.0) == "catching_up"
    assert tracker.stale(100.0) == []


def test_a_region_found_just_now_gets_the_threshold_to_show_up() -> None:
    tracker = RegionTracker(stale_s=5.0)
    tracker.add_topic("b.ratelimiter.state", now=100.0)
    assert tracker.lag("b", 101.0) == math.inf  # nothing heard yet
    assert tracker.state("b", 105.0) == "fresh"
    assert tracker.stale(105.5) == ["b"]
