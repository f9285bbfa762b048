"""The ``tapewatch`` command line (also ``python -m monitor``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import re
import signal
import socket
import sqlite3
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn, TypeVar

import yaml

from monitor import __version__
from monitor.config import (
    ENV_MQTT_URL,
    ENV_NOTIFY_URLS,
    Config,
    ConfigError,
    check_config,
    config_from_dict,
    deep_merge,
    load_config,
    parse_shard,
    shard,
)
from monitor.defaults import BUILT_IN_NAME, default_config, default_config_data
from monitor.service import configure_logging
from streams.tasks import stop_tasks

if TYPE_CHECKING:
    from monitor.recorder import Recorder
    from monitor.replay import Replay
    from monitor.signal_store import SignalStore

log = logging.getLogger("tapewatch")

DEFAULT_CONFIG = "config.yaml"
# What a process killed by SIGPIPE reports to its shell: `replay ... | head` ends like `cat`.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
T = TypeVar("T")


def _run_async(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # uvloop is optional off Linux/macOS
        return asyncio.run(coro)
    return uvloop.run(coro)


def _setup_logging(level: str) -> None:
    # Time-stamped lines on stderr, or journald's format when stderr is the journal.
    configure_logging(level)


def _fail(command: str, message: str) -> NoReturn:
    """Stop with one line on stderr that names the problem (exit status 1)."""
    raise SystemExit(f"tapewatch {command}: {message}")


def _note(command: str, message: str) -> None:
    print(f"tapewatch {command}: {message}", file=sys.stderr, flush=True)


def _load(path: str) -> Config:
    if not Path(path).exists():
        raise SystemExit(
            f"config file {path!r} not found: run from the tapewatch checkout (which ships "
            f"config.yaml) or pass --config FILE"
        )
    try:
        return load_config(path)
    except ConfigError as err:
        lines = "\n".join(f"  {e}" for e in err.errors)
        raise SystemExit(f"{path}: invalid configuration:\n{lines}") from None


def _config(command: str, path: str | None) -> tuple[Config, str]:
    """The config of a command that only reads (replay, tail) and where it came from: ``path``,
    else ./config.yaml, else the built-in one (said on stderr), so that these commands also
    work outside a checkout."""
    if path is None:
        if not Path(DEFAULT_CONFIG).exists():
            _note(
                command,
                f"no {DEFAULT_CONFIG} in {Path.cwd()}: using {BUILT_IN_NAME}; "
                "--config FILE picks another",
            )
            try:
                return default_config(), "the built-in default config"
            except ConfigError as err:  # only the environment (TAPEWATCH_MQTT_URL) can be wrong
                _fail(command, "; ".join(err.errors))
        path = DEFAULT_CONFIG
    return _load(path), path


def _cannot_write(path: str, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        parent = Path(path).parent
        return f"cannot write {path}: no directory {str(parent)!r} (create it first)"
    if isinstance(exc, IsADirectoryError):
        return f"cannot write {path}: it is a directory (name a file in it)"
    return f"cannot write {path}: {exc.strerror or exc}"


def _install_stop(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)


# -- commands -------------------------------------------------------------------------------
def _run_check(args: argparse.Namespace, which: tuple[int, int] | None) -> int:
    """``run --check``: the report on stdout, exit 1 when any check failed."""
    from monitor.check import load, report, run_checks, state_dir

    if args.record:
        _fail("run", "--check starts no daemon, so it records nothing: drop --record")
    config, loaded = load(args.config, which)
    results = [loaded]
    if config is not None:
        _setup_logging("error")  # the report says what failed; log lines would repeat it
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # a cut check's leftovers
        results += [state_dir(config), *_run_async(run_checks(config))]
    print("\n".join(report(results)), flush=True)
    return 0 if all(r.ok for r in results) else 1


def cmd_run(args: argparse.Namespace) -> int:
    from monitor.daemon import Daemon
    from monitor.http_server import HttpListenError

    if args.shard:  # checked before the config, which may be fine while the flag is not
        try:
            which = parse_shard(args.shard)
        except ValueError as exc:
            _fail("run", str(exc))
    if args.check:
        return _run_check(args, which if args.shard else None)
    config = _load(args.config)
    if args.shard:
        try:
            config = shard(config, *which)
        except ConfigError as exc:
            _fail("run", "; ".join(exc.errors))
    _setup_logging(config.log_level)

    recorder = None
    if args.record:
        recorder = _recorder("run", args.record, args.rotate_mb, "tapewatch run --record")

    async def main() -> int:
        stop = asyncio.Event()
        _install_stop(stop)
        await Daemon(config, recorder=recorder).run(stop)
        return 0

    try:
        return _run_async(main())
    except HttpListenError as exc:  # at start, before anything else opened
        _fail("run", str(exc))


def _recorder(command: str, out: str, rotate_mb: float, note: str) -> Recorder:
    from monitor.recorder import Recorder

    try:
        return Recorder(out, max_bytes=max(1, int(rotate_mb * 2**20)), note=note)
    except OSError as exc:  # before any socket opens: nothing to record into
        _fail(command, _cannot_write(out, exc))


def cmd_record(args: argparse.Namespace) -> int:
    from monitor.daemon import Daemon

    config = _load(args.config)
    _setup_logging(config.log_level)
    recorder = _recorder("record", args.out, args.rotate_mb, "tapewatch record")

    async def main() -> int:
        stop = asyncio.Event()
        _install_stop(stop)
        # No checkpoint, no history cache: a daemon may run on this same config, and its
        # state files are its own (the tape does not depend on the engine's state).
        daemon = Daemon(config, recorder=recorder, publish=False, stateful=False)
        task = asyncio.create_task(daemon.run(stop))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + args.duration if args.duration else None
        while not stop.is_set() and not task.done():
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(10.0, remaining or 10.0))
            print(
                f"recorded {recorder.frames} frames, {recorder.rest_bodies} REST bodies, "
                f"{recorder.bytes / 2**20:.1f} MB into {recorder.segment + 1} segment(s)",
                file=sys.stderr,
                flush=True,
            )
        stop.set()
        await task
        return 0

    return _run_async(main())


def cmd_check_config(args: argparse.Namespace) -> int:
    errors = check_config(args.file)
    if errors:
        print(f"{args.file}: {len(errors)} error(s)", file=sys.stderr)
        for line in errors:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"{args.file}: ok")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from monitor.replay import Replay, ReplayError
    from streams.tape import TapeError, merge

    outs = {Path(args.out).resolve()}
    for tape in args.tapes:
        if Path(tape).resolve() in outs:
            _fail("replay", f"--out {args.out} is one of the tapes: it would be overwritten")
    try:
        records = merge(args.tapes)  # reads every header: a file that is no tape fails here
    except TapeError as err:
        _fail("replay", str(err))
    config, origin = _config("replay", args.config)
    _setup_logging(config.log_level)
    try:
        out: IO[bytes] = open(args.out, "wb")  # noqa: SIM115 (closed below, broken pipe or not)
    except OSError as exc:
        _fail("replay", _cannot_write(args.out, exc))
    store = _signal_store("replay", args.signal_history, config) if args.signal_history else None
    replay = Replay(config, base=Path(args.tapes[0]).parent, store=store)
    try:
        with out:
            replay.to_jsonl(records, out)
    except BrokenPipeError:
        # The reader has gone (`| head`): stop quietly, as any filter does on SIGPIPE.
        return EXIT_BROKEN_PIPE
    except (TapeError, ReplayError) as err:
        _fail("replay", str(err))
    finally:
        if store is not None:
            store.close()
    _require_configured("replay", replay, origin)
    frames = sum(replay.health.frames.values())
    malformed = sum(replay.health.malformed.values())
    also = f" and its signal history into {args.signal_history}" if store else ""
    print(
        f"replayed {frames} frames ({malformed} malformed) into {args.out}{also}", file=sys.stderr
    )
    return 0


def _signal_store(command: str, path: str, config: Config) -> SignalStore:
    from monitor.signal_store import SignalStore

    try:
        return SignalStore(path, round(config.signals.baseline_window * 1000))
    except (OSError, sqlite3.Error) as exc:
        _fail(command, f"cannot open the signal history {path}: {exc}")


def _require_configured(command: str, replay: Replay, origin: str) -> None:
    if replay.heard_configured():
        return
    skipped = replay.unknown_symbol_events()
    others = f"; {skipped} events of other symbols were skipped" if skipped else ""
    _fail(
        command,
        f"the tape(s) hold none of the configured symbols "
        f"({', '.join(replay.configured_symbols())}, from {origin}){others}: "
        "pass --config with the tape's assets",
    )


def cmd_report(args: argparse.Namespace) -> int:
    from monitor.replay import Replay, ReplayError
    from monitor.web import report_html
    from streams.tape import TapeError, merge

    if any(Path(tape).resolve() == Path(args.out).resolve() for tape in args.tapes):
        _fail("report", f"--out {args.out} is one of the tapes: it would be overwritten")
    try:
        records = merge(args.tapes)
    except TapeError as err:
        _fail("report", str(err))
    config, origin = _config("report", args.config)
    _setup_logging(config.log_level)
    with tempfile.TemporaryDirectory(prefix="tapewatch-report-") as tmp:
        store = _signal_store("report", str(Path(tmp) / "signals.sqlite"), config)
        replay = Replay(config, base=Path(args.tapes[0]).parent, store=store)
        try:
            changes = sum(1 for msg in replay.messages(records) if msg.topic.endswith("/events"))
        except (TapeError, ReplayError) as err:
            store.close()
            _fail("report", str(err))
        _require_configured("report", replay, origin)
        store.flush()
        title = ", ".join(Path(t).name for t in args.tapes)
        rules = [rule.name for rule in config.regimes]
        page = report_html(store, list(config.assets), rules, title)
        store.close()
    try:
        Path(args.out).write_text(page)
    except OSError as exc:
        _fail("report", _cannot_write(args.out, exc))
    frames = sum(replay.health.frames.values())
    print(
        f"report of {frames} frames ({changes} regime change(s)) written to {args.out}",
        file=sys.stderr,
    )
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from simulator.server import Simulator, serve_forever

    _setup_logging("info")
    try:
        sim = Simulator(
            host="127.0.0.1",
            port=args.port,
            scenario=args.scenario,
            speed=args.speed,
            seed=args.seed,
            faults=frozenset(args.fault or ()),
            fault_every=args.fault_every,
            fault_symbol=args.fault_symbol,
            unknown_symbols=args.unknown_symbols,
            dead_venues=args.dead_venue or (),
        )
    except ValueError as exc:  # what the parser cannot check alone, e.g. the fault symbol
        _fail("simulate", str(exc))

    async def main() -> int:
        task = asyncio.create_task(serve_forever(sim, args.write_config, args.config))
        stop = asyncio.Event()
        _install_stop(stop)
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
        if task.done() and not task.cancelled() and task.exception() is not None:
            print(f"tapewatch simulate: {task.exception()}", file=sys.stderr)
            return 2
        await stop_tasks([task, stopped])
        return 0

    return _run_async(main())


def cmd_tail(args: argparse.Namespace) -> int:
    import aiomqtt

    from monitor.tail import BrokerUnreachable, tail

    config, origin = _config("tail", args.config)
    mqtt = config.mqtt
    asset = args.asset
    if asset is not None:
        # Asset names are upper-case in every config (BTC): `--asset btc` means that one.
        asset = asset if asset in config.assets else asset.upper()
        if asset not in config.assets:
            _fail(
                "tail",
                f"no asset {args.asset!r} is configured in {origin}, so none is published "
                f"under that name (configured: {', '.join(sorted(config.assets))}); --config "
                "names the config of the instance to watch",
            )
    where = f"{mqtt.url} ({'env ' + ENV_MQTT_URL if os.environ.get(ENV_MQTT_URL) else origin})"

    async def main() -> int:
        task = asyncio.create_task(
            tail(
                mqtt.host,
                mqtt.port,
                mqtt.prefix,
                asset or "+",
                live=False if args.plain else None,
                username=mqtt.username,
                password=mqtt.password,
                tls_context=mqtt.ssl_context(),
            )
        )
        stop = asyncio.Event()
        _install_stop(stop)
        done, _ = await asyncio.wait(
            [task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED
        )
        await stop_tasks([task])
        error = task.exception() if task in done else None
        if isinstance(error, BrokerUnreachable):
            _fail("tail", f"cannot connect to the MQTT broker at {where}: {error}")
        if isinstance(error, aiomqtt.MqttError):
            _fail("tail", f"lost the MQTT broker at {where}: {error}")
        if error is not None:
            raise error
        return 0

    return _run_async(main())


def cmd_notify(args: argparse.Namespace) -> int:
    from monitor.notify import Notifier, NotifyError, load_targets

    config, origin = _config("notify", args.config)
    worker = args.worker or socket.gethostname().split(".")[0]
    if not _WORKER.fullmatch(worker):
        _fail(
            "notify",
            f"--worker {worker!r}: use letters, digits, '_', '.' or '-' (it is part of the "
            "MQTT client id)",
        )
    if not config.notify.urls:
        _fail(
            "notify",
            f"no notification URLs: list Apprise URLs under notify.urls in {origin} or in "
            f"{ENV_NOTIFY_URLS}, e.g. ntfy://ntfy.sh/<your-topic>",
        )
    try:
        targets = load_targets(config.notify.urls)
    except NotifyError as exc:
        _fail("notify", str(exc))
    _setup_logging(config.log_level)

    async def main() -> int:
        stop = asyncio.Event()
        _install_stop(stop)
        await Notifier(config, targets, worker=worker).run(stop)
        return 0

    try:
        return _run_async(main())
    except NotifyError as exc:
        _fail("notify", str(exc))


# A worker name goes into the MQTT client id: <notify.group>-<worker>.
_WORKER = re.compile(r"[A-Za-z0-9_.-]+")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cmd_demo(args: argparse.Namespace) -> int:
    from monitor.daemon import Daemon
    from monitor.tail import tail
    from simulator.server import Simulator

    _setup_logging("warning")
    # The simulator takes the base's rules and MQTT prefix, and replaces assets and endpoints.
    base: dict[str, Any]
    if args.config is None and not Path(DEFAULT_CONFIG).exists():
        _note("demo", f"no {DEFAULT_CONFIG} in {Path.cwd()}: using {BUILT_IN_NAME} as the base")
        base = default_config_data()
    else:
        path = args.config or DEFAULT_CONFIG
        _load(path)  # one line per problem, before anything starts
        base = yaml.safe_load(Path(path).read_text(encoding="utf-8"))

    async def main(state_dir: str) -> int:
        sim = Simulator(port=0, scenario=args.scenario, speed=args.speed)
        await sim.start()
        port = _free_port()
        merged = sim.config_for(base)
        merged = deep_merge(
            merged,
            {
                "mqtt": {"url": f"mqtt://127.0.0.1:{port}", "broker": "embedded"},
                "instance": "demo",
                "log_level": "warning",
                # Each demo is a new simulated market: a baseline checkpointed by an earlier
                # demo (its sell-offs included) would skew this one's z-scores.
                "state": {"dir": state_dir},
            },
        )
        config = config_from_dict(merged, env={})
        print(
            f"tapewatch demo: simulator on {sim.base_ws} (scenario {args.scenario}), "
            f"embedded MQTT broker on mqtt://127.0.0.1:{port}; running {args.duration:g}s\n"
            f"  watch it from another terminal: "
            f"mosquitto_sub -p {port} -t '{config.mqtt.prefix}/#' -v",
            flush=True,
        )
        stop = asyncio.Event()
        _install_stop(stop)
        counts: Counter[str] = Counter()
        daemon = Daemon(config)
        daemon_task = asyncio.create_task(daemon.run(stop))
        await asyncio.wait_for(daemon.broker_ready.wait(), 10)
        tail_task = asyncio.create_task(
            tail(
                "127.0.0.1",
                port,
                config.mqtt.prefix,
                counts=counts,
                live=False if args.plain else None,  # None: the rich view on a terminal
            )
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.duration)
        stop.set()
        await stop_tasks([tail_task])
        await daemon_task
        await sim.stop()
        print(
            f"demo finished: {counts['signals']} signals, {counts['regime']} regime and "
            f"{counts['status']} status messages received over MQTT"
        )
        return 0 if counts["signals"] and counts["regime"] else 1

    with tempfile.TemporaryDirectory(prefix="tapewatch-demo-") as state_dir:
        return _run_async(main(state_dir))


# -- parser ---------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """Usage errors in one line that names the problem; the usage is one --help away."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive(unit: str) -> Callable[[str], float]:
    """A converter for a finite number above 0 (0 seconds of demo, a speed of 0 or a 0 MB
    segment cannot mean anything)."""

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {unit}, got {text!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"must be more than 0 ({unit}), got {text!r}")
        return value

    return convert


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a TCP port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0 (any free port) to 65535, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from simulator.faults import DEAD_VENUES, FAULTS, UNKNOWN_SYMBOLS
    from simulator.scenarios import SCENARIOS

    p = _Parser(
        prog="tapewatch",
        description="Real-time crypto market-flow monitor: signals and regimes over MQTT.",
    )
    p.add_argument("--version", action="version", version=f"tapewatch {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    scenarios = list(SCENARIOS)
    scenario_help = f"market scenario: {', '.join(scenarios)} [sell_wave]"
    built_in = f"[{DEFAULT_CONFIG}, else the built-in default]"

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", default=DEFAULT_CONFIG, help="config file [config.yaml]")
    run.add_argument(
        "--check",
        action="store_true",
        help="start nothing: check the config, the state directory, the MQTT broker and every "
        "venue's websockets and REST API (each within 8 s, all within 10 s), print one line "
        "per check and exit 0 if all pass, 1 otherwise",
    )
    run.add_argument(
        "--shard",
        metavar="I/N",
        help="run only shard I of N of the assets (name order, every N-th), as instance "
        "<instance>-IofN",
    )
    run.add_argument(
        "--record",
        metavar="TAPE",
        help="also record what the pipeline processes to TAPE (.tape.jsonl.zst), with the "
        "state it started from and the history it fetched: replaying it repeats the session",
    )
    run.add_argument(
        "--rotate-mb",
        type=_positive("megabytes"),
        default=256.0,
        help="with --record: start a new tape segment after this many uncompressed MB [256]",
    )
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="simulator + daemon + broker + live view, offline")
    demo.add_argument(
        "--scenario", default="sell_wave", choices=scenarios, metavar="NAME", help=scenario_help
    )
    demo.add_argument(
        "--duration", type=_positive("seconds"), default=60.0, metavar="S", help="seconds [60]"
    )
    demo.add_argument(
        "--speed",
        type=_positive("a speed-up factor"),
        default=1.0,
        metavar="X",
        help="event-time speed-up [1]",
    )
    demo.add_argument("--config", metavar="FILE", help=f"base config {built_in}")
    demo.add_argument(
        "--plain", action="store_true", help="print lines instead of the live view on a terminal"
    )
    demo.set_defaults(func=cmd_demo)

    sim = sub.add_parser("simulate", help="run the exchange simulator on loopback")
    sim.add_argument("--port", type=_port, default=8765, help="0: any free port [8765]")
    sim.add_argument(
        "--scenario", default="sell_wave", choices=scenarios, metavar="NAME", help=scenario_help
    )
    sim.add_argument(
        "--speed",
        type=_positive("a speed-up factor"),
        default=1.0,
        metavar="X",
        help="event-time speed-up [1]",
    )
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument("--write-config", metavar="FILE", help="write a config pointing at it")
    sim.add_argument(
        "--config", default=DEFAULT_CONFIG, help="base config for --write-config [config.yaml]"
    )
    sim.add_argument(
        "--fault",
        action="append",
        choices=sorted(FAULTS),
        help="inject a fault every --fault-every seconds (repeatable): drop = cut every socket; "
        "stall = silence one cadenced stream; skip_depth = skip a book update; duplicate / "
        "reorder = repeat or swap trade frames; malformed = bad frames; rest_429 / rest_418 = "
        "rate-limit or ban REST; hostile = well-formed but implausible extra frames, one kind "
        "in turn (a trade ten years ahead, trade ids 1e9 and 50 ahead, price and quantity "
        "1e200 and 1e150, a burst of --unknown-symbols symbols nobody subscribed)",
    )
    sim.add_argument(
        "--unknown-symbols",
        type=_count,
        default=UNKNOWN_SYMBOLS,
        metavar="N",
        help=f"new symbols in each burst of the hostile fault [{UNKNOWN_SYMBOLS}]",
    )
    sim.add_argument(
        "--dead-venue",
        action="append",
        choices=sorted(DEAD_VENUES),
        help="refuse every websocket of this venue (or venue/path) with HTTP 451, so it never "
        "connects; REST stays up (repeatable)",
    )
    sim.add_argument(
        "--fault-symbol",
        default="BTCUSDT",
        help="symbol the wire faults hit (Binance symbol or Coinbase product) [BTCUSDT]",
    )
    sim.add_argument(
        "--fault-every",
        type=_positive("seconds"),
        default=5.0,
        help="seconds between faults [5]",
    )
    sim.set_defaults(func=cmd_simulate)

    rep = sub.add_parser("replay", help="replay tapes through the pipeline at full speed")
    rep.add_argument(
        "tapes",
        nargs="+",
        metavar="TAPE",
        help="tape files, plain or .zst (the segments of a recording merge in order)",
    )
    rep.add_argument("--config", metavar="FILE", help=f"config file {built_in}")
    rep.add_argument(
        "--out", required=True, metavar="FILE.jsonl", help="write would-be MQTT messages here"
    )
    rep.add_argument(
        "--signal-history",
        metavar="FILE.sqlite",
        help="also write the one-minute signal history (the charts' store) here",
    )
    rep.set_defaults(func=cmd_replay)

    rpt = sub.add_parser("report", help="replay tapes into one self-contained HTML page of charts")
    rpt.add_argument("tapes", nargs="+", metavar="TAPE", help="tape files, plain or .zst")
    rpt.add_argument("--config", metavar="FILE", help=f"config file {built_in}")
    rpt.add_argument("--out", required=True, metavar="FILE.html", help="the page to write")
    rpt.set_defaults(func=cmd_report)

    rec = sub.add_parser("record", help="record raw exchange traffic to a tape")
    rec.add_argument("--out", required=True, metavar="TAPE", help="e.g. rec.tape.jsonl.zst")
    rec.add_argument(
        "--duration",
        type=_positive("seconds"),
        help="seconds (default: until interrupted)",
    )
    rec.add_argument(
        "--rotate-mb",
        type=_positive("megabytes"),
        default=256.0,
        help="start a new tape segment after this many uncompressed MB [256]",
    )
    rec.add_argument("--config", default=DEFAULT_CONFIG, help="config file [config.yaml]")
    rec.set_defaults(func=cmd_record)

    tl = sub.add_parser("tail", help="live view of regimes and signals from the broker")
    tl.add_argument(
        "--config", metavar="FILE", help=f"config file: broker, prefix and assets {built_in}"
    )
    tl.add_argument("--asset", help="one asset (default: all)")
    tl.add_argument(
        "--plain",
        action="store_true",
        help="print one line per change instead of the live view (automatic when not a terminal)",
    )
    tl.set_defaults(func=cmd_tail)

    nt = sub.add_parser(
        "notify", help="send regime changes to phones and chat (Apprise URLs in notify:)"
    )
    nt.add_argument(
        "--config", metavar="FILE", help=f"config file: broker, prefix and notify: {built_in}"
    )
    nt.add_argument(
        "--worker",
        metavar="NAME",
        help="this worker's name, stable across restarts and unique in its group: its MQTT "
        "session is <notify.group>-NAME [the host name]",
    )
    nt.set_defaults(func=cmd_notify)

    chk = sub.add_parser("check-config", help="validate a config file")
    chk.add_argument("file")
    chk.set_defaults(func=cmd_check_config)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C before a command installed its own handler
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
