"""mei.progress: bars only where someone watches, and none for nothing to do."""

from __future__ import annotations

import io

from mei.progress import progress_bar, progress_enabled


def test_a_bar_with_nothing_to_do_is_not_drawn(monkeypatch):
    stream = io.StringIO()
    with progress_bar(enabled=True, total=0, desc="MEI", unit="MEI", file=stream) as bar:
        assert bar is None  # a worker's last pass finds no key: no "MEI: 0MEI" bar
    assert stream.getvalue() == ""
    with progress_bar(enabled=True, total=3, desc="MEI", unit="MEI", file=stream) as bar:
        bar.update(3)
    assert "MEI: 100%" in stream.getvalue() and "3/3" in stream.getvalue()


def test_bars_follow_the_terminal_and_mei_quiet(monkeypatch):
    monkeypatch.delenv("MEI_QUIET", raising=False)
    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a terminal
    assert progress_enabled() is False and progress_enabled(True) is True
    monkeypatch.setenv("MEI_QUIET", "1")
    assert progress_enabled() is False
