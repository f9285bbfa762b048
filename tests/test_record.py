"""Recording: a live session's tape replays to exactly the signals the session published."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

from monitor.daemon import Daemon
from monitor.recorder import Recorder, segment_path
from monitor.replay import replay_messages
from simulator.server import Simulator
from streams.tape import merge, read_tape
from tests.conftest import REPO, Mosquitto, sim_config


async def test_replaying_a_recording_reproduces_the_live_signals(
    mosquitto: Mosquitto, prefix: str, subscribe: Any, tmp_path: Path
) -> None:
    sim = Simulator(port=0, speed=5.0, seed=11)
    await sim.start()
    tape = tmp_path / "live.tape.jsonl.zst"
    try:
        config = sim_config(
            sim, mqtt={"url": mosquitto.url, "prefix": prefix, "broker": "external"}
        )
        sub = await subscribe(f"{prefix}/BTC/signals", f"{prefix}/BTC/regime")
        daemon = Daemon(config, recorder=Recorder(tape, max_bytes=30_000))
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        await sub.wait_for(lambda s: len(s.on(f"{prefix}/BTC/signals")) >= 12, timeout=30)
        stop.set()
        await asyncio.wait_for(task, 15)
    finally:
        await sim.stop()

    live = {p["seq"]: p for p in sub.on(f"{prefix}/BTC/signals")}
    segments = sorted(tmp_path.glob("live*.tape.jsonl.zst"))  # glob order: .001 before .tape
    assert len(segments) >= 2, "30 kB segments: the recording must have rotated"
    assert tape in segments and segment_path(tape, 1) in segments
    replayed = {
        m.payload["seq"]: m.payload
        for m in replay_messages(merge(segments), config)
        if m.topic == f"{prefix}/BTC/signals"
    }
    assert len(live) >= 12
    for seq, payload in live.items():
        assert replayed[seq]["ts_event"] == payload["ts_event"]
        assert replayed[seq]["signals"] == payload["signals"], f"seq {seq}"
    live_regimes = [(p["regime"], p["since"]) for p in sub.on(f"{prefix}/BTC/regime")]
    replay_regimes = [
        (m.payload["regime"], m.payload["since"])
        for m in replay_messages(merge(segments), config)
        if m.topic == f"{prefix}/BTC/regime"
    ]
    assert live_regimes == replay_regimes[: len(live_regimes)]


def test_record_command_writes_a_replayable_tape(tmp_path: Path) -> None:
    cfg = tmp_path / "sim.yaml"
    port_line = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "monitor",
            "simulate",
            "--port",
            "0",
            "--speed",
            "5",
            "--write-config",
            str(cfg),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert port_line.stdout is not None
        assert "listening" in port_line.stdout.readline()
        out = tmp_path / "rec.tape.jsonl.zst"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "monitor",
                "record",
                "--out",
                str(out),
                "--duration",
                "3",
                "--config",
                str(cfg),
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        port_line.kill()
        port_line.wait(10)
    assert result.returncode == 0, result.stderr
    assert "recorded" in result.stderr and "frames" in result.stderr
    records = list(read_tape(out))
    assert sum(1 for r in records if r.url is None and r.ctl is None) > 20
    replay = subprocess.run(
        [
            sys.executable,
            "-m",
            "monitor",
            "replay",
            str(out),
            "--out",
            str(tmp_path / "o.jsonl"),
            "--config",
            str(cfg),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert replay.returncode == 0, replay.stderr
    assert (tmp_path / "o.jsonl").read_text().count("/BTC/signals") >= 1
