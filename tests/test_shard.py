"""Scale-out: `--shard I/N` splits the assets; shards on one broker keep to their own topics."""

from __future__ import annotations

from typing import Any

import pytest

from monitor.config import ConfigError, config_from_dict, parse_shard, shard
from tests.conftest import Mosquitto, Subscriber
from tests.test_daemon import RunningDaemon, daemon_config


def five_assets() -> Any:
    assets = {n: {"binance_usdm": f"{n}USDT"} for n in ("SOL", "BTC", "XRP", "ETH", "ADA")}
    return config_from_dict(
        {
            "instance": "tw",
            "assets": assets,
            "regimes": [],
            "mqtt": {"url": "mqtt://h", "prefix": "p"},
        },
        env={},
    )


def test_shards_take_every_nth_asset_in_name_order_under_their_own_instance() -> None:
    config = five_assets()
    one, two = shard(config, 1, 2), shard(config, 2, 2)
    assert list(one.assets) == ["ADA", "ETH", "XRP"]  # ADA BTC ETH SOL XRP: 1st, 3rd, 5th
    assert list(two.assets) == ["BTC", "SOL"]
    assert (one.instance, two.instance) == ("tw-1of2", "tw-2of2")
    assert sorted([*one.assets, *two.assets]) == sorted(config.assets)


@pytest.mark.parametrize("text", ["0/2", "3/2", "1", "a/b", "1/0", ""])
def test_bad_shard_arguments_are_refused_with_a_reason(text: str) -> None:
    with pytest.raises(ValueError, match="--shard"):
        parse_shard(text)


def test_a_shard_without_assets_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no asset left"):
        shard(five_assets(), 6, 6)


async def test_two_shards_on_one_broker_do_not_disturb_each_other(
    start_simulator: Any, mosquitto: Mosquitto, prefix: str, subscribe: Any
) -> None:
    sim = await start_simulator(scenario="sell_wave", speed=5.0, seed=11)
    config = daemon_config(sim, mosquitto.url, prefix)
    assert sorted(config.assets) == ["BTC", "ETH"]
    sub: Subscriber = await subscribe(f"{prefix}/#")
    first = RunningDaemon(shard(config, 1, 2))  # BTC
    second = RunningDaemon(shard(config, 2, 2))  # ETH
    sessions = {"BTC": first.daemon.session, "ETH": second.daemon.session}
    status = {
        d.daemon.config.instance: f"{prefix}/status/{d.daemon.config.instance}"
        for d in (first, second)
    }
    await sub.wait_for(
        lambda s: (
            all(s.on(t) for t in status.values())
            and all(
                s.on(f"{prefix}/{a}/regime") and s.on(f"{prefix}/{a}/signals") for a in sessions
            )
            and all(s.on(f"{prefix}/health/{i}") for i in status)
        ),
        timeout=30,
    )
    for asset, session in sessions.items():
        assert {r["session"] for r in sub.on(f"{prefix}/{asset}/regime")} == {session}
    health = {i: sub.on(f"{prefix}/health/{i}")[-1] for i in status}
    one, two = first.daemon.config.instance, second.daemon.config.instance
    assert (one, two) == (f"{config.instance}-1of2", f"{config.instance}-2of2")
    assert health[one]["session"] == first.daemon.session
    assert health[two]["session"] == second.daemon.session

    # Stopping one shard marks only that instance offline; the other keeps publishing.
    await first.close()
    await sub.wait_for(lambda s: s.on(status[one])[-1]["state"] == "offline")
    count = len(sub.on(f"{prefix}/ETH/signals"))
    await sub.wait_for(lambda s: len(s.on(f"{prefix}/ETH/signals")) >= count + 3)
    assert sub.on(status[two])[-1]["state"] == "online"
    await second.close()
