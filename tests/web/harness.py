"""A running web app on the in-process adapters with a fake worker, driven through httpx's ASGI transport."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI

from facerec.ports import DataTier, PortError
from facerec.settings import Settings
from facerec.testing import Answerer, InstantWorker, answer_by_digest, memory_data_tier
from facerec.web.app import create_app


@dataclass
class Web:
    app: FastAPI
    client: httpx.AsyncClient
    data: DataTier

    @property
    def in_flight(self) -> int:
        return self.app.state.pending.in_flight


def never_answer(request: Any, data: bytes) -> None:
    return None


def web_settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {"request_deadline_s": 5.0, "web_poll_wait_s": 1.0, "shutdown_grace_s": 1.0}
    return Settings(**{**base, **overrides})


@asynccontextmanager
async def running_web(
    answer: Answerer | None = answer_by_digest,
    data_tier: Callable[[Settings], AbstractAsyncContextManager[DataTier]] = memory_data_tier,
    app_kwargs: dict[str, Any] | None = None,
    **overrides: Any,
) -> AsyncIterator[Web]:
    """`answer=None` runs no worker at all."""
    settings = web_settings(**overrides)
    companions = [] if answer is None else [lambda app, data: InstantWorker(data, answer)]
    app = create_app(settings, data_tier, companions=companions, **(app_kwargs or {}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost", timeout=30) as client:
            yield Web(app, client, app.state.data)


def upload(data: bytes, filename: str = "test_00.jpg", field: str = "inputFile") -> dict[str, Any]:
    return {"files": {field: (filename, data, "image/jpeg")}}


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - polls state owned by the app, which has no event to wait on
            await asyncio.sleep(0.01)


class Switch:
    """Makes a wrapped port raise PortError while `failing` is set (in `methods` only, when given)."""

    def __init__(self, methods: frozenset[str] | None = None) -> None:
        self.failing = False
        self.methods = methods

    def check(self, what: str, method: str) -> None:
        if self.failing and (self.methods is None or method in self.methods):
            raise PortError(f"{what} is down")


class FlakyProxy:
    """Any port, with every coroutine method raising PortError while its switch is on."""

    def __init__(self, inner: Any, switch: Switch) -> None:
        self._inner = inner
        self._switch = switch

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not asyncio.iscoroutinefunction(attr):
            return attr

        async def guarded(*args: Any, **kwargs: Any) -> Any:
            self._switch.check(self._inner.name, name)
            return await attr(*args, **kwargs)

        return guarded


def flaky_data_tier(
    store_switch: Switch, queue_switch: Switch, response_switch: Switch | None = None
) -> Callable[[Settings], AbstractAsyncContextManager[DataTier]]:
    @asynccontextmanager
    async def factory(settings: Settings) -> AsyncIterator[DataTier]:
        async with memory_data_tier(settings) as data:
            yield DataTier(
                inputs=FlakyProxy(data.inputs, store_switch),
                outputs=data.outputs,
                requests=FlakyProxy(data.requests, queue_switch),
                responses=FlakyProxy(data.responses, response_switch or Switch()),
                dead_letters=data.dead_letters,
                replies=data.replies,
            )

    return factory
