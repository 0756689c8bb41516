"""`create_app(settings)`: the FastAPI application with its resources opened in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from facerec.ports import DataTier, Fleet, WorkerInfo, WorkerState
from facerec.settings import Settings, get_settings
from facerec.web.access_log import AccessLog
from facerec.web.admission import ByteBudget, InflightBytes
from facerec.web.api import WorkersOut, WorkerStates, router
from facerec.web.auth import FailedAttempts
from facerec.web.deployment import Deployment
from facerec.web.docs import install_docs
from facerec.web.errors import install_error_handlers
from facerec.web.gateway import RecognitionGateway
from facerec.web.guard import BrowserGuard
from facerec.web.metrics import MetricsMiddleware, WebMetrics, WorkerCount
from facerec.web.page import page_router
from facerec.web.pending import PendingRequests
from facerec.web.people import load_gallery_file_people
from facerec.web.people import router as people_router
from facerec.web.response_poller import ResponsePoller
from facerec.web.uploads import MULTIPART_OVERHEAD_BYTES, BodySizeLimit

log = logging.getLogger(__name__)

DataTierFactory = Callable[[Settings], AbstractAsyncContextManager[DataTier]]
Companion = Callable[[FastAPI, DataTier], AbstractAsyncContextManager[object]]
"""Something that runs alongside the web tier in this process and shares its data tier (the scaler, or a
test's fake worker): entered after the poller starts, exited before it stops."""


def _default_data_tier(settings: Settings) -> AbstractAsyncContextManager[DataTier]:
    from facerec.backend import open_data_tier  # imported late: written by another tier, may use aioboto3

    return open_data_tier(settings)


def fleet_worker_count(fleet: Fleet) -> Callable[[], Awaitable[int]]:
    async def count() -> int:
        return sum(1 for w in await fleet.list() if w.state in (WorkerState.PENDING, WorkerState.RUNNING))

    return count


async def _join_deployment(
    settings: Settings, data: DataTier, pending: PendingRequests, stack: AsyncExitStack, web_id: str | None
) -> Deployment | None:
    """Join the deployment's other web processes when the data tier can coordinate them: choose the reply
    channel (the fixed queue, or one of this process's own), heartbeat, reap the dead. Left after the drain
    (the exit stack unwinds it after the poller and the companions stop)."""
    if data.coordination is None or data.replies is None:
        return None
    deployment = Deployment(
        settings,
        data.coordination,
        data.replies,
        data.responses,
        lambda: pending.in_flight,
        address=f"{settings.host}:{settings.port}",
        web_id=web_id,
    )
    await deployment.join()
    stack.push_async_callback(deployment.leave)
    return deployment


def _fleet_states(fleet: Fleet | None) -> WorkerStates | None:
    if fleet is None:
        return None

    async def states() -> WorkersOut:
        return count_states(await fleet.list())

    return states


def count_states(workers: Sequence[WorkerInfo]) -> WorkersOut:
    def count(state: WorkerState) -> int:
        return sum(1 for w in workers if w.state == state)

    return WorkersOut(
        running=count(WorkerState.RUNNING), starting=count(WorkerState.PENDING), stopping=count(WorkerState.STOPPING)
    )


def create_app(
    settings: Settings | None = None,
    data_tier_factory: DataTierFactory | None = None,
    *,
    fleet: Fleet | None = None,
    worker_count: WorkerCount | None = None,
    worker_states: WorkerStates | None = None,
    companions: Sequence[Companion] = (),
    web_id: str | None = None,
) -> FastAPI:
    """`app.state.pending.in_flight` is the exact number of requests in flight (for the scaler);
    `app.state.data` is the open DataTier while the app runs. `web_id`: this process's id in its deployment
    (random when not given; `facerec serve` chooses it first to print it)."""
    settings = settings or get_settings()
    open_data = data_tier_factory or _default_data_tier
    pending = PendingRequests()
    if worker_count is None and fleet is not None:
        worker_count = fleet_worker_count(fleet)
    metrics = WebMetrics(pending, worker_count)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            data = await stack.enter_async_context(open_data(settings))
            deployment = await _join_deployment(settings, data, pending, stack, web_id)
            app.state.deployment = deployment
            # A lone web process (tests' data tiers, no coordination) reads the fixed queue, as always; so does the
            # process of a deployment that holds the fixed queue's lease (its requests carry no reply_to).
            channel = deployment.channel if deployment is not None else None
            reply_to = channel.reply_to if channel is not None else None
            poller = ResponsePoller(
                channel.queue if channel is not None else data.responses,
                data.dead_letters,
                pending,
                pollers=settings.web_response_pollers,
                wait_s=settings.web_poll_wait_s,
                on_response=metrics.observe_response,
                own_reply_queue=reply_to,
                replies=data.replies,
                fixed_responses=data.responses,
            )
            poller.start()
            stack.push_async_callback(poller.stop)
            gateway = RecognitionGateway(data, pending, settings, reply_to=reply_to)
            app.state.data, app.state.poller, app.state.gateway = data, poller, gateway
            for companion in companions:
                await stack.enter_async_context(companion(app, data))
            log.info("web_started", extra={"backend": settings.backend, "prefix": settings.prefix})
            try:
                yield
            finally:
                gateway.accepting = False
                drained = await pending.wait_idle(settings.shutdown_grace_s)
                log.info("web_stopping", extra={"drained": drained, "abandoned": pending.in_flight})

    app = FastAPI(
        title="facerec",
        summary="Elastic face recognition: photo in, name out.",
        version="0.1.0",
        lifespan=lifespan,
        # The stock pages load their scripts from CDNs: install_docs serves them from this process instead.
        docs_url=None,
        redoc_url=None,
    )
    install_docs(app)
    app.state.settings = settings
    app.state.pending = pending
    app.state.deployment = None
    """The open Deployment (membership, reply channel) while the app runs in one; None for a lone process."""
    app.state.leadership = None
    """Set by the scaler companion in a deployment: whether this process holds the `scaler` lease."""
    app.state.metrics = metrics
    app.state.failed_key_attempts = FailedAttempts(settings.auth_failures_per_minute)
    app.state.worker_states = worker_states if worker_states is not None else _fleet_states(fleet)
    app.state.gallery_file_people = load_gallery_file_people(settings.gallery)
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(people_router)
    app.include_router(page_router)
    # Each add_middleware wraps the previous ones: the last added is outermost. Metrics see every status,
    # including the size guard's early 413 and the byte budget's 503; the browser guard refuses before either.
    max_body_bytes = settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
    app.state.upload_budget = ByteBudget(settings.max_inflight_bytes, metrics)
    app.add_middleware(InflightBytes, budget=app.state.upload_budget, max_body_bytes=max_body_bytes)
    app.add_middleware(BodySizeLimit, max_body_bytes=max_body_bytes, file_limit=settings.max_upload_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(BrowserGuard, settings=settings)
    app.add_middleware(AccessLog)
    return app
