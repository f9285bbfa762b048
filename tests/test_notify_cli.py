"""``tapewatch notify``'s configuration (the ``notify:`` section, TAPEWATCH_NOTIFY_URLS) and its
command line as a user meets it: the real ``python -m monitor notify`` in a fresh directory.
Every mistake ends in one line on stderr, never a traceback, and never echoes a URL's token."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.config import ConfigError, NotifyConfig, config_from_dict, deep_merge
from tests.conftest import REPO

SHIPPED = yaml.safe_load((REPO / "config.yaml").read_text())


def notify_config(section: Any, env: dict[str, str] | None = None) -> NotifyConfig:
    return config_from_dict(deep_merge(SHIPPED, {"notify": section}), env=env or {}).notify


def errors(section: Any, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as err:
        notify_config(section, env)
    return err.value.errors


def test_the_shipped_config_sends_nothing() -> None:
    n = config_from_dict(SHIPPED, env={}).notify
    assert n == NotifyConfig()
    assert n.urls == ()


def test_a_whole_section_is_read() -> None:
    n = notify_config(
        {
            "urls": ["json://127.0.0.1:9/hook"],
            "group": "alerts",
            "session_expiry": "1d",
            "assets": ["BTC"],
            "regimes": ["seller_dominance", "distribution"],
            "directions": ["entered"],
            "group_window": "500ms",
            "min_interval": 0,
            "max_events": 5,
            "retry_initial": "2s",
            "retry_max": "1m",
            "give_up": "10m",
            "body_format": "text",
        }
    )
    assert n == NotifyConfig(
        urls=("json://127.0.0.1:9/hook",),
        group="alerts",
        session_expiry=86400.0,
        assets=("BTC",),
        regimes=("seller_dominance", "distribution"),
        directions=("entered",),
        group_window=0.5,
        min_interval=0.0,
        max_events=5,
        retry_initial=2.0,
        retry_max=60.0,
        give_up=600.0,
        body_format="text",
    )


def test_env_urls_are_added_after_the_files() -> None:
    env = {"TAPEWATCH_NOTIFY_URLS": " tgram://123:abc/456 \n json://h/a  "}
    n = notify_config({"urls": ["json://h/a"]}, env)
    assert n.urls == ("json://h/a", "tgram://123:abc/456")
    assert notify_config(None, {"TAPEWATCH_NOTIFY_URLS": ""}).urls == ()


def test_every_mistake_is_named_with_its_key_path() -> None:
    found = errors(
        {
            "urls": ["ntfy.sh/mytopic", 3],
            "group": "a/b",
            "assets": ["btc"],
            "regimes": ["seller_dominanc"],
            "directions": ["up"],
            "max_events": 0,
            "retry_initial": "1m",
            "retry_max": "1s",
            "session_expiry": "200y",
            "body_format": "html",
            "give_up": -1,
            "url": [],
        },
        {"TAPEWATCH_NOTIFY_URLS": "json://ok/x secret-token-without-scheme"},
    )
    expected = [
        "notify.url: unknown key (did you mean 'urls'?)",
        "notify.urls[0]: expected an Apprise URL",
        "notify.urls[1]: expected string, got int 3",
        "env TAPEWATCH_NOTIFY_URLS (URL 2): expected an Apprise URL",
        "notify.directions[0]: unknown direction 'up' (known: entered, left)",
        "notify.retry_max: must be at least retry_initial (60 s)",
        "notify.session_expiry: not a duration",
        "notify.max_events: must be a positive integer, got 0",
        "notify.body_format: expected one of markdown, text, got 'html'",
        "notify.group: must be letters, digits",
        "notify.assets[0]: unknown asset 'btc'",
        "notify.regimes[0]: unknown regime 'seller_dominanc' (did you mean 'seller_dominance'?)",
        "notify.give_up: must be a positive duration",
    ]
    for fragment in expected:
        assert sum(line.startswith(fragment) for line in found) == 1, (fragment, found)
    assert len(found) == len(expected), found
    assert not any("secret-token" in line or "mytopic" in line for line in found)


def test_no_direction_at_all_is_a_mistake() -> None:
    assert errors({"directions": []}) == [
        "notify.directions: must name entered, left or both (leave the key out for both)"
    ]


# -- the command line -----------------------------------------------------------------------------
def run_notify(
    tmp_path: Path, section: Any, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    config = deep_merge(SHIPPED, {"notify": section, "mqtt": {"url": "mqtt://127.0.0.1:9"}})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TAPEWATCH_")}
    return subprocess.run(
        [sys.executable, "-m", "monitor", "notify", "--config", "cfg.yaml", *args],
        cwd=tmp_path,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("section", "args", "env", "says", "secret"),
    [
        ({}, (), {}, "no notification URLs: list Apprise URLs under notify.urls in cfg.yaml", ""),
        (
            {"urls": ["json://127.0.0.1:9/ok", "foo://sekrit@host/x"]},
            (),
            {},
            "notification URL 2 of 2 (foo://...) is not usable",
            "sekrit",
        ),
        (
            {},
            (),
            {"TAPEWATCH_NOTIFY_URLS": "tgram://not-a-bot-token-sekrit/123"},
            "notification URL 1 of 1 (tgram://...) is not usable",
            "sekrit",
        ),
        (
            {"urls": ["json://127.0.0.1:9/ok"]},
            ("--worker", "two words"),
            {},
            "--worker 'two words': use letters, digits",
            "",
        ),
        ({"max_events": "many"}, (), {}, "notify.max_events: expected integer", ""),
    ],
    ids=["no-urls", "unknown-scheme", "bad-telegram-url", "bad-worker", "bad-config"],
)
def test_each_mistake_is_one_line_and_exit_1(
    tmp_path: Path,
    section: Any,
    args: tuple[str, ...],
    env: dict[str, str],
    says: str,
    secret: str,
) -> None:
    result = run_notify(tmp_path, section, *args, env=env)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert says in result.stderr, result.stderr
    if secret:
        assert secret not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    # A config error is the file's name plus one indented line per problem; the rest, one line.
    assert len(lines) == (2 if says.startswith("notify.") else 1), result.stderr


def test_the_command_is_listed_in_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "notify", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert "--worker NAME" in result.stdout
    assert "--config FILE" in result.stdout


def test_a_store_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file where the state directory should be\n")
    config = deep_merge(
        SHIPPED,
        {
            "notify": {"urls": ["json://127.0.0.1:9/hook"]},
            "mqtt": {"url": "mqtt://127.0.0.1:9"},
            "state": {"dir": "taken"},
        },
    )
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TAPEWATCH_")}
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "notify", "--config", "cfg.yaml", "--worker", "w1"],
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("tapewatch notify: cannot open the store taken/notify-tapewatch-notify")
