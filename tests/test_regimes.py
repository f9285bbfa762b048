"""Regime engine: ordering, hysteresis, min_dwell, cooldown and reasons, on hand-made snapshots."""

from __future__ import annotations

from signals.engine import SignalSnapshot
from signals.regimes import NEUTRAL, Condition, Reason, RegimeEngine, RegimeRule

SELLERS = RegimeRule(
    name="seller_dominance",
    description="sellers",
    all=(Condition("taker_buy_sell_ratio", "below", 0.8, 0.9),),
    any=(),
    min_dwell=0.0,
    cooldown=0.0,
)


def snap(t_s: float, **values: float | None) -> SignalSnapshot:
    return SignalSnapshot("BTC", int(t_s * 1000), dict(values))


def test_first_snapshot_sets_initial_regime_without_previous() -> None:
    eng = RegimeEngine("BTC", (SELLERS,))
    change = eng.evaluate(snap(0, taker_buy_sell_ratio=1.0))
    assert change is not None and change.regime == NEUTRAL and change.previous is None
    assert eng.evaluate(snap(1, taker_buy_sell_ratio=1.0)) is None


def test_hysteresis_enters_below_entry_and_leaves_only_above_exit() -> None:
    eng = RegimeEngine("BTC", (SELLERS,))
    eng.evaluate(snap(0, taker_buy_sell_ratio=1.0))
    assert eng.evaluate(snap(1, taker_buy_sell_ratio=0.85)) is None  # not below 0.8 yet
    change = eng.evaluate(snap(2, taker_buy_sell_ratio=0.79))
    assert change is not None
    assert (change.regime, change.previous, change.since) == ("seller_dominance", NEUTRAL, 2000)
    assert change.reasons == (Reason("taker_buy_sell_ratio", 0.79, "<", 0.8),)
    # 0.85 is above the entry threshold but below the exit threshold: stays.
    assert eng.evaluate(snap(3, taker_buy_sell_ratio=0.85)) is None
    change = eng.evaluate(snap(4, taker_buy_sell_ratio=0.95))
    assert change is not None and change.regime == NEUTRAL
    assert change.previous == "seller_dominance"
    assert change.reasons == (Reason("taker_buy_sell_ratio", 0.95, ">=", 0.9),)


def test_missing_value_never_satisfies_and_is_named_as_reason() -> None:
    eng = RegimeEngine("BTC", (SELLERS,))
    eng.evaluate(snap(0, taker_buy_sell_ratio=0.5))
    change = eng.evaluate(snap(1, taker_buy_sell_ratio=None))
    assert change is not None and change.regime == NEUTRAL
    assert change.reasons == (Reason("taker_buy_sell_ratio", None, "missing", None),)


def test_min_dwell_holds_the_regime() -> None:
    rule = RegimeRule(**{**_fields(SELLERS), "min_dwell": 10.0})
    eng = RegimeEngine("BTC", (rule,))
    eng.evaluate(snap(0, taker_buy_sell_ratio=0.5))
    assert eng.current == "seller_dominance"
    assert eng.evaluate(snap(5, taker_buy_sell_ratio=1.5)) is None  # 5 s < 10 s dwell
    change = eng.evaluate(snap(10, taker_buy_sell_ratio=1.5))
    assert change is not None and change.regime == NEUTRAL


def test_cooldown_blocks_reentry() -> None:
    rule = RegimeRule(**{**_fields(SELLERS), "cooldown": 30.0})
    eng = RegimeEngine("BTC", (rule,))
    eng.evaluate(snap(0, taker_buy_sell_ratio=0.5))
    eng.evaluate(snap(1, taker_buy_sell_ratio=1.5))  # leaves at t=1
    assert eng.evaluate(snap(20, taker_buy_sell_ratio=0.5)) is None  # cooling down
    change = eng.evaluate(snap(31, taker_buy_sell_ratio=0.5))
    assert change is not None and change.regime == "seller_dominance"


def test_first_matching_rule_in_order_wins_and_any_groups() -> None:
    strong = RegimeRule(
        "capitulation",
        "",
        all=(Condition("taker_buy_sell_ratio", "below", 0.5, 0.5),),
        any=(
            Condition("funding_rate", "below", 0.0, 0.0),
            Condition("taker_imbalance_perp", "below", -0.5, -0.5),
        ),
        min_dwell=0,
        cooldown=0,
    )
    eng = RegimeEngine("BTC", (strong, SELLERS))
    # ratio 0.4 satisfies both rules' `all`; `any` holds through funding only.
    change = eng.evaluate(
        snap(0, taker_buy_sell_ratio=0.4, funding_rate=-0.0001, taker_imbalance_perp=-0.4)
    )
    assert change is not None and change.regime == "capitulation"
    assert change.reasons == (
        Reason("taker_buy_sell_ratio", 0.4, "<", 0.5),
        Reason("funding_rate", -0.0001, "<", 0.0),
    )
    # `any` fails (funding positive, imbalance not low enough): the next rule takes over.
    change = eng.evaluate(
        snap(1, taker_buy_sell_ratio=0.4, funding_rate=0.0001, taker_imbalance_perp=-0.4)
    )
    assert change is not None and (change.regime, change.previous) == (
        "seller_dominance",
        "capitulation",
    )


def _fields(rule: RegimeRule) -> dict:
    return {f: getattr(rule, f) for f in rule.__dataclass_fields__}
