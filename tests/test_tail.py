"""``tapewatch tail``: the pure view (state, rendering, plain lines) on hand-built payloads, and
the subscriber against a real Mosquitto with its output on a real OS pipe (not a terminal)."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import io
import os
import re
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiomqtt
import pytest
from rich.console import Console

from monitor.dashboard import PlainLog, TailState, Update, format_age, render
from monitor.messages import MessageBuilder, OutMessage, Topics
from monitor.tail import tail
from signals.baseline import ZScore
from signals.engine import SignalSnapshot
from signals.regimes import Reason, RegimeChange
from streams.tasks import stop_tasks
from tests.conftest import Mosquitto

P = "tapewatch/v1"
SINCE = 1_795_460_414_000  # 2026-11-23 19:00:14 UTC
REGIME = {
    "asset": "BTC",
    "regime": "seller_dominance",
    "previous": "neutral",
    "since": SINCE,
    "description": "Perp takers sell much more than they buy.",
    "reasons": [{"signal": "taker_buy_sell_ratio", "value": 0.7612, "op": "<", "threshold": 0.8}],
    "session": "4c1d0b9e2f7a",
    "ts_event": SINCE,
    "ts_pub": SINCE + 4,
    "seq": 2,
}
SIGNALS = {
    "asset": "BTC",
    "ts_event": SINCE + 723_000,
    "ts_pub": SINCE + 723_003,
    "seq": 724,
    "signals": {
        "taker_imbalance": {
            "value": -0.1353,
            "unit": "ratio",
            "z": -2.41,
            "n_obs": 129600,
            "warmup": False,
        },
        "taker_buy_sell_ratio": {"value": 0.7616, "unit": "ratio"},
        "net_taker_usd": {
            "value": -12_345_678.0,
            "unit": "USD",
            "z": -3.2,
            "n_obs": 129600,
            "warmup": False,
        },
        "coinbase_premium_pct": {
            "value": None,
            "unit": "percent",
            "z": None,
            "n_obs": 0,
            "warmup": True,
        },
        "funding_rate": {
            "value": 0.0000873,
            "unit": "fraction",
            "z": -1.92,
            "n_obs": 4312,
            "warmup": True,
        },
        "open_interest_usd": {"value": None, "unit": "USD"},
        "liquidations_usd": {
            "value": 0.0,
            "unit": "USD",
            "z": -0.1,
            "n_obs": 129600,
            "warmup": False,
        },
        "price": {"value": 78001.3, "unit": "USD"},
        # perp_spot_volume_ratio, oi_change_pct_24h, depth_usd_1pct: not in the message at all
    },
}


def text_of(state: TailState, now_ms: int, width: int = 120) -> str:
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(render(state, now_ms))
    return console.export_text()


def row(text: str, signal: str) -> str:
    """The rendered line of ``signal`` (the first line holding its name as a word)."""
    for line in text.splitlines():
        if re.search(rf"(?<![\w]){signal}(?![\w])", line):
            return line
    raise AssertionError(f"{signal} not rendered:\n{text}")


def btc_state() -> TailState:
    state = TailState(P)
    assert state.ingest(f"{P}/BTC/regime", REGIME) == Update("regime", "BTC")
    assert state.ingest(f"{P}/BTC/signals", SIGNALS) == Update("signals", "BTC")
    return state


# -- pure: state and rendering --------------------------------------------------------------
@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (None, "—"),
        (-5_000, "0s"),
        (0, "0s"),
        (59_999, "59s"),
        (60_000, "1m 00s"),
        (723_000, "12m 03s"),
        (3 * 3600_000 + 7 * 60_000 + 59_000, "3h 07m"),
        (2 * 86400_000 + 4 * 3600_000, "2d 04h"),
    ],
)
def test_format_age(ms: int | None, text: str) -> None:
    assert format_age(ms) == text


def test_state_keeps_regime_reasons_and_signals() -> None:
    state = btc_state()
    btc = state.assets["BTC"]
    assert (btc.regime, btc.since, btc.previous) == ("seller_dominance", SINCE, "neutral")
    assert btc.reasons == REGIME["reasons"]
    funding = btc.signals["funding_rate"]
    assert (funding.value, funding.z, funding.n_obs, funding.warmup) == (
        0.0000873,
        -1.92,
        4312,
        True,
    )
    assert btc.signals["coinbase_premium_pct"].value is None
    assert btc.signals["liquidations_usd"].value == 0.0
    assert btc.signals_ts == SINCE + 723_000


def test_render_shows_regime_age_previous_and_reasons() -> None:
    text = text_of(btc_state(), SINCE + 723_500)
    head = row(text, "seller_dominance")
    assert "for 12m 03s" in head
    assert "(was neutral)" in head
    assert "taker_buy_sell_ratio 0.7612 < 0.8" in text
    assert "signals at 19:12:17 (0s ago)" in text


def test_render_shows_z_and_marks_warmup() -> None:
    text = text_of(btc_state(), SINCE + 723_500)
    assert "-0.135" in row(text, "taker_imbalance")
    assert "z -2.41" in row(text, "taker_imbalance")
    assert "~" not in row(text, "taker_imbalance")
    assert "-$12.35M" in row(text, "net_taker_usd")
    assert "z -3.20" in row(text, "net_taker_usd")
    assert "+0.0087%" in row(text, "funding_rate")
    assert "z -1.92~" in row(text, "funding_rate")  # baseline still warming up
    assert "z —" in row(text, "coinbase_premium_pct")  # z-scored, not enough history yet
    assert "z" not in row(text, "price").replace("price", "")  # not z-scored: no z at all
    assert "78,001.3" in row(text, "price")


def test_render_shows_missing_as_a_dash_never_zero() -> None:
    text = text_of(btc_state(), SINCE + 723_500)
    for name in (
        "coinbase_premium_pct",  # null value
        "open_interest_usd",  # null value, not z-scored
        "perp_spot_volume_ratio",  # absent from the message
        "oi_change_pct_24h",
        "depth_usd_1pct",
    ):
        line = row(text, name)
        assert "—" in line, line
        assert not re.search(r"(?<![\w.])\$?0(?![\w.])", line.replace(name, "")), line
    # a real zero is a zero
    assert "$0" in row(text, "liquidations_usd")


def test_render_of_an_asset_without_signals_and_of_an_empty_state() -> None:
    assert "waiting for tapewatch messages on tapewatch/v1/#" in text_of(TailState(P), SINCE)
    state = TailState(P)
    state.ingest(
        f"{P}/ETH/regime",
        {**REGIME, "asset": "ETH", "regime": "neutral", "previous": None, "reasons": []},
    )
    text = text_of(state, SINCE + 65_000)
    assert "neutral  for 1m 05s" in text
    assert "was" not in text
    assert "signals —" in text
    assert "—" in row(text, "taker_imbalance")


def test_ages_run_on_event_time_when_it_is_ahead_of_the_wall_clock() -> None:
    # A simulator at --speed 4 runs event time ahead of the wall clock; ages must not stick at 0.
    state = btc_state()
    assert "for 12m 03s" in text_of(state, SINCE)  # wall clock behind the latest event time
    assert "for 15m 00s" in text_of(state, SINCE + 900_000)  # wall clock ahead


def test_events_update_the_regime_but_never_take_it_back() -> None:
    state = btc_state()
    old = {**REGIME, "regime": "neutral", "previous": "buyer_dominance", "since": SINCE - 60_000}
    assert state.ingest(f"{P}/BTC/events", {**old, "id": "s:BTC:1"}) == Update("events", "BTC")
    assert state.assets["BTC"].regime == "seller_dominance"
    new = {
        **REGIME,
        "regime": "neutral",
        "previous": "seller_dominance",
        "since": SINCE + 60_000,
        "reasons": [
            {"signal": "taker_buy_sell_ratio", "value": 0.93, "op": ">=", "threshold": 0.9}
        ],
    }
    state.ingest(f"{P}/BTC/events", {**new, "id": "s:BTC:2"})
    btc = state.assets["BTC"]
    assert (btc.regime, btc.previous, btc.since) == ("neutral", "seller_dominance", SINCE + 60_000)
    assert "taker_buy_sell_ratio 0.93 >= 0.9" in text_of(state, SINCE + 723_500)


def test_state_ignores_what_it_does_not_show() -> None:
    state = TailState(P, asset="BTC")
    assert state.ingest("other/v1/BTC/regime", REGIME) is None
    assert state.ingest(f"{P}/cmd/rebirth", {}) is None
    assert state.ingest(f"{P}/BTC/unknown", {}) is None
    assert state.ingest(f"{P}/BTC/regime", [1, 2]) is None
    assert state.ingest(f"{P}/ETH/regime", {**REGIME, "asset": "ETH"}) is None  # filtered
    # garbage inside a valid message degrades to missing, never to a crash or a zero
    state.ingest(
        f"{P}/BTC/signals",
        {"ts_event": "x", "signals": {"price": {"value": "1"}, "funding_rate": 3}},
    )
    assert state.assets["BTC"].signals["price"].value is None
    assert "—" in row(text_of(state, SINCE), "price")
    assert set(state.assets) == {"BTC"}


def test_status_and_health_line() -> None:
    state = btc_state()
    state.ingest(
        f"{P}/status/tapewatch",
        {
            "state": "online",
            "instance": "tapewatch",
            "session": "4c1d0b9e2f7a",
            "version": "0.1.0",
            "started": SINCE - 3_600_000,
        },
    )
    streams = {"a": {"connected": True}, "b": {"connected": True}, "c": {"connected": False}}
    state.ingest(
        f"{P}/health/tapewatch",
        {
            "instance": "tapewatch",
            "ts_pub": SINCE,
            "streams": streams,
            "msgs_per_s": 143.2,
            "outbox_depth": 0,
        },
    )
    line = row(text_of(state, SINCE + 20_000, width=160), "tapewatch online")
    assert "session 4c1d0b9e2f7a" in line
    assert "up 1h 00m" in line
    assert "streams 2/3 connected" in line
    assert "143 msg/s" in line
    assert "outbox 0" in line
    state.ingest(f"{P}/status/tapewatch", {"state": "offline", "session": "4c1d0b9e2f7a"})
    line = row(text_of(state, SINCE + 60_000, width=160), "tapewatch offline")
    assert "(health 1m 00s old)" in line


def test_plain_lines_one_per_change_and_signals_at_most_every_n_seconds() -> None:
    state = TailState(P)
    log = PlainLog(signals_every_s=10)

    def feed(topic: str, payload: dict[str, Any], now_ms: int) -> list[str]:
        return log.lines(state, state.ingest(f"{P}/{topic}", payload), now_ms)

    status = {"state": "online", "session": "4c1d0b9e2f7a"}
    assert feed("status/demo", status, 0) == ["[status]  demo online (session 4c1d0b9e2f7a)"]
    assert feed("status/demo", status, 1) == []  # a rebirth repeats it: not a change
    neutral = {
        **REGIME,
        "regime": "neutral",
        "previous": None,
        "since": SINCE - 10_000,
        "reasons": [],
    }
    assert feed("BTC/regime", neutral, 0) == ["[regime]  BTC neutral since 19:00:04"]
    assert feed("BTC/regime", REGIME, 0) == [
        "[regime]  BTC seller_dominance (was neutral) since 19:00:14 — "
        "taker_buy_sell_ratio 0.7612 < 0.8"
    ]
    assert feed("BTC/events", {**REGIME, "id": "s:BTC:1"}, 0) == []  # the same change again
    first = feed("BTC/signals", SIGNALS, 1_000)
    assert len(first) == 1
    line = first[0]
    assert line.startswith("[signals] BTC 19:12:17 taker_imbalance=-0.135(z=-2.41) ")
    assert "funding_rate=+0.0087%(z=-1.92~)" in line
    assert "coinbase_premium_pct=—(z=—)" in line
    assert "open_interest_usd=— " in line
    assert "liquidations_usd=$0(z=-0.10)" in line
    assert "perp_spot_volume_ratio" not in line  # absent from the message
    assert feed("BTC/signals", SIGNALS, 10_999) == []
    assert len(feed("BTC/signals", SIGNALS, 11_000)) == 1
    eth = {**SIGNALS, "asset": "ETH"}
    assert feed("ETH/signals", eth, 11_001)[0].startswith("[signals] ETH ")  # per asset
    assert feed("health/demo", {"ts_pub": 1}, 12_000) == []


# -- I/O: against a real Mosquitto, output on a real pipe ------------------------------------
class PipeOutput:
    """An OS pipe as tail's output stream (not a terminal). A thread drains it, so the writer
    never blocks; ``wait_for`` waits, bounded, until the text so far satisfies a condition."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        self.stream = open(write_fd, "w", encoding="utf-8")  # noqa: SIM115
        self._reader = threading.Thread(target=self._drain, args=(read_fd,), daemon=True)
        self._reader.start()
        self.text = ""
        self._arrived = asyncio.Event()

    def _drain(self, fd: int) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")()
        with open(fd, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                self._loop.call_soon_threadsafe(self._append, decoder.decode(chunk))

    def _append(self, text: str) -> None:
        self.text += text
        self._arrived.set()

    async def wait_for(self, predicate: Callable[[str], bool], timeout: float = 10.0) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate(self.text):
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            raise AssertionError(f"tail output so far:\n{self.text}") from None

    def close(self) -> None:
        self.stream.close()
        self._reader.join(5)


@pytest.fixture
async def pipe() -> AsyncIterator[PipeOutput]:
    out = PipeOutput()
    yield out
    out.close()


async def publish(broker: Mosquitto, *messages: OutMessage) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        for m in messages:  # QoS 1, one after the other: the broker keeps their order
            await client.publish(m.topic, m.payload_bytes(), qos=1, retain=m.retain)


def contract(prefix: str) -> tuple[MessageBuilder, list[OutMessage]]:
    """Retained status, neutral regime and one signals message, built by the daemon's own
    MessageBuilder so the test reads exactly what a daemon writes."""
    builder = MessageBuilder(Topics(prefix, "tw"), "sess01", "0.1.0", SINCE - 60_000)
    neutral = RegimeChange("BTC", "neutral", None, SINCE - 10_000, (), "no rule holds")
    snap = SignalSnapshot(
        "BTC",
        SINCE,
        {"taker_imbalance": -0.1353, "taker_buy_sell_ratio": 0.7616, "funding_rate": None},
        {"taker_imbalance": ZScore(-2.41, 4312, True), "funding_rate": ZScore(None, 3, True)},
    )
    return builder, [
        builder.status("online"),
        *builder.regime(neutral, SINCE - 9_990),
        builder.signals(snap, SINCE + 3, 60),
    ]


def seller_dominance(builder: MessageBuilder) -> list[OutMessage]:
    """The retained regime message and its event (the same change, twice)."""
    reasons = (Reason("taker_buy_sell_ratio", 0.7612, "<", 0.8),)
    change = RegimeChange("BTC", "seller_dominance", "neutral", SINCE + 4_000, reasons, "sellers")
    return builder.regime(change, SINCE + 4_004)


@contextlib.asynccontextmanager
async def running(task: asyncio.Task[None]) -> AsyncIterator[asyncio.Task[None]]:
    try:
        yield task
    finally:
        assert await stop_tasks([task]) == []
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error


@pytest.mark.parametrize("live", [False, None], ids=["plain", "auto-on-a-pipe"])
async def test_tail_prints_plain_lines_from_the_broker(
    mosquitto: Mosquitto, prefix: str, pipe: PipeOutput, live: bool | None
) -> None:
    builder, retained = contract(prefix)
    await publish(mosquitto, *retained)
    counts: Counter[str] = Counter()
    ready = asyncio.Event()
    task = asyncio.create_task(
        tail(
            mosquitto.host,
            mosquitto.port,
            prefix,
            counts=counts,
            live=live,
            out=pipe.stream,
            ready=ready,
        )
    )
    async with running(task):
        # Retained messages come per subscription, so in no fixed order across topics.
        await pipe.wait_for(
            lambda t: all(s in t for s in ("[signals] BTC", "[regime]  BTC", "[status]  tw"))
        )
        assert "[status]  tw online (session sess01)\n" in pipe.text
        assert "[regime]  BTC neutral since 19:00:04\n" in pipe.text
        assert (
            "[signals] BTC 19:00:14 taker_imbalance=-0.135(z=-2.41~) taker_buy_sell_ratio=0.762 "
            "funding_rate=—(z=—)\n"
        ) in pipe.text
        assert "\x1b[" not in pipe.text  # no terminal control codes on a pipe

        # A live change arrives twice (retained regime + event); then a status change marks
        # the end: each publish awaits its PUBACK, and Mosquitto forwards them in that order.
        await asyncio.wait_for(ready.wait(), 10)
        await publish(mosquitto, *seller_dominance(builder), builder.status("offline"))
        await pipe.wait_for(lambda t: "[status]  tw offline" in t)
        expected = (
            "[regime]  BTC seller_dominance (was neutral) since 19:00:18 — "
            "taker_buy_sell_ratio 0.7612 < 0.8\n"
        )
        assert pipe.text.count(expected) == 1, pipe.text
        assert pipe.text.index(expected) < pipe.text.index("[status]  tw offline")
    assert counts == Counter(status=2, regime=2, events=1, signals=1)


async def test_tail_live_view_redraws_in_place(
    mosquitto: Mosquitto, prefix: str, pipe: PipeOutput
) -> None:
    builder, retained = contract(prefix)
    await publish(mosquitto, *retained)
    ready = asyncio.Event()
    task = asyncio.create_task(
        tail(mosquitto.host, mosquitto.port, prefix, live=True, out=pipe.stream, ready=ready)
    )

    def shown(text: str) -> str:
        """The latest frame, without terminal control codes."""
        plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
        return plain[plain.rfind("tapewatch tail ·") :]

    async with running(task):
        await pipe.wait_for(
            lambda t: all(s in shown(t) for s in ("signals at 19:00:14", "neutral", "tw online"))
        )
        frame = shown(pipe.text)
        assert "z -2.41~" in row(frame, "taker_imbalance")
        assert "—" in row(frame, "funding_rate")
        assert "tw online" in frame
        await asyncio.wait_for(ready.wait(), 10)
        await publish(mosquitto, *seller_dominance(builder))
        await pipe.wait_for(lambda t: "taker_buy_sell_ratio 0.7612 < 0.8" in shown(t))
        assert "(was neutral)" in row(shown(pipe.text), "seller_dominance")
    assert "\x1b[" in pipe.text  # cursor movements: the view is redrawn, not appended
    # after the stop, the last frame stays on screen
    assert "seller_dominance" in shown(pipe.text)


def test_payloads_used_here_match_the_contract() -> None:
    """The hand-built payloads above have the shape MessageBuilder gives (README "MQTT topics")."""
    _, msgs = contract(P)
    regime = next(m.payload for m in msgs if m.topic.endswith("/regime"))
    signals = next(m.payload for m in msgs if m.topic.endswith("/signals"))
    assert set(REGIME) == set(regime)
    assert set(SIGNALS) == set(signals)
    assert set(SIGNALS["signals"]["funding_rate"]) == set(signals["signals"]["taker_imbalance"])
