"""The ``hostile`` fault: well-formed frames with implausible content, each sent as an EXTRA
frame while the real market flows on unchanged (pure: payloads in, payloads out).

A daemon that rejects every hostile frame computes exactly the numbers it computes without
them; one that believes any of them publishes something false. Kinds (``HOSTILE_KINDS``, the
order the schedule injects them in):

- ``future_ts``: an ``aggTrade`` of the fault symbol with ``E`` and ``T`` ten years ahead;
- ``id_jump`` / ``id_jump50``: an ``aggTrade`` whose id is 10**9 / 50 ahead of the real trade it
  follows, with that trade's time and price (the real ids go on as if nothing happened);
- ``absurd_price`` / ``absurd_price150``: an ``aggTrade`` with price and quantity 1e200 / 1e150
  (notional not finite / 1e300), normal time;
- ``unknown_symbol``: a burst of ``aggTrade`` and ``depthUpdate`` frames for symbols nobody
  subscribed (``FAKE0001USDT``, ...), built by the server on every Binance socket that carries
  that kind of stream.

The trade kinds go on the fault symbol's ``@aggTrade`` of both Binance venues (spot and
USDⓈ-M, like ``duplicate`` and ``reorder``), so one of them can be dead and the other still
carries them; the time and price kinds also go on Coinbase ``market_trades`` of the fault
product, as a one-trade frame with the connection's next ``sequence_num`` (no sequence gap).

Ids of the extra trades: the real stream owns ``a`` (and ``f``/``l``), so a hostile trade never
takes an id the real stream has sent or will send next: reusing the next id would shift the real
sequence (the real trade would then look like a duplicate), and reusing a past one would let a
daemon drop it as a duplicate without ever looking at its time or price. Each kind therefore
has its own offset from the real trade it follows (``ID_OFFSETS``): 10**9 for the id jump, and
2, 3 and 4 * 10**9 for future_ts and the two absurd prices, ids the real stream does not reach in
any run (10**9 trades at 20 a second are 1.6 years of event time), distinct so that an id in a
log says which injection it was. ``id_jump50`` is the one exception by design: its id is a real
id 50 trades ahead, which is what makes it a test of "a jump is not believed until confirmed".
So a future_ts or absurd-price frame is also an id jump: a daemon's per-kind counters match the
injected counts only if it judges time and price before trade-id continuity (which is also what
keeps a rejected frame from touching any state).
None of these frames enters the simulator's trade history, so REST ``aggTrades`` never confirms
them (for ``id_jump50`` REST serves the real trade with that id once it has happened).

Counter keys (``Simulator.fault_counts``), counted when a frame is written to a socket (so a
client with two sockets on the stream counts twice, like ``malformed``): ``hostile``,
``hostile:<kind>`` and ``hostile:<venue>:<kind>``, e.g. ``hostile:binance-usdm:id_jump``;
``unknown_symbol`` counts frames (an aggTrade and a depthUpdate per fake symbol on a spot socket
carrying both), not symbols.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Final

import orjson

from simulator import coinbase_wire
from simulator.binance_wire import (
    DEPTH_STREAM,
    agg_trade_payload,
    depth_payload,
    dumps,
)
from simulator.book_model import Level
from simulator.faults import HOSTILE
from simulator.market import DepthTick, TradeTick, VenueSpec
from streams.events import COINBASE
from streams.units import DAY_MS

Json = dict[str, Any]

FUTURE_TS: Final = "future_ts"
ID_JUMP: Final = "id_jump"
ID_JUMP50: Final = "id_jump50"
ABSURD_PRICE: Final = "absurd_price"
ABSURD_PRICE150: Final = "absurd_price150"
UNKNOWN_SYMBOL: Final = "unknown_symbol"
# Extra trades of the fault symbol, one after a real trade frame each.
TRADE_KINDS: Final = (FUTURE_TS, ID_JUMP, ID_JUMP50, ABSURD_PRICE, ABSURD_PRICE150)
HOSTILE_KINDS: Final = (*TRADE_KINDS, UNKNOWN_SYMBOL)
# Coinbase market_trades carry the time and price kinds (its trade ids are not the subject).
COINBASE_KINDS: Final = frozenset({FUTURE_TS, ABSURD_PRICE, ABSURD_PRICE150})

TEN_YEARS_MS: Final = 3653 * DAY_MS  # 10 x 365.25 days, rounded up to whole days
ID_OFFSETS: Final = {
    ID_JUMP: 10**9,
    ID_JUMP50: 50,
    FUTURE_TS: 2 * 10**9,
    ABSURD_PRICE: 3 * 10**9,
    ABSURD_PRICE150: 4 * 10**9,
}
ABSURD_VALUES: Final = {ABSURD_PRICE: 1e200, ABSURD_PRICE150: 1e150}
FAKE_PREFIX: Final = "FAKE"


def tag(venue: str, kind: str) -> str:
    """The counter key of one hostile frame (and the tag the server's writer counts it by)."""
    return f"{HOSTILE}:{venue}:{kind}"


def fake_symbols(start: int, n: int) -> list[str]:
    """``FAKE0001USDT`` ... : ``n`` symbols nobody subscribes, numbered from ``start + 1``."""
    return [f"{FAKE_PREFIX}{i:04d}USDT" for i in range(start + 1, start + n + 1)]


def _decimals(text: str) -> int:
    return len(text.partition(".")[2])


def _absurd_text(value: float, like: str) -> str:
    """``value`` printed as Binance prints the field ``like`` (fixed point, same decimals), so
    the frame is well-formed: only its size is wrong."""
    return f"{value:.{_decimals(like)}f}"


def hostile_agg_trade(kind: str, real: Json) -> Json:
    """The extra ``aggTrade`` payload of ``kind`` that follows the real payload ``real``."""
    if kind not in ID_OFFSETS:
        raise ValueError(f"not a hostile trade kind: {kind!r}")
    out = dict(real)  # same keys in the same order: spot keeps M, USDⓈ-M keeps nq
    offset = ID_OFFSETS[kind]
    for key in ("a", "f", "l"):
        out[key] = real[key] + offset
    if kind == FUTURE_TS:
        out["E"] = real["E"] + TEN_YEARS_MS
        out["T"] = real["T"] + TEN_YEARS_MS
    elif kind in ABSURD_VALUES:
        value = ABSURD_VALUES[kind]
        out["p"] = _absurd_text(value, real["p"])
        out["q"] = _absurd_text(value, real["q"])
        if "nq" in out:
            out["nq"] = out["q"]
    return out


def hostile_agg_trade_text(kind: str, real_raw: str) -> str:
    """``hostile_agg_trade`` on an encoded payload."""
    return dumps(hostile_agg_trade(kind, orjson.loads(real_raw)))


def _rfc3339_to_ms(text: str) -> int:
    return round(datetime.fromisoformat(text).timestamp() * 1000)


def hostile_market_trades(kind: str, real_events: str) -> str:
    """Encoded ``market_trades`` events holding one extra Coinbase trade of ``kind``, made from
    the newest trade of a real batch (``real_events``, as the feed encoded it). Coinbase prints
    sizes trimmed, so the absurd values are printed the same way."""
    if kind not in COINBASE_KINDS:
        raise ValueError(f"not a hostile Coinbase kind: {kind!r}")
    newest = dict(orjson.loads(real_events)[0]["trades"][0])
    newest["trade_id"] = str(int(newest["trade_id"]) + ID_OFFSETS[kind])
    if kind == FUTURE_TS:
        newest["time"] = coinbase_wire.rfc3339_ms(_rfc3339_to_ms(newest["time"]) + TEN_YEARS_MS)
    else:
        value = ABSURD_VALUES[kind]
        newest["price"] = coinbase_wire.trimmed(value, _decimals(newest["price"]))
        newest["size"] = coinbase_wire.trimmed(value, _decimals(newest["size"]))
    return dumps([{"type": "update", "trades": [newest]}])


def unknown_symbol_frames(
    spec: VenueSpec,
    symbols: Iterable[str],
    now_ms: int,
    bid: Level,
    ask: Level,
    first_id: int,
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(aggTrade frames, depthUpdate frames)`` as ``(stream, payload)`` for ``symbols`` on
    ``spec``'s venue, priced like ``spec``'s symbol (one trade at the bid, a one-level book);
    the exact wire shapes of that venue, only the symbol is one nobody asked for."""
    trades: list[tuple[str, str]] = []
    depths: list[tuple[str, str]] = []
    price = spec.book.price(bid[0])
    qty = spec.book.qty(bid[1])
    for i, symbol in enumerate(symbols):
        uid = first_id + i
        base = symbol.lower()
        trade = TradeTick(spec.venue, symbol, now_ms, now_ms, uid, uid, uid, price, qty, True)
        trades.append((f"{base}@aggTrade", dumps(agg_trade_payload(trade, spec))))
        depth = DepthTick(spec.venue, symbol, now_ms, uid, uid, uid - 1, (bid,), (ask,))
        depths.append((f"{base}@{DEPTH_STREAM}", dumps(depth_payload(depth, spec))))
    return trades, depths


class HostileTrades:
    """The hostile trade kinds armed on one venue, each sent once, after the next real trade
    frame of the fault symbol that somebody reads (so every counted injection reached a client
    and is followed by the real trades). Several armed kinds go out one per real trade, in the
    order they were armed."""

    def __init__(self, venue: str, trade_stream: str) -> None:
        self.venue = venue
        self.trade_stream = trade_stream
        self.pending: deque[str] = deque()
        self.kinds = COINBASE_KINDS if venue == COINBASE else frozenset(TRADE_KINDS)

    def arm(self, kind: str) -> None:
        """Arm ``kind`` unless this venue does not carry it or it already waits."""
        if kind in self.kinds and kind not in self.pending:
            self.pending.append(kind)

    def take(self, stream: str, subscribed: bool) -> str | None:
        """The kind to send after this real frame of ``stream``, if any."""
        if stream != self.trade_stream or not subscribed or not self.pending:
            return None
        return self.pending.popleft()
