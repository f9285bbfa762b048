"""Per-asset signal engine: normalized events in, signal snapshots out, on the event-time clock.

The engine never reads the wall clock. Time advances only with the events it is fed, and a
snapshot of every asset is taken each time event time crosses a multiple of the publish
interval; the snapshot at boundary ``B`` reflects exactly the events with ``ts_event < B``
that had arrived by then. This is what makes a replay give the same numbers as the live session.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from signals.backfill import (
    HISTORY_BUCKET_MS,
    OI_STALE_MS,
    AssetHistory,
    Samples,
    baseline_samples,
    history_rows,
    volume_rows,
)
from signals.baseline import Baseline, ZScore
from signals.catalogue import Z_ALIASES, Z_SCORED
from signals.window import BucketWindow
from streams.events import (
    BINANCE_SPOT,
    BINANCE_USDM,
    BUY,
    COINBASE,
    BookTicker,
    DepthDiff,
    DepthSnapshot,
    Event,
    FeedGap,
    Heartbeat,
    Liquidation,
    LongShortRatio,
    MarkPrice,
    OpenInterest,
    Trade,
)
from streams.units import DAY_MS, HOUR_MS, MINUTE_MS, SECOND_MS

# Funding changes slowly, but a mark price older than this means the markPrice stream stopped:
# report funding as missing rather than a frozen number.
MARK_STALE_MS = 30 * SECOND_MS

# A flow or liquidation window's running totals drift (signals/window.py): a channel whose every
# value has left the window keeps a rounding residue of about ±1e-12 USD instead of 0, and a
# window of buyers only would then publish a buy/sell ratio of 1e17 (or a negative sell share).
# No trade is worth less than a millionth of a dollar, so a total below that is 0.
FLOW_RESIDUE_USD = 1e-6

# Funding is paid three times a day on most Binance perps.
FUNDINGS_PER_YEAR = 365 * 3

# The Coinbase premium compares two last-trade prices; a price older than this is no longer
# "the price now" and the difference would measure time, not venues. The default of the config
# key signals.premium_max_age.
PREMIUM_STALE_MS = 10 * SECOND_MS

# The USDT-adjusted premium converts Binance's USDT price to USD at the latest USDT-USD trade.
# That rate is a slow conversion factor, not one of the two prices being compared, so it may be
# older than PREMIUM_STALE_MS: USDT/USD moves well under a basis point in a minute, so a rate up
# to a minute old shifts the adjusted premium by less than 0.01 % (premiums worth quoting are
# 0.05 % and more). A liquid USDT-USD book trades several times a minute; a minute without a
# trade means its feed has stopped, and the adjusted signals go missing rather than silently
# reverting to 1 USDT = 1 USD.
USDT_STALE_MS = MINUTE_MS

# OI_STALE_MS and HISTORY_BUCKET_MS live in signals/backfill.py, which applies them to history
# too: open interest is polled every few seconds, so older than OI_STALE_MS the poller has
# stopped; the 1 h / 24 h / 7 d changes look back in HISTORY_BUCKET_MS (5-minute) buckets.

# `price` is the last Binance spot trade; a minute without a trade means the feed is down.
PRICE_STALE_MS = MINUTE_MS

# The history behind those changes spans 8 days (a week back, plus a day).
HISTORY_SPAN_MS = 8 * DAY_MS
HISTORY_KEY = "_history"  # its name in checkpoints (signal names never start with "_")

# Long/short rows describe 5-minute periods, timestamped at the period's end and polled every
# `ratios_poll` [5 m]: three periods without a new row means the poller has stopped.
LONG_SHORT_STALE_MS = 15 * MINUTE_MS

# The volume window spans a day: one-minute buckets keep it at 1,440 slots per asset.
VOLUME_BUCKET_MS = MINUTE_MS
DEFAULT_VOLUME_WINDOW_MS = DAY_MS

# Depth band of the depth signals, percent of mid on each side.
DEPTH_BAND_PCT = 1.0

# (venue, symbol) -> (bid, ask) resting notional within DEPTH_BAND_PCT of mid, or None when the
# book is not synced. Injected so that signals never depends on streams.book.
DepthProvider = Callable[[str, str], tuple[float, float] | None]

FLOW_VENUES = (BINANCE_USDM, BINANCE_SPOT, COINBASE)

# Coverage comes from data received, never from the clock. Besides trades, these events arrive
# on the socket that carries a venue's trades, so hearing one proves that trade stream alive
# even when nothing trades: USDⓈ-M trades share /market with markPrice@1s and forceOrder (its
# books are on another socket, /public, and prove nothing); Binance spot and Coinbase carry
# books, tickers (and Coinbase heartbeats) on the trade socket. Binance's DepthSnapshot comes
# from REST and proves nothing either.
_PROVES_TRADE_SOCKET: frozenset[tuple[str, type]] = frozenset(
    {
        (BINANCE_SPOT, DepthDiff),
        (BINANCE_SPOT, BookTicker),
        (COINBASE, DepthDiff),
        (COINBASE, DepthSnapshot),
        (COINBASE, BookTicker),
        (COINBASE, Heartbeat),
    }
)


@dataclass(frozen=True, slots=True)
class BaselineSpec:
    """How the z-scored signals are baselined (see signals/baseline.py)."""

    span_ms: int
    bucket_ms: int
    min_obs: int
    robust: bool = False


@dataclass(frozen=True, slots=True)
class SignalSnapshot:
    asset: str
    ts_event: int  # the publish boundary, ms
    values: dict[str, float | None]  # None = missing (no data), never a made-up zero
    z: dict[str, ZScore] = field(default_factory=dict)  # for the Z_SCORED signals

    def lookup(self) -> dict[str, float | None]:
        """Every name a regime rule may use: values, ``<signal>_z`` and the seeds' aliases."""
        out = dict(self.values)
        out.update({f"{name}_z": score.z for name, score in self.z.items()})
        out.update({alias: out.get(target) for alias, target in Z_ALIASES.items()})
        return out


@dataclass(slots=True)
class RefreshBudget:
    """How many more baseline recomputes this tick may do."""

    left: int

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


@dataclass(frozen=True, slots=True)
class _ClosedBuckets:
    """Means of the 5-minute history buckets an hour, a day and a week back, and the highest
    mean price of the closed buckets of the last 24 h (None: no data there)."""

    oi_1h: float | None
    oi_24h: float | None
    oi_7d: float | None
    price_1h: float | None
    price_24h: float | None
    high_24h: float | None


class AssetSignals:
    """The rolling state of one asset."""

    _BUY, _SELL = 0, 1  # channels of a flow window: taker buy / taker sell notional
    _PERP, _SPOT = 0, 1  # channels of the volume window: quote volume per Binance venue
    _LONG, _SHORT = 0, 1  # channels of the liquidation window: longs / shorts liquidated

    def __init__(
        self,
        asset: str,
        symbols: Mapping[str, str],
        flow_window_ms: int,
        bucket_ms: int,
        flow_min_coverage: float,
        volume_window_ms: int = DEFAULT_VOLUME_WINDOW_MS,
        depth: DepthProvider | None = None,
        baseline: BaselineSpec | None = None,
        silence_ms: int | None = None,
        premium_stale_ms: int = PREMIUM_STALE_MS,
    ) -> None:
        """``silence_ms``: a venue whose trade socket was not heard from for this long (event
        time) is down, and the stretch since it was last heard is marked missing in its
        windows; None: only explicit ``FeedGap``s mark anything missing.
        ``premium_stale_ms``: the premium's last trade prices may be at most this old."""
        self.asset = asset
        self.baselines = (
            {
                name: Baseline(
                    baseline.span_ms, baseline.bucket_ms, baseline.min_obs, baseline.robust
                )
                for name in Z_SCORED
            }
            if baseline is not None
            else {}
        )
        self.symbols = dict(symbols)  # venue -> venue symbol
        # One flow window per configured venue: a gap on one venue must not blank the others.
        self.flow = {
            venue: BucketWindow(flow_window_ms, bucket_ms, channels=2)
            for venue in FLOW_VENUES
            if venue in self.symbols
        }
        # The existing perp signals read this window even for an asset without a perp symbol
        # (they then stay None), so it always exists.
        self.perp_flow = self.flow.setdefault(
            BINANCE_USDM, BucketWindow(flow_window_ms, bucket_ms, channels=2)
        )
        # Perp and spot volume share one window: a gap on either venue drops the bucket from
        # both sums, so the ratio always compares the same minutes.
        self.volume = BucketWindow(volume_window_ms, VOLUME_BUCKET_MS, channels=2)
        self.liquidations = BucketWindow(flow_window_ms, bucket_ms, channels=2)
        self.flow_min_coverage = flow_min_coverage
        self.depth = depth
        self.mark: MarkPrice | None = None
        self.last_trade: dict[str, Trade] = {}  # venue -> latest trade by event time
        self.open_interest: OpenInterest | None = None
        # Open interest (USD) and price per 5-minute bucket over 8 days, for 24 h / 7 d changes:
        # channels (oi sum, oi samples, price sum, price samples).
        self.history = BucketWindow(HISTORY_SPAN_MS, HISTORY_BUCKET_MS, channels=4)
        self.long_short: LongShortRatio | None = None
        self.silence_ms = silence_ms
        self.premium_stale_ms = premium_stale_ms
        self.heard_ms: dict[str, int] = {}  # venue -> event time its trade socket last spoke
        self._silence_marked: dict[str, int] = {}  # venue -> marked missing up to here
        self._started_ms: int | None = None  # the first snapshot's boundary
        self._closed: _ClosedBuckets | None = None  # see _closed_buckets
        self._closed_key: tuple[BucketWindow, int] | None = None

    def _venue_windows(self, venue: str) -> list[BucketWindow]:
        """The windows a venue's trade socket feeds."""
        windows = [self.flow[venue]] if venue in self.flow else []
        if venue in (BINANCE_USDM, BINANCE_SPOT):
            windows.append(self.volume)
        if venue == BINANCE_USDM:
            windows.append(self.liquidations)
        return windows

    def heard(self, venue: str, ts_ms: int) -> None:
        """The socket carrying ``venue``'s trades delivered something at ``ts_ms``."""
        last = self.heard_ms.get(venue)
        if last is None:
            # Coverage of a quiet window (no liquidation yet, no trade yet) starts here.
            for window in self._venue_windows(venue):
                window.touch(ts_ms)
        if last is None or ts_ms > last:
            self.heard_ms[venue] = ts_ms

    def on_book_event(self, event: DepthDiff | DepthSnapshot | BookTicker | Heartbeat) -> None:
        if (event.venue, event.__class__) in _PROVES_TRADE_SOCKET:
            self.heard(event.venue, event.ts_event)

    def _mark_silences(self, boundary_ms: int) -> None:
        """Mark missing what each venue's windows hold since its trade socket was last heard,
        once that silence exceeds ``silence_ms``: a venue that never connects, or died, must
        read as unknown, not as a market where nobody trades (and never as a sum of the other
        venues). Incremental: each stretch is marked once."""
        silence = self.silence_ms
        started = self._started_ms
        if silence is None or started is None:
            return
        for venue in self.symbols:
            last = self.heard_ms.get(venue)
            if boundary_ms - (started if last is None else last) <= silence:
                continue
            start = started if last is None else last + 1
            start = max(start, self._silence_marked.get(venue, start))
            if start < boundary_ms:
                for window in self._venue_windows(venue):
                    window.mark_missing(start, boundary_ms)
                self._silence_marked[venue] = boundary_ms

    def on_mark(self, mark: MarkPrice) -> None:
        self.heard(mark.venue, mark.ts_event)
        if self.mark is None or mark.ts_event >= self.mark.ts_event:
            self.mark = mark

    def on_liquidation(self, liq: Liquidation) -> None:
        # A SELL order closes a long position, a BUY order a short one.
        self.heard(liq.venue, liq.ts_event)
        notional = liq.price * liq.qty
        if liq.side == BUY:
            self.liquidations.add(liq.ts_event, (0.0, notional))
        else:
            self.liquidations.add(liq.ts_event, (notional, 0.0))

    def on_open_interest(self, oi: OpenInterest) -> None:
        if self.open_interest is None or oi.ts_event >= self.open_interest.ts_event:
            self.open_interest = oi

    def on_long_short(self, ratio: LongShortRatio) -> None:
        if self.long_short is None or ratio.ts_event >= self.long_short.ts_event:
            self.long_short = ratio

    def on_gap(self, gap: FeedGap) -> None:
        window = self.flow.get(gap.venue)
        if window is not None:
            window.mark_missing(gap.ts_event, gap.ts_end)
        if gap.venue in (BINANCE_USDM, BINANCE_SPOT):
            self.volume.mark_missing(gap.ts_event, gap.ts_end)
        if gap.venue == BINANCE_USDM:
            self.liquidations.mark_missing(gap.ts_event, gap.ts_end)
        # An outage's minutes are not samples of the market: keep them out of every baseline.
        for baseline in self.baselines.values():
            baseline.mark_missing(gap.ts_event, gap.ts_end)

    def history_samples(self, history: AssetHistory) -> Samples:
        """The value of each z-scored signal at each past minute ``history`` supports."""
        return baseline_samples(
            history, self.perp_flow.span_ms, self.volume.span_ms, self.flow_min_coverage
        )

    def backfill(self, history: AssetHistory, samples: Samples | None = None) -> dict[str, int]:
        """Fill the baselines, the volume window and the OI/price history with what REST
        history says about buckets that hold no live data yet (see signals/backfill.py).
        Idempotent: filling the same history twice adds nothing. ``samples``: the history's
        ``history_samples``, if already computed. Returns samples added per baseline."""
        if samples is None:
            samples = self.history_samples(history)
        added = {
            name: baseline.fill(*samples[name])
            for name, baseline in self.baselines.items()
            if name in samples
        }
        # Never refill the minute live trades are being added to, nor anything after it.
        live_end = self.volume.end_ms
        buckets, rows = volume_rows(history, self.volume.bucket_ms)
        if live_end is not None:
            keep = buckets < live_end // self.volume.bucket_ms - 1
            buckets, rows = buckets[keep], rows[keep]
        self.volume.fill(buckets, rows)
        buckets, rows = history_rows(history, self.history.bucket_ms)
        if self.history.end_ms is not None:
            keep = buckets < self.history.end_ms // self.history.bucket_ms - 1
            buckets, rows = buckets[keep], rows[keep]
        self.history.fill(buckets, rows)
        return added

    def _flow(self, venue: str) -> tuple[float, float] | None:
        """(buy, sell) notional of one venue's flow window, None if it covers too little."""
        window = self.flow.get(venue)
        if window is None or window.filled() < self.flow_min_coverage:
            return None
        buy, sell = (x if x > FLOW_RESIDUE_USD else 0.0 for x in window.totals())
        return buy, sell

    def _changes(self, boundary_ms: int, values: dict[str, float | None]) -> None:
        """Record this snapshot's OI and price, and compare with 1 h / 24 h / 7 d before, in the
        5-minute bucket that held the moment an hour (day, week) earlier: the open interest
        at that bucket's 5-minute mark (its first value), the price's mean over the bucket."""
        oi, price = values["open_interest_usd"], values["price"]
        end = boundary_ms - 1
        # Only the bucket's first open interest is kept: the value at the 5-minute mark is what
        # the start-up history has too (one row per mark), so live and backfilled buckets mean
        # the same thing. A bucket mean of seconds-apart polls has no counterpart in history.
        held = self.history.bucket(end)
        first_oi = oi if held is None or held[1] == 0 else None
        self.history.add(
            end,
            (
                first_oi or 0.0,
                1.0 if first_oi is not None else 0.0,
                price or 0.0,
                1.0 if price is not None else 0.0,
            ),
        )

        past = self._closed_buckets(end)
        values["oi_change_pct_1h"] = _change_pct(oi, past.oi_1h)
        values["oi_change_pct_24h"] = _change_pct(oi, past.oi_24h)
        values["oi_change_pct_7d"] = _change_pct(oi, past.oi_7d)
        values["price_change_pct_1h"] = _change_pct(price, past.price_1h)
        values["price_change_pct_24h"] = _change_pct(price, past.price_24h)
        high = None
        if price is not None:
            # The highest 5-minute mean price of the last 24 h: the closed buckets', this
            # bucket's so far, or the price now.
            held = self.history.bucket(end)
            now_mean = held[2] / held[3] if held is not None and held[3] > 0 else price
            high = max(price, now_mean, past.high_24h or price)
        values["price_from_high_pct_24h"] = _change_pct(price, high)

    def _closed_buckets(self, end: int) -> _ClosedBuckets:
        """What the 5-minute history's closed buckets say at ``end``: they change only when
        the history moves to a new bucket or is filled, so this is worked out once per bucket,
        not once per snapshot."""
        history = self.history
        key = (history, history.changes)
        if self._closed_key == key and self._closed is not None:
            return self._closed

        def past(ago_ms: int, total: int, count: int) -> float | None:
            sums = history.bucket(end - ago_ms)
            return None if sums is None or sums[count] == 0 else sums[total] / sums[count]

        rows = history.samples_since(end - DAY_MS, end - history.bucket_ms)
        rows = rows[rows[:, 3] > 0]
        self._closed = _ClosedBuckets(
            oi_1h=past(HOUR_MS, 0, 1),
            oi_24h=past(DAY_MS, 0, 1),
            oi_7d=past(7 * DAY_MS, 0, 1),
            price_1h=past(HOUR_MS, 2, 3),
            price_24h=past(DAY_MS, 2, 3),
            high_24h=float((rows[:, 2] / rows[:, 3]).max()) if len(rows) else None,
        )
        self._closed_key = key
        return self._closed

    def _fresh_price(self, venue: str, boundary_ms: int, max_age_ms: int) -> float | None:
        trade = self.last_trade.get(venue)
        if trade is None or boundary_ms - trade.ts_event > max_age_ms:
            return None
        return trade.price

    def snapshot(
        self,
        boundary_ms: int,
        usdt_usd: float | None = None,
        refresh_budget: RefreshBudget | None = None,
    ) -> SignalSnapshot:
        """The signals at ``boundary_ms``; ``usdt_usd`` is the USD price of one USDT for the
        adjusted premium (None: unknown or stale, and the adjusted premium is missing).
        ``refresh_budget``: how many baselines whose bucket closed may be recomputed now (the
        others score against their previous moments until a later tick); None: all."""
        end = boundary_ms - 1
        for window in (*self.flow.values(), self.volume, self.liquidations):
            window.advance(end)
        if self._started_ms is None:
            self._started_ms = boundary_ms
        self._mark_silences(boundary_ms)
        values: dict[str, float | None] = {}

        flow = {venue: self._flow(venue) for venue in FLOW_VENUES}
        buy, sell = flow[BINANCE_USDM] or (0.0, 0.0)
        total = buy + sell
        values["taker_imbalance_perp"] = (buy - sell) / total if total > 0 else None
        values["taker_buy_ratio"] = buy / total if total > 0 else None
        values["taker_sell_ratio"] = sell / total if total > 0 else None
        values["taker_buy_sell_ratio"] = buy / sell if sell > 0 else None
        values["taker_imbalance_spot"] = _imbalance(flow[BINANCE_SPOT])
        values["taker_imbalance_coinbase"] = _imbalance(flow[COINBASE])

        # All venues: only when every venue configured for the asset covers its window. Summing
        # just the covered ones would make the number jump whenever a venue drops out, and a
        # Binance-only sum would pass for a market-wide one.
        flows = [flow[venue] for venue in FLOW_VENUES if venue in self.symbols]
        combined: tuple[float, float] | None = None
        if flows and all(f is not None for f in flows):
            combined = (sum(f[0] for f in flows if f), sum(f[1] for f in flows if f))
        values["taker_imbalance"] = _imbalance(combined)
        values["net_taker_usd"] = (
            combined[0] - combined[1] if combined is not None and sum(combined) > 0 else None
        )

        perp_vol, spot_vol = self.volume.totals()
        volume_ok = self.volume.filled() >= self.flow_min_coverage
        values["perp_spot_volume_ratio"] = (
            perp_vol / spot_vol if volume_ok and spot_vol > 0 else None
        )

        spot = self._fresh_price(BINANCE_SPOT, boundary_ms, self.premium_stale_ms)
        cb = self._fresh_price(COINBASE, boundary_ms, self.premium_stale_ms)
        premium = cb - spot if cb is not None and spot is not None else None
        values["coinbase_premium_usd"] = premium
        values["coinbase_premium_pct"] = (
            premium / spot * 100 if premium is not None and spot else None
        )
        # USDT-adjusted: the Binance price converted to USD first. Without a rate it is missing,
        # never computed at 1:1 (that would publish the unadjusted premium under this name).
        spot_usd = spot * usdt_usd if spot is not None and usdt_usd is not None else None
        adjusted = cb - spot_usd if cb is not None and spot_usd is not None else None
        values["coinbase_premium_usd_adj"] = adjusted
        values["coinbase_premium_pct_adj"] = (
            adjusted / spot_usd * 100 if adjusted is not None and spot_usd else None
        )

        # No liquidation in a covered window is information (0.0), not missing data.
        liq_ok = self.liquidations.filled() >= self.flow_min_coverage
        longs, shorts = (x if x > FLOW_RESIDUE_USD else 0.0 for x in self.liquidations.totals())
        values["liquidations_usd"] = longs + shorts if liq_ok else None
        values["liquidations_usd_long"] = longs if liq_ok else None
        values["liquidations_usd_short"] = shorts if liq_ok else None

        band = None
        perp_symbol = self.symbols.get(BINANCE_USDM)
        if self.depth is not None and perp_symbol is not None:
            band = self.depth(BINANCE_USDM, perp_symbol)
        bid, ask = band if band is not None else (None, None)
        depth = bid + ask if bid is not None and ask is not None else None
        values["depth_usd_1pct_bid"] = bid
        values["depth_usd_1pct_ask"] = ask
        values["depth_usd_1pct"] = depth
        values["book_imbalance_1pct"] = (
            (bid - ask) / depth if bid is not None and ask is not None and depth else None
        )

        mark = self.mark
        fresh = mark is not None and boundary_ms - mark.ts_event <= MARK_STALE_MS
        funding = mark.funding_rate if fresh and mark is not None else None
        values["funding_rate"] = funding
        values["funding_rate_annualized_pct"] = (
            funding * FUNDINGS_PER_YEAR * 100 if funding is not None else None
        )
        mark_price = mark.mark_price if fresh and mark is not None else None
        values["mark_price"] = mark_price

        oi = self.open_interest
        oi_fresh = oi is not None and boundary_ms - oi.ts_event <= OI_STALE_MS
        values["open_interest_usd"] = (
            oi.open_interest * mark_price
            if oi_fresh and oi is not None and mark_price is not None
            else None
        )
        ls = self.long_short
        ls_fresh = ls is not None and boundary_ms - ls.ts_event <= LONG_SHORT_STALE_MS
        values["long_short_ratio"] = ls.ratio if ls_fresh and ls is not None else None
        values["price"] = self._fresh_price(BINANCE_SPOT, boundary_ms, PRICE_STALE_MS)
        self._changes(boundary_ms, values)
        z: dict[str, ZScore] = {}
        for name, baseline in self.baselines.items():
            # The snapshot at boundary B is the value at the close of the bucket holding B - 1.
            baseline.observe(boundary_ms - 1, values[name])
            if baseline.stale and (refresh_budget is None or refresh_budget.take()):
                baseline.refresh()
            z[name] = baseline.score(values[name], refresh=False)
        return SignalSnapshot(self.asset, boundary_ms, values, z)


def _part(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


# What each routed event type but trades (``SignalEngine.on_trade``) updates; event types not
# listed change no asset state here.
_HANDLERS: dict[type, Callable[[AssetSignals, Any], None]] = {
    MarkPrice: AssetSignals.on_mark,
    Liquidation: AssetSignals.on_liquidation,
    OpenInterest: AssetSignals.on_open_interest,
    LongShortRatio: AssetSignals.on_long_short,
    DepthDiff: AssetSignals.on_book_event,
    DepthSnapshot: AssetSignals.on_book_event,
    BookTicker: AssetSignals.on_book_event,
}


def _change_pct(now: float | None, past: float | None) -> float | None:
    if now is None or past is None or past <= 0:
        return None
    return (now / past - 1.0) * 100.0


def _imbalance(flow: tuple[float, float] | None) -> float | None:
    """(buy - sell) / (buy + sell); None without a covered window or without any trade."""
    if flow is None:
        return None
    buy, sell = flow
    total = buy + sell
    return (buy - sell) / total if total > 0 else None


class SignalEngine:
    """Routes events to their asset and emits snapshots on the publish clock."""

    def __init__(
        self,
        assets: Mapping[str, Mapping[str, str]],
        flow_window_ms: int,
        bucket_ms: int,
        publish_interval_ms: int,
        flow_min_coverage: float = 0.0,
        volume_window_ms: int = DEFAULT_VOLUME_WINDOW_MS,
        depth: DepthProvider | None = None,
        baseline: BaselineSpec | None = None,
        usdt_usd: str | None = None,
        silence_ms: int | None = None,
        premium_stale_ms: int = PREMIUM_STALE_MS,
    ) -> None:
        """``assets`` maps asset -> {venue: symbol}, e.g. {"BTC": {"binance-usdm": "BTCUSDT"}}.
        ``depth`` gives a book's (bid, ask) notional within 1 % of mid, None when not synced.
        ``baseline``: z-scores for the Z_SCORED signals; None = no z-scores.
        ``usdt_usd``: the Coinbase product whose trades price USDT in USD (USDT-USD) for the
        USDT-adjusted premium; None = no adjusted premium (its signals stay missing).
        ``silence_ms``: how long a venue's trade socket may be silent before its windows count
        the silence as missing; ``premium_stale_ms``: the Coinbase premium's price age bound
        (see ``AssetSignals``)."""
        self.assets = {
            name: AssetSignals(
                name,
                symbols,
                flow_window_ms,
                bucket_ms,
                flow_min_coverage,
                volume_window_ms,
                depth,
                baseline,
                silence_ms,
                premium_stale_ms,
            )
            for name, symbols in assets.items()
        }
        self._route: dict[tuple[str, str], AssetSignals] = {
            (venue, symbol): self.assets[name]
            for name, symbols in assets.items()
            for venue, symbol in symbols.items()
        }
        self.publish_interval_ms = publish_interval_ms
        # Every baseline closes its bucket on the same tick; recomputing them all there would
        # hold the event loop for ~10 ms a minute. Spread them over the ticks so that each is
        # recomputed within one of its buckets (all at once when a bucket is one tick long).
        self._baselines = sum(len(state.baselines) for state in self.assets.values())
        self._baseline_bucket_ms = baseline.bucket_ms if baseline is not None else None
        self._last_boundary: int | None = None
        self._next_boundary: int | None = None
        self.unrouted = 0  # events for symbols no asset maps to
        # The USDT price tracker: the latest USDT-USD trade by event time.
        self._usdt_key = (COINBASE, usdt_usd) if usdt_usd else None
        self.usdt_trade: Trade | None = None
        self._trade_routes: dict[tuple[str, str], _TradeRoute] = {}

    def on_event(self, event: Event) -> list[SignalSnapshot]:
        cls = event.__class__  # exact class checks: this is the per-event path
        if cls is Trade:
            return self.on_trade(event)  # type: ignore[arg-type]
        snapshots = self._advance(event.ts_event)
        if cls is FeedGap or cls is Heartbeat:  # venue-wide, or several symbols at once
            for (venue, symbol), state in self._route.items():
                if venue == event.venue and event.symbol in (None, symbol):
                    if cls is FeedGap:
                        state.on_gap(event)
                    else:
                        state.on_book_event(event)
            return snapshots
        state = self._route.get((event.venue, event.symbol))
        if state is None:
            self.unrouted += 1
            return snapshots
        handler = _HANDLERS.get(cls)  # one lookup: this is the per-frame path
        if handler is not None:
            handler(state, event)
        return snapshots

    def on_trade(self, trade: Trade) -> list[SignalSnapshot]:
        """``on_event`` of a trade, the most frequent event, without the dispatch on type."""
        return self.trade_route(trade.venue, trade.symbol)(trade)

    def trade_route(self, venue: str, symbol: str) -> Callable[[Trade], list[SignalSnapshot]]:
        """``on_trade`` for the trades of one (venue, symbol), its destination looked up once
        (the pipeline holds one per symbol). Routes of the configured symbols are kept; any
        other symbol gets one made for the call, so made-up symbols cannot grow the table."""
        route = self._trade_routes.get((venue, symbol))
        if route is None:
            route = _TradeRoute(self, venue, symbol)
            if route.asset is not None or route.usdt:
                self._trade_routes[venue, symbol] = route
        return route.on_trade

    def _advance(self, ts_ms: int) -> list[SignalSnapshot]:
        """The snapshots of the publish boundaries an event at ``ts_ms`` passes (nearly always
        none)."""
        next_boundary = self._next_boundary
        if next_boundary is not None and ts_ms < next_boundary:
            return []  # nearly every event: ``_tick`` would say the same
        return self._tick(ts_ms)

    def _on_usdt_trade(self, trade: Trade) -> None:
        last = self.usdt_trade
        if last is None or trade.ts_event >= last.ts_event:
            self.usdt_trade = trade

    def usdt_usd(self, boundary_ms: int) -> float | None:
        """USD per USDT at ``boundary_ms``: the latest USDT-USD trade price, None when there
        is none or it is older than USDT_STALE_MS (event time, like every other age)."""
        trade = self.usdt_trade
        if trade is None or boundary_ms - trade.ts_event > USDT_STALE_MS:
            return None
        return trade.price

    def silent_feeds(self) -> list[str]:
        """``venue/symbol`` of every trade stream not heard from within its silence limit (or
        never), as of the latest snapshot: what health names as delivering nothing."""
        now = self._last_boundary
        if now is None:
            return []
        return sorted(
            f"{venue}/{symbol}"
            for state in self.assets.values()
            if state.silence_ms is not None
            for venue, symbol in state.symbols.items()
            if now - state.heard_ms.get(venue, -(10**15)) > state.silence_ms
        )

    # -- checkpoints -------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, np.ndarray]:
        """The long-lived state as named arrays: the z-score baselines and the 8-day OI/price
        history behind the 24 h / 7 d changes. Short windows are not saved: after a restart
        they honestly start empty and report missing until covered."""
        arrays: dict[str, np.ndarray] = {}
        for asset, state in self.assets.items():
            for name, baseline in state.baselines.items():
                arrays.update({f"{asset}/{name}/{k}": v for k, v in baseline.state().items()})
            arrays.update(
                {f"{asset}/{HISTORY_KEY}/{k}": v for k, v in state.history.state().items()}
            )
        return arrays

    def restore(self, arrays: dict[str, np.ndarray]) -> list[str]:
        """Load ``checkpoint()`` output; returns the parts that could not be restored (changed
        window, damaged arrays), which start afresh."""
        skipped: list[str] = []
        for asset, state in self.assets.items():
            for name, baseline in state.baselines.items():
                part = _part(arrays, f"{asset}/{name}/")
                if part:
                    try:
                        baseline.restore(part)
                    except (KeyError, ValueError):
                        skipped.append(f"{asset}/{name}")
            part = _part(arrays, f"{asset}/{HISTORY_KEY}/")
            if part:
                try:
                    history = BucketWindow.from_state(part)
                    if (history.span_ms, history.bucket_ms) != (
                        state.history.span_ms,
                        state.history.bucket_ms,
                    ):
                        raise ValueError("history window changed")
                    state.history = history
                except (KeyError, ValueError):
                    skipped.append(f"{asset}/{HISTORY_KEY}")
        return skipped

    def _tick(self, ts_ms: int) -> list[SignalSnapshot]:
        interval = self.publish_interval_ms
        if self._next_boundary is None:
            self._next_boundary = (ts_ms // interval + 1) * interval
            return []
        if ts_ms < self._next_boundary:
            return []
        # One snapshot at the latest boundary passed: after a quiet stretch there is nothing
        # new to say about the boundaries in between.
        boundary = ts_ms // interval * interval
        self._next_boundary = boundary + interval
        usdt_usd = self.usdt_usd(boundary)
        budget = RefreshBudget(self._refreshes(boundary))
        return [state.snapshot(boundary, usdt_usd, budget) for state in self.assets.values()]

    def _refreshes(self, boundary: int) -> int:
        """Baseline recomputes this tick may do: as many as keep pace with the baselines'
        buckets closing over the event time since the previous tick."""
        previous, self._last_boundary = self._last_boundary, boundary
        if previous is None or self._baseline_bucket_ms is None:
            return self._baselines
        return math.ceil(self._baselines * (boundary - previous) / self._baseline_bucket_ms)


# The channel of the volume window each Binance venue's quote volume goes to.
_VOLUME_CHANNELS = {BINANCE_USDM: AssetSignals._PERP, BINANCE_SPOT: AssetSignals._SPOT}


class _TradeRoute:
    """Where the trades of one (venue, symbol) go, looked up once: the engine's side of the
    per-trade path."""

    __slots__ = (
        "asset",
        "engine",
        "flow",
        "heard_ms",
        "last_trade",
        "usdt",
        "venue",
        "volume",
        "volume_channel",
    )

    def __init__(self, engine: SignalEngine, venue: str, symbol: str) -> None:
        self.engine = engine
        self.venue = venue
        # The USDT price's trades go to the engine (and to an asset only if one maps them too).
        self.usdt = (venue, symbol) == engine._usdt_key
        asset = self.asset = engine._route.get((venue, symbol))
        self.flow: BucketWindow | None = None  # the venue's flow window
        self.volume: BucketWindow | None = None  # the volume window, for a Binance venue
        self.volume_channel = 0
        self.heard_ms: dict[str, int] = {}
        self.last_trade: dict[str, Trade] = {}
        if asset is not None:
            self.heard_ms, self.last_trade = asset.heard_ms, asset.last_trade
            self.flow = asset.flow.get(venue)
            if venue in _VOLUME_CHANNELS:
                self.volume = asset.volume
                self.volume_channel = _VOLUME_CHANNELS[venue]

    def on_trade(self, trade: Trade) -> list[SignalSnapshot]:
        engine = self.engine
        ts = trade.ts_event
        next_boundary = engine._next_boundary  # ``_advance``, inline: the per-trade path
        snapshots = [] if next_boundary is not None and ts < next_boundary else engine._tick(ts)
        if self.usdt:
            engine._on_usdt_trade(trade)
        asset = self.asset
        if asset is None:
            if not self.usdt:
                engine.unrouted += 1
            return snapshots
        venue, heard_ms = self.venue, self.heard_ms
        last = heard_ms.get(venue)
        if last is None:
            asset.heard(venue, ts)
        elif ts > last:  # ``heard``, inline
            heard_ms[venue] = ts
        notional = trade.price * trade.qty
        # ``BucketWindow.add_one``'s first case, inline (nearly every trade lands in the open
        # head bucket of both windows): the two calls were an eighth of the engine's time.
        flow = self.flow
        if flow is not None:
            side = 0 if trade.taker_side == BUY else 1  # AssetSignals._BUY, _SELL
            pending = flow._open
            if pending is not None and ts // flow.bucket_ms == flow._head:
                pending[side] += notional
            else:
                flow.add_one(ts, side, notional)
        volume = self.volume
        if volume is not None:
            pending = volume._open
            if pending is not None and ts // volume.bucket_ms == volume._head:
                pending[self.volume_channel] += notional
            else:
                volume.add_one(ts, self.volume_channel, notional)
        latest = self.last_trade.get(venue)
        if latest is None or ts >= latest.ts_event:
            self.last_trade[venue] = trade
        return snapshots
