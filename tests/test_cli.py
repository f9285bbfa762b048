"""The command line as a user meets it: the real ``python -m monitor`` (and the bench scripts) as
subprocesses in a temporary directory. Every way to get it wrong ends in one line on stderr that
names the problem, never a traceback; damaged tapes are broken copies of the real recordings in
tests/data."""

from __future__ import annotations

import gzip
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
import zstandard

from monitor.defaults import default_config_data
from simulator.scenarios import SCENARIOS
from streams.tape import TapeWriter, read_tape
from tests.conftest import DATA, REPO, USDM_TAPE

ALTS_TAPE = DATA / "binance-spot-2021-10-11-alts.tape.jsonl.zst"
RUN_TIMEOUT_S = 90  # a replay of the 90 s tape takes about a second; this is a hang, not load
NOTICE = ("no config.yaml in", "using the built-in default config")


@dataclass(frozen=True)
class Case:
    """``argv`` after the interpreter, run in a fresh directory that ``setup`` prepared.

    ``stderr``: one tuple of fragments per line expected on stderr, in order (so an error case
    is exactly one line that names its problem); ``stdout``: fragments of standard output."""

    id: str
    argv: tuple[str, ...]
    code: int
    stderr: tuple[tuple[str, ...], ...] = ()
    stdout: tuple[str, ...] = ()
    setup: Callable[[Path, int], None] | None = None


def cli(*args: str) -> tuple[str, ...]:
    return ("-m", "monitor", *args)


# -- broken copies of real tapes ------------------------------------------------------------------
def usdm_bytes() -> bytes:
    return USDM_TAPE.read_bytes()


def usdm_plain() -> bytes:
    return zstandard.ZstdDecompressor().decompress(usdm_bytes())


def with_config(tmp: Path, _port: int) -> None:
    (tmp / "config.yaml").write_bytes((REPO / "config.yaml").read_bytes())


def not_a_tape(tmp: Path, port: int) -> None:
    with_config(tmp, port)
    (tmp / "notes.txt").write_text("these are my notes, not a tape\n")


def corrupt_zst_header(tmp: Path, port: int) -> None:
    """The zstd magic kept, the frame header after it zeroed: a damaged file, not a cut one."""
    with_config(tmp, port)
    data = bytearray(usdm_bytes())
    data[4:40] = bytes(36)
    (tmp / "damaged.tape.jsonl.zst").write_bytes(bytes(data))


def corrupt_zst_middle(tmp: Path, port: int) -> None:
    """Bytes flipped in the middle: found while reading, after some records were replayed."""
    with_config(tmp, port)
    data = bytearray(usdm_bytes())
    middle = len(data) // 2
    data[middle : middle + 100] = bytes(b ^ 0xFF for b in data[middle : middle + 100])
    (tmp / "damaged.tape.jsonl.zst").write_bytes(bytes(data))


def gzipped_tape(tmp: Path, port: int) -> None:
    with_config(tmp, port)
    (tmp / "rec.tape.jsonl.gz").write_bytes(gzip.compress(usdm_plain()))


def tape_directory(tmp: Path, port: int) -> None:
    with_config(tmp, port)
    (tmp / "tapes").mkdir()
    (tmp / "tapes" / USDM_TAPE.name).write_bytes(usdm_bytes())


def cut_plain_tape(tmp: Path, port: int) -> None:
    """A plain tape whose last line stops half-way, as a killed ``record`` leaves it."""
    with_config(tmp, port)
    plain = usdm_plain()
    cut = plain.index(b"\n", len(plain) // 2) + 40  # 40 bytes into a line
    (tmp / "killed.tape.jsonl").write_bytes(plain[:cut])


def cut_zst_tape(tmp: Path, port: int) -> None:
    """A .zst cut inside its frame (and inside a line)."""
    with_config(tmp, port)
    data = usdm_bytes()
    (tmp / "killed.tape.jsonl.zst").write_bytes(data[: len(data) // 2])


def dead_broker(tmp: Path, port: int) -> None:
    data = default_config_data()
    data["mqtt"]["url"] = f"mqtt://127.0.0.1:{port}"
    (tmp / "dead.yaml").write_text(yaml.safe_dump(data))


def bench(name: str) -> tuple[str, ...]:
    return (str(REPO / "bench" / name), "--help")


USAGE_ERROR = 2  # argparse's exit status for a bad command line
SCENARIO_NAMES = tuple(SCENARIOS)

CASES = [
    Case(
        "demo-unknown-scenario",
        cli("demo", "--scenario", "nope"),
        USAGE_ERROR,
        (("tapewatch demo: error", "--scenario", "'nope'", *SCENARIO_NAMES),),
    ),
    Case(
        "simulate-unknown-scenario",
        cli("simulate", "--scenario", "nope"),
        USAGE_ERROR,
        (("tapewatch simulate: error", "--scenario", "'nope'", *SCENARIO_NAMES),),
    ),
    Case("demo-help-lists-scenarios", cli("demo", "--help"), 0, stdout=SCENARIO_NAMES),
    Case("simulate-help-lists-scenarios", cli("simulate", "--help"), 0, stdout=SCENARIO_NAMES),
    Case(
        "demo-speed-0",
        cli("demo", "--speed", "0"),
        USAGE_ERROR,
        (("tapewatch demo: error", "--speed", "more than 0", "'0'"),),
    ),
    Case(
        "demo-negative-duration",
        cli("demo", "--duration", "-5"),
        USAGE_ERROR,
        (("tapewatch demo: error", "--duration", "more than 0", "'-5'"),),
    ),
    Case(
        "shard-of-0",
        cli("run", "--shard", "1/0"),
        1,
        (("tapewatch run", "--shard 1/0", "N must be at least 1"),),
    ),
    Case(
        "record-rotate-0",
        cli("record", "--out", "rec.tape.jsonl.zst", "--rotate-mb", "0"),
        USAGE_ERROR,
        (("tapewatch record: error", "--rotate-mb", "more than 0", "'0'"),),
    ),
    Case(
        "replay-not-a-tape",
        cli("replay", "notes.txt", "--out", "o.jsonl"),
        1,
        (("tapewatch replay", "notes.txt", "not a tape"),),
        setup=not_a_tape,
    ),
    Case(
        "replay-corrupt-zst-header",
        cli("replay", "damaged.tape.jsonl.zst", "--out", "o.jsonl"),
        1,
        (("tapewatch replay", "damaged.tape.jsonl.zst", "corrupt zstd data"),),
        setup=corrupt_zst_header,
    ),
    Case(
        "replay-corrupt-zst-middle",
        cli("replay", "damaged.tape.jsonl.zst", "--out", "o.jsonl"),
        1,
        (("tapewatch replay", "damaged.tape.jsonl.zst", "corrupt zstd data"),),
        setup=corrupt_zst_middle,
    ),
    Case(
        "replay-gz",
        cli("replay", "rec.tape.jsonl.gz", "--out", "o.jsonl"),
        1,
        (("tapewatch replay", "rec.tape.jsonl.gz", "gzip-compressed", "decompress it"),),
        setup=gzipped_tape,
    ),
    Case(
        "replay-directory",
        cli("replay", "tapes", "--out", "o.jsonl"),
        1,
        (("tapewatch replay", "tapes", "is a directory"),),
        setup=tape_directory,
    ),
    Case(
        "replay-missing-file",
        cli("replay", "nowhere.tape.jsonl.zst", "--out", "o.jsonl"),
        1,
        (("tapewatch replay", "nowhere.tape.jsonl.zst", "no such file"),),
        setup=with_config,
    ),
    Case(
        "replay-out-in-missing-directory",
        cli("replay", str(USDM_TAPE), "--out", "missing/o.jsonl"),
        1,
        (("tapewatch replay", "cannot write missing/o.jsonl", "no directory 'missing'"),),
        setup=with_config,
    ),
    Case(
        "record-out-in-missing-directory",
        cli("record", "--out", "missing/rec.tape.jsonl.zst", "--duration", "1"),
        1,
        (("tapewatch record", "cannot write missing/rec.tape.jsonl.zst", "'missing'"),),
        setup=with_config,
    ),
    *(
        Case(f"bench-{name}-help", bench(name), 0, stdout=("usage:", name))
        for name in ("pipeline.py", "latency.py", "memory.py", "backfill.py", "_support.py")
    ),
    Case(
        "tail-unknown-asset",
        cli("tail", "--asset", "XRP"),
        1,
        (("tapewatch tail", "'XRP'", "config.yaml", "BTC, ETH"),),
        setup=with_config,
    ),
    Case(
        "tail-dead-broker",
        cli("tail", "--config", "dead.yaml"),
        1,
        (("tapewatch tail", "cannot connect", "mqtt://127.0.0.1:{port}", "refused"),),
        setup=dead_broker,
    ),
    Case(
        "replay-cut-last-line",
        cli("replay", "killed.tape.jsonl", "--out", "o.jsonl"),
        0,
        (("WARNING", "killed.tape.jsonl: line", "cut short"), ("replayed",)),
        setup=cut_plain_tape,
    ),
    Case(
        "replay-cut-zst-frame",
        cli("replay", "killed.tape.jsonl.zst", "--out", "o.jsonl"),
        0,
        (("WARNING", "killed.tape.jsonl.zst: line", "cut short", "inside a frame"), ("replayed",)),
        setup=cut_zst_tape,
    ),
    Case(
        "replay-without-config-uses-built-in",
        cli("replay", str(USDM_TAPE), "--out", "o.jsonl"),
        0,
        (("tapewatch replay", *NOTICE), ("replayed",)),
    ),
    Case(
        "replay-none-of-the-configured-symbols",
        cli("replay", str(ALTS_TAPE), "--out", "o.jsonl"),
        1,
        (
            # The guards' own WARNING, which names a symbol it saw, then the verdict.
            ("WARNING", "unknown_symbol: NKNUSDT"),
            ("tapewatch replay", "none of the configured symbols", "BTCUSDT", "--config"),
        ),
        setup=with_config,
    ),
]


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections at once: bound, so nobody else takes it while
    the test runs, and not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def clean_env() -> dict[str, str]:
    """This environment without TAPEWATCH_* (a developer's broker URL must not leak in)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TAPEWATCH_")}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_command_line_names_each_problem_in_one_line(
    case: Case, tmp_path: Path, closed_port: int
) -> None:
    if case.setup is not None:
        case.setup(tmp_path, closed_port)
    result = subprocess.run(
        [sys.executable, *case.argv],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == len(case.stderr), result.stderr
    for line, fragments in zip(lines, case.stderr, strict=True):
        for fragment in fragments:
            assert fragment.format(port=closed_port) in line, (fragment, line)
    for fragment in case.stdout:
        assert fragment in result.stdout, (fragment, result.stdout)
    assert result.returncode == case.code, result.stderr


def test_a_replay_into_a_closed_pipe_stops_quietly(tmp_path: Path) -> None:
    """``replay ... --out /dev/stdout | head -1``: the reader goes after one line; the replay
    ends without a word on stderr, with the status a SIGPIPE gives."""
    with_config(tmp_path, 0)
    proc = subprocess.Popen(
        [sys.executable, *cli("replay", str(USDM_TAPE), "--out", "/dev/stdout")],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # the output is far larger than a pipe's buffer: the next write fails
    stderr = proc.stderr.read().decode()
    assert proc.wait(RUN_TIMEOUT_S) == 128 + 13  # SIGPIPE
    assert b'"state":"online"' in first
    assert stderr == ""


def test_a_cut_tape_replays_every_complete_record(tmp_path: Path) -> None:
    """What a cut tape yields is exactly what was written before the cut."""
    cut_plain_tape(tmp_path, 0)
    cut_zst_tape(tmp_path, 0)
    original = list(read_tape(USDM_TAPE))
    for name in ("killed.tape.jsonl", "killed.tape.jsonl.zst"):
        kept = list(read_tape(tmp_path / name))
        assert 1000 < len(kept) < len(original)
        assert kept == original[: len(kept)]
    # A cut exactly at the end of a line is a complete tape: nothing to warn about.
    whole = tmp_path / "whole.tape.jsonl"
    with TapeWriter(whole) as writer:
        for rec in original[:100]:
            writer.write(rec)
    assert list(read_tape(whole)) == original[:100]


def test_replay_without_config_is_replay_with_the_shipped_config(tmp_path: Path) -> None:
    """The built-in default is config.yaml itself: the same data, the same output."""
    # monitor/config.yaml links to config.yaml: the package ships the very same file.
    assert default_config_data() == yaml.safe_load((REPO / "config.yaml").read_text())
    outs = []
    for config in ((), ("--config", str(REPO / "config.yaml"))):
        out = tmp_path / f"out{len(outs)}.jsonl"
        subprocess.run(
            [sys.executable, *cli("replay", str(USDM_TAPE), "--out", str(out), *config)],
            cwd=tmp_path,
            env=clean_env(),
            check=True,
            capture_output=True,
            timeout=RUN_TIMEOUT_S,
        )
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert b"tapewatch/v1/BTC/signals" in outs[0]
