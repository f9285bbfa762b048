"""Config loading and validation: the shipped file, durations, and one test per error kind.

Expected values and messages are written out by hand; a test that asks the loader what the
answer is would pass whatever the loader does.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.config import (
    AssetConfig,
    BinanceUsdmVenue,
    CollectorConfig,
    Condition,
    Config,
    ConfigError,
    MqttConfig,
    RegimeRule,
    SignalsConfig,
    check_config,
    config_from_dict,
    load_config,
    parse_duration,
)

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "config.yaml"


def shipped() -> dict[str, Any]:
    """A fresh, mutable copy of the shipped config as plain data."""
    return yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))


def minimal() -> dict[str, Any]:
    """The smallest valid config: every other key falls back to its default."""
    return {
        "instance": "test",
        "assets": {"BTC": {"binance_usdm": "BTCUSDT"}},
        "regimes": [],
        "mqtt": {"url": "mqtt://127.0.0.1", "prefix": "tw/v1"},
    }


def errors_of(data: object, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, env={} if env is None else env)
    return info.value.errors


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# -- the shipped config ---------------------------------------------------------------------------
def test_shipped_config_loads_with_its_values() -> None:
    config = load_config(SHIPPED, env={})
    assert config.instance == "tapewatch"
    assert config.assets == {
        "BTC": AssetConfig(binance_spot="BTCUSDT", binance_usdm="BTCUSDT", coinbase="BTC-USD"),
        "ETH": AssetConfig(binance_spot="ETHUSDT", binance_usdm="ETHUSDT", coinbase="ETH-USD"),
    }
    assert config.venues.binance_spot.ws == "wss://data-stream.binance.vision"
    assert config.venues.coinbase.ws == "wss://advanced-trade-ws.coinbase.com"
    assert config.venues.binance_usdm == BinanceUsdmVenue(
        market_ws="wss://fstream.binance.com/market",
        public_ws="wss://fstream.binance.com/public",
        rest="https://fapi.binance.com",
    )
    assert config.collector == CollectorConfig(
        backoff_initial=0.5,
        backoff_max=30.0,
        silence_timeout=15.0,
        stall_timeout=10.0,
        queue_size=10000,
        book_limit=1000,
        open_interest_poll=10.0,
        ratios_poll=300.0,
    )
    assert config.signals == SignalsConfig(flow_window=3600.0, bucket=1.0, publish_interval=1.0)
    assert config.signals.flow_window == 3600.0
    # The seed narratives, most specific first (tests/test_scenario_regimes.py checks them).
    assert [r.name for r in config.regimes] == [
        "deleveraging_cascade",
        "derivatives_led_decline",
        "distribution",
        "seller_dominance",
        "spot_led_recovery",
    ]
    rule = config.regimes[0]
    assert rule.description.startswith("Forced selling: liquidations spike")
    assert rule.all[0] == Condition("liquidations_usd_z", "above", 2.0, 1.0)
    assert rule.any == ()
    assert all((r.min_dwell, r.cooldown) == (120.0, 600.0) for r in config.regimes)
    seller = config.regimes[3]
    assert seller.all == (
        Condition("taker_intensity_z", "below", -1.5, -1.0),
        Condition("taker_sell_ratio", "above", 0.53, 0.515),
        Condition("coinbase_premium_pct", "below", -0.05, -0.02),
    )
    assert config.mqtt.url == "mqtt://127.0.0.1:1883"
    assert config.mqtt.prefix == "tapewatch/v1"
    assert config.mqtt.broker == "auto"
    assert config.mqtt.keepalive == 30.0
    assert (config.mqtt.username, config.mqtt.password) == (None, None)
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.tls) == ("127.0.0.1", 1883, False)
    assert config.log_level == "info"


def test_check_config_accepts_the_shipped_file(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("TAPEWATCH_MQTT_URL", "TAPEWATCH_MQTT_USERNAME", "TAPEWATCH_MQTT_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    assert check_config(SHIPPED) == []


def test_the_config_is_frozen() -> None:
    config = load_config(SHIPPED, env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.instance = "other"  # type: ignore[misc]
    changed = dataclasses.replace(config, instance="other")
    assert (changed.instance, config.instance) == ("other", "tapewatch")


def test_omitted_sections_take_the_documented_defaults() -> None:
    config = config_from_dict(minimal(), env={})
    assert config.venues.binance_usdm.market_ws == "wss://fstream.binance.com/market"
    assert config.venues.binance_usdm.public_ws == "wss://fstream.binance.com/public"
    assert config.venues.binance_usdm.rest == "https://fapi.binance.com"
    assert config.collector == CollectorConfig(
        backoff_initial=0.5,
        backoff_max=30.0,
        silence_timeout=15.0,
        stall_timeout=10.0,
        queue_size=10000,
        book_limit=1000,
        open_interest_poll=10.0,
        ratios_poll=300.0,
    )
    assert config.signals == SignalsConfig(3600.0, 1.0, 1.0)
    assert config.mqtt == MqttConfig("mqtt://127.0.0.1", "tw/v1", "auto", 30.0, None, None)
    assert config.log_level == "info"
    assert config.regimes == ()


def test_one_omitted_venue_url_keeps_the_others_default() -> None:
    data = minimal()
    data["venues"] = {"binance_usdm": {"market_ws": "ws://127.0.0.1:9000/market"}}
    venue = config_from_dict(data, env={}).venues.binance_usdm
    assert venue.market_ws == "ws://127.0.0.1:9000/market"
    assert venue.public_ws == "wss://fstream.binance.com/public"


def test_regime_rule_defaults_and_exit_default() -> None:
    data = minimal()
    data["regimes"] = [{"name": "hot_funding", "any": [{"signal": "funding_rate", "above": 5}]}]
    (rule,) = config_from_dict(data, env={}).regimes
    assert rule == RegimeRule(
        name="hot_funding",
        description="",
        all=(),
        any=(Condition("funding_rate", "above", 5.0, 5.0),),
        min_dwell=0.0,
        cooldown=0.0,
    )


def test_config_type_is_exported() -> None:
    assert isinstance(config_from_dict(minimal(), env={}), Config)


# -- durations ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        ("1ms", 0.001),
        ("30s", 30.0),
        ("0s", 0.0),
        ("1.5s", 1.5),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("90d", 7_776_000.0),
        (" 2 s ", 2.0),
        (0, 0.0),
        (15, 15.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration_accepts(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value",
    ["", "5", "5x", "s", "1h30m", "five seconds", "5M", "-5s", -1, -0.5, True, False, None,
     [1], {"s": 1}, float("inf"), float("nan"), "infs"],
)  # fmt: skip
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_parse_duration_messages_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"not a duration: '5x' \(expected .*500ms, 30s"):
        parse_duration("5x")
    with pytest.raises(ValueError, match="cannot be negative, got '-5s'"):
        parse_duration("-5s")
    with pytest.raises(ValueError, match="got bool True"):
        parse_duration(True)


# -- one test per error kind ----------------------------------------------------------------------
def test_unknown_key_with_suggestion() -> None:
    data = shipped()
    data["mqtt"]["brokr"] = "auto"
    assert errors_of(data) == ["mqtt.brokr: unknown key (did you mean 'broker'?)"]


def test_unknown_key_without_close_match_lists_the_known_keys() -> None:
    data = shipped()
    data["collector"]["zzz"] = 1
    assert errors_of(data) == [
        "collector.zzz: unknown key "
        "(known: backoff_initial, backoff_max, silence_timeout, stall_timeout, "
        "open_interest_poll, ratios_poll, queue_size, book_limit)"
    ]


def test_unknown_top_level_key() -> None:
    data = shipped()
    data["signal"] = {}
    assert errors_of(data) == ["signal: unknown key (did you mean 'signals'?)"]


def test_wrong_type_names_the_expected_type() -> None:
    data = shipped()
    data["collector"]["queue_size"] = "lots"
    assert errors_of(data) == ["collector.queue_size: expected integer, got str 'lots'"]


def test_bool_is_not_an_integer() -> None:
    data = shipped()
    data["collector"]["queue_size"] = True
    assert errors_of(data) == ["collector.queue_size: expected integer, got bool True"]


def test_section_of_the_wrong_type() -> None:
    data = shipped()
    data["signals"] = ["1h"]
    assert errors_of(data) == ["signals: expected mapping, got list"]


@pytest.mark.parametrize(("value", "shown"), [("-5s", "'-5s'"), ("0s", "'0s'"), (0, "0")])
def test_non_positive_window(value: object, shown: str) -> None:
    data = shipped()
    data["signals"]["flow_window"] = value
    assert errors_of(data) == [f"signals.flow_window: must be a positive duration, got {shown}"]


def test_bad_duration_string() -> None:
    data = shipped()
    data["collector"]["silence_timeout"] = "soon"
    (line,) = errors_of(data)
    assert line.startswith("collector.silence_timeout: not a duration: 'soon' (expected ")


def test_negative_min_dwell() -> None:
    data = shipped()
    data["regimes"][0]["min_dwell"] = "-1s"
    assert errors_of(data) == ["regimes[0].min_dwell: must be a duration of 0 or more, got '-1s'"]


def test_window_must_be_a_whole_multiple_of_the_bucket() -> None:
    data = shipped()
    data["signals"]["bucket"] = "7s"
    assert errors_of(data) == [
        "signals.flow_window: must be a whole multiple of bucket (7000 ms), got 3600000 ms"
    ]


def test_bucket_longer_than_the_window() -> None:
    data = shipped()
    data["signals"].update(flow_window="10s", bucket="1m")
    assert errors_of(data) == [
        "signals.bucket: must not be longer than flow_window ('10s'), got '1m'"
    ]


def test_bucket_below_millisecond_resolution() -> None:
    data = shipped()
    data["signals"]["bucket"] = 0.0005
    (line,) = errors_of(data)
    assert line.startswith("signals.bucket: must be at least 1ms")


def test_backoff_max_below_initial() -> None:
    data = shipped()
    data["collector"].update(backoff_initial="2s", backoff_max="1s")
    assert errors_of(data) == [
        "collector.backoff_max: must be at least backoff_initial (2 s), got 1 s"
    ]


def test_unknown_signal_in_a_rule() -> None:
    data = shipped()
    data["regimes"][0]["all"] = [
        {"signal": "funding_rate", "above": 0},
        {"signal": "foo", "above": 1},
    ]
    (line,) = errors_of(data)
    assert line.startswith("regimes[0].all[1].signal: unknown signal 'foo' (known: ")
    assert "taker_buy_sell_ratio" in line and "funding_rate" in line


def test_misspelt_signal_gets_a_suggestion() -> None:
    data = shipped()
    data["regimes"][0]["all"][0]["signal"] = "taker_buy_sel_ratio"
    (line,) = errors_of(data)
    assert line.startswith(
        "regimes[0].all[0].signal: unknown signal 'taker_buy_sel_ratio' "
        "(did you mean 'taker_buy_sell_ratio'? known: "
    )


def test_both_above_and_below() -> None:
    data = shipped()
    data["regimes"][0]["any"] = [{"signal": "funding_rate", "above": 0.001, "below": -0.001}]
    assert errors_of(data) == [
        "regimes[0].any[0]: has both 'above' and 'below': a condition needs exactly one of them"
    ]


def test_neither_above_nor_below() -> None:
    data = shipped()
    data["regimes"][0]["all"][0] = {"signal": "funding_rate"}
    assert errors_of(data) == [
        "regimes[0].all[0]: has neither 'above' nor 'below': a condition needs exactly one of them"
    ]


def test_exit_key_must_match_the_entry_operator() -> None:
    data = shipped()
    data["regimes"][0]["all"][0] = {"signal": "funding_rate", "below": 0.0, "exit_above": 0.1}
    assert errors_of(data) == [
        "regimes[0].all[0].exit_above: only goes with 'above' (this condition uses 'below')"
    ]


def test_exit_threshold_tightening_below() -> None:
    data = shipped()
    data["regimes"][0]["all"][0] = {"signal": "taker_buy_sell_ratio", "below": 0.8}
    data["regimes"][0]["all"][0]["exit_below"] = 0.7  # entry is below 0.8
    assert errors_of(data) == [
        "regimes[0].all[0].exit_below: must be >= below (0.8) so that it loosens the condition "
        "once entered, got 0.7"
    ]


def test_exit_threshold_tightening_above() -> None:
    data = shipped()
    data["regimes"][0]["all"][0] = {"signal": "mark_price", "above": 100, "exit_above": 101}
    assert errors_of(data) == [
        "regimes[0].all[0].exit_above: must be <= above (100) so that it loosens the condition "
        "once entered, got 101"
    ]


def test_threshold_must_be_a_finite_number() -> None:
    data = shipped()
    data["regimes"][0]["all"][0] = {"signal": "taker_buy_sell_ratio", "below": True}
    data["regimes"][0]["any"] = [{"signal": "funding_rate", "above": float("inf")}]
    assert errors_of(data) == [
        "regimes[0].all[0].below: expected number, got bool True",
        "regimes[0].any[0].above: must be a finite number, got inf",
    ]


def test_yaml_1_1_exponent_gets_a_hint(tmp_path: Path) -> None:
    first = "{signal: liquidations_usd_z, above: 2.0,"
    text = SHIPPED.read_text(encoding="utf-8")
    assert text.count(first) == 1
    text = text.replace(first, "{signal: liquidations_usd_z, above: 2e0,")
    (line,) = check_config(write(tmp_path, text))
    assert line.startswith("regimes[0].all[0].above: expected number, got str '2e0' (YAML reads")


def test_duplicate_regime_name() -> None:
    data = shipped()
    data["regimes"].append(copy.deepcopy(data["regimes"][0]))
    assert errors_of(data) == [
        "regimes[5].name: duplicate regime name 'deleveraging_cascade' (first at regimes[0])"
    ]


def test_neutral_is_reserved() -> None:
    data = shipped()
    data["regimes"][0]["name"] = "neutral"
    assert errors_of(data) == [
        "regimes[0].name: 'neutral' is reserved: it is the regime when no rule holds"
    ]


def test_bad_regime_name() -> None:
    data = shipped()
    data["regimes"][0]["name"] = "Seller-Dominance"
    (line,) = errors_of(data)
    assert line.startswith("regimes[0].name: must be lower_snake_case")


def test_rule_without_conditions() -> None:
    data = shipped()
    data["regimes"][0]["all"] = []
    assert errors_of(data) == ["regimes[0]: needs at least one condition under 'all' or 'any'"]


def test_bad_mqtt_url_scheme() -> None:
    data = shipped()
    data["mqtt"]["url"] = "http://127.0.0.1:1883"
    assert errors_of(data) == [
        "mqtt.url: expected an mqtt:// or mqtts:// URL, got 'http://127.0.0.1:1883'"
    ]


def test_bad_venue_url_scheme() -> None:
    data = shipped()
    data["venues"]["binance_usdm"]["market_ws"] = "https://fstream.binance.com/market"
    data["venues"]["binance_usdm"]["rest"] = "wss://fapi.binance.com"
    assert errors_of(data) == [
        "venues.binance_usdm.market_ws: expected a URL starting with ws:// or wss://, "
        "got 'https://fstream.binance.com/market'",
        "venues.binance_usdm.rest: expected a URL starting with http:// or https://, "
        "got 'wss://fapi.binance.com'",
    ]


@pytest.mark.parametrize(
    ("prefix", "problem"),
    [
        ("", "must not be empty"),
        ("tw/#", "must not contain the MQTT wildcards '+' or '#', got 'tw/#'"),
        ("/tw", "must not start or end with '/', got '/tw'"),
        ("tw/", "must not start or end with '/', got 'tw/'"),
    ],
)
def test_bad_topic_prefix(prefix: str, problem: str) -> None:
    data = shipped()
    data["mqtt"]["prefix"] = prefix
    assert errors_of(data) == [f"mqtt.prefix: {problem}"]


def test_secrets_in_the_file_are_refused_without_echoing_them() -> None:
    data = shipped()
    data["mqtt"].update(username="alice", password="hunter2")
    lines = errors_of(data)
    assert lines == [
        "mqtt.username: secrets do not belong in the config file: "
        "set TAPEWATCH_MQTT_USERNAME in the environment",
        "mqtt.password: secrets do not belong in the config file: "
        "set TAPEWATCH_MQTT_PASSWORD in the environment",
    ]


def test_credentials_in_the_url_are_refused_without_echoing_them() -> None:
    data = shipped()
    data["mqtt"]["url"] = "mqtt://alice:hunter2@broker.example:1883"
    (line,) = errors_of(data)
    assert line.startswith("mqtt.url: must not contain credentials")
    assert "hunter2" not in line


def test_invalid_instance() -> None:
    data = shipped()
    data["instance"] = "my box"
    assert errors_of(data) == [
        "instance: must be letters, digits, '_', '.' or '-' (it is part of MQTT topics), "
        "got 'my box'"
    ]


@pytest.mark.parametrize("assets", [{}, None])
def test_empty_assets(assets: object) -> None:
    data = shipped()
    data["assets"] = assets
    assert errors_of(data) == [
        "assets: must list at least one asset, e.g. BTC: {binance_usdm: BTCUSDT}"
    ]


def test_asset_needs_a_venue_symbol() -> None:
    data = shipped()
    data["assets"]["ETH"] = {}
    assert errors_of(data) == [
        "assets.ETH: needs at least one venue symbol (binance_spot, binance_usdm, coinbase)"
    ]


def test_bad_asset_name_and_lower_case_symbol() -> None:
    data = shipped()
    data["assets"]["eth"] = {"binance_usdm": "ethusdt"}
    assert errors_of(data) == [
        "assets.eth: asset names are 2-15 upper-case letters or digits, e.g. BTC",
        "assets.eth.binance_usdm: Binance symbols are upper-case letters, digits and '_', "
        "got 'ethusdt' (did you mean 'ETHUSDT'?)",
    ]


def test_symbol_used_by_two_assets() -> None:
    data = shipped()
    data["assets"]["XBT"] = {"binance_usdm": "BTCUSDT"}
    assert errors_of(data) == [
        "assets.XBT.binance_usdm: symbol 'BTCUSDT' is already used by asset BTC"
    ]


def test_yaml_boolean_asset_name_gets_a_hint(tmp_path: Path) -> None:
    text = SHIPPED.read_text(encoding="utf-8").replace(
        "  BTC:\n", "  ON:\n    binance_usdm: ONTUSDT\n  BTC:\n"
    )
    assert check_config(write(tmp_path, text)) == [
        "assets: asset name True is not a string "
        "(YAML reads unquoted yes/no/on/off/true/false as booleans: quote it)"
    ]


def test_bad_choice_gets_a_suggestion() -> None:
    data = shipped()
    data["log_level"] = "INFO"
    data["mqtt"]["broker"] = "extrnal"
    assert errors_of(data) == [
        "mqtt.broker: expected one of auto, embedded, external, got 'extrnal' "
        "(did you mean 'external'?)",
        "log_level: expected one of debug, info, warning, error, got 'INFO' (did you mean 'info'?)",
    ]


def test_missing_required_keys() -> None:
    data = shipped()
    del data["instance"], data["mqtt"]["url"], data["regimes"][0]["name"]
    assert errors_of(data) == [
        "instance: required key is missing",
        "regimes[0].name: required key is missing",
        "mqtt.url: required key is missing",
    ]


@pytest.mark.parametrize(("data", "shown"), [([], "list"), (None, "null"), ("x", "str 'x'")])
def test_top_level_must_be_a_mapping(data: object, shown: str) -> None:
    assert errors_of(data) == [f"(top level): expected mapping, got {shown}"]


def test_embedded_broker_cannot_serve_tls() -> None:
    data = shipped()
    data["mqtt"].update(url="mqtts://127.0.0.1", broker="embedded")
    assert errors_of(data) == [
        "mqtt.broker: the embedded broker does not serve TLS, but mqtt.url is mqtts://: "
        "use mqtt:// or broker: external"
    ]


def test_keepalive_out_of_mqtt_range() -> None:
    data = shipped()
    data["mqtt"]["keepalive"] = "500ms"
    (line,) = errors_of(data)
    assert line.startswith("mqtt.keepalive: must be between 1s and 65535s")


# -- files ----------------------------------------------------------------------------------------
def test_yaml_syntax_error_reports_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "instance: x\nassets:\n  BTC: {binance_usdm: BTCUSDT\nregimes: []\n")
    (line,) = check_config(path)
    assert line.startswith("line 4, column 8: YAML syntax error: ")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.errors == [line]


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert check_config(missing) == [
        f"cannot read config file '{missing}': No such file or directory"
    ]
    with pytest.raises(ConfigError):
        load_config(missing, env={})


def test_empty_file(tmp_path: Path) -> None:
    assert check_config(write(tmp_path, "# nothing yet\n")) == [
        "(top level): the file is empty: expected mapping"
    ]


def test_duplicate_yaml_keys_are_reported(tmp_path: Path) -> None:
    text = SHIPPED.read_text(encoding="utf-8") + "log_level: debug\n"
    lines = check_config(write(tmp_path, text))
    assert len(lines) == 1
    assert lines[0].startswith("line ")
    assert "duplicate key 'log_level'" in lines[0]


def test_many_errors_in_one_file_are_all_reported(tmp_path: Path) -> None:
    text = """\
instance: "bad instance"
assets: {}
collector:
  queue_size: lots
  backof_max: 30s
signals:
  flow_window: -5s
regimes:
  - name: neutral
    all:
      - {signal: foo, above: 1, below: 2}
      - {signal: funding_rate, below: 0.1, exit_below: 0.0}
mqtt:
  url: http://localhost
  prefix: tapewatch/#
  password: hunter2
log_level: loud
"""
    lines = check_config(write(tmp_path, text))
    assert lines == [
        "instance: must be letters, digits, '_', '.' or '-' (it is part of MQTT topics), "
        "got 'bad instance'",
        "assets: must list at least one asset, e.g. BTC: {binance_usdm: BTCUSDT}",
        "collector.backof_max: unknown key (did you mean 'backoff_max'?)",
        "collector.queue_size: expected integer, got str 'lots'",
        "signals.flow_window: must be a positive duration, got '-5s'",
        "regimes[0].name: 'neutral' is reserved: it is the regime when no rule holds",
        lines[6],  # the unknown signal (the catalogue listing is checked elsewhere)
        "regimes[0].all[0]: has both 'above' and 'below': a condition needs exactly one of them",
        "regimes[0].all[1].exit_below: must be >= below (0.1) so that it loosens the condition "
        "once entered, got 0",
        "mqtt.password: secrets do not belong in the config file: "
        "set TAPEWATCH_MQTT_PASSWORD in the environment",
        "mqtt.url: expected an mqtt:// or mqtts:// URL, got 'http://localhost'",
        "mqtt.prefix: must not contain the MQTT wildcards '+' or '#', got 'tapewatch/#'",
        "log_level: expected one of debug, info, warning, error, got 'loud'",
    ]
    assert lines[6].startswith("regimes[0].all[0].signal: unknown signal 'foo'")
    assert len(lines) == 13


# -- environment ----------------------------------------------------------------------------------
def test_env_overrides_url_and_fills_credentials() -> None:
    env = {
        "TAPEWATCH_MQTT_URL": "mqtts://broker.example.net",
        "TAPEWATCH_MQTT_USERNAME": "alice",
        "TAPEWATCH_MQTT_PASSWORD": "hunter2",
    }
    mqtt = config_from_dict(shipped(), env=env).mqtt
    assert mqtt.url == "mqtts://broker.example.net"
    assert (mqtt.host, mqtt.port, mqtt.tls) == ("broker.example.net", 8883, True)
    assert (mqtt.username, mqtt.password) == ("alice", "hunter2")
    assert "hunter2" not in repr(mqtt)


def test_load_config_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAPEWATCH_MQTT_URL", "mqtt://10.0.0.5:1884")
    monkeypatch.setenv("TAPEWATCH_MQTT_USERNAME", "bob")
    monkeypatch.delenv("TAPEWATCH_MQTT_PASSWORD", raising=False)
    mqtt = load_config(SHIPPED).mqtt
    assert (mqtt.host, mqtt.port, mqtt.tls) == ("10.0.0.5", 1884, False)
    assert (mqtt.username, mqtt.password) == ("bob", None)


def test_empty_env_values_count_as_unset() -> None:
    env = {"TAPEWATCH_MQTT_URL": "", "TAPEWATCH_MQTT_USERNAME": "", "TAPEWATCH_MQTT_PASSWORD": ""}
    mqtt = config_from_dict(shipped(), env=env).mqtt
    assert mqtt.url == "mqtt://127.0.0.1:1883"
    assert (mqtt.username, mqtt.password) == (None, None)


def test_invalid_env_url_is_reported() -> None:
    env = {"TAPEWATCH_MQTT_URL": "tcp://broker:1883"}
    assert errors_of(shipped(), env) == [
        "env TAPEWATCH_MQTT_URL: expected an mqtt:// or mqtts:// URL, got 'tcp://broker:1883'"
    ]


def test_invalid_env_url_is_reported_by_check_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAPEWATCH_MQTT_URL", "mqtt://broker:99999")
    assert check_config(SHIPPED) == [
        "env TAPEWATCH_MQTT_URL: invalid port in 'mqtt://broker:99999'"
    ]


def test_password_without_username() -> None:
    assert errors_of(shipped(), {"TAPEWATCH_MQTT_PASSWORD": "hunter2"}) == [
        "env TAPEWATCH_MQTT_PASSWORD: is set but TAPEWATCH_MQTT_USERNAME is not"
    ]


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("mqtt://example.org", "example.org", 1883, False),
        ("mqtts://example.org", "example.org", 8883, True),
        ("mqtts://example.org:9883", "example.org", 9883, True),
        ("mqtt://[::1]:1884", "::1", 1884, False),
    ],
)
def test_mqtt_derived_properties(url: str, host: str, port: int, tls: bool) -> None:
    mqtt = MqttConfig(url=url, prefix="p")
    assert (mqtt.host, mqtt.port, mqtt.tls) == (host, port, tls)


@pytest.mark.parametrize("bad", [-0.1, 1.5, "half", True])
def test_flow_min_coverage_must_be_a_fraction(bad: object) -> None:
    data = minimal()
    data["signals"] = {"flow_min_coverage": bad}
    [error] = errors_of(data)
    assert error.startswith("signals.flow_min_coverage: ")


def test_flow_min_coverage_default_and_value() -> None:
    assert config_from_dict(minimal(), env={}).signals.flow_min_coverage == 0.1
    data = minimal()
    data["signals"] = {"flow_min_coverage": 0.5}
    assert config_from_dict(data, env={}).signals.flow_min_coverage == 0.5


def test_all_three_venues_per_asset_and_their_symbol_rules() -> None:
    data = minimal()
    data["assets"] = {
        "BTC": {"binance_spot": "BTCUSDT", "binance_usdm": "BTCUSDT", "coinbase": "BTC-USD"},
        "ETH": {"coinbase": "eth-usd", "binance_spot": "BTCUSDT"},
    }
    assert errors_of(data) == [
        "assets.ETH.coinbase: Coinbase product ids look like BTC-USD, got 'eth-usd' "
        "(did you mean 'ETH-USD'?)",
        "assets.ETH.binance_spot: symbol 'BTCUSDT' is already used by asset BTC",
    ]
    data["assets"]["ETH"] = {"coinbase": "ETH-USD"}
    config = config_from_dict(data, env={})
    assert config.assets["BTC"].coinbase == "BTC-USD"
    assert config.assets["ETH"].binance_usdm is None


def test_book_limit_must_be_a_binance_depth_size() -> None:
    data = minimal()
    data["collector"] = {"book_limit": 300}
    [error] = errors_of(data)
    assert error == "collector.book_limit: must be one of 5, 10, 20, 50, 100, 500, 1000, got 300"
