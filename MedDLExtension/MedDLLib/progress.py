"""Terminal progress for long ``meddl infer`` / ``batch`` / ``evaluate`` work: one bar on stderr, only on a TTY.

Three kinds of progress, one rule: a bar is drawn only when stderr is a terminal and the process is *not* the GUI's
child (``MEDDL_GUI_PROTOCOL=jsonl``: its stdout carries the JSON-lines protocol and its stderr is captured, so a
redrawn bar would only be noise). Redirected to a file or a pipe, the commands print their result lines only.

* :func:`fraction_reporter` -- a ``(fraction, message) -> None`` callback, the shape the task logic's
  ``process(..., progress=...)`` takes (``meddl infer``);
* :func:`count_bar` -- a bar over a known number of items (``meddl batch``: studies);
* :func:`activity` -- a context manager that shows the elapsed time of work that reports no fraction
  (``meddl evaluate``: the tasks' evaluation runs as one call).

All three use tqdm (already a dependency through the training loop).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import IO, Any, Iterator, Mapping

from .guisupport import PROTOCOL_ENV, PROTOCOL_VALUE


def wants_bar(stream: IO[str] | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """Whether to draw a bar on ``stream`` (default stderr): it is a TTY and this is not the GUI's child."""
    stream = sys.stderr if stream is None else stream
    environ = os.environ if environ is None else environ
    if environ.get(PROTOCOL_ENV) == PROTOCOL_VALUE:
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


class FractionBar:
    """A ``(fraction, message)`` progress callback drawing a 0-100 % tqdm bar; :meth:`close` when done."""

    def __init__(self, desc: str, stream: IO[str]) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=100, desc=desc, file=stream, unit="%", leave=False,
                         bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} {postfix}")

    def __call__(self, fraction: float, message: str = "") -> None:
        done = int(round(100 * min(max(float(fraction), 0.0), 1.0)))
        self._bar.n = max(self._bar.n, done)  # never backwards
        self._bar.set_postfix_str(message, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()


def fraction_reporter(desc: str, stream: IO[str] | None = None,
                      environ: Mapping[str, str] | None = None) -> FractionBar | None:
    """A :class:`FractionBar` on ``stream`` (default stderr) when :func:`wants_bar`, else None."""
    stream = sys.stderr if stream is None else stream
    return FractionBar(desc, stream) if wants_bar(stream, environ) else None


def count_bar(total: int, desc: str, unit: str = "item", stream: IO[str] | None = None,
              environ: Mapping[str, str] | None = None) -> Any:
    """A tqdm bar over ``total`` items when :func:`wants_bar`, else a silent stand-in with the same ``update``,
    ``write`` (to the stream, always: failures are never hidden) and ``close``."""
    stream = sys.stderr if stream is None else stream
    if wants_bar(stream, environ):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=stream)
    return _NoBar(stream)


class _NoBar:
    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def update(self, n: int = 1) -> None:
        pass

    def write(self, line: str, file: IO[str] | None = None) -> None:
        print(line, file=file or self._stream)

    def close(self) -> None:
        pass


@contextlib.contextmanager
def activity(desc: str, stream: IO[str] | None = None, environ: Mapping[str, str] | None = None,
             interval_s: float = 0.5) -> Iterator[None]:
    """Show ``desc`` with the elapsed time, redrawn every ``interval_s`` seconds, while the block runs (on a TTY,
    outside the GUI); the line is cleared when the block ends."""
    stream = sys.stderr if stream is None else stream
    if not wants_bar(stream, environ):
        yield
        return
    from tqdm import tqdm

    bar = tqdm(total=None, desc=desc, file=stream, leave=False, bar_format="{desc}: running {elapsed}")
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(interval_s):
            bar.refresh()

    thread = threading.Thread(target=tick, name="meddl-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.close()
