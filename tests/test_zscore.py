"""z-scores end to end: engine baselines, the signals payload, and regime rules on `_z` names."""

from __future__ import annotations

import math

import pytest

from monitor.config import ConfigError, config_from_dict
from monitor.messages import MessageBuilder, Topics
from signals.catalogue import Z_SCORED
from signals.engine import BaselineSpec, SignalEngine, SignalSnapshot
from signals.regimes import Condition, RegimeEngine, RegimeRule
from streams.events import BINANCE_USDM, MarkPrice

MIN = 60_000


def funding_engine(min_obs: int = 3) -> SignalEngine:
    return SignalEngine(
        {"BTC": {BINANCE_USDM: "BTCUSDT"}},
        flow_window_ms=60_000,
        bucket_ms=1000,
        publish_interval_ms=1000,
        baseline=BaselineSpec(span_ms=10 * MIN, bucket_ms=MIN, min_obs=min_obs),
    )


def funding(ts: int, rate: float) -> MarkPrice:
    return MarkPrice(BINANCE_USDM, "BTCUSDT", ts, ts, 78_000.0, 78_000.0, rate, None)


def run_minutes(eng: SignalEngine, rates: list[float]) -> list[SignalSnapshot]:
    """A mark every 10 s; minute m carries rates[m]. Returns every snapshot."""
    snaps: list[SignalSnapshot] = []
    for minute, rate in enumerate(rates):
        for k in range(6):
            snaps += eng.on_event(funding(minute * MIN + k * 10_000 + 500, rate))
    return snaps


def test_funding_z_against_hand_worked_numbers() -> None:
    eng = funding_engine()
    # Minutes 0..3 close with funding 1e-4 .. 4e-4; minute 4 is under way at 5e-4.
    snaps = run_minutes(eng, [1e-4, 2e-4, 3e-4, 4e-4, 5e-4])
    last = snaps[-1]
    score = last.z["funding_rate"]
    # Baseline samples 1,2,3,4 (x1e-4): mean 2.5e-4, population std sqrt(1.25) x 1e-4.
    assert last.values["funding_rate"] == 5e-4
    assert score.n_obs == 4 and score.warmup is True
    assert score.z == pytest.approx(2.5 / math.sqrt(1.25))
    assert set(last.z) == set(Z_SCORED)
    assert last.z["taker_imbalance"].z is None  # no trades: no value, no z


def test_z_is_null_before_min_history() -> None:
    eng = funding_engine(min_obs=5)
    last = run_minutes(eng, [1e-4, 2e-4, 3e-4, 4e-4, 5e-4])[-1]
    assert last.z["funding_rate"].z is None and last.z["funding_rate"].n_obs == 4


def test_signals_payload_carries_z_n_obs_and_warmup_for_z_scored_signals_only() -> None:
    last = run_minutes(funding_engine(), [1e-4, 2e-4, 3e-4, 4e-4, 5e-4])[-1]
    msg = MessageBuilder(Topics("tw/v1", "i"), "s", "v", 0).signals(last, 0, 10)
    entries = msg.payload["signals"]
    assert entries["funding_rate"]["z"] == pytest.approx(2.5 / math.sqrt(1.25))
    assert entries["funding_rate"]["n_obs"] == 4 and entries["funding_rate"]["warmup"] is True
    assert set(entries["mark_price"]) == {"value", "unit"}  # not z-scored


def test_rules_can_use_z_names_and_the_seeds_aliases() -> None:
    base = {
        "instance": "t",
        "assets": {"BTC": {"binance_usdm": "BTCUSDT"}},
        "mqtt": {"url": "mqtt://127.0.0.1", "prefix": "t/v1"},
    }
    ok = {
        **base,
        "regimes": [
            {
                "name": "sellers",
                "all": [
                    {"signal": "taker_intensity_z", "below": -1.5},
                    {"signal": "funding_rate_z", "above": 2.0},
                ],
            }
        ],
    }
    assert len(config_from_dict(ok, env={}).regimes[0].all) == 2
    bad = {**base, "regimes": [{"name": "x", "all": [{"signal": "mark_price_z", "below": 0}]}]}
    with pytest.raises(ConfigError):
        config_from_dict(bad, env={})  # mark_price has no baseline


def test_a_rule_on_an_alias_reads_the_z_score() -> None:
    snap = run_minutes(funding_engine(), [1e-4, 2e-4, 3e-4, 4e-4, 5e-4])[-1]
    rule = RegimeRule(
        "funding_spike",
        "",
        all=(Condition("funding_rate_z", "above", 2.0, 1.5),),
        any=(),
        min_dwell=0,
        cooldown=0,
    )
    change = RegimeEngine("BTC", (rule,)).evaluate(snap)
    assert change is not None and change.regime == "funding_spike"
    assert change.reasons[0].value == pytest.approx(2.5 / math.sqrt(1.25))
    assert snap.lookup()["depth_z"] is None  # alias of depth_usd_1pct_z: no book, no z


def test_baseline_recomputes_are_spread_over_the_ticks_after_a_close() -> None:
    """With 8 baselines of 1-minute buckets and a tick a second, a close is followed by one
    recompute per tick (not all eight at once), and every baseline is current within 8 ticks."""
    eng = funding_engine()
    baselines = list(eng.assets["BTC"].baselines.values())
    assert len(baselines) == len(Z_SCORED) == 8
    stale_after: list[int] = []
    funding_n_obs: list[int] = []
    for second in range(2 * 60 + 12):  # a mark every second: one tick per second
        ticked = eng.on_event(funding(second * 1000 + 500, 1e-4 * (1 + second // 60)))
        if second >= 121:  # the tick at 2:01 (values at 2:00.999) closes minute 1
            assert len(ticked) == 1
            stale_after.append(sum(b.stale for b in baselines))
            funding_n_obs.append(ticked[0].z["funding_rate"].n_obs)
    assert stale_after[:9] == [7, 6, 5, 4, 3, 2, 1, 0, 0]
    position = list(eng.assets["BTC"].baselines).index("funding_rate")  # recomputed in order
    assert funding_n_obs[: position + 2] == [1] * position + [2, 2]
