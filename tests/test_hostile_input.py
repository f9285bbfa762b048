"""Hostile and partial input through the real pipeline: one bad frame, or a venue that delivers
nothing, must never make tapewatch publish something false.

The ground truth is a control run of the same recording without the bad frame (or, for a dead
venue, the README's rule that a signal with no data behind it is null). A guard that works makes
the two runs publish byte-identical messages; the health counters say what was rejected.

The recording is the simulator's cross-venue tape (Binance spot, Binance USDⓈ-M and Coinbase,
BTC, 160 s of event time; tests/data/README.md), the only one with every stream of every venue.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import orjson
import pytest
import yaml

import monitor.guards
from monitor.config import Config, config_from_dict
from monitor.health import Health
from monitor.pipeline import Pipeline, RefetchRequest, Request
from signals.baseline import Baseline
from signals.window import BucketWindow
from streams.tape import TapeRecord, read_tape
from tests.conftest import DATA, REPO

TAPE = DATA / "sim-cross-venue-btc-160s.tape.jsonl.zst"
SPOT_TAPE = DATA / "binance-spot-2024-08-08-btc-eth-60s.tape.jsonl.zst"
SPOT, PERP, COINBASE = "binance-spot", "binance-usdm", "coinbase"
TEN_YEARS_MS = 3653 * 86_400_000

PERP_ONLY = (
    "taker_imbalance_perp",
    "taker_buy_ratio",
    "taker_sell_ratio",
    "taker_buy_sell_ratio",
    "liquidations_usd",
    "liquidations_usd_long",
    "liquidations_usd_short",
    "funding_rate",
    "mark_price",
)
COMBINED = ("taker_imbalance", "net_taker_usd")


def make_config(**signals: Any) -> Config:
    """The shipped config on BTC alone, with windows short enough for a 160 s recording and
    z-scores that exist after 10 s (so the baselines are part of what is compared)."""
    data = yaml.safe_load((REPO / "config.yaml").read_text())
    data["assets"] = {"BTC": data["assets"]["BTC"]}
    # The recording ran at 8x: its event time runs ahead of its receive time (README "Guards").
    data["guards"] = {"max_ahead": "40s"}
    data["signals"].update(
        flow_window="30s",
        volume_window="2m",
        baseline_window="60s",
        baseline_bucket="1s",
        baseline_min_history="10s",
        backfill=False,
        **signals,
    )
    data["regimes"] = [
        {
            "name": "seller_dominance",
            "description": "perp takers sell",
            "all": [{"signal": "taker_buy_sell_ratio", "below": 0.8, "exit_below": 0.9}],
        }
    ]
    return config_from_dict(data, env={})


def records(path: Any = TAPE) -> list[TapeRecord]:
    return list(read_tape(path))


class Run:
    """The replay loop of ``monitor/replay.py``, keeping the pipeline's requests and health."""

    def __init__(self, recs: Iterable[TapeRecord], config: Config | None = None) -> None:
        self.health = Health()
        self.requests: list[Request] = []
        self.messages: list[tuple[str, bytes]] = []
        self.pipeline: Pipeline | None = None
        for rec in recs:
            ts_ms = round(rec.ts * 1000)
            if self.pipeline is None:
                self.pipeline = Pipeline.for_session(
                    config or make_config(), "replay", "test", ts_ms, self.health
                )
            p = self.pipeline
            if rec.ctl is not None:
                out = p.control(rec.src, rec.ctl)
            elif rec.url is not None:
                out = p.feed_rest(rec.src, rec.url, rec.msg, ts_ms)
            else:
                out = p.feed_frame(rec.src, rec.msg, ts_ms)
            self.messages += [(m.topic, orjson.dumps(m.payload)) for m in out]
            self.requests += p.take_requests()

    def signals(self) -> list[dict[str, Any]]:
        return [
            orjson.loads(body)["signals"]
            for topic, body in self.messages
            if topic.endswith("/BTC/signals")
        ]

    def rejected(self) -> dict[str, int]:
        return {f"{v}/{k}": n for (v, k), n in self.health.rejected.items()}

    def trades(self, venue: str = PERP) -> dict[str, int]:
        assert self.pipeline is not None
        return self.pipeline.continuity.report()[f"{venue}/BTCUSDT"]


def perp_trades(recs: list[TapeRecord]) -> list[int]:
    """Indexes of the USDⓈ-M aggTrade frames."""
    return [
        i
        for i, r in enumerate(recs)
        if r.src == PERP and r.url is None and r.ctl is None and '"e":"aggTrade"' in r.msg
    ]


def forged(rec: TapeRecord, **changes: Any) -> TapeRecord:
    """A copy of an aggTrade frame with fields of its payload changed (or shifted, for a
    callable), received at the same moment as the real one."""
    frame = orjson.loads(rec.msg)
    data = frame["data"]
    for key, change in changes.items():
        data[key] = change(data[key]) if callable(change) else change
    return TapeRecord(rec.ts, rec.src, orjson.dumps(frame).decode())


def with_frame_after(
    recs: list[TapeRecord], index: int, make: Callable[[TapeRecord], TapeRecord]
) -> list[TapeRecord]:
    return [*recs[: index + 1], make(recs[index]), *recs[index + 1 :]]


@pytest.fixture(scope="module")
def tape() -> list[TapeRecord]:
    return records()


@pytest.fixture(scope="module")
def control(tape: list[TapeRecord]) -> Run:
    run = Run(tape)
    z = [s["taker_imbalance"].get("z") for s in run.signals()]
    assert any(v is not None for v in z), "the control run must publish z-scores to compare"
    assert run.rejected() == {}, "nothing in the real recording is implausible"
    return run


def test_the_clock_offset_follows_event_time_that_outruns_its_receipt(
    tape: list[TapeRecord],
) -> None:
    """The recording ran at 8x: its event time gains seconds on its receive time every second.
    With the shipped guard limits, each venue's clock offset (a median of recent frames) must
    follow that drift, or every frame past the first seconds is rejected as ``future_ts``
    (what sampling the clock on every 8th frame instead of every 2nd did)."""
    data = yaml.safe_load((REPO / "config.yaml").read_text())
    data["assets"] = {"BTC": data["assets"]["BTC"]}
    data["signals"]["backfill"] = False
    run = Run(tape, config_from_dict(data, env={}))
    assert run.rejected() == {}
    assert run.signals(), "the tape publishes"


# -- one bad frame ---------------------------------------------------------------------------
def test_a_trade_ten_years_ahead_changes_nothing(tape: list[TapeRecord], control: Run) -> None:
    at = perp_trades(tape)[300]  # 300 good trades before it, thousands after
    bad = with_frame_after(
        tape,
        at,
        lambda r: forged(
            r, T=lambda t: t + TEN_YEARS_MS, E=lambda t: t + TEN_YEARS_MS, a=lambda a: a + 2 * 10**9
        ),
    )
    run = Run(bad)
    assert run.messages == control.messages  # every signal, z-score and regime message
    assert run.rejected() == {f"{PERP}/future_ts": 1}


def test_a_trade_far_in_the_past_is_rejected_as_stale(tape: list[TapeRecord], control: Run) -> None:
    at = perp_trades(tape)[300]
    bad = with_frame_after(
        tape, at, lambda r: forged(r, T=1_000_000, E=1_000_000, a=lambda a: a + 2 * 10**9)
    )
    run = Run(bad)
    assert run.messages == control.messages
    assert run.rejected() == {f"{PERP}/stale_ts": 1}


@pytest.mark.parametrize("ahead", [10**9, 50])
def test_a_trade_id_jump_is_not_believed(tape: list[TapeRecord], control: Run, ahead: int) -> None:
    at = perp_trades(tape)[300]
    run = Run(with_frame_after(tape, at, lambda r: forged(r, a=lambda a: a + ahead)))
    assert run.messages == control.messages
    counts = run.trades()
    assert (counts["lost"], counts["gaps"], counts["duplicates"], counts["missing"]) == (0, 0, 0, 0)
    # The +50 forgery is dropped when the real trade of its id arrives; the +1e9 one once the
    # real sequence has outlived it by a minute of event time (the recording runs 160 s).
    assert counts["suspects_dropped"] == 1
    assert not any(isinstance(r, RefetchRequest) for r in run.requests)


@pytest.mark.parametrize("absurd", ["1e200", "1e150"])
def test_an_absurd_price_changes_nothing(tape: list[TapeRecord], control: Run, absurd: str) -> None:
    at = perp_trades(tape)[300]
    run = Run(
        with_frame_after(
            tape, at, lambda r: forged(r, p=absurd, q=absurd, a=lambda a: a + 3 * 10**9)
        )
    )
    assert run.messages == control.messages  # no event, no value, z-scores equal
    assert run.rejected() == {f"{PERP}/notional": 1}


def test_a_price_outside_the_band_is_rejected(tape: list[TapeRecord], control: Run) -> None:
    """A plausible notional at an implausible price: twice the market, tiny quantity."""
    at = perp_trades(tape)[300]
    run = Run(
        with_frame_after(
            tape,
            at,
            lambda r: forged(r, p=lambda p: f"{2 * float(p):.2f}", a=lambda a: a + 3 * 10**9),
        )
    )
    assert run.messages == control.messages
    assert run.rejected() == {f"{PERP}/price_band": 1}


@pytest.fixture(params=["c", "python"])
def level_check(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The guard's per-level check in C (``streams/_ladder.c``, which the install builds: its
    absence is a failure here, not a skip) and in Python, the fallback without a compiler."""
    if request.param == "c":
        from streams._ladder import plausible

        assert monitor.guards._plausible is plausible
    else:
        monkeypatch.setattr(monitor.guards, "_plausible", monitor.guards._plausible_py)
    return str(request.param)


NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(
    ("levels", "low", "high", "cap", "expected"),
    [
        ((), 1.0, 2.0, 1.0, True),  # nothing to doubt
        (((100.0, 1.0), (150.0, 2.0)), 100.0, 150.0, 300.0, True),  # every bound is inclusive
        (((100.0, 1.0), (150.01, 1.0)), 100.0, 150.0, 1e10, False),  # above the band
        (((99.99, 1.0),), 100.0, 150.0, 1e10, False),  # below it
        (((120.0, 2.5),), 100.0, 150.0, 299.0, False),  # 300 of notional over a cap of 299
        (((120.0, 0.0),), 100.0, 150.0, 1.0, True),  # a removal has no notional
        (((NAN, 1.0),), 0.0, INF, 1e10, False),
        (((100.0, NAN),), 0.0, INF, 1e10, False),
        (((INF, 1.0),), 0.0, INF, 1e10, False),  # in an open band, but worth infinity
        (((1e200, 1.0),), 0.0, INF, 1e10, False),
    ],
)
def test_the_level_check_in_c_and_python_agree_with_the_rule(
    level_check: str,
    levels: tuple[tuple[float, float], ...],
    low: float,
    high: float,
    cap: float,
    expected: bool,
) -> None:
    assert monitor.guards._plausible(levels, low, high, cap) is expected


def test_a_crossing_book_level_is_dropped_and_the_book_stays_synced(
    tape: list[TapeRecord], control: Run, level_check: str
) -> None:
    """A bid at 1e200 in one diff: without the guard the book crosses and is resynced; with it
    the level is dropped, the rest of the diff applies and depth is published as before."""
    diffs = [i for i, r in enumerate(tape) if r.src == PERP and '"e":"depthUpdate"' in r.msg]
    at = diffs[len(diffs) // 2]
    frame = orjson.loads(tape[at].msg)
    frame["data"]["b"].append(["1e200", "1"])
    bad = [*tape[:at], TapeRecord(tape[at].ts, PERP, orjson.dumps(frame).decode()), *tape[at + 1 :]]
    run = Run(bad)
    assert run.messages == control.messages
    assert run.rejected() == {f"{PERP}/book_level": 1}
    assert run.pipeline is not None
    assert run.pipeline.books[(PERP, "BTCUSDT")].counters()["resyncs"] == 0


def test_unknown_symbols_create_no_state_and_real_gaps_are_still_recovered(
    tape: list[TapeRecord],
) -> None:
    trades = perp_trades(tape)
    # A real gap: one USDⓈ-M trade frame lost.
    lost = trades[500]
    base = [r for i, r in enumerate(tape) if i != lost]
    fakes = [forged(tape[trades[400]], s=f"FAKE{n:04d}USDT", a=n) for n in range(1, 3001)]
    at = trades[400]
    flooded = [*base[: at + 1], *fakes, *base[at + 1 :]]
    plain, flood = Run(base), Run(flooded)
    assert flood.messages == plain.messages
    assert flood.rejected() == {f"{PERP}/unknown_symbol": 3000}
    assert flood.requests == plain.requests  # no REST work for them ...
    assert any(isinstance(r, RefetchRequest) for r in flood.requests)  # ... the real gap's stays
    assert flood.pipeline is not None and plain.pipeline is not None
    assert flood.pipeline.continuity.symbols.keys() == plain.pipeline.continuity.symbols.keys()
    size = len(orjson.dumps(flood.pipeline.health_report(0)))
    assert size - len(orjson.dumps(plain.pipeline.health_report(0))) < 64  # one counter more


# -- a venue that delivers nothing -----------------------------------------------------------
def without(tape: list[TapeRecord], drop: Callable[[TapeRecord], bool]) -> list[TapeRecord]:
    return [r for r in tape if not drop(r)]


def test_a_dead_perp_market_socket_makes_perp_and_combined_signals_null(
    tape: list[TapeRecord],
) -> None:
    """USDⓈ-M /market never connects (trades, mark price, liquidations); its /public books
    and REST still work."""
    market = ("@aggTrade", "@markPrice", "@forceOrder")
    run = Run(without(tape, lambda r: r.src == PERP and any(s in r.msg[:40] for s in market)))
    signals = run.signals()
    assert len(signals) > 100
    for snap in signals:
        for name in (*PERP_ONLY, *COMBINED):
            assert snap[name]["value"] is None, (name, snap[name])
    assert any(s["depth_usd_1pct"]["value"] is not None for s in signals)  # /public works
    # The other venues go on (their values move a little: the clock that cuts the snapshots
    # runs on the events that remain).
    assert sum(s["taker_imbalance_spot"]["value"] is not None for s in signals) > 100
    assert run.pipeline is not None
    assert run.pipeline.health_report(0)["silent_feeds"] == [f"{PERP}/BTCUSDT"]


def test_a_dead_coinbase_makes_its_imbalance_and_the_combined_signals_null(
    tape: list[TapeRecord],
) -> None:
    run = Run(without(tape, lambda r: r.src == COINBASE))
    signals = run.signals()
    assert any(s["taker_imbalance_perp"]["value"] is not None for s in signals)
    for snap in signals:
        for name in ("taker_imbalance_coinbase", *COMBINED, "coinbase_premium_pct"):
            assert snap[name]["value"] is None, (name, snap[name])
    assert run.pipeline is not None
    assert run.pipeline.health_report(0)["silent_feeds"] == [f"{COINBASE}/BTC-USD"]


def test_a_venue_that_dies_midway_goes_missing_after_the_silence_limit(
    tape: list[TapeRecord], control: Run
) -> None:
    """Coinbase stops at 60 s and never returns: its buckets after the last frame are missing,
    so its 30 s window falls below coverage, and the all-venue signals go null instead of
    becoming the sum of the Binance venues (a market where nobody trades on Coinbase)."""
    start = tape[1].ts
    run = Run(without(tape, lambda r: r.src == COINBASE and r.ts > start + 60 / 8))
    signals = run.signals()
    for name in ("taker_imbalance_coinbase", *COMBINED):
        values = [s[name]["value"] for s in signals]
        assert any(v is not None for v in values), name
        assert values[-30:] == [None] * 30, name
    assert all(s["taker_imbalance_perp"]["value"] is not None for s in signals[-30:])


def test_a_spot_only_recording_publishes_no_perp_signal() -> None:
    """A real Binance spot recording replayed with the shipped assets (spot, USDⓈ-M and
    Coinbase configured): liquidations, funding and the perp signals are null, never 0."""
    run = Run(records(SPOT_TAPE), make_config())
    signals = run.signals()
    assert any(s["taker_imbalance_spot"]["value"] is not None for s in signals)
    for snap in signals:
        for name in (*PERP_ONLY, *COMBINED, "taker_imbalance_coinbase", "depth_usd_1pct"):
            assert snap[name]["value"] is None, (name, snap[name])


# -- baselines -------------------------------------------------------------------------------
def test_baseline_moments_stay_finite_at_the_float_limit() -> None:
    b = Baseline(span_ms=100_000, bucket_ms=1_000, min_obs=2)
    samples = np.array([1e300, -1e300, 3e299, 1.0])
    b.fill(np.arange(4) * 1_000, samples)
    score = b.score(0.0)
    # By hand: mean 7.5e298, population std of (1e300, -1e300, 3e299, ~0) = 7.3e299 (4 s.f.).
    assert score.z is not None and math.isfinite(score.z)
    std = float(np.std(samples / 1e300)) * 1e300
    assert score.z == pytest.approx((0.0 - samples.mean()) / std, rel=1e-9)
    b.observe(10_000, math.inf)
    b.observe(11_000, math.nan)
    b.observe(12_000, 5.0)
    assert b.n_obs == 4  # neither inf nor NaN became a sample


def test_a_checkpoint_never_saves_nor_restores_a_poisoned_sample() -> None:
    w = BucketWindow(10_000, 1_000, channels=1)
    for t, v in ((0, 1.0), (1_000, 2.0), (2_000, 3.0)):
        w.add(t, (v,))
    state = w.state()
    state["sums"][1, 0] = math.inf  # a file written before the guards, or damaged
    restored = BucketWindow.from_state(state)
    assert restored.samples()[:, 0].tolist() == [1.0, 3.0]
    assert float(restored.totals()[0]) == 4.0
    # Nor is one ever saved: a window that somehow holds one writes it out as an empty slot.
    w._sums[1, 0] = math.nan
    saved = w.state()
    assert np.isfinite(saved["sums"]).all() and saved["filled"].tolist()[:3] == [True, False, True]
