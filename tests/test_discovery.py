"""Home Assistant MQTT discovery: the configs (pure), and what Home Assistant would show for them.

The daemon tests render every discovery payload's templates with Jinja2 the way Home Assistant
does (``value_json``: the state topic's parsed payload; the text "None": unknown) against the
messages the daemon really published, and compare each entity's state with the published value
read straight from the payload. Expected entity sets are written out by hand from the README's
signal list and the shipped rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiomqtt
import jinja2
import pytest
import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment

from monitor.config import Config, ConfigError, MqttConfig, config_from_dict, deep_merge
from monitor.discovery import (
    Discovery,
    is_config_topic,
    stale_topics,
    sweep_filter,
    sweep_marker,
)
from monitor.messages import MessageBuilder, Topics
from monitor.mqtt import Publisher
from simulator.server import Simulator
from tests.conftest import REPO, Mosquitto
from tests.test_daemon import RunningDaemon, daemon_config
from tests.test_layout import IO_MODULES, imports
from tests.test_mqtt_protocol import running

SHIPPED = REPO / "config.yaml"

# The entities of one asset, in the order announced: the regime, the key signals (each
# z-scored one followed by its z), ...
KEY_KEYS = [
    "regime",
    "taker_imbalance",
    "taker_imbalance_z",
    "taker_buy_sell_ratio",
    "perp_spot_volume_ratio",
    "perp_spot_volume_ratio_z",
    "coinbase_premium_pct",
    "coinbase_premium_pct_z",
    "funding_rate",
    "funding_rate_z",
    "oi_change_pct_1h",
    "oi_change_pct_24h",
    "oi_change_pct_24h_z",
    "liquidations_usd",
    "liquidations_usd_z",
    "depth_usd_1pct",
    "depth_usd_1pct_z",
    "book_imbalance_1pct",
]
# ... then the signals only the rules read: under the shipped rules taker_imbalance_spot
# (deleveraging_cascade), taker_imbalance_perp (derivatives_led_decline), net_taker_usd via
# taker_intensity_z, and taker_sell_ratio (seller_dominance, which alone reads these two).
SELLER_DOMINANCE_ONLY = ["net_taker_usd", "net_taker_usd_z", "taker_sell_ratio"]
SHIPPED_KEYS = [*KEY_KEYS, "taker_imbalance_spot", "taker_imbalance_perp", *SELLER_DOMINANCE_ONLY]
RULES = [
    "deleveraging_cascade",
    "derivatives_led_decline",
    "distribution",
    "seller_dominance",
    "spot_led_recovery",
]


def shipped() -> dict[str, Any]:
    return yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))


def shipped_config(**over: Any) -> Config:
    return config_from_dict(deep_merge(shipped(), over), env={})


def config_topic(ha: str, instance: str, asset: str, key: str) -> str:
    """The topic layout, written out: <discovery prefix>/sensor/<node id>/<object id>/config."""
    return f"{ha}/sensor/tapewatch_{instance}/{asset.lower()}_{key}/config"


# -- Home Assistant's view of a discovery payload -----------------------------------------------
# Home Assistant renders its templates in a sandboxed Jinja2 environment with the variables
# `value` (the payload text) and `value_json` (the payload parsed as JSON). StrictUndefined is
# stricter than Home Assistant, which logs a warning and renders an undefined value as empty
# text: here any template that touches an undefined value fails the test instead.
HA = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)


def render(template: str, payload: bytes) -> str:
    text = payload.decode()
    return HA.from_string(template).render(value=text, value_json=json.loads(text)).strip()


def sensor_state(config: dict[str, Any], payload: bytes) -> str | float | None:
    """The state an MQTT sensor shows for ``payload`` on its state topic: the rendered text
    "None" is unknown; an enum must render one of its options; a measurement must render a
    number (Home Assistant refuses anything else for a sensor with a state class)."""
    rendered = render(config["value_template"], payload)
    if rendered == "None":
        return None
    if config.get("device_class") == "enum":
        assert rendered in config["options"], rendered
        return rendered
    assert config["state_class"] == "measurement"
    return float(rendered)


def attributes(config: dict[str, Any], payload: bytes) -> dict[str, Any]:
    rendered = json.loads(render(config["json_attributes_template"], payload))
    assert isinstance(rendered, dict)  # Home Assistant takes attributes from a JSON object only
    return rendered


def available(config: dict[str, Any], status: bytes) -> bool:
    (entry,) = config["availability"]
    rendered = render(entry["value_template"], status)
    assert rendered in (entry["payload_available"], entry["payload_not_available"]), rendered
    return rendered == entry["payload_available"]


def published_value(key: str, payload: dict[str, Any]) -> str | float | None:
    """What the entity ``key`` should show, read from the README's payload layout."""
    if key == "regime":
        return payload["regime"]
    signal, field = (key[: -len("_z")], "z") if key.endswith("_z") else (key, "value")
    return payload["signals"].get(signal, {}).get(field)


# -- pure: the configs --------------------------------------------------------------------------
def test_each_asset_is_one_device_with_the_regime_key_signals_and_their_z() -> None:
    config = shipped_config()
    topics = Topics("tapewatch/v1", "tapewatch")
    msgs = Discovery("homeassistant", topics, config.regimes, "0.1.0").messages(["BTC", "ETH"])
    assert [m.topic for m in msgs] == [
        config_topic("homeassistant", "tapewatch", asset, key)
        for asset in ("BTC", "ETH")
        for key in SHIPPED_KEYS
    ]
    assert all(m.retain and m.qos == 1 for m in msgs)
    for msg in msgs:
        asset, key = msg.topic.split("/")[3].split("_", 1)
        asset = asset.upper()
        payload = msg.payload
        assert payload["unique_id"] == f"tapewatch_tapewatch_{asset.lower()}_{key}"
        assert payload["device"] == {
            "identifiers": [f"tapewatch_tapewatch_{asset.lower()}"],
            "name": f"{asset} (tapewatch)",
            "manufacturer": "tapewatch",
            "model": "market-flow regime monitor",
            "sw_version": "0.1.0",
        }
        assert payload["availability"] == [
            {
                "topic": "tapewatch/v1/status/tapewatch",
                "value_template": "{{ value_json.state }}",
                "payload_available": "online",
                "payload_not_available": "offline",
            }
        ]
        wanted = "regime" if key == "regime" else "signals"
        assert payload["state_topic"] == f"tapewatch/v1/{asset}/{wanted}"
    assert len({m.payload["unique_id"] for m in msgs}) == len(msgs)


def test_the_regime_is_an_enum_of_neutral_and_every_rule() -> None:
    rules = [*RULES, "my_own_rule"]
    data = shipped()
    data["regimes"].append(
        {"name": "my_own_rule", "description": "x", "all": [{"signal": "price", "above": 1.0}]}
    )
    config = config_from_dict(data, env={})
    discovery = Discovery("homeassistant", Topics("p", "i"), config.regimes, "0.1.0")
    regime = dict(discovery.entities("BTC"))["regime"]
    assert regime["device_class"] == "enum"
    assert regime["options"] == ["neutral", *rules]
    assert regime["state_topic"] == regime["json_attributes_topic"] == "p/BTC/regime"
    assert "unit_of_measurement" not in regime and "state_class" not in regime
    # A signal only the new rule reads gets its entity too.
    assert [key for key, _ in discovery.entities("BTC")] == [*SHIPPED_KEYS, "price"]


def test_units_are_real_units_only() -> None:
    config = shipped_config()
    entities = dict(Discovery("ha", Topics("p", "i"), config.regimes, "v").entities("BTC"))
    units = {key: e.get("unit_of_measurement") for key, e in entities.items()}
    assert units["liquidations_usd"] == units["net_taker_usd"] == "USD"
    assert units["coinbase_premium_pct"] == units["oi_change_pct_1h"] == "%"
    for ratio in ("taker_imbalance", "taker_buy_sell_ratio", "book_imbalance_1pct"):
        assert units[ratio] is None
    assert units["funding_rate"] is None  # a fraction per funding interval: no unit
    assert all(units[k] is None for k in units if k.endswith("_z"))
    assert all(e["state_class"] == "measurement" for k, e in entities.items() if k != "regime")


def test_ids_and_topics_depend_only_on_instance_asset_and_signal() -> None:
    config = shipped_config()
    a = Discovery("ha", Topics("tapewatch/v1", "x"), config.regimes, "0.1.0").messages(["BTC"])
    b = Discovery("ha", Topics("tapewatch/v1", "x"), config.regimes, "9.9.9").messages(["BTC"])
    assert [(m.topic, m.payload["unique_id"]) for m in a] == [
        (m.topic, m.payload["unique_id"]) for m in b
    ]
    other = Discovery("ha", Topics("tapewatch/v1", "y"), config.regimes, "0.1.0").messages(["BTC"])
    assert not {m.payload["unique_id"] for m in a} & {m.payload["unique_id"] for m in other}


def test_templates_show_the_value_the_z_and_unknown_for_a_missing_one() -> None:
    config = shipped_config()
    entities = dict(Discovery("ha", Topics("p", "i"), config.regimes, "v").entities("BTC"))
    payload = {
        "asset": "BTC",
        "signals": {
            "taker_imbalance": {"value": -0.25, "unit": "ratio", "z": None, "n_obs": 3},
            "funding_rate": {"value": 4.044e-05, "unit": "fraction", "z": -1.93},
            "book_imbalance_1pct": {"value": None, "unit": "ratio"},
        },
    }
    raw = json.dumps(payload).encode()
    assert sensor_state(entities["taker_imbalance"], raw) == -0.25
    assert sensor_state(entities["taker_imbalance_z"], raw) is None  # z null: unknown
    assert sensor_state(entities["funding_rate"], raw) == 4.044e-05
    assert sensor_state(entities["funding_rate_z"], raw) == -1.93
    assert sensor_state(entities["book_imbalance_1pct"], raw) is None  # value null
    assert sensor_state(entities["depth_usd_1pct"], raw) is None  # not in the payload at all
    regime = {
        "regime": "seller_dominance",
        "previous": "neutral",
        "since": 1796289024000,
        "description": "Perp takers sell <much> more than they buy (it's a test).",
        "reasons": [{"signal": "taker_sell_ratio", "value": 0.6, "op": ">", "threshold": 0.53}],
        "seq": 2,
    }
    raw = json.dumps(regime).encode()
    assert sensor_state(entities["regime"], raw) == "seller_dominance"
    assert attributes(entities["regime"], raw) == {
        "previous": "neutral",
        "since": 1796289024000,
        "description": "Perp takers sell <much> more than they buy (it's a test).",
        "reasons": [{"signal": "taker_sell_ratio", "value": 0.6, "op": ">", "threshold": 0.53}],
    }
    status = json.dumps({"state": "offline", "instance": "i"}).encode()
    assert available(entities["regime"], status) is False


def test_stale_topics_are_this_instances_configs_no_longer_announced() -> None:
    current = [config_topic("ha", "tw", "BTC", "regime"), config_topic("ha", "tw", "BTC", "price")]
    gone = [config_topic("ha", "tw", "ETH", "regime"), "ha/binary_sensor/tapewatch_tw/x/config"]
    found = {
        *current,
        *gone,
        config_topic("ha", "tw-2", "ETH", "regime"),  # another instance's node
        "ha/sensor/tapewatch_tw/sweep-abc",  # the sweep's marker: not a config
        "ha/sensor/tapewatch_tw/btc_regime/state",
        "other/sensor/tapewatch_tw/eth_regime/config",  # another discovery prefix
    }
    assert stale_topics("ha", "tw", found, current) == sorted(gone)
    assert is_config_topic("ha", "tw", config_topic("ha", "tw", "ETH", "regime"))
    assert not is_config_topic("ha", "tw", config_topic("ha", "tw-2", "ETH", "regime"))
    # The sweep reads exactly this node, and its marker lies under the filter.
    marker = sweep_marker("ha", "tw", "abc")
    assert sweep_filter("ha", "tw") == "ha/+/tapewatch_tw/#"
    assert aiomqtt.Topic(marker).matches(sweep_filter("ha", "tw"))
    assert not is_config_topic("ha", "tw", marker)


def test_discovery_is_off_by_default_and_takes_a_prefix() -> None:
    assert shipped_config().mqtt.discovery is None
    assert shipped_config(mqtt={"discovery": "homeassistant"}).mqtt.discovery == "homeassistant"
    assert shipped_config(mqtt={"discovery": "my/ha"}).mqtt.discovery == "my/ha"
    assert shipped_config(mqtt={"discovery": False}).mqtt.discovery is None  # YAML's `off`


@pytest.mark.parametrize(
    ("instance", "discovery", "error"),
    [
        ("tw", True, "mqtt.discovery: write the discovery prefix, e.g. homeassistant"),
        ("tw", "ha/#", "mqtt.discovery: must not contain the MQTT wildcards"),
        ("tw.1", "homeassistant", "mqtt.discovery: needs an instance name without '.'"),
    ],
)
def test_bad_discovery_settings_are_reported_at_their_key(
    instance: str, discovery: object, error: str
) -> None:
    data = deep_merge(shipped(), {"instance": instance, "mqtt": {"discovery": discovery}})
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, env={})
    assert len(info.value.errors) == 1 and info.value.errors[0].startswith(error)


def test_an_instance_with_a_dot_is_fine_without_discovery() -> None:
    assert shipped_config(instance="tw.1").instance == "tw.1"


def test_the_discovery_module_is_pure() -> None:
    found = {
        name
        for name in imports(REPO / "monitor" / "discovery.py")
        if any(name == io or name.startswith(f"{io}.") for io in IO_MODULES)
    }
    assert not found


# -- end to end: simulator -> daemon -> Mosquitto -> what Home Assistant would show ---------------
class Raw:
    """Every message on the subscribed topics, payload as bytes (an empty retained payload is
    how a discovery config is removed, and the sweep's marker is not JSON)."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.messages: list[tuple[str, bytes, bool]] = []
        self._changed = asyncio.Condition()

    async def pump(self) -> None:
        async for m in self.client.messages:
            payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
            async with self._changed:
                self.messages.append((str(m.topic), payload, bool(m.retain)))
                self._changed.notify_all()

    def on(self, topic: str) -> list[bytes]:
        return [p for t, p, _ in self.messages if t == topic]

    def last(self, topic: str) -> bytes:
        return self.on(topic)[-1]

    def json(self, topic: str) -> dict[str, Any]:
        return json.loads(self.last(topic))

    async def wait_for(self, predicate: Callable[[Raw], bool], timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: predicate(self))


@pytest.fixture
async def raw(mosquitto: Mosquitto) -> AsyncIterator[Callable[..., Any]]:
    made: list[tuple[aiomqtt.Client, asyncio.Task[None]]] = []

    async def make(*patterns: str) -> Raw:
        client = aiomqtt.Client(mosquitto.host, mosquitto.port)
        await client.__aenter__()
        for pattern in patterns:
            await client.subscribe(pattern, qos=1)
        sub = Raw(client)
        made.append((client, asyncio.create_task(sub.pump())))
        return sub

    yield make
    for client, task in made:
        task.cancel()
        with contextlib.suppress(aiomqtt.MqttError):
            await client.__aexit__(None, None, None)


@pytest.fixture
def ha() -> str:
    """A discovery prefix of this test's own."""
    return f"ha-{uuid.uuid4().hex[:8]}"


async def retained(mosquitto: Mosquitto, ha: str) -> dict[str, bytes]:
    """The retained messages under ``ha`` now. The broker sends them as it grants the
    subscription, before anything published after that: a marker published then ends them."""
    marker = f"{ha}/test-marker-{uuid.uuid4().hex[:8]}"
    found: dict[str, bytes] = {}
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
        await client.subscribe(f"{ha}/#", qos=1)
        await client.publish(marker, b"end", qos=1)
        async with asyncio.timeout(20):
            async for m in client.messages:
                if str(m.topic) == marker:
                    return found
                if m.retain:  # not something published live meanwhile
                    assert isinstance(m.payload, bytes)
                    found[str(m.topic)] = m.payload
    raise AssertionError("no marker")


# -- the publisher: configs with the birth, and the sweep ------------------------------------------
def discovery_publisher(mosquitto: Mosquitto, prefix: str, ha: str, assets: list[str]) -> Publisher:
    build = MessageBuilder(Topics(prefix, "tw"), "s1", "0.1.0", 0)
    discovery = Discovery(ha, build.topics, shipped_config().regimes, "0.1.0")
    return Publisher(
        MqttConfig(url=mosquitto.url, prefix=prefix, broker="external", discovery=ha),
        client_id=f"tw-test-{uuid.uuid4().hex[:8]}",
        birth=build.status("online"),
        will=build.status("offline"),
        rebirth_topic=build.topics.rebirth(),
        announce=tuple(discovery.messages(assets)),
    )


async def test_the_configs_follow_the_status_on_connect_and_on_rebirth(
    mosquitto: Mosquitto, prefix: str, ha: str, raw: Any
) -> None:
    sub = await raw(f"{ha}/#", f"{prefix}/status/#")
    publisher = discovery_publisher(mosquitto, prefix, ha, ["BTC"])
    status = f"{prefix}/status/tw"
    birth = [status, *(config_topic(ha, "tw", "BTC", k) for k in SHIPPED_KEYS)]
    async with running(publisher):
        await sub.wait_for(lambda s: len(s.messages) >= len(birth))
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
            await client.publish(f"{prefix}/cmd/rebirth", b"", qos=1)
        await sub.wait_for(lambda s: len(s.messages) >= 2 * len(birth))
    assert [t for t, _, _ in sub.messages] == birth + birth
    assert (await retained(mosquitto, ha)).keys() == set(birth[1:])


async def test_the_sweep_clears_only_this_nodes_configs_it_is_told_are_stale(
    mosquitto: Mosquitto, prefix: str, ha: str
) -> None:
    keep = config_topic(ha, "tw", "BTC", "regime")
    gone = [config_topic(ha, "tw", "ETH", "regime"), config_topic(ha, "tw", "ETH", "price")]
    other = config_topic(ha, "tw-2", "ETH", "regime")
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
        for topic in (keep, *gone, other):
            await client.publish(topic, b'{"name": "x"}', qos=1, retain=True)
    publisher = discovery_publisher(mosquitto, prefix, ha, ["BTC"])
    announced = {m.topic for m in publisher.announce}
    async with running(publisher):
        cleared = await publisher.sweep(
            sweep_filter(ha, "tw"),
            sweep_marker(ha, "tw", "s1"),
            lambda found: stale_topics(ha, "tw", found, announced),
        )
    assert cleared == sorted(gone)
    assert sorted(await retained(mosquitto, ha)) == sorted([*announced, other])


async def test_a_sweep_without_its_marker_still_clears_what_it_saw(
    mosquitto: Mosquitto, prefix: str, ha: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A marker that never comes back (here: outside the filter, as an ACL hiding it would
    make it) bounds the sweep by its timeout; what was seen is stale all the same."""
    gone = config_topic(ha, "tw", "ETH", "regime")
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
        await client.publish(gone, b'{"name": "x"}', qos=1, retain=True)
    publisher = discovery_publisher(mosquitto, prefix, ha, ["BTC"])
    announced = {m.topic for m in publisher.announce}
    async with running(publisher):
        cleared = await publisher.sweep(
            sweep_filter(ha, "tw"),
            f"{ha}-elsewhere/marker",
            lambda found: stale_topics(ha, "tw", found, announced),
            timeout=1.0,
        )
    assert cleared == [gone]
    assert gone not in await retained(mosquitto, ha)
    assert any("no end marker" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
async def test_home_assistant_would_show_what_the_daemon_publishes(
    start_simulator: Any, mosquitto: Mosquitto, prefix: str, ha: str, raw: Any
) -> None:
    # sell_wave: calm, then sellers: BTC enters the simulator's one rule, seller_dominance
    # (taker_buy_sell_ratio below 0.8, a key signal: no entity of its own).
    sim = await start_simulator(scenario="sell_wave", speed=5.0, seed=3)
    sub = await raw(f"{ha}/#", f"{prefix}/#")
    running = RunningDaemon(daemon_config(sim, mosquitto.url, prefix, mqtt={"discovery": ha}))
    instance = running.daemon.config.instance
    status = f"{prefix}/status/{instance}"
    topics = [config_topic(ha, instance, a, k) for a in ("BTC", "ETH") for k in KEY_KEYS]
    await sub.wait_for(lambda s: all(s.on(t) for t in topics))
    await sub.wait_for(lambda s: s.on(status) and s.json(status)["state"] == "online")
    await sub.wait_for(lambda s: _regime(s, prefix, "BTC") == "seller_dominance", timeout=60)
    await sub.wait_for(
        lambda s: all(
            s.on(f"{prefix}/{a}/signals") and s.on(f"{prefix}/{a}/regime") for a in ("BTC", "ETH")
        )
    )
    # Nothing else under the node but the sweep's marker: these are all the configs.
    node = f"{ha}/sensor/tapewatch_{instance}/"
    configs_seen = {t for t, p, _ in sub.messages if t.startswith(node) and t.endswith("/config")}
    assert configs_seen == set(topics)
    configs = {topic: sub.json(topic) for topic in topics}

    # Each entity's state, rendered from the messages as published, is the published value.
    shown: dict[str, str | float | None] = {}
    for topic, config in configs.items():
        asset, key = topic.split("/")[3].split("_", 1)
        kind = "regime" if key == "regime" else "signals"
        assert config["state_topic"] == f"{prefix}/{asset.upper()}/{kind}"
        payload = sub.last(config["state_topic"])
        shown[topic] = sensor_state(config, payload)
        assert shown[topic] == published_value(key, json.loads(payload)), topic
        assert available(config, sub.last(status))
    btc_regime = configs[config_topic(ha, instance, "BTC", "regime")]
    assert btc_regime["options"] == ["neutral", "seller_dominance"]
    assert shown[config_topic(ha, instance, "BTC", "regime")] == "seller_dominance"
    assert shown[config_topic(ha, instance, "ETH", "regime")] == "neutral"
    published = sub.json(f"{prefix}/BTC/regime")
    assert attributes(btc_regime, sub.last(f"{prefix}/BTC/regime")) == {
        "previous": published["previous"],
        "since": published["since"],
        "description": published["description"],
        "reasons": published["reasons"],
    }
    assert published["previous"] == "neutral" and published["reasons"]
    # Both kinds were seen: numbers, and unknowns (z-scores without a day of history are null).
    assert any(isinstance(v, float) for v in shown.values())
    assert shown[config_topic(ha, instance, "BTC", "taker_imbalance_z")] is None

    # A rebirth republishes every config after the status.
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
        await client.publish(f"{prefix}/cmd/rebirth", b"", qos=1)
    await sub.wait_for(lambda s: all(len(s.on(t)) >= 2 for t in topics))
    assert all(json.loads(sub.on(t)[-1]) == json.loads(sub.on(t)[0]) for t in topics)

    # A clean stop says offline: every entity becomes unavailable.
    await running.close()
    await sub.wait_for(lambda s: s.json(status)["state"] == "offline")
    assert not any(available(config, sub.last(status)) for config in configs.values())


def _regime(sub: Raw, prefix: str, asset: str) -> str | None:
    topic = f"{prefix}/{asset}/regime"
    return sub.json(topic)["regime"] if sub.on(topic) else None


# Reads two signals no other rule of the simulator's config reads (and never holds in a calm
# market: taker_intensity_z needs a day of baseline).
EXTRA_RULE = {
    "name": "seller_pressure",
    "description": "test rule",
    "all": [
        {"signal": "taker_intensity_z", "below": -1.5},
        {"signal": "taker_sell_ratio", "above": 0.53},
    ],
}


def _sim_config(sim: Simulator, mqtt: dict[str, Any], assets: list[str], extra: bool) -> Config:
    """The test daemon's config on ``sim`` (tests/test_daemon.py), on ``assets`` only, with or
    without ``EXTRA_RULE``."""
    data = deep_merge(
        sim.config_for(shipped()),
        {
            "mqtt": {**mqtt, "broker": "external"},
            "signals": {"backfill": False},
            "collector": {"backoff_initial": "100ms", "backoff_max": "1s"},
        },
    )
    data["assets"] = {a: v for a, v in data["assets"].items() if a in assets}
    data["regimes"] = [*data["regimes"], *([EXTRA_RULE] if extra else [])]
    return config_from_dict(data, env={})


@pytest.mark.slow
async def test_entities_taken_out_of_the_config_are_cleared_at_the_next_start(
    start_simulator: Any, mosquitto: Mosquitto, prefix: str, ha: str, raw: Any
) -> None:
    sim = await start_simulator(scenario="calm", speed=5.0, seed=3)
    sub = await raw(f"{ha}/#")
    mqtt = {"url": mosquitto.url, "prefix": prefix, "discovery": ha}
    first = RunningDaemon(_sim_config(sim, mqtt, ["BTC", "ETH"], extra=True))
    instance = first.daemon.config.instance
    before = [
        config_topic(ha, instance, a, k)
        for a in ("BTC", "ETH")
        for k in (*KEY_KEYS, *SELLER_DOMINANCE_ONLY)
    ]
    await sub.wait_for(lambda s: all(s.on(t) for t in before))
    await first.close()

    # ETH and the rule that alone read three BTC signals are taken out.
    second = RunningDaemon(_sim_config(sim, mqtt, ["BTC"], extra=False))
    assert second.daemon.config.instance == instance
    after = [config_topic(ha, instance, "BTC", k) for k in KEY_KEYS]
    gone = sorted(set(before) - set(after))
    assert len(gone) == len(KEY_KEYS) + 2 * len(SELLER_DOMINANCE_ONLY)
    await sub.wait_for(lambda s: all(s.on(t) and s.last(t) == b"" for t in gone))
    await sub.wait_for(lambda s: all(len(s.on(t)) >= 2 for t in after))  # the second's configs
    btc_regime = json.loads(sub.last(config_topic(ha, instance, "BTC", "regime")))
    assert btc_regime["options"] == ["neutral", "seller_dominance"]
    now = await retained(mosquitto, ha)
    assert sorted(now) == sorted(after)  # the removed ones are no longer retained at all
    assert all(now[t] for t in after)
    await second.close()
