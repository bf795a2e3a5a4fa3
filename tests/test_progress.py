"""The shared progress bar: visible on a terminal, silent in pipes/CI/CliRunner, off when asked."""

from __future__ import annotations

import io
import sys

from golfpack._progress import bar


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_is_silent_off_a_tty(monkeypatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert list(bar(range(3), desc="x", unit="it")) == [0, 1, 2]
    b = bar(total=5, desc="y", unit="it")
    b.update(5)
    b.close()
    assert err.getvalue() == ""


def test_bar_draws_on_a_tty_unless_disabled(monkeypatch) -> None:
    err = _Tty()
    monkeypatch.setattr(sys, "stderr", err)
    assert sum(bar(range(4), desc="work", unit="it")) == 6
    assert "work:" in err.getvalue() and "/4" in err.getvalue()
    err2 = _Tty()
    monkeypatch.setattr(sys, "stderr", err2)
    list(bar(range(4), desc="work", unit="it", enabled=False))
    assert err2.getvalue() == ""


def test_bar_forced_on_draws_off_a_tty(monkeypatch) -> None:
    err = io.StringIO()  # `--progress` given explicitly: the user asked for it, pipe or not
    monkeypatch.setattr(sys, "stderr", err)
    list(bar(range(2), desc="forced", unit="it", enabled=True))
    assert "forced:" in err.getvalue()
