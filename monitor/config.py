"""Configuration: typed, frozen dataclasses and a loader that reports every error with its key path.

``config.yaml`` at the repository root is the documented default and the schema: every key is
explained there. ``load_config`` reads a YAML file, ``config_from_dict`` validates data that is
already parsed, ``check_config`` returns the error lines for ``tapewatch check-config``.

Validation never stops at the first problem: each error is one line ``key.path: message`` (e.g.
``regimes[0].all[1].signal: unknown signal 'foo' (known: ...)``), and all of them are raised
together in one ``ConfigError``.

Secrets never come from the file: the MQTT username and password are read from the environment
(``TAPEWATCH_MQTT_USERNAME``, ``TAPEWATCH_MQTT_PASSWORD``), and ``TAPEWATCH_MQTT_URL`` overrides
``mqtt.url``. An empty environment variable counts as unset (compose files often pass ``""``).

Durations are float seconds. Regime rules use the ``Condition`` and ``RegimeRule`` types of
``signals.regimes`` (re-exported here), so the rule engine consumes exactly what was validated.

To derive a variant of a loaded config, use ``dataclasses.replace``; it does not re-validate, so
for user-supplied changes build a dict and go through ``config_from_dict`` instead.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, cast
from urllib.parse import SplitResult, urlsplit

import yaml

from signals.catalogue import rule_signals
from signals.engine import VOLUME_BUCKET_MS
from signals.regimes import NEUTRAL, Condition, RegimeRule
from streams.venues import ADAPTERS, Venue

__all__ = [
    "AssetConfig",
    "BinanceUsdmVenue",
    "CollectorConfig",
    "Condition",
    "Config",
    "ConfigError",
    "HttpConfig",
    "MqttConfig",
    "RegimeRule",
    "SignalsConfig",
    "VenuesConfig",
    "check_config",
    "config_from_dict",
    "load_config",
    "parse_duration",
]

ENV_MQTT_URL = "TAPEWATCH_MQTT_URL"
ENV_MQTT_USERNAME = "TAPEWATCH_MQTT_USERNAME"
ENV_MQTT_PASSWORD = "TAPEWATCH_MQTT_PASSWORD"
ENV_MQTT_CA_FILE = "TAPEWATCH_MQTT_CA_FILE"
# Apprise URLs of `tapewatch notify`, whitespace-separated: added to notify.urls (tokens stay
# out of the file).
ENV_NOTIFY_URLS = "TAPEWATCH_NOTIFY_URLS"

LogLevel = Literal["debug", "info", "warning", "error"]
BrokerMode = Literal["auto", "embedded", "external"]
Op = Literal["above", "below"]

# A rolling window allocates one slot per bucket per asset up front; past this a typo such as
# `bucket: 1ms` with `flow_window: 90d` would ask for gigabytes at start-up.
MAX_BUCKETS_PER_WINDOW = 10_000_000

# MQTT keep-alive is a 16-bit number of seconds, and 0 would disable it.
MAX_KEEPALIVE = 65_535.0


# -- the configuration ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AssetConfig:
    binance_spot: str | None = None  # spot symbol, e.g. BTCUSDT
    binance_usdm: str | None = None  # USDⓈ-M perpetual symbol, e.g. BTCUSDT
    coinbase: str | None = None  # Advanced Trade product id, e.g. BTC-USD


# The venue keys of an asset, in the order they are documented.
ASSET_VENUES = tuple(ADAPTERS)


@dataclass(frozen=True, slots=True)
class BinanceSpotVenue:
    ws: str = "wss://data-stream.binance.vision"
    rest: str = "https://data-api.binance.vision"


@dataclass(frozen=True, slots=True)
class CoinbaseVenue:
    ws: str = "wss://advanced-trade-ws.coinbase.com"
    rest: str = "https://api.coinbase.com"


@dataclass(frozen=True, slots=True)
class BinanceUsdmVenue:
    market_ws: str = "wss://fstream.binance.com/market"
    public_ws: str = "wss://fstream.binance.com/public"
    rest: str = "https://fapi.binance.com"


@dataclass(frozen=True, slots=True)
class VenuesConfig:
    binance_spot: BinanceSpotVenue = field(default_factory=BinanceSpotVenue)
    binance_usdm: BinanceUsdmVenue = field(default_factory=BinanceUsdmVenue)
    coinbase: CoinbaseVenue = field(default_factory=CoinbaseVenue)


@dataclass(frozen=True, slots=True)
class CollectorConfig:
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    silence_timeout: float = 15.0
    stall_timeout: float = 10.0
    queue_size: int = 10000
    book_limit: int = 1000
    open_interest_poll: float = 10.0
    ratios_poll: float = 300.0


@dataclass(frozen=True, slots=True)
class SignalsConfig:
    flow_window: float = 3600.0
    bucket: float = 1.0
    publish_interval: float = 1.0
    # Flow signals stay missing until live data covers this share of the flow window.
    flow_min_coverage: float = 0.1
    # Window of perp_spot_volume_ratio, in one-minute buckets.
    volume_window: float = 86400.0
    # z-scores: the baseline holds one sample per baseline_bucket over baseline_window; z is
    # null until baseline_min_history of samples exist. robust_z: median/MAD, not mean/std.
    baseline_window: float = 90 * 86400.0
    baseline_bucket: float = 60.0
    baseline_min_history: float = 86400.0
    robust_z: bool = False
    # Fill the baselines from REST history at start-up (signals/backfill.py).
    backfill: bool = True
    # Coinbase product whose trades give USDT's price in USD, for the USDT-adjusted Coinbase
    # premium; None disables it (its signals stay missing).
    usdt_usd_product: str | None = "USDT-USD"
    # Event time: a venue's trade socket unheard this long is down, and the stretch since it
    # last spoke is missing in its windows (collector.silence_timeout is the socket's wall-time
    # liveness; the two are apart because a simulator compresses event time).
    feed_silence: float = 15.0
    # Event time: the Coinbase premium compares last trade prices at most this old.
    premium_max_age: float = 10.0


@dataclass(frozen=True, slots=True)
class GuardsConfig:
    """Plausibility bounds on what the exchanges say (monitor/guards.py)."""

    # Event time may run ahead of the receive time by this much beyond the venue's measured
    # clock offset, and lag it by at most max_behind.
    max_ahead: float = 5.0
    max_behind: float = 86400.0
    # Prices must lie within ± this fraction of the asset's reference price.
    price_band: float = 0.30
    # Largest plausible price × quantity of one trade, liquidation or book level (USD/USDT).
    max_notional: float = 1e10


@dataclass(frozen=True, slots=True)
class MqttConfig:
    url: str
    prefix: str
    broker: BrokerMode = "auto"
    keepalive: float = 30.0
    username: str | None = None
    # Kept out of repr so that logging a config never prints the secret.
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None  # CA bundle to verify the broker (TLS), e.g. a private CA
    # Home Assistant MQTT discovery prefix (monitor/discovery.py); None: no discovery.
    discovery: str | None = None

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    def ssl_context(self) -> ssl.SSLContext | None:
        """For ``mqtts://``: verify the broker against ``ca_file``, or the system's trust store."""
        return ssl.create_default_context(cafile=self.ca_file) if self.tls else None

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or (8883 if self.tls else 1883)


@dataclass(frozen=True, slots=True)
class StateConfig:
    dir: str = "state"  # checkpoints of the z-score baselines (relative to the working dir)
    checkpoint_interval: float = 60.0
    signal_history: bool = True  # one-minute samples of every signal, for the charts


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    """``tapewatch notify``: where regime changes go, which ones, and how they are grouped."""

    # Apprise URLs: notify.urls first, then those of TAPEWATCH_NOTIFY_URLS (repeats dropped).
    urls: tuple[str, ...] = ()
    group: str = "tapewatch-notify"  # shared-subscription group: workers split the events
    session_expiry: float = 7 * 86400.0  # how long the broker queues for a stopped worker
    assets: tuple[str, ...] = ()  # empty: every asset
    regimes: tuple[str, ...] = ()  # empty: every regime
    directions: tuple[str, ...] = ("entered", "left")
    group_window: float = 10.0  # a change waits this long for others to join its message
    min_interval: float = 60.0  # between two messages; what comes in between is grouped
    max_events: int = 20  # changes in one message at most
    retry_initial: float = 1.0
    retry_max: float = 300.0
    give_up: float = 3600.0  # a delivery failing this long is recorded as failed and acked
    body_format: Literal["markdown", "text"] = "markdown"


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The optional HTTP listener of ``/metrics`` and ``/healthz`` (monitor/http_server.py)."""

    # (host, port) from ``http.listen``, an IPv6 host without its brackets; None: no listener.
    listen: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class Config:
    instance: str
    assets: dict[str, AssetConfig]
    venues: VenuesConfig
    collector: CollectorConfig
    signals: SignalsConfig
    regimes: tuple[RegimeRule, ...]
    mqtt: MqttConfig
    log_level: LogLevel = "info"
    state: StateConfig = field(default_factory=StateConfig)
    guards: GuardsConfig = field(default_factory=GuardsConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    http: HttpConfig = field(default_factory=HttpConfig)

    def adapters(self) -> dict[str, Venue]:
        """Every venue's adapter, on its configured URLs, by venue name."""
        return {cls.name: cls(**asdict(getattr(self.venues, key))) for key, cls in ADAPTERS.items()}


class ConfigError(Exception):
    """Every problem found in a config, one ``path: message`` line each."""

    def __init__(self, errors: Iterable[str]) -> None:
        self.errors: list[str] = list(errors)
        super().__init__(self.errors)

    def __str__(self) -> str:
        return f"{len(self.errors)} configuration error(s):\n" + "\n".join(
            f"  {line}" for line in self.errors
        )


# -- durations ------------------------------------------------------------------------------------
_DURATION = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*(ms|s|m|h|d)")
# (multiplier, divisor): dividing by 1000 keeps "500ms" an exact 0.5 rather than 500 * 0.001.
_UNITS: dict[str, tuple[int, int]] = {
    "ms": (1, 1000),
    "s": (1, 1),
    "m": (60, 1),
    "h": (3600, 1),
    "d": (86400, 1),
}
_DURATION_FORMS = "seconds as a number, or a number with a unit: 500ms, 30s, 5m, 1h, 90d"


def _signed_duration(value: object) -> float:
    """Seconds, sign allowed, so callers can word the range error for their own key."""
    if isinstance(value, bool):  # bool is an int subclass; `true` is never meant as 1 s
        raise ValueError(f"expected a duration ({_DURATION_FORMS}), got bool {value}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"not a duration: {value!r} (expected {_DURATION_FORMS})")
        mul, div = _UNITS[match[2]]
        seconds = float(match[1]) * mul / div
    else:
        raise ValueError(f"expected a duration ({_DURATION_FORMS}), got {_describe(value)}")
    if not math.isfinite(seconds):
        raise ValueError(f"a duration must be finite, got {value!r}")
    return seconds


def parse_duration(value: object) -> float:
    """Seconds from ``30``, ``2.5``, ``"500ms"``, ``"30s"``, ``"5m"``, ``"1h"`` or ``"90d"``.

    Raises ValueError for anything else, including negative and non-finite durations and bools.
    """
    seconds = _signed_duration(value)
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    return seconds


# -- error collection and value conversion --------------------------------------------------------
T = TypeVar("T")


class _Invalid(Exception):
    """A value failed conversion; the message is reported at the value's key path."""


class _Errors:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.lines.append(f"{path or '(top level)'}: {message}")


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_]+")


def _join(path: str, key: str) -> str:
    # Quote keys that would make the path ambiguous (dots, spaces, brackets).
    part = key if _PLAIN_KEY.fullmatch(key) else repr(key)
    return f"{path}.{part}" if path else part


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, list | tuple):
        return "list"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _suggest(word: str, candidates: Iterable[str]) -> str:
    options = list(candidates)
    close = difflib.get_close_matches(word, options, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (known: {', '.join(options)})" if options else ""


_YAML_BOOL_HINT = " (YAML reads unquoted yes/no/on/off/true/false as booleans: quote it)"


def _string(value: object) -> str:
    if not isinstance(value, str):
        hint = _YAML_BOOL_HINT if isinstance(value, bool) else ""
        raise _Invalid(f"expected string, got {_describe(value)}{hint}")
    return value


def _nonempty(value: object) -> str:
    text = _string(value)
    if not text.strip():
        raise _Invalid("must not be empty")
    return text


def _positive_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"expected integer, got {_describe(value)}")
    if value <= 0:
        raise _Invalid(f"must be a positive integer, got {value}")
    return value


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        hint = ""
        if isinstance(value, str) and _looks_numeric(value):
            # PyYAML follows YAML 1.1, where an exponent needs a dot: 1e-4 is a string.
            hint = " (YAML reads this as text: write it with a dot, e.g. 1.0e-4, or in full)"
        raise _Invalid(f"expected number, got {_describe(value)}{hint}")
    if not math.isfinite(value):
        raise _Invalid(f"must be a finite number, got {value}")
    return float(value)


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _duration(value: object) -> float:
    try:
        return _signed_duration(value)
    except ValueError as exc:
        raise _Invalid(str(exc)) from None


def _positive_duration(value: object) -> float:
    seconds = _duration(value)
    if seconds <= 0:
        raise _Invalid(f"must be a positive duration, got {value!r}")
    return seconds


def _nonnegative_duration(value: object) -> float:
    seconds = _duration(value)
    if seconds < 0:
        raise _Invalid(f"must be a duration of 0 or more, got {value!r}")
    return seconds


def _choice(*choices: str) -> Callable[[object], str]:
    def convert(value: object) -> str:
        text = _string(value)
        if text not in choices:
            close = difflib.get_close_matches(text.lower(), choices, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _Invalid(f"expected one of {', '.join(choices)}, got {text!r}{hint}")
        return text

    return convert


def _pattern(regex: str, rule: str) -> Callable[[object], str]:
    compiled = re.compile(regex)

    def convert(value: object) -> str:
        text = _string(value)
        if not compiled.fullmatch(text):
            raise _Invalid(f"{rule}, got {text!r}")
        return text

    return convert


def _base_url(*schemes: str) -> Callable[[object], str]:
    """A base URL that code appends paths to: scheme://host[:port][/path], nothing else."""
    wanted = " or ".join(f"{s}://" for s in schemes)

    def convert(value: object) -> str:
        text = _nonempty(value).strip()
        parts = urlsplit(text)
        if parts.scheme not in schemes:
            raise _Invalid(f"expected a URL starting with {wanted}, got {text!r}")
        if not parts.hostname:
            raise _Invalid(f"URL has no host: {text!r}")
        _check_port(parts, text)
        if parts.query or parts.fragment:
            raise _Invalid(f"must not have a query or fragment (paths are appended), got {text!r}")
        return text

    return convert


def _check_port(parts: SplitResult, text: str) -> None:
    try:
        port = parts.port
    except ValueError:
        raise _Invalid(f"invalid port in {text!r}") from None
    if port == 0:
        raise _Invalid(f"invalid port in {text!r}")


def _mqtt_url(value: object) -> str:
    text = _nonempty(value).strip()
    parts = urlsplit(text)
    # Checked first, and the URL is not echoed: the message must not leak the password.
    if "@" in parts.netloc:
        raise _Invalid(
            f"must not contain credentials (user:password@): set {ENV_MQTT_USERNAME} and "
            f"{ENV_MQTT_PASSWORD} in the environment"
        )
    if parts.scheme not in ("mqtt", "mqtts"):
        raise _Invalid(f"expected an mqtt:// or mqtts:// URL, got {text!r}")
    if not parts.hostname:
        raise _Invalid(f"URL has no host: {text!r}")
    _check_port(parts, text)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise _Invalid(f"expected mqtt[s]://host[:port] with nothing after it, got {text!r}")
    return text


def _topic_prefix(value: object) -> str:
    text = _nonempty(value)
    if "+" in text or "#" in text:
        raise _Invalid(f"must not contain the MQTT wildcards '+' or '#', got {text!r}")
    if text.startswith("/") or text.endswith("/"):
        raise _Invalid(f"must not start or end with '/', got {text!r}")
    if text.startswith("$"):
        # Brokers reserve $-topics ($SYS), and '#' subscriptions do not match them.
        raise _Invalid(f"must not start with '$' (reserved for the broker), got {text!r}")
    if "\0" in text:
        raise _Invalid("must not contain a NUL character")
    return text


_instance = _pattern(
    r"[A-Za-z0-9_.-]+", "must be letters, digits, '_', '.' or '-' (it is part of MQTT topics)"
)
_regime_name = _pattern(
    r"[a-z][a-z0-9_]*", "must be lower_snake_case: a lower-case letter, then a-z, 0-9 or '_'"
)
_ASSET_NAME = re.compile(r"[A-Z0-9]{2,15}")
_BINANCE_SYMBOL = re.compile(r"[A-Z0-9_]+")


def _binance_symbol(value: object) -> str:
    text = _nonempty(value)
    if not _BINANCE_SYMBOL.fullmatch(text):
        # Events carry the exchange's upper-case symbol; a lower-case one would match nothing.
        hint = (
            f" (did you mean {text.upper()!r}?)" if _BINANCE_SYMBOL.fullmatch(text.upper()) else ""
        )
        raise _Invalid(
            f"Binance symbols are upper-case letters, digits and '_', got {text!r}{hint}"
        )
    return text


_COINBASE_PRODUCT = re.compile(r"[A-Z0-9]+-[A-Z0-9]+")


def _coinbase_product(value: object) -> str:
    text = _nonempty(value)
    if not _COINBASE_PRODUCT.fullmatch(text):
        hint = (
            f" (did you mean {text.upper()!r}?)"
            if _COINBASE_PRODUCT.fullmatch(text.upper())
            else ""
        )
        raise _Invalid(f"Coinbase product ids look like BTC-USD, got {text!r}{hint}")
    return text


class _Section:
    """One mapping of the config: reports unknown keys up front, then hands out values.

    A value that fails to convert is reported at its key path and the caller's default is
    returned so that reading goes on; ``ok`` tells cross-field checks whether a value is real.
    """

    def __init__(
        self,
        data: object,
        path: str,
        errors: _Errors,
        keys: Iterable[str],
        *,
        forbidden: Mapping[str, str] | None = None,
        optional: bool = False,
    ) -> None:
        self.path = path
        self.errors = errors
        self.failed: set[str] = set()
        self.data: dict[str, object] = {}
        self.valid = True
        if data is None and optional:  # `collector:` with every key commented out
            data = {}
        if not isinstance(data, Mapping):
            errors.add(path, f"expected mapping, got {_describe(data)}")
            self.valid = False
            return
        known = list(keys)
        forbidden = forbidden or {}
        for key, value in data.items():
            if not isinstance(key, str):
                errors.add(path, f"key {key!r} is not a string{_bool_hint(key)}")
            elif key in forbidden:
                errors.add(_join(path, key), forbidden[key])
            elif key not in known:
                errors.add(_join(path, key), "unknown key" + _suggest(key, known))
            else:
                self.data[key] = value

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str) -> object:
        return self.data.get(key)

    def get(
        self, key: str, convert: Callable[[object], T], default: T, *, required: bool = False
    ) -> T:
        if key not in self.data:
            if required and self.valid:
                self.fail(key, "required key is missing")
            elif required:
                self.failed.add(key)
            return default
        try:
            return convert(self.data[key])
        except _Invalid as exc:
            self.fail(key, str(exc))
            return default

    def fail(self, key: str, message: str) -> None:
        self.errors.add(_join(self.path, key), message)
        self.failed.add(key)

    def ok(self, *keys: str) -> bool:
        return self.valid and not self.failed.intersection(keys)


def _bool_hint(key: object) -> str:
    return _YAML_BOOL_HINT if isinstance(key, bool) else ""


# -- sections -------------------------------------------------------------------------------------
def _assets(data: object, errors: _Errors) -> dict[str, AssetConfig]:
    path = "assets"
    if data is None or (isinstance(data, Mapping) and not data):
        errors.add(path, "must list at least one asset, e.g. BTC: {binance_usdm: BTCUSDT}")
        return {}
    if not isinstance(data, Mapping):
        errors.add(path, f"expected mapping of asset name to venue symbols, got {_describe(data)}")
        return {}
    assets: dict[str, AssetConfig] = {}
    owner: dict[tuple[str, str], str] = {}  # (venue, symbol) -> the asset that claimed it first
    for name, spec in data.items():
        if not isinstance(name, str):
            errors.add(path, f"asset name {name!r} is not a string{_bool_hint(name)}")
            continue
        asset_path = _join(path, name)
        if not _ASSET_NAME.fullmatch(name):
            errors.add(asset_path, "asset names are 2-15 upper-case letters or digits, e.g. BTC")
        if spec is None or isinstance(spec, str):
            example = f"{{binance_usdm: {spec}}}" if isinstance(spec, str) else "{binance_usdm: …}"
            errors.add(asset_path, f"expected mapping of venue symbols, e.g. {example}")
            continue
        sec = _Section(spec, asset_path, errors, ASSET_VENUES)
        symbols = {
            "binance_spot": sec.get("binance_spot", _binance_symbol, None),
            "binance_usdm": sec.get("binance_usdm", _binance_symbol, None),
            "coinbase": sec.get("coinbase", _coinbase_product, None),
        }
        if sec.valid and not sec.data:
            errors.add(asset_path, f"needs at least one venue symbol ({', '.join(ASSET_VENUES)})")
        for venue, symbol in symbols.items():
            if symbol is None:
                continue
            if (venue, symbol) in owner:
                sec.fail(
                    venue, f"symbol {symbol!r} is already used by asset {owner[venue, symbol]}"
                )
            else:
                owner[venue, symbol] = name
        assets[name] = AssetConfig(**symbols)
    return assets


def _venues(data: object, errors: _Errors) -> VenuesConfig:
    sec = _Section(data, "venues", errors, ASSET_VENUES, optional=True)
    ws, http = _base_url("ws", "wss"), _base_url("http", "https")

    def venue(key: str, cls: type[T], converters: dict[str, Callable[[object], str]]) -> T:
        default = cls()
        sub = _Section(sec.raw(key), f"venues.{key}", errors, tuple(converters), optional=True)
        return cls(**{k: sub.get(k, conv, getattr(default, k)) for k, conv in converters.items()})

    return VenuesConfig(
        binance_spot=venue("binance_spot", BinanceSpotVenue, {"ws": ws, "rest": http}),
        binance_usdm=venue(
            "binance_usdm",
            BinanceUsdmVenue,
            {"market_ws": ws, "public_ws": ws, "rest": http},
        ),
        coinbase=venue("coinbase", CoinbaseVenue, {"ws": ws, "rest": http}),
    )


def _collector(data: object, errors: _Errors) -> CollectorConfig:
    durations = ("silence_timeout", "stall_timeout", "open_interest_poll", "ratios_poll")
    keys = ("backoff_initial", "backoff_max", *durations, "queue_size", "book_limit")
    sec = _Section(data, "collector", errors, keys, optional=True)
    d = CollectorConfig()
    initial = sec.get("backoff_initial", _positive_duration, d.backoff_initial)
    maximum = sec.get("backoff_max", _positive_duration, d.backoff_max)
    if sec.ok("backoff_initial", "backoff_max") and maximum < initial:
        sec.fail(
            "backoff_max",
            f"must be at least backoff_initial ({initial:g} s), got {maximum:g} s",
        )
    return CollectorConfig(
        backoff_initial=initial,
        backoff_max=maximum,
        **{key: sec.get(key, _positive_duration, getattr(d, key)) for key in durations},
        queue_size=sec.get("queue_size", _positive_int, d.queue_size),
        book_limit=sec.get("book_limit", _book_limit, d.book_limit),
    )


# Depth-snapshot sizes both Binance markets accept (USDⓈ-M allows no other values).
# The depth limits every venue with REST snapshots serves.
_BOOK_LIMITS = tuple(
    sorted(
        set.intersection(
            *(set(cls.depth_limits) for cls in ADAPTERS.values() if hasattr(cls, "depth_limits"))
        )
    )
)


def _book_limit(value: object) -> int:
    limit = _positive_int(value)
    if limit not in _BOOK_LIMITS:
        raise _Invalid(f"must be one of {', '.join(map(str, _BOOK_LIMITS))}, got {limit}")
    return limit


def _whole_ms(seconds: float) -> int | None:
    """Milliseconds if ``seconds`` is a whole number of them (windows are keyed in ms)."""
    ms = seconds * 1000
    return round(ms) if abs(ms - round(ms)) < 1e-6 else None


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, got {_describe(value)}")
    return value


def _fraction(value: object) -> float:
    number = _number(value)
    if not 0.0 <= number <= 1.0:
        raise _Invalid(f"must be a fraction between 0 and 1, got {number}")
    return number


def _signals(data: object, errors: _Errors) -> SignalsConfig:
    keys = (
        "flow_window",
        "bucket",
        "publish_interval",
        "volume_window",
        "feed_silence",
        "premium_max_age",
    )
    baseline_keys = ("baseline_window", "baseline_bucket", "baseline_min_history")
    sec = _Section(
        data,
        "signals",
        errors,
        (*keys, "flow_min_coverage", *baseline_keys, "robust_z", "backfill", "usdt_usd_product"),
        optional=True,
    )
    d = SignalsConfig()
    values = {key: sec.get(key, _positive_duration, getattr(d, key)) for key in keys}
    coverage = sec.get("flow_min_coverage", _fraction, d.flow_min_coverage)
    ms: dict[str, int] = {}
    for key, seconds in values.items():
        if not sec.ok(key):
            continue
        whole = _whole_ms(seconds)
        if seconds < 0.001:
            sec.fail(
                key,
                f"must be at least 1ms (event times have millisecond resolution), "
                f"got {sec.raw(key)!r}",
            )
        elif whole is None:
            sec.fail(key, f"must be a whole number of milliseconds, got {sec.raw(key)!r}")
        else:
            ms[key] = whole
    if "flow_window" in ms and "bucket" in ms:
        window, bucket = ms["flow_window"], ms["bucket"]
        if bucket > window:
            sec.fail(
                "bucket",
                f"must not be longer than flow_window ({sec.raw('flow_window')!r}), "
                f"got {sec.raw('bucket')!r}",
            )
        elif window % bucket:
            sec.fail(
                "flow_window", f"must be a whole multiple of bucket ({bucket} ms), got {window} ms"
            )
        elif window // bucket > MAX_BUCKETS_PER_WINDOW:
            sec.fail(
                "bucket",
                f"flow_window / bucket = {window // bucket} buckets, more than "
                f"{MAX_BUCKETS_PER_WINDOW} (each is memory per asset): use a "
                f"longer bucket",
            )
    # The volume window runs on fixed one-minute buckets (a day of 1 s buckets is 86,400 slots
    # per asset for a ratio that moves slowly).
    if "volume_window" in ms and ms["volume_window"] % VOLUME_BUCKET_MS:
        sec.fail(
            "volume_window",
            f"must be a whole number of minutes, got {sec.raw('volume_window')!r}",
        )
    elif "volume_window" in ms and ms["volume_window"] // VOLUME_BUCKET_MS > MAX_BUCKETS_PER_WINDOW:
        sec.fail("volume_window", f"longer than {MAX_BUCKETS_PER_WINDOW} minutes")
    d = SignalsConfig()
    baseline = {k: sec.get(k, _positive_duration, getattr(d, k)) for k in baseline_keys}
    robust = sec.get("robust_z", _boolean, d.robust_z)
    backfill = sec.get("backfill", _boolean, d.backfill)
    usdt_usd = sec.get("usdt_usd_product", _optional_product, d.usdt_usd_product)
    if sec.ok(*baseline_keys):
        window_ms = round(baseline["baseline_window"] * 1000)
        bucket_ms = round(baseline["baseline_bucket"] * 1000)
        if window_ms % bucket_ms or bucket_ms > window_ms:
            sec.fail("baseline_window", "must be a whole multiple of baseline_bucket")
        elif window_ms // bucket_ms > MAX_BUCKETS_PER_WINDOW:
            sec.fail("baseline_bucket", f"more than {MAX_BUCKETS_PER_WINDOW} samples per window")
        if baseline["baseline_min_history"] > baseline["baseline_window"]:
            sec.fail("baseline_min_history", "must not exceed baseline_window")
    return SignalsConfig(
        **values,
        flow_min_coverage=coverage,
        **baseline,
        robust_z=robust,
        backfill=backfill,
        usdt_usd_product=usdt_usd,
    )


def _optional_product(value: object) -> str | None:
    """A Coinbase product id; null or an empty string switches the feature off."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _coinbase_product(value)


_CONDITION_KEYS = ("signal", "above", "below", "exit_above", "exit_below")


def _other(op: str) -> str:
    return "below" if op == "above" else "above"


def _condition(data: object, path: str, errors: _Errors) -> Condition | None:
    sec = _Section(data, path, errors, _CONDITION_KEYS)
    if not sec.valid:
        return None
    signal = sec.get("signal", _string, "", required=True)
    known = rule_signals()
    if sec.ok("signal") and signal not in known:
        close = difflib.get_close_matches(signal, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        sec.fail("signal", f"unknown signal {signal!r} ({hint}known: {', '.join(known)})")
    thresholds = {key: sec.get(key, _number, 0.0) for key in _CONDITION_KEYS[1:] if sec.has(key)}
    ops = [op for op in ("above", "below") if op in thresholds]
    if len(ops) != 1:
        problem = "both 'above' and 'below'" if ops else "neither 'above' nor 'below'"
        errors.add(path, f"has {problem}: a condition needs exactly one of them")
    elif sec.has(f"exit_{_other(ops[0])}"):
        sec.fail(
            f"exit_{_other(ops[0])}",
            f"only goes with '{_other(ops[0])}' (this condition uses '{ops[0]}')",
        )
    if len(ops) != 1 or not sec.ok("signal", ops[0]):
        return None
    op: Op = "above" if ops[0] == "above" else "below"
    threshold = thresholds[op]
    exit_key = f"exit_{op}"
    exit_threshold = thresholds.get(exit_key, threshold)
    if sec.ok(exit_key):
        # Hysteresis exists to stop flapping; an exit stricter than the entry would do the
        # opposite (the regime would be left as soon as it is entered).
        looser = exit_threshold >= threshold if op == "below" else exit_threshold <= threshold
        if not looser:
            sign = ">=" if op == "below" else "<="
            sec.fail(
                exit_key,
                f"must be {sign} {op} ({threshold:g}) so that it loosens the condition once "
                f"entered, got {exit_threshold:g}",
            )
    if not sec.ok(*_CONDITION_KEYS):
        return None
    return Condition(signal, op, threshold, exit_threshold)


def _conditions(sec: _Section, key: str) -> tuple[Condition, ...]:
    if not sec.has(key):
        return ()
    data = sec.raw(key)
    path = _join(sec.path, key)
    if not isinstance(data, list):
        sec.fail(
            key,
            f"expected list of conditions (one '- {{signal: …, below: …}}' per "
            f"line), got {_describe(data)}",
        )
        return ()
    found = [_condition(item, f"{path}[{i}]", sec.errors) for i, item in enumerate(data)]
    return tuple(c for c in found if c is not None)


_RULE_KEYS = ("name", "description", "all", "any", "min_dwell", "cooldown")


def _regimes(data: object, errors: _Errors) -> tuple[RegimeRule, ...]:
    if not isinstance(data, list):
        errors.add("regimes", f"expected list of regime rules, got {_describe(data)}")
        return ()
    rules: list[RegimeRule] = []
    first_at: dict[str, str] = {}  # name -> path of the rule that used it first
    for i, item in enumerate(data):
        path = f"regimes[{i}]"
        sec = _Section(item, path, errors, _RULE_KEYS)
        if not sec.valid:
            continue
        name = sec.get("name", _regime_name, "", required=True)
        if sec.ok("name"):
            if name == NEUTRAL:
                sec.fail("name", f"{NEUTRAL!r} is reserved: it is the regime when no rule holds")
            elif name in first_at:
                sec.fail("name", f"duplicate regime name {name!r} (first at {first_at[name]})")
            else:
                first_at[name] = path
        all_of = _conditions(sec, "all")
        any_of = _conditions(sec, "any")
        if not sec.raw("all") and not sec.raw("any"):  # absent, null or empty
            errors.add(path, "needs at least one condition under 'all' or 'any'")
        rules.append(
            RegimeRule(
                name=name,
                description=sec.get("description", _string, "").strip(),
                all=all_of,
                any=any_of,
                min_dwell=sec.get("min_dwell", _nonnegative_duration, 0.0),
                cooldown=sec.get("cooldown", _nonnegative_duration, 0.0),
            )
        )
    return tuple(rules)


_SECRET_IN_FILE = "secrets do not belong in the config file: set {env} in the environment"


def _mqtt(data: object, env: Mapping[str, str], errors: _Errors) -> MqttConfig:
    sec = _Section(
        data,
        "mqtt",
        errors,
        ("url", "prefix", "broker", "keepalive", "discovery"),
        forbidden={
            "username": _SECRET_IN_FILE.format(env=ENV_MQTT_USERNAME),
            "password": _SECRET_IN_FILE.format(env=ENV_MQTT_PASSWORD),
        },
    )
    url = sec.get("url", _mqtt_url, "", required=True)
    prefix = sec.get("prefix", _topic_prefix, "", required=True)
    broker = sec.get("broker", _choice("auto", "embedded", "external"), "auto")
    keepalive = sec.get("keepalive", _positive_duration, 30.0)
    discovery = sec.get("discovery", _discovery_prefix, None)
    if sec.ok("keepalive") and not 1 <= keepalive <= MAX_KEEPALIVE:
        sec.fail(
            "keepalive",
            f"must be between 1s and {MAX_KEEPALIVE:g}s (MQTT keep-alive is "
            f"whole seconds, 0 disables it), got {sec.raw('keepalive')!r}",
        )

    url_source = "mqtt.url"
    env_url = env.get(ENV_MQTT_URL) or None
    if env_url is not None:
        url_source = f"env {ENV_MQTT_URL}"
        try:
            url = _mqtt_url(env_url)
        except _Invalid as exc:
            errors.add(url_source, str(exc))
            url = ""
    username = env.get(ENV_MQTT_USERNAME) or None
    password = env.get(ENV_MQTT_PASSWORD) or None
    if password is not None and username is None:
        # MQTT 3.1.1 (§3.1.2.9): a password may only be sent with a username.
        errors.add(f"env {ENV_MQTT_PASSWORD}", f"is set but {ENV_MQTT_USERNAME} is not")
    ca_file = env.get(ENV_MQTT_CA_FILE) or None
    if ca_file is not None and not Path(ca_file).is_file():
        errors.add(f"env {ENV_MQTT_CA_FILE}", f"{ca_file!r} is not a readable file")

    if url and broker == "embedded" and urlsplit(url).scheme == "mqtts":
        sec.fail(
            "broker",
            f"the embedded broker does not serve TLS, but {url_source} is "
            f"mqtts://: use mqtt:// or broker: external",
        )
    return MqttConfig(
        url,
        prefix,
        cast(BrokerMode, broker),
        keepalive,
        username,
        password,
        ca_file,
        discovery=discovery,
    )


def _discovery_prefix(value: object) -> str | None:
    """``mqtt.discovery``: null (or YAML's unquoted ``off``/``false``) for none, else the
    discovery prefix Home Assistant listens on."""
    if value is None or value is False:
        return None
    if value is True:
        raise _Invalid("write the discovery prefix, e.g. homeassistant (or null for none)")
    return _topic_prefix(value)


_LOG_LEVEL = _choice("debug", "info", "warning", "error")

_TOP_KEYS = (
    "instance",
    "assets",
    "venues",
    "collector",
    "signals",
    "regimes",
    "mqtt",
    "log_level",
    "state",
    "guards",
    "notify",
    "http",
)


def _build(data: object, env: Mapping[str, str], errors: _Errors) -> Config:
    top = _Section(data, "", errors, _TOP_KEYS)
    if not top.valid:
        raise ConfigError(errors.lines)
    instance = top.get("instance", _instance, "", required=True)
    if top.has("assets"):
        assets = _assets(top.raw("assets"), errors)
    else:
        top.fail("assets", "required key is missing")
        assets = {}
    # Sections are read in the order config.yaml lists them, so errors come out in that order.
    venues = _venues(top.raw("venues"), errors)
    collector = _collector(top.raw("collector"), errors)
    signals = _signals(top.raw("signals"), errors)
    if top.has("regimes"):
        regimes = _regimes(top.raw("regimes"), errors)
    else:
        top.fail("regimes", "required key is missing (write `regimes: []` for none)")
        regimes = ()
    if top.has("mqtt"):
        mqtt = _mqtt(top.raw("mqtt"), env, errors)
    else:
        top.fail("mqtt", "required key is missing (at least mqtt.url and mqtt.prefix)")
        mqtt = MqttConfig("", "")
    if mqtt.discovery and "." in instance:
        # A discovery node id allows letters, digits, '_' and '-'; mapping '.' to one of them
        # could give two instances one node id, and each would then clear the other's entities.
        errors.add("mqtt.discovery", f"needs an instance name without '.', got {instance!r}")
    state = _state(top.raw("state"), errors)
    guards = _guards(top.raw("guards"), errors)
    notify = _notify(top.raw("notify"), env, assets, regimes, errors)
    http = _http(top.raw("http"), errors)
    return Config(
        instance=instance,
        assets=assets,
        venues=venues,
        collector=collector,
        signals=signals,
        regimes=regimes,
        mqtt=mqtt,
        log_level=cast(LogLevel, top.get("log_level", _LOG_LEVEL, "info")),
        state=state,
        guards=guards,
        notify=notify,
        http=http,
    )


def _guards(data: object, errors: _Errors) -> GuardsConfig:
    keys = ("max_ahead", "max_behind", "price_band", "max_notional")
    sec = _Section(data, "guards", errors, keys, optional=True)
    d = GuardsConfig()
    return GuardsConfig(
        max_ahead=sec.get("max_ahead", _positive_duration, d.max_ahead),
        max_behind=sec.get("max_behind", _positive_duration, d.max_behind),
        price_band=sec.get("price_band", _band, d.price_band),
        max_notional=sec.get("max_notional", _positive_number, d.max_notional),
    )


def _band(value: object) -> float:
    number = _number(value)
    if not 0.0 < number < 1.0:
        raise _Invalid(f"must be a fraction above 0 and below 1, got {number}")
    return number


def _positive_number(value: object) -> float:
    number = _number(value)
    if not 0.0 < number < math.inf:
        raise _Invalid(f"must be a positive number, got {number}")
    return number


def _state(data: object, errors: _Errors) -> StateConfig:
    sec = _Section(
        data, "state", errors, ("dir", "checkpoint_interval", "signal_history"), optional=True
    )
    d = StateConfig()
    return StateConfig(
        dir=sec.get("dir", _nonempty, d.dir),
        checkpoint_interval=sec.get(
            "checkpoint_interval", _positive_duration, d.checkpoint_interval
        ),
        signal_history=sec.get("signal_history", _boolean, d.signal_history),
    )


def _http(data: object, errors: _Errors) -> HttpConfig:
    sec = _Section(data, "http", errors, ("listen",), optional=True)
    return HttpConfig(listen=sec.get("listen", _listen_address, None))


HTTP_LOOPBACK = "127.0.0.1"
_LISTEN_HOST = re.compile(r"[A-Za-z0-9.-]+")
_LISTEN_FORMS = "host:port such as 127.0.0.1:9464, [::1]:9464 or 0.0.0.0:9464, or a port alone"


def _listen_address(value: object) -> tuple[str, int] | None:
    """``http.listen``: null (no listener), ``host:port``, or a port alone, which listens on
    loopback only: the endpoints have no authentication, so another address must be written
    out by whoever means it."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return HTTP_LOOPBACK, _tcp_port(value)
    text = _nonempty(value).strip()
    if text.isdigit():
        return HTTP_LOOPBACK, _tcp_port(int(text))
    if "://" in text:
        raise _Invalid(f"expected {_LISTEN_FORMS}, without a scheme, got {text!r}")
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise _Invalid(f"expected {_LISTEN_FORMS}, got {text!r}")
    if not host:
        # Elsewhere ":9464" means every interface; here nothing opens wider than asked.
        raise _Invalid(
            f"names no address before ':{port}': write {HTTP_LOOPBACK}:{port} for this "
            f"machine only, or 0.0.0.0:{port} for every interface"
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _Invalid(f"not an IPv6 address: {host!r}") from None
    elif ":" in host:
        raise _Invalid(f"an IPv6 address goes in brackets, e.g. [::1]:{port}, got {text!r}")
    elif not _LISTEN_HOST.fullmatch(host):
        raise _Invalid(f"not a host name or IP address: {host!r} (expected {_LISTEN_FORMS})")
    return host, _tcp_port(int(port))


def _tcp_port(port: int) -> int:
    if not 1 <= port <= 65_535:
        raise _Invalid(f"port must be between 1 and 65535, got {port}")
    return port


# -- notify ---------------------------------------------------------------------------------------
# MQTT 5's session expiry is a 32-bit number of seconds; its largest value means "never".
MAX_SESSION_EXPIRY = 2**32 - 2
MAX_NOTIFY_EVENTS = 1000
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


def _notify_url(value: object) -> str:
    text = _nonempty(value).strip()
    # Never echoed: an Apprise URL usually holds a token. Apprise checks the rest at start.
    scheme, sep, rest = text.partition("://")
    if not sep or not _URL_SCHEME.fullmatch(scheme) or not rest:
        raise _Invalid("expected an Apprise URL such as ntfy://ntfy.sh/TOPIC (scheme://...)")
    return text


def _names(sec: _Section, key: str, known: Iterable[str], what: str) -> tuple[str, ...]:
    """A list of names out of ``known``; absent, null or []: none given."""
    data = sec.raw(key)
    if data is None:
        return ()
    if not isinstance(data, list):
        sec.fail(key, f"expected list of {what}, got {_describe(data)}")
        return ()
    options = list(known)
    names: list[str] = []
    for i, item in enumerate(data):
        path = f"{_join(sec.path, key)}[{i}]"
        if not isinstance(item, str):
            sec.errors.add(path, f"expected string, got {_describe(item)}{_bool_hint(item)}")
            sec.failed.add(key)
        elif item not in options:
            sec.errors.add(path, f"unknown {what.rstrip('s')} {item!r}" + _suggest(item, options))
            sec.failed.add(key)
        else:
            names.append(item)
    return tuple(dict.fromkeys(names))


_NOTIFY_KEYS = (
    "urls",
    "group",
    "session_expiry",
    "assets",
    "regimes",
    "directions",
    "group_window",
    "min_interval",
    "max_events",
    "retry_initial",
    "retry_max",
    "give_up",
    "body_format",
)
# A shared-subscription group name is one topic level without wildcards.
_share_group = _pattern(
    r"[A-Za-z0-9_.-]+", "must be letters, digits, '_', '.' or '-' (an MQTT share name)"
)


def _notify(
    data: object,
    env: Mapping[str, str],
    assets: Mapping[str, AssetConfig],
    regimes: tuple[RegimeRule, ...],
    errors: _Errors,
) -> NotifyConfig:
    sec = _Section(data, "notify", errors, _NOTIFY_KEYS, optional=True)
    d = NotifyConfig()
    urls: list[str] = []
    raw_urls = sec.raw("urls")
    if raw_urls is not None and not isinstance(raw_urls, list):
        sec.fail("urls", f"expected list of Apprise URLs, got {_describe(raw_urls)}")
    for i, item in enumerate(raw_urls if isinstance(raw_urls, list) else []):
        try:
            urls.append(_notify_url(item))
        except _Invalid as exc:
            errors.add(f"notify.urls[{i}]", str(exc))
    for i, item in enumerate((env.get(ENV_NOTIFY_URLS) or "").split()):
        try:
            urls.append(_notify_url(item))
        except _Invalid as exc:
            errors.add(f"env {ENV_NOTIFY_URLS} (URL {i + 1})", str(exc))
    directions = _names(sec, "directions", ("entered", "left"), "directions")
    if sec.has("directions") and sec.ok("directions") and not directions:
        sec.fail("directions", "must name entered, left or both (leave the key out for both)")
    retry_initial = sec.get("retry_initial", _positive_duration, d.retry_initial)
    retry_max = sec.get("retry_max", _positive_duration, d.retry_max)
    if sec.ok("retry_initial", "retry_max") and retry_max < retry_initial:
        sec.fail("retry_max", f"must be at least retry_initial ({retry_initial:g} s)")
    session_expiry = sec.get("session_expiry", _positive_duration, d.session_expiry)
    if sec.ok("session_expiry") and not 1 <= session_expiry <= MAX_SESSION_EXPIRY:
        sec.fail("session_expiry", f"must be between 1s and {MAX_SESSION_EXPIRY}s (MQTT 5)")
    max_events = sec.get("max_events", _positive_int, d.max_events)
    if sec.ok("max_events") and max_events > MAX_NOTIFY_EVENTS:
        sec.fail("max_events", f"must be at most {MAX_NOTIFY_EVENTS}, got {max_events}")
    body_format = sec.get("body_format", _choice("markdown", "text"), d.body_format)
    return NotifyConfig(
        urls=tuple(dict.fromkeys(urls)),
        group=sec.get("group", _share_group, d.group),
        session_expiry=session_expiry,
        assets=_names(sec, "assets", assets, "assets"),
        regimes=_names(sec, "regimes", (r.name for r in regimes), "regimes"),
        directions=directions or d.directions,
        group_window=sec.get("group_window", _nonnegative_duration, d.group_window),
        min_interval=sec.get("min_interval", _nonnegative_duration, d.min_interval),
        max_events=max_events,
        retry_initial=retry_initial,
        retry_max=retry_max,
        give_up=sec.get("give_up", _positive_duration, d.give_up),
        body_format=cast(Literal["markdown", "text"], body_format),
    )


# -- entry points ---------------------------------------------------------------------------------
def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` laid on top, mappings merged key by key (for raw config dicts)."""
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            out[key] = deep_merge(old, value)
        else:
            out[key] = value
    return out


def config_from_dict(data: object, env: Mapping[str, str] | None = None) -> Config:
    """Validate already-parsed config data; ``env`` defaults to ``os.environ``."""
    errors = _Errors()
    config = _build(data, os.environ if env is None else env, errors)
    if errors.lines:
        raise ConfigError(errors.lines)
    return config


class _Loader(yaml.SafeLoader):
    """SafeLoader that records duplicate keys: plain YAML silently keeps the last one."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[object, object]:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue  # `<<` merge keys may legitimately be overridden
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                self.duplicates.append(
                    f"line {line}: duplicate key {key!r} (first at line {seen[key]}; "
                    f"YAML would silently keep only the last one)"
                )
            else:
                seen[key] = line
        return super().construct_mapping(node, deep)


def _read_yaml(path: str | os.PathLike[str]) -> tuple[object, list[str]]:
    """The parsed document and its duplicate-key errors; ConfigError if it cannot be parsed."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([f"cannot read config file {os.fspath(path)!r}: {reason}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"config file {os.fspath(path)!r} is not UTF-8 text: {exc}"]) from None
    loader = _Loader(text)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_yaml_error(exc)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"YAML error: {exc}"]) from None
    finally:
        loader.dispose()
    return data, loader.duplicates


def _yaml_error(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    message = exc.problem or "invalid YAML"
    if exc.context:
        context_at = f" at line {exc.context_mark.line + 1}" if exc.context_mark else ""
        message += f" ({exc.context}{context_at})"
    return f"{where}YAML syntax error: {message}"


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read, validate and return the config at ``path``; ConfigError lists every problem."""
    data, duplicates = _read_yaml(path)
    if data is None:
        raise ConfigError([*duplicates, "(top level): the file is empty: expected mapping"])
    try:
        config = config_from_dict(data, env)
    except ConfigError as exc:
        raise ConfigError(duplicates + exc.errors) from None
    if duplicates:
        raise ConfigError(duplicates)
    return config


def check_config(path: str | os.PathLike[str]) -> list[str]:
    """The error lines for the config at ``path`` (with the current environment); [] if valid."""
    try:
        load_config(path)
    except ConfigError as exc:
        return exc.errors
    return []


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/3"`` -> (2, 3): shard 2 of 3, numbered from 1. ValueError with a readable reason."""
    index, sep, count = text.partition("/")
    if not sep or not index.strip().isdigit() or not count.strip().isdigit():
        raise ValueError(f"--shard expects I/N such as 1/3, got {text!r}")
    i, n = int(index), int(count)
    if n < 1:
        raise ValueError(f"--shard {text}: N must be at least 1 (N is the number of shards)")
    if not 1 <= i <= n:
        raise ValueError(f"--shard {text}: I must be between 1 and N")
    return i, n


def shard(config: Config, index: int, count: int) -> Config:
    """The part of ``config`` that shard ``index`` of ``count`` runs: every ``count``-th asset in
    name order, starting with the ``index``-th, under its own instance id
    (``<instance>-<index>of<count>``) so status, health, checkpoints and the outbox of the
    shards never mix. Adding an asset can move others to another shard: restart all shards
    together after changing the asset list. With ``http.listen``, shard ``index`` listens on
    its port + ``index`` - 1, so that the shards of one config can run on one machine."""
    names = sorted(config.assets)[index - 1 :: count]
    if not names:
        raise ConfigError(
            [f"--shard {index}/{count}: no asset left for this shard ({len(config.assets)} in all)"]
        )
    http = config.http
    if http.listen is not None:
        host, port = http.listen
        if port + index - 1 > 65_535:
            raise ConfigError(
                [f"--shard {index}/{count}: http.listen port {port} + {index - 1} is over 65535"]
            )
        http = replace(http, listen=(host, port + index - 1))
    return replace(
        config,
        instance=f"{config.instance}-{index}of{count}",
        assets={name: config.assets[name] for name in names},
        http=http,
    )
