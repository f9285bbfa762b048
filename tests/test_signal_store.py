"""The signal history for the charts: minute sampling, downsampling and the SQLite store,
checked against hand-worked cases, a naive reimplementation and a real tape's published
signals."""

from __future__ import annotations

import itertools
import logging
import math
import re
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor import __version__
from monitor.config import config_from_dict
from monitor.pipeline import Pipeline
from monitor.series import COLUMNS, ROW_DTYPE, MinuteSampler, Sample, backfill_rows, downsample
from monitor.signal_store import LIVE, SLOTS, SignalStore, store_chart
from signals.baseline import ZScore
from signals.engine import SignalSnapshot
from streams.tape import merge
from streams.units import DAY_MS, HOUR_MS, MINUTE_MS
from tests.conftest import DATA, REPO

CROSS_TAPE = DATA / "sim-cross-venue-btc-160s.tape.jsonl.zst"


def snap(ts: int, price: float | None, z: float | None = None, asset: str = "BTC") -> Any:
    return SignalSnapshot(asset, ts, {"price": price}, {"taker_imbalance": ZScore(z, 10, False)})


def column(row: np.ndarray, name: str) -> float:
    return float(row[COLUMNS.index(name)])


# -- minute sampling ----------------------------------------------------------------------------
def test_a_minute_is_sampled_at_its_close_by_its_last_snapshot() -> None:
    sampler = MinuteSampler()
    assert sampler.add(snap(59_000, 1.0)) is None
    assert sampler.add(snap(60_000, 2.0, z=0.5)) is None  # boundary 60 s: the close of minute 0
    sample = sampler.add(snap(61_000, 3.0))  # the first snapshot of minute 1
    assert sample is not None
    assert (sample.asset, sample.minute) == ("BTC", 0)
    assert column(sample.row, "price") == 2.0
    assert column(sample.row, "taker_imbalance_z") == 0.5
    # A missing value is NaN, never 0.
    assert math.isnan(column(sample.row, "funding_rate"))
    # Event time skipped minute 1's close (a quiet stretch): its latest snapshot stands in.
    sample = sampler.add(snap(185_000, 4.0))
    assert sample is not None
    assert (sample.minute, column(sample.row, "price")) == (MINUTE_MS, 3.0)
    [last] = sampler.flush()
    assert (last.minute, column(last.row, "price")) == (3 * MINUTE_MS, 4.0)


def test_assets_are_sampled_apart() -> None:
    sampler = MinuteSampler()
    sampler.add(snap(60_000, 1.0, asset="BTC"))
    sampler.add(snap(60_000, 10.0, asset="ETH"))
    btc = sampler.add(snap(61_000, 2.0, asset="BTC"))
    eth = sampler.add(snap(61_000, 20.0, asset="ETH"))
    assert btc is not None and eth is not None
    assert (column(btc.row, "price"), column(eth.row, "price")) == (1.0, 10.0)


# -- downsampling -------------------------------------------------------------------------------
def naive_downsample(
    times: np.ndarray, values: np.ndarray, max_points: int
) -> tuple[list[int], list[list[float]]]:
    """The same contract, one run and one column at a time in plain Python."""
    n = len(times)
    if n <= max_points:
        return list(times), values.tolist()
    runs = max_points // 2
    starts = sorted({n * k // runs for k in range(runs)})
    bounds = [*starts, n]
    out_t: list[int] = []
    out_v: list[list[float]] = []
    for lo, hi in itertools.pairwise(bounds):
        out_t += [int(times[lo]), int(times[(lo + hi - 1) // 2])]
        pair: list[tuple[float, float]] = []
        for c in range(values.shape[1]):
            run = [float(v) for v in values[lo:hi, c]]
            finite = [(v, i) for i, v in enumerate(run) if not math.isnan(v)]
            if not finite:
                pair.append((math.nan, math.nan))
                continue
            vmin = min(v for v, _ in finite)
            vmax = max(v for v, _ in finite)
            i_min = next(i for v, i in finite if v == vmin)
            i_max = next(i for v, i in finite if v == vmax)
            pair.append((vmin, vmax) if i_min <= i_max else (vmax, vmin))
        out_v.append([a for a, _ in pair])
        out_v.append([b for _, b in pair])
    return out_t, out_v


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 400),
    max_points=st.integers(2, 120),
    seed=st.integers(0, 2**32 - 1),
    nan_share=st.sampled_from([0.0, 0.3, 0.95]),
)
def test_downsample_equals_a_naive_one(
    n: int, max_points: int, seed: int, nan_share: float
) -> None:
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.integers(1, 5, n)) * MINUTE_MS
    values = rng.normal(size=(n, 3)).astype(ROW_DTYPE)
    values[rng.random((n, 3)) < nan_share] = np.nan
    t, v = downsample(times, values, max_points)
    want_t, want_v = naive_downsample(times, values, max_points)
    assert len(t) == min(n, len(t)) and len(t) <= max(n if n <= max_points else 0, max_points)
    assert t.tolist() == want_t
    np.testing.assert_array_equal(v, np.array(want_v, dtype=ROW_DTYPE).reshape(v.shape))


def test_a_one_minute_spike_survives_a_90_day_view() -> None:
    n = 90 * 1440
    times = np.arange(n, dtype=np.int64) * MINUTE_MS
    values = np.zeros((n, 1), dtype=ROW_DTYPE)
    values[77_777, 0] = 5e8  # one minute of liquidations
    values[1000:3000, 0] = np.nan  # a stretch without data
    t, v = downsample(times, values, 2000)
    assert len(t) == 2000
    assert float(np.nanmax(v)) == 5e8
    assert np.isnan(v).any()  # the gap is still a gap


# -- the store ----------------------------------------------------------------------------------
def rows_for(values: dict[str, float], n: int = 1) -> np.ndarray:
    rows = np.full((n, len(COLUMNS)), np.nan, dtype=ROW_DTYPE)
    for name, value in values.items():
        rows[:, COLUMNS.index(name)] = value
    return rows


def test_live_rows_win_over_history_and_history_never_over_live(tmp_path: Path) -> None:
    store = SignalStore(tmp_path / "s.sqlite", retention_ms=DAY_MS)
    base = 1_700_000_000_000 // MINUTE_MS * MINUTE_MS
    minutes = base + MINUTE_MS * np.arange(3)
    store.add_samples([Sample("BTC", base + MINUTE_MS, rows_for({"price": 2.0})[0])])
    added = store.add_history("BTC", minutes, rows_for({"price": 9.0}, 3)).result()
    assert added == 2  # the live minute was left alone
    store.add_samples([Sample("BTC", base + 2 * MINUTE_MS, rows_for({"price": 3.0})[0])])
    out = store.run_soon(
        SignalStore.series, "BTC", base, base + 10 * MINUTE_MS, ["price", "funding_rate"], 100
    )
    got = out.result()
    assert got["t"] == minutes.tolist()
    assert got["values"]["price"] == [9.0, 2.0, 3.0]
    assert got["values"]["funding_rate"] == [None, None, None]  # missing stays missing
    store.close()


def samples(asset: str, minutes: np.ndarray, rows: np.ndarray) -> list[Sample]:
    return [Sample(asset, int(m), r) for m, r in zip(minutes, rows, strict=True)]


def assert_runs_hold_their_extremes(
    got: dict[str, Any], times: np.ndarray, columns: dict[str, np.ndarray]
) -> None:
    """Each pair of rows of ``got`` (a downsampled ``series`` answer) is the minimum and the
    maximum, NaN aside, of the minutes written (``times``; ``columns`` by name) from its run's
    first time to the next run's; a run with no value is None twice, never 0."""
    t = np.array(got["t"], dtype=np.int64)
    bounds = [*np.searchsorted(times, t[::2]).tolist(), len(times)]
    assert times[bounds[:-1]].tolist() == t[::2].tolist()  # each run opens at a minute held
    for name, column in columns.items():
        sent = got["values"][name]
        for k, (lo, hi) in enumerate(itertools.pairwise(bounds)):
            run = column[lo:hi]
            finite = run[~np.isnan(run)]
            pair = sent[2 * k : 2 * k + 2]
            if len(finite):
                assert sorted(pair) == [float(finite.min()), float(finite.max())], (name, k)
            else:
                assert pair == [None, None], (name, k)


def test_a_long_range_is_the_minutes_min_and_max_run_by_run(tmp_path: Path) -> None:
    """Thirty days read from the blocks and downsampled, against the minutes as written: a
    one-minute spike, minutes never written, a stretch of NaN, live minutes over history."""
    rng = np.random.default_rng(7)
    n = 30 * 1440
    minutes = 1_790_000_000_000 // DAY_MS * DAY_MS + MINUTE_MS * np.arange(n)
    names = ["price", "liquidations_usd_long", "funding_rate"]
    live = rows_for({}, n)
    live[:, COLUMNS.index("price")] = 60_000 + np.cumsum(rng.normal(size=n))
    live[:, COLUMNS.index("liquidations_usd_long")] = rng.random(n) * 1e5
    live[:, COLUMNS.index("funding_rate")] = rng.normal(size=n) * 1e-4
    live[12_345, COLUMNS.index("liquidations_usd_long")] = 5e8  # one minute of liquidations
    live[20_000:23_000, COLUMNS.index("funding_rate")] = np.nan  # two days without funding
    history = live.copy()
    history[:, COLUMNS.index("price")] += 1_000  # what history says differs from live
    held = rng.random(n) > 0.01
    held[5_017:5_690] = False  # eleven hours the daemon was down, from mid-hour to mid-hour
    is_live = held & (np.arange(n) >= n // 2)
    early, late = is_live & (np.arange(n) < 3 * n // 4), is_live & (np.arange(n) >= 3 * n // 4)

    store = SignalStore(tmp_path / "s.sqlite", retention_ms=90 * DAY_MS)
    store.add_samples(samples("BTC", minutes[early], live[early]))
    added = store.add_history("BTC", minutes[held], history[held])
    assert added.result() == (held & ~early).sum()  # never over a live minute
    store.add_samples(samples("BTC", minutes[late], live[late]))
    start, end = int(minutes[37]), int(minutes[n - 24])  # neither on an hour
    got = store.run_soon(SignalStore.series, "BTC", start, end, names, 1500).result()
    store.close()

    # Independently: the minutes held in the range, the live row where there was one.
    wanted = held & (minutes >= start) & (minutes <= end)
    written = np.where(is_live[:, None], live, history)[wanted]
    columns = {name: written[:, COLUMNS.index(name)] for name in names}
    assert got["minutes"] == wanted.sum() and len(got["t"]) == 1500
    assert not set(got["t"]) & set(minutes[~held].tolist())  # a gap stays a gap
    assert_runs_hold_their_extremes(got, minutes[wanted], columns)
    assert max(got["values"]["liquidations_usd_long"]) == 5e8  # the spike survives
    assert None in got["values"]["funding_rate"]
    # And the pair order too: the same as the plain-Python downsampling of those minutes.
    want_t, want_v = naive_downsample(
        minutes[wanted], written[:, [COLUMNS.index(c) for c in names]], 1500
    )
    assert got["t"] == want_t
    for j, name in enumerate(names):
        assert got["values"][name] == [None if math.isnan(v[j]) else v[j] for v in want_v]


def test_changes_come_with_the_regime_the_range_opens_in(tmp_path: Path) -> None:
    store = SignalStore(tmp_path / "s.sqlite", retention_ms=DAY_MS)
    for ts, regime in ((1_000, "neutral"), (5_000, "seller_dominance"), (9_000, "neutral")):
        payload = orjson.dumps({"asset": "BTC", "regime": regime, "since": ts})
        store.add_change("BTC", ts, regime, payload)
    store.flush()
    assert [c["regime"] for c in store.changes("BTC", 6_000, 10_000)] == [
        "seller_dominance",  # in force when the range opens
        "neutral",
    ]
    assert [c["regime"] for c in store.changes("BTC", 0, 2_000)] == ["neutral"]
    assert store.changes("ETH", 0, 10_000) == []
    store.close()


def test_minutes_older_than_the_retention_are_pruned(tmp_path: Path) -> None:
    retention = 1000 * MINUTE_MS
    store = SignalStore(tmp_path / "s.sqlite", retention_ms=retention)
    store.add_change("BTC", 0, "neutral", b'{"regime":"neutral"}')
    store.add_change("BTC", 10 * MINUTE_MS, "distribution", b'{"regime":"distribution"}')
    for minute in range(0, 1500):
        store.add_samples([Sample("BTC", minute * MINUTE_MS, rows_for({"price": minute})[0])])
    store.flush()
    lo, hi = store.span("BTC") or (0, 0)
    assert hi == 1499 * MINUTE_MS
    # Pruned in batches of retention / 1000: never more than that behind the cut.
    assert 499 * MINUTE_MS <= lo <= 501 * MINUTE_MS
    # The cut falls inside an hour: that hour's later minutes are all still there.
    got = store.series("BTC", 0, hi, ["price"], 2000)
    assert got["t"] == list(range(lo, hi + 1, MINUTE_MS))
    assert got["values"]["price"] == [float(t // MINUTE_MS) for t in got["t"]]
    # The change before the cut that says which regime the oldest minutes are in is kept.
    assert [c["regime"] for c in store.changes("BTC", lo, hi)] == ["distribution"]
    store.close()


def test_blocks_of_an_older_column_layout_read_by_name(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = SignalStore(path, retention_ms=DAY_MS)
    older = ("price", "removed_signal")  # what an earlier version might have written
    layout = store._submit(store._layout, older).result()
    for hour, price in ((0, 7.5), (HOUR_MS, 6.5)):  # each holding its hour's first minute
        kinds = np.zeros(SLOTS, np.uint8)
        kinds[0] = LIVE
        rows = np.full((SLOTS, len(older)), np.nan, dtype=ROW_DTYPE)
        rows[0] = (price, 1.0)
        store._submit(
            store._db.execute,
            "INSERT INTO blocks VALUES ('BTC', ?, ?, ?, ?)",
            (hour, layout, kinds.tobytes(), rows.tobytes()),
        ).result()
    # A minute added to the first hour rewrites its block in the current layout.
    store.add_samples([Sample("BTC", MINUTE_MS, rows_for({"price": 8.5, "funding_rate": 1e-4})[0])])
    names = ["price", "funding_rate"]
    got = store.run_soon(SignalStore.series, "BTC", 0, HOUR_MS, names, 100).result()
    assert got["t"] == [0, MINUTE_MS, HOUR_MS]
    assert got["values"]["price"] == [7.5, 8.5, 6.5]
    assert got["values"]["funding_rate"][0] is None and got["values"]["funding_rate"][2] is None
    assert got["values"]["funding_rate"][1] == pytest.approx(1e-4, rel=1e-6)
    store.close()
    # Reopened, it reads the same.
    again = SignalStore(path, retention_ms=DAY_MS)
    assert again.series("BTC", 0, HOUR_MS, names, 100)["values"]["price"] == [7.5, 8.5, 6.5]
    again.close()


# The first schema: a row per asset and minute (what a store written before hour blocks holds).
MINUTE_ROWS_SCHEMA = """
CREATE TABLE layouts (id INTEGER PRIMARY KEY, columns TEXT NOT NULL UNIQUE);
CREATE TABLE samples (
    asset TEXT NOT NULL, minute INTEGER NOT NULL, layout INTEGER NOT NULL,
    live INTEGER NOT NULL, row BLOB NOT NULL, PRIMARY KEY (asset, minute)
) WITHOUT ROWID;
CREATE TABLE changes (
    asset TEXT NOT NULL, ts_event INTEGER NOT NULL, regime TEXT NOT NULL,
    payload BLOB NOT NULL, PRIMARY KEY (asset, ts_event)
) WITHOUT ROWID;
PRAGMA user_version = 1;
"""


def test_a_store_of_minute_rows_is_rebuilt_as_blocks_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.sqlite"
    older = ("price", "funding_rate", "removed_signal")
    db = sqlite3.connect(path)
    db.executescript(MINUTE_ROWS_SCHEMA)
    db.execute(
        "INSERT INTO layouts VALUES (1, ?), (2, ?)",
        (orjson.dumps(older).decode(), orjson.dumps(COLUMNS).decode()),
    )
    # Minutes 0-99 (across an hour) and 200-209, none between: live and history rows, of two
    # layouts (the older one's rows end in 0.0: zero bytes); a spike at 77, NaN where missing.
    want: dict[int, tuple[float, float]] = {}
    for m in [*range(100), *range(200, 210)]:
        price, funding = (5e8 if m == 77 else float(m)), (math.nan if m < 20 else m / 1e4)
        want[m] = (price, funding)
        if m % 2:
            layout, row = 1, np.array([price, funding, 0.0], dtype=ROW_DTYPE)
        else:
            layout, row = 2, rows_for({"price": price, "funding_rate": funding})[0]
        db.execute(
            "INSERT INTO samples VALUES ('BTC', ?, ?, ?, ?)",
            (m * MINUTE_MS, layout, int(m >= 50), row.tobytes()),
        )
    db.execute("INSERT INTO changes VALUES ('BTC', 0, 'neutral', ?)", (b'{"regime":"neutral"}',))
    db.commit()
    db.close()

    caplog.set_level(logging.INFO, "tapewatch.history")
    store = SignalStore(path, retention_ms=DAY_MS)
    rebuilding, rebuilt = (r.getMessage() for r in caplog.records)
    assert rebuilding == f"signal history {path}: rebuilding 110 minute rows as hour blocks"
    assert re.fullmatch(
        rf"signal history {re.escape(str(path))}: rebuilt as 3 hour blocks in [\d.]+ s", rebuilt
    )
    end = 209 * MINUTE_MS
    got = store.run_soon(
        SignalStore.series, "BTC", 0, end, ["price", "funding_rate"], 1000
    ).result()
    assert got["t"] == [m * MINUTE_MS for m in want]
    assert got["values"]["price"] == [p for p, _ in want.values()]
    assert got["values"]["funding_rate"] == [
        None if math.isnan(f) else pytest.approx(f, rel=1e-6) for _, f in want.values()
    ]
    assert store.span("BTC") == (0, end)
    assert [c["regime"] for c in store.changes("BTC", 0, end)] == ["neutral"]
    # Whether a minute was live survived: history fills only what no row held.
    added = store.add_history("BTC", np.arange(210) * MINUTE_MS, rows_for({"price": -1.0}, 210))
    assert added.result() == 210 - 110
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone() == (2,)
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'samples'").fetchone() is None
    db.close()
    # Opened again, there is nothing left to rebuild.
    caplog.clear()
    again = SignalStore(path, retention_ms=DAY_MS)
    again.close()
    assert caplog.records == []


def test_an_unreadable_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    path.write_bytes(b"not a database at all" * 100)
    store = SignalStore(path, retention_ms=DAY_MS)
    store.add_samples([Sample("BTC", 0, rows_for({"price": 1.0})[0])])
    assert store.run_soon(SignalStore.series, "BTC", 0, 0, ["price"], 10).result()["values"][
        "price"
    ] == [1.0]
    store.close()
    aside = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1
    assert aside[0].read_bytes().startswith(b"not a database")


def test_backfill_rows_hold_the_history_samples_and_the_price() -> None:
    t = np.array([0, MINUTE_MS, 3 * MINUTE_MS], dtype=np.int64)
    samples = {"funding_rate": (t[:2], np.array([1e-4, 2e-4]))}
    minutes, rows = backfill_rows(samples, (t[1:], np.array([100.0, 101.0])))
    assert minutes.tolist() == t.tolist()
    assert [column(r, "price") for r in rows][1:] == [100.0, 101.0]
    assert math.isnan(column(rows[0], "price"))
    assert column(rows[1], "funding_rate") == pytest.approx(2e-4, rel=1e-6)
    assert np.isnan(rows[:, COLUMNS.index("funding_rate_z")]).all()  # z is live only


# -- the pipeline feeds it what it publishes -----------------------------------------------------
def test_the_store_holds_the_published_signals_at_each_minute_close(tmp_path: Path) -> None:
    config = config_from_dict(yaml.safe_load((REPO / "config.yaml").read_text()), env={})
    pipeline: Pipeline | None = None
    published: list[dict[str, Any]] = []
    for rec in merge([CROSS_TAPE]):
        ts = round(rec.ts * 1000)
        if pipeline is None:
            pipeline = Pipeline.for_session(config, "t", __version__, ts, chart=True)
        if rec.ctl is not None:
            msgs = pipeline.control(rec.src, rec.ctl)
        elif rec.url is not None:
            msgs = pipeline.feed_rest(rec.src, rec.url, rec.msg, ts)
        else:
            msgs = pipeline.feed_frame(rec.src, rec.msg, ts)
        published += [m.payload for m in msgs if m.topic.endswith("/signals")]
    assert pipeline is not None
    store = SignalStore(tmp_path / "s.sqlite", retention_ms=DAY_MS)
    store_chart(store, pipeline.take_chart(final=True))
    store.flush()
    # Independently: the last published signals message of each minute (by its event time).
    last_of_minute: dict[tuple[str, int], dict[str, Any]] = {}
    for payload in published:
        last_of_minute[(payload["asset"], (payload["ts_event"] - 1) // MINUTE_MS * MINUTE_MS)] = (
            payload
        )
    assert len(last_of_minute) >= 3
    names = ["price", "taker_imbalance_perp", "coinbase_premium_pct", "taker_imbalance_z"]
    for (asset, minute), payload in last_of_minute.items():
        got = store.series(asset, minute, minute, names, 10)
        assert got["t"] == [minute]
        for name in names:
            base = name.removesuffix("_z")
            entry = payload["signals"][base]
            want = entry.get("z") if name.endswith("_z") else entry["value"]
            value = got["values"][name][0]
            if want is None:
                assert value is None, (minute, name)
            else:
                assert value == pytest.approx(want, rel=1e-6, abs=1e-9), (minute, name)
    store.close()
