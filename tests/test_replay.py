"""Replay golden tests on real frames: deterministic output, and signals equal to numpy."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import yaml

from monitor.config import Config, config_from_dict
from monitor.replay import replay_to_jsonl
from streams.tape import TapeRecord, TapeWriter, read_tape
from tests.conftest import REPO, USDM_TAPE


def make_config(**signals: Any) -> Config:
    data = yaml.safe_load((REPO / "config.yaml").read_text())
    data["signals"].update(signals)
    return config_from_dict(data, env={})


def run_replay(config: Config, *tapes: Path) -> list[dict[str, Any]]:
    out = io.BytesIO()
    replay_to_jsonl(tapes, config, out)
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


def btc_signals(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r["payload"] for r in records if r["topic"] == "tapewatch/v1/BTC/signals"]


def event_time(rec: TapeRecord) -> int | None:
    """Exchange time of a record, read straight from the JSON (None if it carries no event)."""
    msg = orjson.loads(rec.msg)
    if rec.url is not None:  # a USDⓈ-M REST depth snapshot carries E
        return msg.get("E")
    data = msg["data"]
    return data["T"] if data.get("e") == "trade" else data.get("E")


def reference_imbalance(tape: Path, window_ms: int) -> dict[int, tuple[float | None, float | None]]:
    """Independent numpy computation from the raw frames, per the documented clock rule:
    every event moves event time; the snapshot at boundary B covers BTC trades with
    B - window <= T < B that arrived before the first event whose time reached B.
    Returns {B: (imbalance, buy/sell ratio)}."""
    times, notionals, taker_buy, arrival = [], [], [], []
    boundaries: dict[int, int] = {}  # boundary -> number of records that had arrived before it
    next_b = None
    for n, rec in enumerate(read_tape(tape)):
        t = event_time(rec)
        if t is None:
            continue
        if next_b is None:
            next_b = (t // 1000 + 1) * 1000
        elif t >= next_b:
            b = t // 1000 * 1000
            boundaries[b] = n
            next_b = b + 1000
        if rec.url is None:
            data = orjson.loads(rec.msg)["data"]
            if data.get("e") == "trade" and data["s"] == "BTCUSDT":
                times.append(data["T"])
                notionals.append(float(data["p"]) * float(data["q"]))
                taker_buy.append(not data["m"])
                arrival.append(n)
    t_arr, n_arr, buy_arr, seen_arr = (np.array(x) for x in (times, notionals, taker_buy, arrival))
    out = {}
    for b, arrived in boundaries.items():
        sel = (seen_arr < arrived) & (t_arr < b) & (t_arr >= b - window_ms)
        buy, sell = n_arr[sel & buy_arr].sum(), n_arr[sel & ~buy_arr].sum()
        total = buy + sell
        out[b] = ((buy - sell) / total if total else None, buy / sell if sell else None)
    return out


@pytest.mark.parametrize("window", ["1h", "10s"])
def test_taker_imbalance_equals_numpy_on_real_frames(window: str) -> None:
    config = make_config(flow_window=window, flow_min_coverage=0.0)
    signals = btc_signals(run_replay(config, USDM_TAPE))
    reference = reference_imbalance(USDM_TAPE, 3_600_000 if window == "1h" else 10_000)
    assert len(signals) > 80  # ~90 s of tape at one snapshot per second
    assert {s["ts_event"] for s in signals} == set(reference)
    for s in signals:
        imb, ratio = reference[s["ts_event"]]
        got = s["signals"]
        assert got["taker_imbalance_perp"]["value"] == pytest.approx(imb, rel=1e-9, abs=1e-12)
        assert got["taker_buy_sell_ratio"]["value"] == pytest.approx(ratio, rel=1e-9)
        assert got["taker_imbalance_perp"]["unit"] == "ratio"
        # The recording has no markPrice stream: funding is missing, not zero.
        assert got["funding_rate"]["value"] is None


def test_flow_signals_are_missing_until_the_window_is_covered_enough() -> None:
    """10 min window, 10 % coverage: flow signals appear once 60 one-second buckets are seen."""
    config = make_config(flow_window="10m", flow_min_coverage=0.1)
    signals = btc_signals(run_replay(config, USDM_TAPE))
    first_event_ms = next(t for r in read_tape(USDM_TAPE) if (t := event_time(r)) is not None)
    for s in signals:
        buckets_seen = (s["ts_event"] - 1) // 1000 - first_event_ms // 1000 + 1
        value = s["signals"]["taker_imbalance_perp"]["value"]
        assert (value is None) == (buckets_seen < 60), (buckets_seen, value)
    assert any(s["signals"]["taker_imbalance_perp"]["value"] is None for s in signals)
    assert any(s["signals"]["taker_imbalance_perp"]["value"] is not None for s in signals)


def test_replay_is_byte_identical_twice(tmp_path: Path) -> None:
    outs = []
    for i in range(2):
        out = tmp_path / f"out{i}.jsonl"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "monitor",
                "replay",
                str(USDM_TAPE),
                "--out",
                str(out),
                "--config",
                str(REPO / "config.yaml"),
            ],
            check=True,
            capture_output=True,
            cwd=tmp_path,
        )
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    lines = outs[0].splitlines()
    first = orjson.loads(lines[0])
    assert first["topic"] == "tapewatch/v1/status/tapewatch" and first["retain"] is True
    assert first["payload"]["state"] == "online"
    topics = {orjson.loads(line)["topic"] for line in lines}
    assert "tapewatch/v1/BTC/signals" in topics and "tapewatch/v1/BTC/regime" in topics


def test_malformed_frames_in_a_tape_are_counted_and_skipped(tmp_path: Path) -> None:
    """An edited copy of the real tape with bad frames gives the same signals as the original."""
    bad_frames = [
        "{not json",
        '{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":1,"q":"1","T":1,'
        '"m":true}}',
        '{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"NaN",'
        '"q":"1","T":1,"m":true}}',
        '{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"-5",'
        '"q":"1","T":1,"m":true}}',
        '{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"1",'
        '"q":"1","T":1,"m":"yes"}}',
    ]
    edited = tmp_path / "edited.tape.jsonl"
    inserted = 0
    with TapeWriter(edited, note="edited copy with malformed frames") as w:
        for i, rec in enumerate(read_tape(USDM_TAPE)):
            w.write(rec)
            if i % 1000 == 500:
                w.write(TapeRecord(rec.ts, rec.src, bad_frames[inserted % len(bad_frames)]))
                inserted += 1
    config = make_config()
    out = io.BytesIO()
    health = replay_to_jsonl([edited], config, out)
    clean = run_replay(config, USDM_TAPE)
    edited_records = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert btc_signals(edited_records) == btc_signals(clean)
    assert inserted >= len(bad_frames)
    assert sum(health.malformed.values()) == inserted
    assert {k for _, k in health.malformed} == {
        "not_json",
        "missing_field",
        "bad_value",
        "bad_type",
    }
