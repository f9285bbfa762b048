"""Checkpoints: atomic, versioned, and a damaged one is reported, never fatal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from monitor.state import STATE_VERSION, StateError, load_checkpoint, save_checkpoint
from signals.window import BucketWindow


def busy_window() -> BucketWindow:
    rng = np.random.default_rng(1)
    w = BucketWindow(60_000, 1000, 2)
    for t in range(0, 90_000, 170):
        w.add(t, (float(rng.uniform(0, 100)), float(rng.uniform(0, 5))))
    w.mark_missing(70_000, 72_000)
    return w


def test_a_window_survives_a_checkpoint_and_keeps_going(tmp_path: Path) -> None:
    w = busy_window()
    path = tmp_path / "state" / "engine.npz"
    save_checkpoint(path, {f"flow.{k}": v for k, v in w.state().items()}, {"session": "s1"})
    arrays, meta = load_checkpoint(path)
    assert meta == {"version": STATE_VERSION, "session": "s1"}
    restored = BucketWindow.from_state({k[5:]: v for k, v in arrays.items()})
    assert restored.totals() == pytest.approx(w.totals())
    assert restored.coverage() == w.coverage()
    np.testing.assert_array_equal(restored.samples(), w.samples())
    # Both continue identically.
    for win in (w, restored):
        win.add(95_000, (1.0, 1.0))
        win.advance(120_000)
    assert restored.totals() == pytest.approx(w.totals())


def test_write_is_atomic_a_failed_save_keeps_the_old_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "engine.npz"
    save_checkpoint(path, {"a": np.arange(3)}, {})

    class Boom:
        def __array__(self, *args: object, **kw: object) -> np.ndarray:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_checkpoint(path, {"a": Boom()}, {})  # type: ignore[dict-item]
    arrays, _ = load_checkpoint(path)
    assert arrays["a"].tolist() == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["engine.npz"]  # no temp file left behind


@pytest.mark.parametrize(
    "damage",
    ["missing", "truncated", "garbage", "future_version", "no_meta"],
)
def test_damaged_checkpoints_are_reported(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "engine.npz"
    save_checkpoint(path, {"a": np.arange(10)}, {})
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif damage == "future_version":
        with path.open("wb") as fh:
            np.savez(fh, __meta__=np.array(json.dumps({"version": STATE_VERSION + 1})))
    else:
        with path.open("wb") as fh:
            np.savez(fh, a=np.arange(3))
    with pytest.raises(StateError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_window_state_that_does_not_fit_is_rejected() -> None:
    state = busy_window().state()
    state["sums"] = state["sums"][:10]
    with pytest.raises(ValueError):
        BucketWindow.from_state(state)
