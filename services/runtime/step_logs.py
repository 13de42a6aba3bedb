"""Capture what a step body logs and prints, so its result can carry the step's own output.

A step's output would otherwise be interleaved with every other step's in the worker's stderr, where nobody
can tell which run wrote what. The current step's ``LogBuffer`` lives in a ``ContextVar``: asyncio tasks copy
their context and ``Registry.call`` runs sync bodies in a thread with a copy of the caller's context, so each
step (and only that step) writes into its own buffer, while code outside any step is left untouched.

``install()`` (idempotent) adds two hooks that stay passive when no buffer is set:

* a ``logging.Handler`` on the root logger. It sees only records that pass their logger's level and
  propagate to the root — the root's level is WARNING unless the process configures it, so a step wanting its
  INFO lines captured must lower its logger's level. Because the root now has a handler, ``logging.lastResort``
  would no longer fire for an unconfigured process; the handler forwards to it in exactly that case, so
  warnings are not silently lost. (It also makes a later ``logging.basicConfig()`` a no-op: configure logging
  before starting workers.)
* a proxy of ``sys.stdout``/``sys.stderr`` that tees writes into the buffer and always writes to the real
  stream. Writes made by ``logging``'s own stream handlers are not teed: the root handler already captured
  those records, and teeing them too would duplicate every line.

What a step writes to stdout/stderr while it runs is redacted (``tickflow.events.redact``) on its way to both the
buffer and the real stream. Capture must never break a step: every hook swallows its own errors. Buffers are
bounded and keep the tail, since the end of the output (the lines right before a failure) is what explains it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import Any, TextIO, cast

from tickflow.events.redact import redact

__all__ = ["DEFAULT_LIMIT", "LogBuffer", "capture", "current", "install", "uninstall"]

#: Characters kept per step; results allow 64,000, and a bounded record keeps the results topic cheap.
DEFAULT_LIMIT = 16_000
LINE_FORMAT = "%(levelname)s %(name)s: %(message)s"

_current: ContextVar[LogBuffer | None] = ContextVar("tickflow_step_logs", default=None)
_install_lock = threading.Lock()


class LogBuffer:
    """The tail (at most ``limit`` characters) of one step's output, plus how much was dropped before it.

    Thread-safe: an async body writes from the loop thread, a sync body from a worker thread, and a body may
    start threads of its own that inherit the context. ``close()`` freezes it, so a sync body still running in
    its thread after a timeout or a cancel cannot change logs that were already reported.
    """

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.dropped = 0
        self._chunks: deque[str] = deque()
        self._size = 0
        self._closed = False
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        if not text:
            return
        with self._lock:
            if self._closed:
                return
            if len(text) >= self.limit:
                self.dropped += self._size + len(text) - self.limit
                self._chunks.clear()
                self._chunks.append(text[-self.limit :])
                self._size = self.limit
                return
            self._chunks.append(text)
            self._size += len(text)
            while self._size > self.limit:
                excess = self._size - self.limit
                head = self._chunks[0]
                if len(head) <= excess:
                    self._chunks.popleft()
                    cut = len(head)
                else:
                    self._chunks[0] = head[excess:]
                    cut = excess
                self._size -= cut
                self.dropped += cut

    def getvalue(self) -> str:
        """The kept text, led by a ``[… N earlier chars dropped]`` line when the start was cut off."""
        with self._lock:
            body = "".join(self._chunks)
            dropped = self.dropped
        return f"[… {dropped} earlier chars dropped]\n{body}" if dropped else body

    def close(self) -> None:
        with self._lock:
            self._closed = True


def current() -> LogBuffer | None:
    """The buffer of the step running in this context, or None outside a step."""
    return _current.get()


@contextlib.contextmanager
def capture(buffer: LogBuffer) -> Iterator[LogBuffer]:
    """Make ``buffer`` the current one for this context (and the tasks and threads that copy it).

    On exit the buffer is closed: a thread or task that outlives the step (a sync body after a timeout or a
    cancel) still holds the buffer in its context, and must not change logs that were already reported.
    """
    token = _current.set(buffer)
    try:
        yield buffer
    finally:
        _current.reset(token)
        buffer.close()


class _CaptureHandler(logging.Handler):
    """Appends each record to the current step's buffer as ``LEVEL logger: message`` (plus its traceback)."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.setFormatter(logging.Formatter(LINE_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            buffer = _current.get()
            if buffer is not None:
                buffer.write(self.format(record) + "\n")
            last = logging.lastResort
            if last is not None and record.levelno >= last.level and not self._others_handle(record):
                last.handle(record)  # what logging would have done had this handler not been installed
        except Exception:  # never let capture break a step, nor the code that logged
            pass

    def _others_handle(self, record: logging.LogRecord) -> bool:
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None:
            if any(h is not self for h in logger.handlers):
                return True
            logger = logger.parent if logger.propagate else None
        return False


class _Tee:
    """Stands in for ``sys.stdout``/``sys.stderr``: the real stream gets every write, the step's buffer a copy."""

    def __init__(self, real: TextIO) -> None:
        self._real = real

    def write(self, text: str) -> int:
        buffer = _current.get()
        if buffer is not None:
            try:
                text = redact(text)  # a step printing a secret it uses: neither its logs nor the stream keep it
                caller = sys._getframe(1).f_globals.get("__name__", "")
                if not (caller == "logging" or str(caller).startswith("logging.")):
                    buffer.write(text)
            except Exception:
                pass
        return self._real.write(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._real.flush()

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding, buffer…: the real stream's
        return getattr(self._real, name)


_handler = _CaptureHandler()


def install() -> None:
    """Hook logging and stdout/stderr once; calling it again re-hooks only what was replaced since."""
    with _install_lock:
        root = logging.getLogger()
        if _handler not in root.handlers:
            root.addHandler(_handler)
        if not isinstance(sys.stdout, _Tee):
            sys.stdout = cast(TextIO, _Tee(sys.stdout))
        if not isinstance(sys.stderr, _Tee):
            sys.stderr = cast(TextIO, _Tee(sys.stderr))


def uninstall() -> None:
    """Undo ``install()`` where its hooks are still in place (tests; a host that wants its streams back)."""
    with _install_lock:
        logging.getLogger().removeHandler(_handler)
        stdout: Any = sys.stdout
        if isinstance(stdout, _Tee):
            sys.stdout = stdout._real
        stderr: Any = sys.stderr
        if isinstance(stderr, _Tee):
            sys.stderr = stderr._real
