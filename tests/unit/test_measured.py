"""The tiers' measured figures: time-weighted averages that forget at a stated half-life, a
SQLite store several routers share, and routing that carries on while the store is down."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.helpers.clock import Clock
from tierroute.router.route.routing_log import RoutingLog
from tierroute.router.tiers.measured import ERROR_RATE, TTFT_MS, Measurements
from tierroute.router.tiers.store import Figure, Key, SqliteStore, StoreDown, StoreError

HALF_LIFE = 30.0


def test_an_observation_weighs_half_as_much_after_one_half_life() -> None:
    old = Figure(100.0, 1.0, 0.0)
    new = Figure(300.0, 1.0, HALF_LIFE)
    merged = old.merge(new, HALF_LIFE)
    assert merged.value == pytest.approx((100 * 0.5 + 300) / 1.5)
    assert merged.weight == pytest.approx(1.5)
    assert merged.at == HALF_LIFE
    assert new.merge(old, HALF_LIFE) == merged  # the order of merging does not matter


def test_figures_forgotten_entirely_keep_the_newest_value() -> None:
    old = Figure(100.0, 1.0, 0.0)
    new = Figure(200.0, 0.0, 1e9)  # both weigh nothing any more
    assert old.merge(new, 1.0).value == 200.0
    assert new.merge(old, 1.0).value == 200.0


def test_a_tier_that_turns_slow_shows_within_one_half_life() -> None:
    clock = Clock(1_000_000.0)
    m = Measurements(HALF_LIFE, clock=clock)
    for _ in range(600):  # ten minutes at 100 ms
        clock.now += 1.0
        m.observe("small", "", TTFT_MS, 100.0)
    for _ in range(int(HALF_LIFE)):  # then one half-life at 2 s
        clock.now += 1.0
        m.observe("small", "", TTFT_MS, 2000.0)
    figure = m.figure("small", TTFT_MS)
    assert figure is not None and figure > 1000.0  # past halfway to the new speed


def test_a_category_has_its_own_figure_once_it_has_weight_enough() -> None:
    clock = Clock(1_000_000.0)
    m = Measurements(HALF_LIFE, clock=clock)
    for _ in range(10):
        m.observe("small", "chat", TTFT_MS, 100.0)
    m.observe("small", "math", TTFT_MS, 900.0)
    overall = m.figure("small", TTFT_MS)
    assert overall == pytest.approx((100 * 10 + 900) / 11)
    assert m.figure("small", TTFT_MS, "math") == overall  # one observation: not enough
    assert m.figure("small", TTFT_MS, "chat") == pytest.approx(100.0)
    assert m.figure("small", TTFT_MS, "code") == overall  # never seen: the tier's figure
    assert m.figure("large", TTFT_MS) is None


def test_two_routers_on_one_store_see_each_others_observations(tmp_path: Path) -> None:
    path = tmp_path / "metrics.sqlite"
    clock = Clock(1_000_000.0)
    a = Measurements(HALF_LIFE, SqliteStore(path), clock=clock)
    b = Measurements(HALF_LIFE, SqliteStore(path), clock=clock)
    a.start()
    b.start()
    try:
        a.observe("small", "", TTFT_MS, 100.0)
        b.observe("large", "", TTFT_MS, 400.0)
        b.observe("small", "", TTFT_MS, 300.0)
        a.sync()
        b.sync()
        a.sync()
        for m in (a, b):
            assert m.figure("small", TTFT_MS) == pytest.approx(200.0)
            assert m.figure("large", TTFT_MS) == pytest.approx(400.0)
        # Synced twice more, nothing is counted twice.
        a.sync()
        b.sync()
        assert a.snapshot()[("small", "", TTFT_MS)].weight == pytest.approx(2.0)
    finally:
        a.close()
        b.close()
    # A restart reads what was kept.
    c = Measurements(HALF_LIFE, SqliteStore(path), clock=clock)
    c.start()
    assert c.figure("small", TTFT_MS) == pytest.approx(200.0)
    c.close()


class FlakyStore:
    """A real SQLite store that fails on cue, as a disk or a network store can."""

    def __init__(self, path: Path) -> None:
        self.inner = SqliteStore(path)
        self.path = path
        self.down = False
        self.exchanges = 0

    def exchange(self, observed: Mapping[Key, Figure], half_life: float) -> dict[Key, Figure]:
        self.exchanges += 1
        if self.down:
            raise StoreDown("OperationalError: disk I/O error")
        return self.inner.exchange(observed, half_life)

    def close(self) -> None:
        self.inner.close()


def test_a_store_that_fails_leaves_routing_on_its_figures_and_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock(1_000_000.0)
    store = FlakyStore(tmp_path / "metrics.sqlite")
    m = Measurements(HALF_LIFE, store, clock=clock)
    m.start()
    m.observe("small", "", ERROR_RATE, 0.0)
    m.sync()
    store.down = True
    with caplog.at_level(logging.WARNING):
        m.observe("small", "", ERROR_RATE, 1.0)
        m.sync()
        m.observe("small", "", ERROR_RATE, 1.0)
        m.sync()
    assert m.store_failing
    assert m.figure("small", ERROR_RATE) == pytest.approx(2 / 3)
    warnings = [r for r in caplog.records if "metrics store" in r.getMessage()]
    assert len(warnings) == 1 and "routing goes on" in warnings[0].getMessage()
    store.down = False
    m.sync()
    assert not m.store_failing
    m.close()
    kept = SqliteStore(store.path).exchange({}, HALF_LIFE)
    assert kept[("small", "", ERROR_RATE)].weight == pytest.approx(3.0)
    assert kept[("small", "", ERROR_RATE)].value == pytest.approx(2 / 3)


def test_a_file_that_is_not_a_metrics_store_is_refused(tmp_path: Path) -> None:
    log = tmp_path / "routing.sqlite"
    RoutingLog(log, keep_prompts=False).close()
    with pytest.raises(StoreError, match=r"not a tierroute metrics store.*router\.metrics_store"):
        SqliteStore(log)
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database at all, just text that is long enough" * 20)
    with pytest.raises(StoreError, match="not a SQLite metrics store"):
        SqliteStore(junk)
