"""The signal catalogue: every signal name tapewatch publishes, its unit and its definition.

Names are part of the MQTT contract (``<prefix>/<ASSET>/signals``) and of the regime rules in
``config.yaml``; config validation rejects a rule naming a signal that is not listed here.
The README's signal table is written from the same definitions.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SignalSpec:
    name: str
    unit: str
    definition: str


SIGNALS: dict[str, SignalSpec] = {
    s.name: s
    for s in (
        SignalSpec(
            "taker_imbalance_perp",
            "ratio",
            "(taker buy - taker sell) / (taker buy + taker sell) notional, Binance USDⓈ-M, "
            "over the flow window; -1 = only sellers, +1 = only buyers",
        ),
        SignalSpec(
            "taker_buy_ratio",
            "ratio",
            "taker buy notional / total taker notional, Binance USDⓈ-M, over the flow window",
        ),
        SignalSpec(
            "taker_sell_ratio",
            "ratio",
            "taker sell notional / total taker notional, Binance USDⓈ-M, over the flow window",
        ),
        SignalSpec(
            "taker_buy_sell_ratio",
            "ratio",
            "taker buy notional / taker sell notional, Binance USDⓈ-M, over the flow window; "
            "below 1 = sellers dominate",
        ),
        SignalSpec(
            "taker_imbalance_spot",
            "ratio",
            "(taker buy - taker sell) / (taker buy + taker sell) notional, Binance spot, "
            "over the flow window",
        ),
        SignalSpec(
            "taker_imbalance_coinbase",
            "ratio",
            "(taker buy - taker sell) / (taker buy + taker sell) notional, Coinbase, "
            "over the flow window",
        ),
        SignalSpec(
            "taker_imbalance",
            "ratio",
            "(taker buy - taker sell) / (taker buy + taker sell) notional summed over every venue "
            "configured for the asset, over the flow window; missing unless every one of those "
            "venues covers its window",
        ),
        SignalSpec(
            "net_taker_usd",
            "USD",
            "taker buy - taker sell notional summed over every venue configured for the asset, "
            "over the flow window; same coverage rule as taker_imbalance",
        ),
        SignalSpec(
            "perp_spot_volume_ratio",
            "ratio",
            "Binance USDⓈ-M quote volume / Binance spot quote volume over the volume window",
        ),
        SignalSpec(
            "coinbase_premium_usd",
            "USD",
            "latest Coinbase trade price - latest Binance spot trade price, both at most 10 s "
            "old; Coinbase quotes USD, Binance USDT, taken 1:1",
        ),
        SignalSpec(
            "coinbase_premium_pct",
            "percent",
            "coinbase_premium_usd / latest Binance spot trade price x 100",
        ),
        SignalSpec(
            "coinbase_premium_usd_adj",
            "USD",
            "USDT-adjusted premium: latest Coinbase trade price - latest Binance spot trade "
            "price x USDT/USD, where USDT/USD is the latest trade price of "
            "signals.usdt_usd_product (Coinbase USDT-USD); the two asset prices at most 10 s "
            "old, the USDT/USD price at most 60 s old; missing when any of the three is "
            "missing or stale (never taken as 1:1)",
        ),
        SignalSpec(
            "coinbase_premium_pct_adj",
            "percent",
            "coinbase_premium_usd_adj / (latest Binance spot trade price x USDT/USD) x 100",
        ),
        SignalSpec(
            "liquidations_usd",
            "USD",
            "Binance USDⓈ-M forceOrder notional (average price x filled qty) over the flow "
            "window; a floor (at most one order per symbol per second is sent)",
        ),
        SignalSpec(
            "liquidations_usd_long",
            "USD",
            "liquidations_usd of SELL orders: long positions liquidated",
        ),
        SignalSpec(
            "liquidations_usd_short",
            "USD",
            "liquidations_usd of BUY orders: short positions liquidated",
        ),
        SignalSpec(
            "depth_usd_1pct_bid",
            "USD",
            "resting bid notional within 1 % below mid, Binance USDⓈ-M book",
        ),
        SignalSpec(
            "depth_usd_1pct_ask",
            "USD",
            "resting ask notional within 1 % above mid, Binance USDⓈ-M book",
        ),
        SignalSpec(
            "depth_usd_1pct",
            "USD",
            "depth_usd_1pct_bid + depth_usd_1pct_ask",
        ),
        SignalSpec(
            "book_imbalance_1pct",
            "ratio",
            "(bid - ask) / (bid + ask) resting notional within 1 % of mid, Binance USDⓈ-M book",
        ),
        SignalSpec(
            "funding_rate",
            "fraction",
            "latest predicted funding rate `r` from Binance markPrice, per funding interval "
            "(usually 8 h); 0.0001 = 0.01 %",
        ),
        SignalSpec(
            "funding_rate_annualized_pct",
            "percent",
            "funding_rate x (365 x 24 / 8) x 100: the yearly rate at 3 fundings a day",
        ),
        SignalSpec(
            "mark_price",
            "USD",
            "latest Binance USDⓈ-M mark price",
        ),
        SignalSpec(
            "open_interest_usd",
            "USD",
            "latest polled Binance USDⓈ-M open interest x mark price; missing when the open "
            "interest is older than 5 min or the mark price older than 30 s",
        ),
        SignalSpec(
            "long_short_ratio",
            "ratio",
            "latest Binance USDⓈ-M global long/short account ratio (5-minute period)",
        ),
        SignalSpec(
            "price",
            "USD",
            "latest Binance spot trade price; missing when older than 60 s",
        ),
        SignalSpec(
            "oi_change_pct_1h",
            "percent",
            "open_interest_usd now vs its value at the 5-minute mark (the first value in the "
            "5-minute bucket) 1 h earlier: (now / then - 1) x 100; how fast positions open or "
            "unwind",
        ),
        SignalSpec(
            "oi_change_pct_24h",
            "percent",
            "open_interest_usd now vs its value at the 5-minute mark (the first value in the "
            "5-minute bucket) 24 h earlier: (now / then - 1) x 100; the mark, not a bucket "
            "mean, because open-interest history has one row per 5-minute mark, so live and "
            "backfilled values are the same number",
        ),
        SignalSpec(
            "oi_change_pct_7d",
            "percent",
            "open_interest_usd now vs its value at the 5-minute mark (the first value in the "
            "5-minute bucket) 7 days earlier",
        ),
        SignalSpec(
            "price_change_pct_1h",
            "percent",
            "Binance spot price now vs its mean in the 5-minute bucket 1 h earlier",
        ),
        SignalSpec(
            "price_change_pct_24h",
            "percent",
            "Binance spot price now vs its mean in the 5-minute bucket 24 h earlier",
        ),
        SignalSpec(
            "price_from_high_pct_24h",
            "percent",
            "Binance spot price now vs the highest 5-minute mean price of the last 24 h (or "
            "now, if higher): (now / high - 1) x 100; 0 at a new high, -3 means 3 % below it",
        ),
    )
}


# Signals with a z-score against the long baseline (README "z-scores"). On the signals topic the
# z-score is the `z` field of the signal's entry; regime rules address it as `<signal>_z`.
Z_SCORED: tuple[str, ...] = (
    "taker_imbalance",
    "oi_change_pct_24h",
    "net_taker_usd",
    "liquidations_usd",
    "depth_usd_1pct",
    "funding_rate",
    "perp_spot_volume_ratio",
    "coinbase_premium_pct",
)

# The seed analyses' names for some z-scores.
Z_ALIASES: dict[str, str] = {
    "taker_intensity_z": "net_taker_usd_z",
    "oi_z": "oi_change_pct_24h_z",
    "depth_z": "depth_usd_1pct_z",
}


def rule_signals() -> list[str]:
    """Every name a regime rule may test: signals, their z-scores, and the seeds' aliases."""
    return [*SIGNALS, *(f"{name}_z" for name in Z_SCORED), *Z_ALIASES]
