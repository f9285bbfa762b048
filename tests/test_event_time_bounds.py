"""The engine's two bounds on event time as config keys: ``signals.feed_silence`` (a venue's
trade socket unheard this long is down) and ``signals.premium_max_age`` (the Coinbase premium's
prices at most this old). Both were wired to other things before: the feed silence to
``collector.silence_timeout``, which is also the sockets' wall-clock liveness, and the premium
age to a constant. A simulator's written config widens both by its speed
(tests/test_simulator.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.config import ConfigError, config_from_dict, deep_merge, load_config
from monitor.pipeline import Pipeline
from signals.engine import SignalEngine
from streams.events import BINANCE_SPOT, BUY, COINBASE, Trade

REPO = Path(__file__).resolve().parent.parent
BTC = {BINANCE_SPOT: "BTCUSDT", COINBASE: "BTC-USD"}
PREMIUM = ("coinbase_premium_usd", "coinbase_premium_pct")


def minimal(**signals: Any) -> dict[str, Any]:
    return {
        "instance": "test",
        "assets": {"BTC": {"binance_spot": "BTCUSDT", "coinbase": "BTC-USD"}},
        "regimes": [],
        "mqtt": {"url": "mqtt://127.0.0.1", "prefix": "tw/v1"},
        "signals": signals,
    }


def errors_of(data: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, env={})
    return info.value.errors


# -- the keys --------------------------------------------------------------------------------
def test_defaults_are_the_former_bounds() -> None:
    """15 s (what collector.silence_timeout gave the engine) and 10 s (the former constant),
    in the shipped file and when the keys are left out."""
    shipped = load_config(REPO / "config.yaml", env={})
    omitted = config_from_dict(minimal(), env={})
    for config in (shipped, omitted):
        assert (config.signals.feed_silence, config.signals.premium_max_age) == (15.0, 10.0)


@pytest.mark.parametrize("key", ["feed_silence", "premium_max_age"])
@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("0s", "must be a positive duration, got '0s'"),
        (-3, "must be a positive duration, got -3"),
        ("0.5ms", "must be at least 1ms (event times have millisecond resolution), got '0.5ms'"),
        ("1.5ms", "must be a whole number of milliseconds, got '1.5ms'"),
        ("soon", "not a duration: 'soon' (expected "),
    ],
)
def test_a_bad_bound_is_one_line_naming_its_key(key: str, value: object, error: str) -> None:
    (line,) = errors_of(minimal(**{key: value}))
    assert line.startswith(f"signals.{key}: {error}")


def test_the_engine_takes_its_bounds_from_signals_not_from_the_socket_timeout() -> None:
    data = deep_merge(
        minimal(feed_silence="40s", premium_max_age="25s"),
        {"collector": {"silence_timeout": "3s"}},
    )
    config = config_from_dict(data, env={})
    pipeline = Pipeline.for_session(config, "t", "t", 0)
    state = pipeline.engine.assets["BTC"]
    assert (state.silence_ms, state.premium_stale_ms) == (40_000, 25_000)
    assert config.collector.silence_timeout == 3.0  # still the sockets' own, in wall time


def test_written_config_keys_are_known_to_check_config(tmp_path: Path) -> None:
    """The keys as `simulate --write-config` writes them (strings with a unit) load."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(minimal(feed_silence="600000ms", premium_max_age="400000ms")))
    signals = load_config(path, env={}).signals
    assert (signals.feed_silence, signals.premium_max_age) == (600.0, 400.0)


# -- the premium's age bound -----------------------------------------------------------------
def premium_at(boundary_ms: int, price_age_ms: int, **bound: int) -> dict[str, float | None]:
    """The premium signals of the snapshot at ``boundary_ms`` when both venues last traded
    ``price_age_ms`` before it."""
    engine = SignalEngine(
        {"BTC": BTC}, flow_window_ms=60_000, bucket_ms=1000, publish_interval_ms=1000, **bound
    )
    at = boundary_ms - price_age_ms
    for venue, price in ((BINANCE_SPOT, 77_990.0), (COINBASE, 78_010.0)):
        assert engine.on_event(Trade(venue, BTC[venue], at, at, price, 0.1, BUY, at)) == []
    # An event of an unmapped symbol moves the clock only.
    (snapshot,) = engine.on_event(
        Trade(BINANCE_SPOT, "NOTMAPPED", boundary_ms, boundary_ms, 1.0, 1.0, BUY, boundary_ms)
    )
    assert snapshot.ts_event == boundary_ms
    return {name: snapshot.values[name] for name in PREMIUM}


def test_premium_prices_older_than_the_default_ten_seconds_are_stale() -> None:
    assert premium_at(100_000, 10_000)["coinbase_premium_usd"] == pytest.approx(20.0)
    assert premium_at(100_000, 10_001) == dict.fromkeys(PREMIUM)


def test_premium_max_age_widens_the_bound() -> None:
    """What a 40x simulator's config does: 20 s old prices still make a premium."""
    wide = premium_at(100_000, 20_000, premium_stale_ms=400_000)
    assert wide["coinbase_premium_usd"] == pytest.approx(20.0)
    assert wide["coinbase_premium_pct"] == pytest.approx(20.0 / 77_990.0 * 100)
    assert premium_at(100_000, 400_001, premium_stale_ms=400_000) == dict.fromkeys(PREMIUM)
