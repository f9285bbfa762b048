"""A loopback stand-in for Binance spot, Binance USDⓈ-M and Coinbase Advanced Trade market data,
all on ONE port, the venue chosen by the path prefix (tapewatch's base URLs are configurable).

Websockets:

- Binance spot: ``/spot/stream?streams=a/b`` (combined: ``{"stream": name, "data": payload}``) and
  ``/spot/ws/a/b`` (raw) with ``<sym>@aggTrade``, ``<sym>@trade``, ``<sym>@depth@100ms`` and
  ``<sym>@bookTicker``;
- Binance USDⓈ-M ``/market/...`` with ``<sym>@aggTrade``, ``<sym>@markPrice@1s``,
  ``<sym>@markPrice`` (every 3 s) and ``<sym>@forceOrder``; ``/public/...`` with
  ``<sym>@depth@100ms`` and ``<sym>@bookTicker``. A stream on the wrong one of the two connects and
  stays silent, and the retired root paths ``/stream`` and ``/ws/...`` carry only the /public
  streams, which is how Binance has failed since 2026-04-23;
- JSON control messages on every Binance socket (SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS,
  SET_PROPERTY / GET_PROPERTY ``combined``) with Binance's replies and error codes;
- Coinbase ``/coinbase``: the Advanced Trade protocol (``coinbase_feed``) for every asset's
  ``<BASE>-USD`` and for ``USDT-USD``, the USDT price of the adjusted premium; a socket with no
  valid subscribe within ``subscribe_timeout`` (5 s) is closed.

Hostile input (``hostile``): well-formed frames with implausible content sent as extra frames,
and ``dead_venues``, paths whose websocket upgrades are refused so that venue never connects.

REST: see ``rest``. Event time runs ``speed`` times faster than the wall clock from the moment
the first market client (a websocket of any venue, or a market-data REST request) arrives. The
market comes from the pure ``MarketModel``; faults (``faults``) are injected here, on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
import yaml
from aiohttp import WSCloseCode, WSMsgType, web

from monitor.config import deep_merge
from simulator import coinbase_wire
from simulator.binance_wire import (
    DEPTH_STREAM,
    MALFORMED_KINDS,
    MARKET,
    PUBLIC,
    SPOT,
    dumps,
    envelope,
    malformed_frame,
    tick_frames,
)
from simulator.coinbase_feed import (
    HEARTBEATS,
    CoinbaseFeed,
    CoinbaseSession,
    Outgoing,
    ProtocolError,
)
from simulator.faults import (
    DEAD_VENUE,
    DEAD_VENUES,
    DROP,
    FAULTS,
    HOSTILE,
    MALFORMED,
    ONE_SHOT,
    REST_418,
    REST_429,
    STALL,
    UNKNOWN_SYMBOLS,
    StreamFaults,
    count,
    count_sent,
)
from simulator.hostile import (
    HOSTILE_KINDS,
    UNKNOWN_SYMBOL,
    HostileTrades,
    fake_symbols,
    hostile_agg_trade_text,
    hostile_market_trades,
    tag,
    unknown_symbol_frames,
)
from simulator.market import (
    DEFAULT_SYMBOLS,
    SCENARIOS,
    USDT_USD,
    DepthTick,
    MarketModel,
    Premium,
    QuoteTick,
    Tick,
    TradeTick,
    VenueSpec,
    assets_from_symbols,
)
from simulator.published import PublishedBook, TradeRing
from simulator.rest import MarketState, RestApi, json_response
from simulator.scenarios import NARRATIVE_WINDOWS, NARRATIVES
from streams.events import BINANCE_SPOT, BINANCE_USDM, COINBASE

__all__ = ["FAULTS", "MALFORMED_KINDS", "MINIMAL_BASE_CONFIG", "Simulator", "serve_forever"]

log = logging.getLogger("tapewatch.simulator")

GENERATE_EVERY_S: Final = 0.05  # wall time between two advances of the market
HEARTBEAT_S: Final = 20.0  # server pings; aiohttp closes a socket whose pong is late
CLIENT_QUEUE_FRAMES: Final = 10_000  # a client this far behind is cut off, as Binance does
# A socket's writer sends what is queued in writes of at most about this many bytes of whole
# websocket frames, then waits while the connection's buffer is above its high-water mark.
WRITE_BATCH_BYTES: Final = 64 * 1024
# With ``pace``, the event clock stands still while a client has more than PACE_HOLD frames
# waiting, and goes on once every client is back under PACE_RESUME.
PACE_HOLD: Final = 2_000
PACE_RESUME: Final = 500
SHUTDOWN_GRACE_S: Final = 2.0
SUBSCRIBE_TIMEOUT_S: Final = 5.0  # Coinbase closes a socket that has not subscribed by then
STALL_SECONDS: Final = 30.0
RETRY_AFTER_S: Final = 2
TRADE_RING: Final = 200_000  # recent trades kept per Binance symbol for REST aggTrades
CONTROL_METHODS: Final = (
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "LIST_SUBSCRIPTIONS",
    "SET_PROPERTY",
    "GET_PROPERTY",
)
# config.yaml's REST poll cadence (collector.*_poll), which config_overrides keeps in event time
OI_POLL_S: Final = 10.0
RATIOS_POLL_S: Final = 300.0
# The shipped guards.max_ahead, signals.feed_silence and signals.premium_max_age: bounds on
# event time that the configs written here widen by the speed.
MAX_AHEAD_S: Final = 5.0
FEED_SILENCE_S: Final = 15.0
PREMIUM_MAX_AGE_S: Final = 10.0
MAX_ID_TEXT: Final = 36  # Binance accepts alphanumeric string ids up to 36 characters
# A config pointed here runs as its own instance with its own state (see ``config_for``).
SIM_SUFFIX: Final = "-sim"
SIM_STATE_DIR: Final = "sim"
# Socket families whose clients count as market clients (the scenario clock starts with one).
_FAMILIES: Final = (SPOT, MARKET, PUBLIC, "legacy")
# A burst of unknown symbols puts two frames per symbol on a spot socket at once: it must fit the
# send queue with room to spare, or the burst would cut the client off instead of testing it.
MAX_UNKNOWN_SYMBOLS: Final = CLIENT_QUEUE_FRAMES * 2 // 5

Json = dict[str, Any]


# -- Binance control messages (pure apart from the client's subscription state) --------------------
class _ControlError(Exception):
    def __init__(self, code: int, msg: str, request_id: object = None) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.request_id = request_id


def _error_reply(err: _ControlError) -> Json:
    return {"error": {"code": err.code, "msg": err.msg}, "id": err.request_id}


def _request_id(msg: Json) -> int | str | None:
    if "id" not in msg:
        raise _ControlError(2, "Invalid request: request ID must be an unsigned integer")
    rid = msg["id"]
    if rid is None or (isinstance(rid, int) and not isinstance(rid, bool) and rid >= 0):
        return rid
    if isinstance(rid, str) and rid.isalnum() and len(rid) <= MAX_ID_TEXT:
        return rid
    raise _ControlError(2, "Invalid request: request ID must be an unsigned integer")


def _stream_params(msg: Json, rid: object) -> list[str]:
    params = msg.get("params")
    if params is None:
        raise _ControlError(2, "Invalid request: missing field `params`", rid)
    if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
        raise _ControlError(2, "Invalid request: params must be a list of stream names", rid)
    return params


_Item = tuple[str, str | None] | None  # (frame text, the fault it carries); None: close


class _SendQueue:
    """A socket's frames waiting for its writer, at most ``limit``. The writer is woken once
    per burst and then sends everything queued without waiting on the queue again, where an
    ``asyncio.Queue`` costs a wake-up and an awaited get per frame (thousands a second at
    40x)."""

    __slots__ = ("_items", "_limit", "_ready")

    def __init__(self, limit: int) -> None:
        self._items: deque[_Item] = deque()
        self._limit = limit
        self._ready = asyncio.Event()

    def qsize(self) -> int:
        return len(self._items)

    def put(self, item: _Item) -> bool:
        """Queue ``item``; False (nothing queued) when ``limit`` frames already wait."""
        if len(self._items) >= self._limit:
            return False
        self._items.append(item)
        self._ready.set()
        return True

    async def wait(self) -> None:
        """Until something is queued."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()

    def __bool__(self) -> bool:
        return bool(self._items)

    def get(self) -> _Item:
        return self._items.popleft()


@dataclass(eq=False)
class _Socket:
    """One websocket and its outgoing queue; one writer task per socket keeps frames in order."""

    ws: web.WebSocketResponse
    request: web.Request
    queue: _SendQueue = field(default_factory=lambda: _SendQueue(CLIENT_QUEUE_FRAMES))
    cut: bool = False  # aborted or being closed: queue nothing more
    closing: bool = False  # a close is queued behind the last frames
    stalled: bool = False  # the stall fault silences one stream (Coinbase: heartbeats) here
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(eq=False)
class _BinanceClient(_Socket):
    family: str = MARKET  # SPOT, MARKET, PUBLIC or "legacy" (the retired root paths)
    combined: bool = False
    streams: dict[str, None] = field(default_factory=dict)  # ordered set, subscribe order

    @property
    def delivers(self) -> str:
        """The family of streams this socket carries: legacy paths only get /public data."""
        return PUBLIC if self.family == "legacy" else self.family

    def control(self, text: str) -> Json:
        """Apply one JSON control message and return Binance's reply; never raises."""
        try:
            return self._control(text)
        except _ControlError as err:
            return _error_reply(err)
        except Exception:  # a client message must never take the server down
            log.exception("control message crashed the handler: %.200s", text)
            return _error_reply(_ControlError(2, "Invalid request"))

    def _control(self, text: str) -> Json:
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError as err:
            raise _ControlError(3, f"Invalid JSON: {err}") from None
        if not isinstance(msg, dict):
            raise _ControlError(2, "Invalid request: expected a JSON object")
        rid = _request_id(msg)
        method = msg.get("method")
        if method is None:
            raise _ControlError(2, "Invalid request: missing field `method`", rid)
        if method not in CONTROL_METHODS:
            expected = ", ".join(CONTROL_METHODS)
            raise _ControlError(
                2, f"Invalid request: unknown variant `{method}`, expected one of {expected}", rid
            )
        return {"result": self._apply(method, msg, rid), "id": rid}

    def _apply(self, method: str, msg: Json, rid: object) -> object:
        if method == "SUBSCRIBE":
            self.streams.update(dict.fromkeys(_stream_params(msg, rid)))
            return None
        if method == "UNSUBSCRIBE":
            for name in _stream_params(msg, rid):
                self.streams.pop(name, None)
            return None
        if method == "LIST_SUBSCRIPTIONS":
            return list(self.streams)
        return self._property(method, msg.get("params"), rid)

    def _property(self, method: str, params: object, rid: object) -> object:
        if not isinstance(params, list) or not params or not isinstance(params[0], str):
            raise _ControlError(2, "Invalid request: property name must be a string", rid)
        if params[0] != "combined":
            raise _ControlError(0, "Unknown property", rid)
        if method == "GET_PROPERTY":
            return self.combined
        if len(params) != 2 or not isinstance(params[1], bool):
            raise _ControlError(1, "Invalid value type: expected Boolean", rid)
        self.combined = params[1]
        return None


@dataclass(eq=False)
class _CoinbaseClient(_Socket):
    session: CoinbaseSession | None = None


def _route_of(path: str) -> tuple[str, bool, list[str]] | None:
    """``(family, combined, streams in the path)`` for a Binance websocket path, else None."""
    parts = path.strip("/").split("/")
    family = "legacy"
    if parts[0] in (SPOT, MARKET, PUBLIC):
        family, parts = parts[0], parts[1:]
    if parts == ["stream"]:
        return family, True, []
    if parts and parts[0] == "ws":
        return family, False, [p for p in parts[1:] if p]
    return None


def _own_state(config: Json) -> Json:
    """The ``instance`` and ``state`` keys of a config pointed at the simulator: ``-sim`` added
    to the instance and ``sim`` under the state directory, once (a written config used as the
    base again keeps them). tapewatch's defaults stand in for missing keys."""
    instance = str(config.get("instance") or "tapewatch")
    state = config.get("state")
    state = dict(state) if isinstance(state, dict) else {}
    state_dir = str(state.get("dir") or "state").rstrip("/") or "/"
    if not instance.endswith(SIM_SUFFIX):
        instance += SIM_SUFFIX
    if Path(state_dir).name != SIM_STATE_DIR:
        state_dir = str(Path(state_dir) / SIM_STATE_DIR)
    return {"instance": instance, "state": {**state, "dir": state_dir}}


class Simulator:
    """Binance spot, Binance USDⓈ-M and Coinbase market data on loopback, from one
    deterministic market, with injected faults."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        scenario: str = "sell_wave",
        speed: float = 1.0,
        seed: int = 1,
        faults: frozenset[str] = frozenset(),
        fault_every: float = 5.0,
        *,
        heartbeat: float = HEARTBEAT_S,
        fault_symbol: str = "BTCUSDT",
        stall_seconds: float = STALL_SECONDS,
        stall_stream: str | None = None,
        retry_after: int = RETRY_AFTER_S,
        subscribe_timeout: float = SUBSCRIBE_TIMEOUT_S,
        premiums: Mapping[str, Premium] | None = None,
        symbols: Mapping[str, float] | None = None,
        hostile_kinds: Sequence[str] = HOSTILE_KINDS,
        hostile_rounds: int | None = None,
        unknown_symbols: int = UNKNOWN_SYMBOLS,
        dead_venues: Iterable[str] = (),
        pace: bool = False,
    ) -> None:
        """``fault_symbol`` is the Binance symbol (BTCUSDT) or Coinbase product (BTC-USD) of
        the asset whose streams the wire faults hit; ``premiums`` overrides the Coinbase
        premium per phase name; ``stall_stream`` defaults to ``<symbol>@depth@100ms``.

        The ``hostile`` fault injects one kind of ``hostile_kinds`` per ``fault_every``, in
        turn, for ``hostile_rounds`` full turns (None: for ever), each unknown-symbol burst with
        ``unknown_symbols`` new symbols; ``inject_hostile`` injects one kind on demand.
        ``dead_venues`` (keys of ``DEAD_VENUES``) answer every websocket upgrade with 451.

        ``pace``: instead of cutting off a client that falls behind (what an exchange does),
        hold the event clock until it catches up. The market then runs as fast as its slowest
        client can follow, never faster than ``speed``: what a test on a busy machine needs,
        so that its outcome depends on event time, not on how fast the machine is."""
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
        if not speed > 0:
            raise ValueError(f"speed must be positive, got {speed!r}")
        unknown = set(faults) - FAULTS
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {sorted(FAULTS)}")
        if faults and not fault_every > 0:
            raise ValueError(f"fault_every must be positive, got {fault_every!r}")
        bad_kinds = [k for k in hostile_kinds if k not in HOSTILE_KINDS]
        if bad_kinds or not hostile_kinds:
            raise ValueError(f"hostile_kinds must be some of {', '.join(HOSTILE_KINDS)}")
        if hostile_rounds is not None and hostile_rounds < 0:
            raise ValueError(f"hostile_rounds must be >= 0, got {hostile_rounds!r}")
        if not 1 <= unknown_symbols <= MAX_UNKNOWN_SYMBOLS:
            raise ValueError(f"unknown_symbols must be 1..{MAX_UNKNOWN_SYMBOLS}")
        dead = frozenset(dead_venues)
        if dead - set(DEAD_VENUES):
            raise ValueError(f"dead_venues must be some of {', '.join(DEAD_VENUES)}")
        self.symbols = dict(DEFAULT_SYMBOLS if symbols is None else symbols)
        self.assets = assets_from_symbols(self.symbols)
        target = [a for a in self.assets if fault_symbol in (a.binance, a.coinbase)]
        if not target:
            raise ValueError(f"fault_symbol {fault_symbol!r} is not a simulated symbol")
        self.host = host
        self.scenario = scenario
        self.speed = speed
        self.seed = seed
        self.faults = frozenset(faults)
        self.fault_every = fault_every
        self.heartbeat = heartbeat
        self.fault_symbol = target[0].binance
        self.fault_product = target[0].coinbase
        self.stall_seconds = stall_seconds
        self.stall_stream = stall_stream or f"{self.fault_symbol.lower()}@{DEPTH_STREAM}"
        self.subscribe_timeout = subscribe_timeout
        self.premiums = dict(premiums or {})
        self.hostile_kinds = tuple(hostile_kinds)
        self.hostile_rounds = hostile_rounds
        self.unknown_symbols = unknown_symbols
        self.dead_venues = dead
        self.pace = pace
        self._hold_since: float | None = None  # monotonic time the paced clock stopped
        self._held_s = 0.0  # wall time the paced clock has stood still, in all
        self._dead_families = frozenset(f for name in dead for f in DEAD_VENUES[name])
        self.fault_counts: Counter[str] = Counter()
        self.rest = RestApi(
            self._market_state, self.now_ms, self.fault_counts, retry_after, self.published_ms
        )
        self._requested_port = port
        self._port: int | None = None
        self._runner: web.AppRunner | None = None
        self._model: MarketModel | None = None
        self._state: MarketState | None = None
        self._binance: dict[str, set[_BinanceClient]] = {f: set() for f in (SPOT, MARKET, PUBLIC)}
        self._coinbase: set[_CoinbaseClient] = set()
        self._sockets: set[_Socket] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._start_wall_ms = 0
        self._start_mono = 0.0
        self._malformed_round = 0
        self._last_price: dict[str, tuple[float, int]] = {}  # USDⓈ-M: (price, decimals)
        self._next_heartbeat_ms = 0
        self._stream_faults = {
            venue: StreamFaults(
                venue,
                self.fault_symbol,
                f"{self.fault_symbol.lower()}@{DEPTH_STREAM}",
                f"{self.fault_symbol.lower()}@aggTrade",
                self.fault_counts,
            )
            for venue in (BINANCE_SPOT, BINANCE_USDM)
        }
        self._hostile = {
            BINANCE_SPOT: HostileTrades(BINANCE_SPOT, f"{self.fault_symbol.lower()}@aggTrade"),
            BINANCE_USDM: HostileTrades(BINANCE_USDM, f"{self.fault_symbol.lower()}@aggTrade"),
            COINBASE: HostileTrades(COINBASE, self.fault_product),
        }
        self._hostile_turn = 0  # scheduled hostile injections so far
        self._fake_symbols_sent = 0  # every burst brings new names

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port)
        await site.start()
        self._runner = runner
        self._port = runner.addresses[0][1]
        for i, fault in enumerate(sorted(self.faults)):
            # Spread the kinds over the interval so a drop never swallows a malformed frame.
            offset = self.fault_every * i / len(self.faults)
            self._tasks.append(self._spawn(self._fault_loop(fault, offset), f"fault {fault}"))
        log.info("simulator listening on %s (scenario %s)", self.base_ws, self.scenario)

    async def stop(self) -> None:
        """Stop generating, flush and close every socket, then release the port."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        sockets = list(self._sockets)
        for sock in sockets:
            self._close_after_flush(sock)
        if sockets:
            waits = [asyncio.create_task(s.done.wait()) for s in sockets]
            _, pending = await asyncio.wait(waits, timeout=SHUTDOWN_GRACE_S)
            for task in pending:
                task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("simulator not started")
        return self._port

    @property
    def base_http(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_ws(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def model(self) -> MarketModel | None:
        """The market, once the scenario has started."""
        return self._model

    def now_ms(self) -> int:
        """Event time: the wall clock until the scenario starts, then ``speed`` ms per wall ms."""
        if self._model is None:
            return int(time.time() * 1000)
        mono = self._hold_since if self._hold_since is not None else time.monotonic()
        elapsed_ms = (mono - self._start_mono - self._held_s) * 1000.0
        return self._start_wall_ms + int(elapsed_ms * self.speed)

    def published_ms(self) -> int:
        """Event time of the market data sent so far (the last advance of the market), which
        trails ``now_ms`` by up to one burst; ``now_ms`` before the scenario starts."""
        return self._model.now_ms if self._model is not None else self.now_ms()

    def elapsed_ms(self) -> int:
        """Event time since the scenario started (0 before its first client): how far the
        market has progressed, whatever the wall clock or the machine's load did."""
        return 0 if self._model is None else self.now_ms() - self._start_wall_ms

    def _market_state(self) -> MarketState:
        self._start_scenario()
        assert self._state is not None
        return self._state

    def _start_scenario(self) -> None:
        """The scenario's clock starts with the first market client of any venue, so whoever
        connects first (a demo, a test, a daemon that started late) sees the calm baseline."""
        if self._model is not None:
            return
        self._start_wall_ms = int(time.time() * 1000)
        self._start_mono = time.monotonic()
        model = MarketModel(
            self.symbols,
            self.scenario,
            self.seed,
            start_ms=self._start_wall_ms,
            premiums=self.premiums,
        )
        books = {key: PublishedBook(model.book(*key), self._start_wall_ms) for key in model.specs}
        rings = {key: TradeRing(TRADE_RING) for key in model.specs if key[0] != COINBASE}
        coinbase_specs = {
            sym: spec for (venue, sym), spec in model.specs.items() if venue == COINBASE
        }
        feed = CoinbaseFeed(coinbase_specs, {s: books[(COINBASE, s)] for s in coinbase_specs})
        self._model = model
        self._state = MarketState(model, books, rings, feed)
        self._next_heartbeat_ms = (self._start_wall_ms // 1000 + 1) * 1000
        self._tasks.append(self._spawn(self._generate(), "generator"))

    # -- config for tapewatch ----------------------------------------------------------------
    def config_overrides(self) -> Json:
        """Config keys that point tapewatch here, with windows short enough for a demo."""
        ws, http = self.base_ws, self.base_http
        return {
            "assets": {
                a.name: {
                    "binance_spot": a.binance,
                    "binance_usdm": a.binance,
                    "coinbase": a.coinbase,
                }
                for a in self.assets
            },
            "venues": {
                "binance_spot": {"ws": f"{ws}/spot", "rest": f"{http}/spot"},
                "binance_usdm": {
                    "market_ws": f"{ws}/market",
                    "public_ws": f"{ws}/public",
                    "rest": http,
                },
                "coinbase": {"ws": f"{ws}/coinbase", "rest": f"{http}/coinbase"},
            },
            # REST polls at the shipped cadence in event time: at 30x a 10 s wall-clock poll
            # would be 5 min of event time apart, and open interest would go stale between two.
            "collector": {
                "open_interest_poll": f"{round(OI_POLL_S * 1000 / self.speed)}ms",
                "ratios_poll": f"{round(RATIOS_POLL_S * 1000 / self.speed)}ms",
            },
            # Event time here runs `speed` times the wall clock, so a frame's event time runs
            # ahead of its receive time, and a delay in delivery shows `speed` times larger:
            # widen the future-timestamp bound by the same factor.
            "guards": {"max_ahead": self._widened(MAX_AHEAD_S)},
            **self._signals_and_rules(),
        }

    def _widened(self, seconds: float) -> str:
        """A bound on event time, as a config duration, widened by the speed (never narrowed:
        below 1x the wall clock's jitter is the larger one)."""
        return f"{round(seconds * 1000 * max(1.0, self.speed))}ms"

    def _event_time_bounds(self) -> Json:
        """The engine's bounds on event time, widened by the speed: at 40x the shipped 15 s
        silence and 10 s premium age are 375 and 250 ms of wall time, inside the jitter of
        frames sent in bursts, and every venue would read as silent and every premium stale."""
        return {
            "feed_silence": self._widened(FEED_SILENCE_S),
            "premium_max_age": self._widened(PREMIUM_MAX_AGE_S),
        }

    def _signals_and_rules(self) -> Json:
        """A seed narrative keeps the config's own rules, with windows for its compressed time
        and a backfilled baseline; other scenarios get short windows and one demo rule."""
        bounds = self._event_time_bounds()
        if self.scenario == "tour" or self.scenario in NARRATIVES:
            return {
                "signals": {
                    **NARRATIVE_WINDOWS,
                    "backfill": True,
                    "usdt_usd_product": USDT_USD,
                    **bounds,
                }
            }
        return {
            "signals": {
                "flow_window": "30s",
                "flow_min_coverage": 0.5,
                "usdt_usd_product": USDT_USD,
                **bounds,
            },
            "regimes": [
                {
                    "name": "seller_dominance",
                    "description": "Perp takers sell much more than they buy "
                    "(taker buy/sell ratio well below 1).",
                    "all": [{"signal": "taker_buy_sell_ratio", "below": 0.8, "exit_below": 0.9}],
                    "min_dwell": "5s",
                    "cooldown": "0s",
                }
            ],
        }

    def config_for(self, base: Json) -> Json:
        """``base`` (raw config data) pointed here: ``config_overrides()`` merged on top, no HTTP
        listener, and the assets exactly the simulated ones (a base asset this simulator does
        not serve would only fail, symbol by symbol, for ever).

        The instance and state directory are the simulator's own (``<instance>-sim`` in
        ``<state.dir>/sim``): a real daemon on the base config must never restore the
        simulated market's baselines, history cache, regimes or outbox."""
        overrides = self.config_overrides()
        merged = deep_merge(base, overrides)
        # No HTTP listener copied from the base: a simulated daemon beside a real one on the
        # same config would take (or find taken) the real one's port. Add one to the written
        # file to see the simulated market's charts.
        listener = {"http": {**merged.get("http", {}), "listen": None}} if "http" in merged else {}
        return {**merged, **listener, "assets": overrides["assets"], **_own_state(merged)}

    def write_config(self, path: str | Path, base_config_path: str | Path = "config.yaml") -> None:
        """Write ``base_config_path`` pointed here (``config_for``) to ``path``.

        Without a base file (run outside a checkout) a minimal valid base stands in.
        """
        base_path = Path(base_config_path)
        if base_path.exists():
            base = yaml.safe_load(base_path.read_text(encoding="utf-8")) or {}
        else:
            base, base_config_path = dict(MINIMAL_BASE_CONFIG), "(built-in minimal config)"
        if not isinstance(base, dict):
            raise ValueError(f"{base_config_path}: top level is not a mapping")
        if self.scenario in (*NARRATIVES, "tour") and not base.get("regimes"):
            raise ValueError(
                f"scenario {self.scenario} plays a seed narrative for the regime rules of a "
                f"config, and {base_config_path} has none: pass --config with a config that "
                "has `regimes:` (the repository's config.yaml has the five default rules)"
            )
        merged = self.config_for(base)
        header = (
            f"# Written by `tapewatch simulate` for the simulator on {self.base_ws} "
            f"(port {self.port}, scenario {self.scenario}, speed {self.speed:g}).\n"
            f"# Base config: {base_config_path}. The port changes between runs: "
            "regenerate rather than edit.\n"
        )
        body = yaml.safe_dump(merged, sort_keys=False, allow_unicode=True)
        Path(path).write_text(header + body, encoding="utf-8")

    # -- market generation and fan-out -------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        task.add_done_callback(lambda t: _log_crash(t, name))
        return task

    async def _generate(self) -> None:
        """Advance the market to the clock every GENERATE_EVERY_S, at most one interval's worth
        of event time at once. Behind the clock (a busy machine, a slow step) it catches up
        in such pieces, letting the writers and REST run between them: one advance over all
        of the gap would hold the loop for as long as it takes, and the sockets would go
        silent for seconds and then get it all at once."""
        model = self._model
        assert model is not None
        most_ms = max(1, round(GENERATE_EVERY_S * 1000 * self.speed))
        while True:
            if self.pace:
                self._pace()
            behind = False
            if self._hold_since is None:
                now = self.now_ms()
                to = min(now, model.now_ms + most_ms)
                self._publish(model.advance(to), to)
                behind = to < now
            await asyncio.sleep(0 if behind else GENERATE_EVERY_S)

    def _pace(self) -> None:
        """Stop or restart the event clock by the longest client backlog (``pace``)."""
        backlog = max((s.queue.qsize() for s in self._sockets if not s.cut), default=0)
        if self._hold_since is None and backlog > PACE_HOLD:
            self._hold_since = time.monotonic()
        elif self._hold_since is not None and backlog < PACE_RESUME:
            self._held_s += time.monotonic() - self._hold_since
            self._hold_since = None

    def _publish(self, ticks: Iterable[Tick], now_ms: int) -> None:
        state = self._state
        assert state is not None
        feed = state.coinbase
        books, rings, specs = state.books, state.rings, state.model.specs
        due = self._coinbase_next_due()
        wanted = self._wanted_streams()
        # Book tops (a QuoteTick after most book steps) are frames only for bookTicker and
        # Coinbase ticker readers, which the daemon is not: without one, skip them outright.
        binance_quotes = any(s.endswith("@bookTicker") for s in wanted)
        coinbase_quotes = any(
            c.session is not None and c.session.subscriptions.get("ticker") for c in self._coinbase
        )
        for tick in ticks:
            if tick.event_ms >= due:
                self._coinbase_due(tick.event_ms)
                due = self._coinbase_next_due()
            if isinstance(tick, QuoteTick) and not (
                coinbase_quotes if tick.venue == COINBASE else binance_quotes
            ):
                continue
            venue = tick.venue if isinstance(tick, (TradeTick, DepthTick, QuoteTick)) else None
            if isinstance(tick, DepthTick):
                books[(tick.venue, tick.symbol)].apply(tick)
            if venue == COINBASE:
                self._publish_coinbase(tick, feed)
                if isinstance(tick, TradeTick):
                    due = self._coinbase_next_due()  # the trade may have opened a batch
                continue
            if isinstance(tick, TradeTick):
                rings[(tick.venue, tick.symbol)].append(tick)
            # Marks and liquidations have no venue field: they are USDⓈ-M's.
            spec = specs.get((venue or BINANCE_USDM, tick.symbol))
            self._publish_binance(tick, spec, wanted)
        self._coinbase_due(now_ms + 1)

    def _wanted_streams(self) -> set[str]:
        """The Binance streams worth encoding: those a socket reads, and those a wire fault
        watches (its bookkeeping runs on every frame of them, read or not)."""
        read = {s for c in self._sockets if isinstance(c, _BinanceClient) for s in c.streams}
        watched = {
            stream
            for faults in self._stream_faults.values()
            for stream in (faults.depth_stream, faults.trade_stream)
        }
        return read | watched

    def _publish_binance(self, tick: Tick, spec: VenueSpec | None, wanted: set[str]) -> None:
        families = self._binance
        if isinstance(tick, TradeTick) and tick.venue == BINANCE_USDM and spec is not None:
            # Printed only when a malformed frame needs it (``_last_price_text``).
            self._last_price[tick.symbol] = (tick.price, spec.price_decimals)
        if not (families[SPOT] or families[MARKET] or families[PUBLIC]):
            return  # no Binance socket at all: nothing to encode
        for family, stream, raw in tick_frames(tick, spec, wanted):
            sockets = families[family]
            if not sockets:
                continue  # no socket of its family: not encoded for anyone, nor watched
            clients = [c for c in sockets if stream in c.streams and not c.cut]
            venue = BINANCE_SPOT if family == SPOT else BINANCE_USDM
            faults = self._stream_faults[venue]
            if faults.watches(stream):
                payloads = faults.frames(stream, raw, bool(clients))
            elif clients:
                payloads = [raw]
            else:
                continue
            if not clients:
                continue
            hostile = self._hostile[venue]
            kind = hostile.take(stream, True) if hostile.pending else None
            # A hostile frame goes after the real trade, which keeps its place and id.
            texts = [(text, None) for text in payloads]
            if kind is not None:
                texts.append((hostile_agg_trade_text(kind, raw), tag(venue, kind)))
            # Framed once for every combined socket, not once per socket.
            wrapped: list[tuple[str, str | None]] | None = None
            stall = stream == self.stall_stream
            for client in clients:
                if stall and client.stalled:
                    continue
                if client.combined:
                    if wrapped is None:
                        wrapped = [(envelope(stream, text), fault) for text, fault in texts]
                    items = wrapped
                else:
                    items = texts
                for text, fault in items:
                    self._enqueue(client, text, fault)

    def _publish_coinbase(self, tick: Tick, feed: CoinbaseFeed) -> None:
        if isinstance(tick, TradeTick):
            feed.on_trade(tick)
            return
        sessions = [c for c in self._coinbase if c.session is not None and not c.cut]
        if isinstance(tick, DepthTick):
            wanted = [c for c in sessions if c.session and c.session.wants("level2", tick.symbol)]
            if wanted:
                events = feed.on_depth(tick)
                stamp = _stamp(tick.event_ms)
                for client in wanted:
                    assert client.session is not None
                    self._send(client, client.session.l2_update(tick.symbol, stamp, events))
        elif isinstance(tick, QuoteTick):
            wanted = [c for c in sessions if c.session and c.session.wants("ticker", tick.symbol)]
            if wanted:
                events = feed.on_quote(tick)
                stamp = _stamp(tick.event_ms)
                for client in wanted:
                    assert client.session is not None
                    self._send(client, [Outgoing(client.session.frame("ticker", stamp, events))])

    def _coinbase_next_due(self) -> int:
        """The event time at which ``_coinbase_due`` next has something to send."""
        end = self._state.coinbase.next_batch_end() if self._state is not None else None
        return self._next_heartbeat_ms if end is None else min(end, self._next_heartbeat_ms)

    def _coinbase_due(self, now_ms: int) -> None:
        """Send the trade batches and heartbeats whose event time has come."""
        state = self._state
        assert state is not None
        feed = state.coinbase
        end = feed.next_batch_end()
        if end is not None and end <= now_ms:
            sessions = [c for c in self._coinbase if c.session is not None and not c.cut]
            hostile = self._hostile[COINBASE]
            for product, batch_end, events in feed.due_batches(now_ms):
                stamp = _stamp(batch_end)
                readers = [
                    c for c in sessions if c.session and c.session.wants("market_trades", product)
                ]
                for client in readers:
                    assert client.session is not None
                    self._send(client, client.session.trades(product, stamp, events))
                kind = hostile.take(product, bool(readers)) if hostile.pending else None
                if kind is not None:
                    extra = hostile_market_trades(kind, events)
                    for client in readers:
                        assert client.session is not None
                        text = client.session.frame("market_trades", stamp, extra)
                        self._enqueue(client, text, tag(COINBASE, kind))
        while self._next_heartbeat_ms <= now_ms:
            at = self._next_heartbeat_ms
            self._next_heartbeat_ms += 1000
            stamp = _stamp(at)
            uptime_ns = (at - self._start_wall_ms) * 1_000_000
            for client in list(self._coinbase):
                session = client.session
                if session is None or client.cut or HEARTBEATS not in session.subscriptions:
                    continue
                frames = session.heartbeat(stamp, at * 1_000_000, uptime_ns, client.stalled)
                self._send(client, frames)

    def _send(self, client: _Socket, frames: list[Outgoing]) -> None:
        for frame in frames:
            self._enqueue(client, frame.text, frame.fault)

    def _enqueue(self, client: _Socket, text: str, fault: str | None = None) -> None:
        if client.cut:
            return
        if not client.queue.put((text, fault)):
            log.warning(
                "client %s fell %d frames behind: disconnecting",
                _peer(client),
                client.queue.qsize(),
            )
            self._abort(client)

    async def _write_loop(self, client: _Socket) -> None:
        """The only task that writes to the socket, so frames keep their order. Everything
        queued goes out as whole websocket frames in one write to the transport (up to
        WRITE_BATCH_BYTES), then the writer waits while the client is slow. A burst is a dozen
        frames per socket, and a ``send_str`` each cost a coroutine and a write (a system
        call) per frame: at 30x, 7-8 µs of system time per frame, 2-3 µs written in bursts.
        Frames leave the queue as they are written, so its length stays the client's backlog
        (beyond the connection's own buffer, which ``drain`` keeps under its high-water
        mark)."""
        queue, ws, request = client.queue, client.ws, client.request
        counts = self.fault_counts
        while True:
            await queue.wait()
            while queue:
                parts: list[bytes] = []
                faults: list[str] = []
                size = 0
                closing = False
                while queue and size < WRITE_BATCH_BYTES:
                    item = queue.get()
                    if item is None:
                        closing = True
                        break
                    text, fault = item
                    data = text.encode()
                    parts += (_text_frame_header(len(data)), data)
                    size += len(data)
                    if fault is not None:
                        faults.append(fault)
                if parts:
                    transport = request.transport
                    if transport is None or transport.is_closing():
                        return  # the reader side notices the loss and cleans up
                    transport.write(b"".join(parts))
                    for fault in faults:
                        # Counted once on the wire, so tests can compare with what clients
                        # received.
                        count_sent(counts, fault)
                if closing:
                    await ws.close(code=WSCloseCode.GOING_AWAY, message=b"simulator stopping")
                    return
                try:
                    await request.writer.drain()
                except ConnectionError:
                    return

    # -- faults --------------------------------------------------------------------------------
    async def _fault_loop(self, fault: str, offset: float) -> None:
        await asyncio.sleep(offset)
        inject: Callable[[], None] = {
            DROP: self._drop_all,
            MALFORMED: self._send_malformed,
            STALL: self._start_stall,
            REST_429: self.rest.arm_429,
            REST_418: self.rest.start_ban,
            HOSTILE: self._hostile_tick,
        }.get(fault, lambda: self._arm(fault))
        while True:
            await asyncio.sleep(self.fault_every)
            inject()

    def _arm(self, fault: str) -> None:
        """Arm a one-shot wire fault on both Binance venues and on every Coinbase socket."""
        assert fault in ONE_SHOT
        if self._model is None:
            return  # no market client yet: nothing to hit
        for faults in self._stream_faults.values():
            faults.armed.add(fault)
        for client in self._coinbase:
            if client.session is not None:
                client.session.armed.add(fault)

    def _hostile_tick(self) -> None:
        """One scheduled injection: the next of ``hostile_kinds`` in turn; none once
        ``hostile_rounds`` turns are done. Before the first market client nothing is sent and
        the turn waits, so ``hostile_rounds=1`` injects every kind exactly once."""
        if self._model is None:
            return
        kinds = self.hostile_kinds
        rounds = self.hostile_rounds
        if rounds is not None and self._hostile_turn >= rounds * len(kinds):
            return
        kind = kinds[self._hostile_turn % len(kinds)]
        self._hostile_turn += 1
        self.inject_hostile(kind)

    def inject_hostile(self, kind: str) -> None:
        """Inject one hostile frame of ``kind`` (see ``hostile``) now, whatever the schedule.

        ``unknown_symbol`` sends its burst at once to every Binance socket that carries trades
        or books; a trade kind is armed on every venue that carries it and goes out right after
        that venue's next real trade of the fault symbol that somebody reads."""
        if kind not in HOSTILE_KINDS:
            raise ValueError(f"unknown hostile kind {kind!r}; known: {', '.join(HOSTILE_KINDS)}")
        if kind == UNKNOWN_SYMBOL:
            self._unknown_symbol_burst()
            return
        for hostile in self._hostile.values():
            hostile.arm(kind)

    def _unknown_symbol_burst(self) -> None:
        state = self._state
        if state is None:
            return  # no market client yet: nobody to send to
        names = fake_symbols(self._fake_symbols_sent, self.unknown_symbols)
        self._fake_symbols_sent += len(names)
        now = self.now_ms()
        for family, venue in ((SPOT, BINANCE_SPOT), (MARKET, BINANCE_USDM), (PUBLIC, BINANCE_USDM)):
            clients = [c for c in self._binance[family] if not c.cut]
            if not clients:
                continue
            # Priced like the fault symbol, in its venue's exact shapes: only the name is wrong.
            spec = state.model.specs[(venue, self.fault_symbol)]
            bid, ask = state.books[(venue, self.fault_symbol)].best()
            trades, depths = unknown_symbol_frames(spec, names, now, bid, ask, first_id=1)
            key = tag(venue, UNKNOWN_SYMBOL)
            for client in clients:
                # Only on the kind of stream the socket carries (USDⓈ-M trades on /market,
                # books on /public), as if its own streams carried other symbols.
                frames: list[tuple[str, str]] = []
                if family != PUBLIC and any(s.endswith("@aggTrade") for s in client.streams):
                    frames += trades
                if family != MARKET and any(DEPTH_STREAM in s for s in client.streams):
                    frames += depths
                for stream, raw in frames:
                    self._enqueue(client, envelope(stream, raw) if client.combined else raw, key)
        log.info("fault: %d unknown symbols sent", len(names))

    def _start_stall(self) -> None:
        """Silence ``stall_stream`` on every Binance socket that carries it, and heartbeats on
        every Coinbase socket, for ``stall_seconds``; sockets opened meanwhile are not
        affected, so a client that reconnects heals the stall."""
        if self._model is None:
            return
        victims: list[_Socket] = []
        for family, clients in self._binance.items():
            venue = BINANCE_SPOT if family == SPOT else BINANCE_USDM
            for client in clients:
                if self.stall_stream in client.streams and not client.stalled and not client.cut:
                    victims.append(client)
                    count(self.fault_counts, STALL, venue, self.stall_stream)
        for cb in self._coinbase:
            subscribed = cb.session is not None and HEARTBEATS in cb.session.subscriptions
            if subscribed and not cb.stalled and not cb.cut:
                victims.append(cb)
                count(self.fault_counts, STALL, COINBASE, HEARTBEATS)
        for victim in victims:
            victim.stalled = True
        if victims:
            log.info("fault: %d socket(s) stall for %gs", len(victims), self.stall_seconds)
            self._tasks.append(self._spawn(self._end_stall(victims), "stall"))

    async def _end_stall(self, victims: list[_Socket]) -> None:
        await asyncio.sleep(self.stall_seconds)
        for victim in victims:
            victim.stalled = False

    def _drop_all(self) -> None:
        victims = [s for s in self._sockets if not s.cut]
        for sock in victims:
            self.fault_counts[DROP] += 1
            self._abort(sock)
        if victims:
            log.info("fault: dropped %d socket(s)", len(victims))

    def _abort(self, client: _Socket) -> None:
        """Cut the TCP connection without a close frame, like a network failure."""
        client.cut = True
        transport = client.request.transport
        if transport is not None:
            transport.abort()

    def _send_malformed(self) -> None:
        if self._model is None:
            return  # no market client has connected yet: nobody to send to
        kind = MALFORMED_KINDS[self._malformed_round % len(MALFORMED_KINDS)]
        self._malformed_round += 1
        now = self.now_ms()
        for family in (MARKET, SPOT):
            for client in list(self._binance[family]):
                symbol = self._symbol_of(client)
                price = self._last_price_text(symbol)
                frame = malformed_frame(kind, symbol, price, now, client.combined)
                self._enqueue(client, frame, fault=kind)

    def _last_price_text(self, symbol: str) -> str:
        """The last USDⓈ-M trade price of ``symbol`` as the venue prints it ("1.00" before)."""
        if symbol not in self._last_price:
            return "1.00"
        price, decimals = self._last_price[symbol]
        return f"{price:.{decimals}f}"

    def _symbol_of(self, client: _BinanceClient) -> str:
        """The symbol a malformed frame pretends to be about: one the client watches."""
        for stream in client.streams:
            symbol = stream.split("@", 1)[0].upper()
            if symbol in self.symbols:
                return symbol
        return next(iter(self.symbols))

    def _close_after_flush(self, client: _Socket) -> None:
        if client.cut:
            return
        client.cut = True
        client.closing = True
        if not client.queue.put(None):
            self._abort(client)

    # -- HTTP ------------------------------------------------------------------------------------
    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        response = await self.rest.handle(request)
        if response is not None:
            return response
        if request.method == "GET" and request.path.rstrip("/") == "/coinbase":
            refused = self._refuse(COINBASE)
            return refused if refused is not None else await self._serve_coinbase(request)
        route = _route_of(request.path) if request.method == "GET" else None
        if route is None:
            msg = f"Unknown path {request.method} {request.path}"
            return json_response(404, {"code": -1, "msg": msg})
        family, combined, path_streams = route
        refused = self._refuse(family)
        if refused is not None:
            return refused
        streams = path_streams
        if combined:
            streams = [s for s in request.query.get("streams", "").split("/") if s]
        return await self._serve_binance(request, family, combined, streams)

    def _refuse(self, family: str) -> web.Response | None:
        """451 (Binance's answer to a restricted location, on REST) for a websocket of a dead
        venue, so the client never connects; the scenario clock does not start for it."""
        if family not in self._dead_families:
            return None
        venue = COINBASE if family == COINBASE else BINANCE_SPOT if family == SPOT else BINANCE_USDM
        count(self.fault_counts, DEAD_VENUE, venue, family)
        msg = "Service unavailable from a restricted location (simulated dead venue)"
        return json_response(451, {"code": 0, "msg": msg})

    async def _open(self, request: web.Request) -> web.WebSocketResponse | None:
        # No permessage-deflate: on loopback it saves nothing, and compressing every frame here
        # (and inflating it in the client) cost more CPU than building it.
        ws = web.WebSocketResponse(heartbeat=self.heartbeat, compress=False)
        if not ws.can_prepare(request).ok:
            return None
        await ws.prepare(request)
        return ws

    async def _serve_binance(
        self, request: web.Request, family: str, combined: bool, streams: list[str]
    ) -> web.StreamResponse:
        ws = await self._open(request)
        if ws is None:
            return json_response(400, {"code": -1, "msg": "websocket upgrade expected"})
        client = _BinanceClient(ws, request, family=family, combined=combined)
        client.streams.update(dict.fromkeys(streams))
        self._start_scenario()
        self._binance[client.delivers].add(client)
        self._sockets.add(client)
        writer = asyncio.create_task(self._write_loop(client))
        try:
            async for msg in client.ws:
                if msg.type is WSMsgType.TEXT:
                    reply = client.control(msg.data)
                    if "error" in reply:
                        log.info("bad control message from %s: %.200s", _peer(client), msg.data)
                elif msg.type is WSMsgType.BINARY:
                    reply = _error_reply(_ControlError(3, "Invalid JSON: binary frame"))
                else:
                    continue
                self._enqueue(client, dumps(reply))
        finally:
            self._binance[client.delivers].discard(client)
            await self._finish(client, writer)
        return ws

    async def _serve_coinbase(self, request: web.Request) -> web.StreamResponse:
        ws = await self._open(request)
        if ws is None:
            return json_response(400, {"error": "websocket upgrade expected"})
        self._start_scenario()
        client = _CoinbaseClient(ws, request)
        client.session = CoinbaseSession(
            frozenset(self._market_state().coinbase.products),
            self.fault_counts,
            fault_product=self.fault_product,
        )
        self._coinbase.add(client)
        self._sockets.add(client)
        writer = asyncio.create_task(self._write_loop(client))
        deadline = asyncio.get_running_loop().call_later(
            self.subscribe_timeout, self._subscribe_deadline, client
        )
        try:
            async for msg in client.ws:
                if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
                    self._coinbase_message(client, msg.data)
        finally:
            deadline.cancel()
            self._coinbase.discard(client)
            await self._finish(client, writer)
        return ws

    def _subscribe_deadline(self, client: _CoinbaseClient) -> None:
        if client.session is not None and not client.session.subscribed and not client.cut:
            log.info("coinbase client %s sent no subscribe in time: closing", _peer(client))
            self._close_after_flush(client)

    def _coinbase_message(self, client: _CoinbaseClient, data: str | bytes) -> None:
        session = client.session
        assert session is not None
        try:
            kind, channel, added = session.handle(data)
        except ProtocolError as err:
            self._enqueue(client, coinbase_wire.error_frame(str(err)))
            return
        feed = self._market_state().coinbase
        stamp = _stamp(self.now_ms())
        frames: list[Outgoing] = []
        if kind == "subscribe":
            for product in added:
                wire_channel, events = feed.snapshot(channel, product)
                frames.append(Outgoing(session.frame(wire_channel, stamp, events)))
        frames.append(
            Outgoing(session.frame("subscriptions", stamp, session.subscriptions_events()))
        )
        self._send(client, frames)

    async def _finish(self, client: _Socket, writer: asyncio.Task[None]) -> None:
        """Stop the writer, or on ``stop()`` let it finish the close handshake it started."""
        self._sockets.discard(client)
        if not client.closing:
            writer.cancel()
        await asyncio.wait({writer}, timeout=SHUTDOWN_GRACE_S)
        if not writer.done():
            writer.cancel()
        elif not writer.cancelled() and writer.exception() is not None:
            log.warning("writer to %s failed", _peer(client), exc_info=writer.exception())
        client.done.set()


# A server's websocket text frame (RFC 6455 §5.2): FIN and the text opcode, no mask, the
# payload length in 7 bits, or 126 and 16 bits, or 127 and 64 bits; what aiohttp's
# ``send_str`` writes ahead of the payload, without compression (the sockets have none).
_FIN_TEXT: Final = 0x81
_HEAD_7 = struct.Struct("!BB").pack
_HEAD_16 = struct.Struct("!BBH").pack
_HEAD_64 = struct.Struct("!BBQ").pack


def _text_frame_header(length: int) -> bytes:
    if length < 126:
        return _HEAD_7(_FIN_TEXT, length)
    if length < 65_536:
        return _HEAD_16(_FIN_TEXT, 126, length)
    return _HEAD_64(_FIN_TEXT, 127, length)


def _stamp(event_ms: int) -> str:
    """An envelope timestamp: event time with the wall clock's sub-millisecond digits."""
    return coinbase_wire.rfc3339_ns(event_ms * 1_000_000 + time.time_ns() % 1_000_000)


def _peer(client: _Socket) -> str:
    return str(client.request.remote)


def _log_crash(task: asyncio.Task[None], name: str) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("simulator %s task crashed", name, exc_info=task.exception())


# What `write_config` starts from when there is no config.yaml to extend.
MINIMAL_BASE_CONFIG: dict[str, Any] = {
    "instance": "tapewatch",
    "assets": {
        "BTC": {"binance_spot": "BTCUSDT", "binance_usdm": "BTCUSDT", "coinbase": "BTC-USD"},
        "ETH": {"binance_spot": "ETHUSDT", "binance_usdm": "ETHUSDT", "coinbase": "ETH-USD"},
    },
    "mqtt": {"url": "mqtt://127.0.0.1:1883", "prefix": "tapewatch/v1"},
}


async def serve_forever(
    sim: Simulator, write_config: str | None, base_config: str | Path = "config.yaml"
) -> None:
    """Start ``sim``, optionally write a config pointing at it (``base_config`` with the
    simulator's endpoints), and run until cancelled."""
    await sim.start()
    try:
        if write_config:
            sim.write_config(write_config, base_config)
            log.info("wrote %s", write_config)
        print(
            f"simulator listening on {sim.base_ws} (scenario {sim.scenario}, speed {sim.speed:g})",
            flush=True,
        )
        await asyncio.Event().wait()
    finally:
        await sim.stop()
