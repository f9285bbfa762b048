"""Home Assistant MQTT discovery (README "Home Assistant"): the retained config messages, pure.

With ``mqtt.discovery`` set to a discovery prefix (``homeassistant``), each asset becomes one
Home Assistant device per daemon instance, with an ``enum`` sensor for its regime and a sensor
for each key signal and its z-score. The entities read the topics the daemon publishes anyway
(``<prefix>/<ASSET>/regime`` and ``/signals``) through value templates, and take their
availability from the status topic: discovery adds only the configs (and the sweep's marker):

    <discovery prefix>/sensor/tapewatch_<instance>/<asset>_<key>/config

Every config of an instance sits under one node id, ``tapewatch_<instance>``, so one wildcard
subscription (``sweep_filter``) finds all that an instance ever announced; ``stale_topics``
says which of them the current config no longer has (``Publisher.sweep`` in ``monitor/mqtt.py``
clears those at start). Unique ids depend only on the instance, the asset and the signal, so
they survive restarts and upgrades.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from monitor.messages import OutMessage, Topics
from signals.catalogue import SIGNALS, Z_ALIASES, Z_SCORED
from signals.regimes import NEUTRAL, RegimeRule

COMPONENT = "sensor"
MANUFACTURER = "tapewatch"
MODEL = "market-flow regime monitor"

# The signals every asset's device shows (the seed analyses' signals), whatever the rules read;
# the signals the configured rules read are added after them. A z-scored one also gets its z.
KEY_SIGNALS: tuple[str, ...] = (
    "taker_imbalance",
    "taker_buy_sell_ratio",
    "perp_spot_volume_ratio",
    "coinbase_premium_pct",
    "funding_rate",
    "oi_change_pct_1h",
    "oi_change_pct_24h",
    "liquidations_usd",
    "depth_usd_1pct",
    "book_imbalance_1pct",
)

# Entity names in Home Assistant (it prefixes the device's name); other signals get their
# catalogue name in words.
TITLES: dict[str, str] = {
    "taker_imbalance": "Taker imbalance",
    "taker_imbalance_perp": "Taker imbalance perp",
    "taker_imbalance_spot": "Taker imbalance spot",
    "taker_buy_sell_ratio": "Taker buy/sell ratio",
    "taker_sell_ratio": "Taker sell share",
    "net_taker_usd": "Net taker flow",
    "perp_spot_volume_ratio": "Perp/spot volume ratio",
    "coinbase_premium_pct": "Coinbase premium",
    "funding_rate": "Funding rate",
    "oi_change_pct_1h": "Open interest change 1h",
    "oi_change_pct_24h": "Open interest change 24h",
    "liquidations_usd": "Liquidations",
    "depth_usd_1pct": "Book depth within 1%",
    "book_imbalance_1pct": "Book imbalance within 1%",
}

# Catalogue unit -> Home Assistant unit_of_measurement. Ratios and fractions have none: HA
# treats a unit as something to convert and label, and "ratio" is neither.
UNITS: dict[str, str | None] = {"USD": "USD", "percent": "%", "ratio": None, "fraction": None}
# Digits HA shows by default: a funding rate of 4e-05 needs six, dollars none.
PRECISION: dict[str, int] = {"USD": 0, "percent": 3, "ratio": 3, "fraction": 6}
Z_PRECISION = 2

# HA renders a sensor's value template with ``value_json`` (the parsed payload); the text
# "None" means unknown. A signal that is null renders as None; one absent from the payload
# (a catalogue from another version) is defaulted before it is read, because reading an
# attribute of an undefined value is a template error in HA, not an unknown.
_FIELD = "{{{{ (value_json.signals['{signal}'] | default({{}}))['{field}'] | default(none) }}}}"
_REGIME = "{{ value_json.regime }}"
# Attributes must render to a JSON object; the payload's other fields (seq, ts_pub, session)
# change on every republish and would only churn HA's recorder.
_REGIME_ATTRIBUTES = (
    '{{ {"previous": value_json.previous, "since": value_json.since, '
    '"description": value_json.description, "reasons": value_json.reasons} | tojson }}'
)
_AVAILABILITY = "{{ value_json.state }}"


def node_id(instance: str) -> str:
    """The discovery node id of an instance (HA allows letters, digits, '_' and '-': config
    validation rejects an instance with a '.' when discovery is on)."""
    return f"tapewatch_{instance}"


def device_id(instance: str, asset: str) -> str:
    return f"tapewatch_{instance}_{asset.lower()}"


def config_topic(discovery_prefix: str, instance: str, asset: str, key: str) -> str:
    return f"{discovery_prefix}/{COMPONENT}/{node_id(instance)}/{asset.lower()}_{key}/config"


def sweep_filter(discovery_prefix: str, instance: str) -> str:
    """Every topic under the instance's node, of any component: its configs, and the sweep's
    marker (``sweep_marker``)."""
    return f"{discovery_prefix}/+/{node_id(instance)}/#"


def sweep_marker(discovery_prefix: str, instance: str, session: str) -> str:
    """A topic under ``sweep_filter`` for the sweep's end marker. It does not end in
    ``/config``, so HA, which reads its whole discovery prefix, ignores it."""
    return f"{discovery_prefix}/{COMPONENT}/{node_id(instance)}/sweep-{session}"


def is_config_topic(discovery_prefix: str, instance: str, topic: str) -> bool:
    """A discovery config topic of ``instance``'s node (of any component)."""
    parts = topic.removeprefix(f"{discovery_prefix}/").split("/")
    return (
        topic.startswith(f"{discovery_prefix}/")
        and len(parts) == 4
        and parts[1] == node_id(instance)
        and parts[3] == "config"
    )


def stale_topics(
    discovery_prefix: str, instance: str, found: Iterable[str], current: Iterable[str]
) -> list[str]:
    """The config topics of ``instance`` found retained at the broker that ``current`` (the
    configs this daemon announces) does not have: an asset, a rule's signal or a signal of an
    earlier version that is gone. Clearing them (an empty retained payload) removes the entity
    from HA. Sorted, so the log lists them in a stable order."""
    keep = set(current)
    return sorted(
        {t for t in found if t not in keep and is_config_topic(discovery_prefix, instance, t)}
    )


def _signal_of(rule_name: str) -> str:
    """The catalogue signal a rule's condition reads: ``oi_z`` -> ``oi_change_pct_24h``."""
    name = Z_ALIASES.get(rule_name, rule_name)
    if name.endswith("_z") and name[: -len("_z")] in Z_SCORED:
        return name[: -len("_z")]
    return name


def entity_signals(rules: Sequence[RegimeRule]) -> list[str]:
    """The signals that get a sensor: the key signals, then those the rules read, in order."""
    names = list(KEY_SIGNALS)
    for rule in rules:
        for cond in (*rule.all, *rule.any):
            signal = _signal_of(cond.signal)
            if signal in SIGNALS and signal not in names:
                names.append(signal)
    return names


def _title(signal: str) -> str:
    return TITLES.get(signal) or signal.replace("_", " ").capitalize()


class Discovery:
    """Builds one instance's discovery configs."""

    def __init__(
        self, discovery_prefix: str, topics: Topics, rules: Sequence[RegimeRule], version: str
    ) -> None:
        self.prefix = discovery_prefix
        self.topics = topics
        self.instance = topics.instance
        self.options = [NEUTRAL, *(rule.name for rule in rules)]
        self.signals = entity_signals(rules)
        self.version = version

    def messages(self, assets: Iterable[str]) -> list[OutMessage]:
        """Every config of ``assets``: retained, QoS 1, the regime's first."""
        return [
            OutMessage(self.topic(asset, key), payload, qos=1, retain=True)
            for asset in assets
            for key, payload in self.entities(asset)
        ]

    def topic(self, asset: str, key: str) -> str:
        return config_topic(self.prefix, self.instance, asset, key)

    def entities(self, asset: str) -> list[tuple[str, dict[str, Any]]]:
        """(key, config) of each of the asset's entities; the key is unique within the asset."""
        out = [("regime", self._regime(asset))]
        for signal in self.signals:
            out.append((signal, self._signal(asset, signal)))
            if signal in Z_SCORED:
                out.append((f"{signal}_z", self._z(asset, signal)))
        return out

    def _common(self, asset: str, key: str, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "unique_id": f"{device_id(self.instance, asset)}_{key}",
            "device": {
                "identifiers": [device_id(self.instance, asset)],
                "name": f"{asset} ({self.instance})",
                "manufacturer": MANUFACTURER,
                "model": MODEL,
                "sw_version": self.version,
            },
            "origin": {"name": MANUFACTURER, "sw_version": self.version},
            "availability": [
                {
                    "topic": self.topics.status(),
                    "value_template": _AVAILABILITY,
                    "payload_available": "online",
                    "payload_not_available": "offline",
                }
            ],
        }

    def _regime(self, asset: str) -> dict[str, Any]:
        topic = self.topics.regime(asset)
        return {
            **self._common(asset, "regime", "Regime"),
            "device_class": "enum",
            "options": self.options,
            "state_topic": topic,
            "value_template": _REGIME,
            "json_attributes_topic": topic,
            "json_attributes_template": _REGIME_ATTRIBUTES,
            # The regime changes a few times an hour: HA subscribes at QoS 1 so none is lost.
            "qos": 1,
        }

    def _signal(self, asset: str, signal: str) -> dict[str, Any]:
        unit = SIGNALS[signal].unit
        config = {
            **self._common(asset, signal, _title(signal)),
            "state_topic": self.topics.signals(asset),
            "value_template": _FIELD.format(signal=signal, field="value"),
            "state_class": "measurement",
            "suggested_display_precision": PRECISION.get(unit, 3),
        }
        # A unit the table does not know is taken as a real one (a catalogue unit added later).
        ha_unit = UNITS.get(unit, unit)
        if ha_unit is not None:
            config["unit_of_measurement"] = ha_unit
        return config

    def _z(self, asset: str, signal: str) -> dict[str, Any]:
        return {
            **self._common(asset, f"{signal}_z", f"{_title(signal)} z-score"),
            "state_topic": self.topics.signals(asset),
            "value_template": _FIELD.format(signal=signal, field="z"),
            "state_class": "measurement",
            "suggested_display_precision": Z_PRECISION,
        }
