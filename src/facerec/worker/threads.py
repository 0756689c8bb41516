"""Run blocking inference off the event loop: in a daemon thread, or on the main thread.

`run_in_daemon_thread`, not `asyncio.to_thread`: its executor threads are joined at interpreter exit, so a
worker told to stop in the middle of a long batch could not exit within its grace period. A daemon thread
is abandoned instead, which is safe because the batch's messages were already released back to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


async def run_in_daemon_thread(fn: Callable[[], T], name: str = "facerec-inference") -> T:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def _target() -> None:
        try:
            settle: Callable[[], None] = functools.partial(_resolve, future, fn())
        except BaseException as exc:
            # Hand every failure to the awaiting coroutine; the thread itself has nowhere to report it.
            settle = functools.partial(_reject, future, exc)
        # The loop may be closed already when a stopped worker abandoned this thread.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle)

    threading.Thread(target=_target, name=name, daemon=True).start()
    return await future


class InferenceRunner(Protocol):
    """Runs a blocking call somewhere other than the event loop's thread and awaits its result."""

    def __call__(self, fn: Callable[[], T]) -> Awaitable[T]: ...


class MainThreadRunner:
    """Runs blocking calls on the thread that calls `serve()`, normally the process's main thread.

    Why: measured here, PyTorch inference (MTCNN + InceptionResnetV1, batch 32) runs about 15% slower from
    any thread other than the main one, so the worker puts its event loop in a thread and keeps the main
    thread for the model.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.AbstractEventLoop, asyncio.Future[Any]] | None]
        self._jobs = queue.SimpleQueue()
        self.busy = False

    async def __call__(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((fn, loop, future))
        return await future

    def close(self) -> None:
        """Make `serve()` return once the call in progress (if any) is done."""
        self._jobs.put(None)

    def serve(self) -> None:
        while True:
            try:
                # A timeout keeps the thread returning to the interpreter, where signal handlers run.
                job = self._jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            if job is None:
                return
            fn, loop, future = job
            self.busy = True
            try:
                settle: Callable[[], None] = functools.partial(_resolve, future, fn())
            except BaseException as exc:  # handed to the awaiting coroutine, like run_in_daemon_thread
                settle = functools.partial(_reject, future, exc)
            finally:
                self.busy = False
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle)


def _resolve(future: asyncio.Future[T], result: T) -> None:
    if not future.done():  # the awaiting task was cancelled meanwhile
        future.set_result(result)


def _reject(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
