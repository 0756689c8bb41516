"""`open_fleet(settings)`: the Fleet adapter the settings ask for, closed when the owner's lifespan ends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from facerec.adapters.aws_session import AwsClients
from facerec.ports import Fleet
from facerec.settings import Settings


@asynccontextmanager
async def open_fleet(settings: Settings, aws: AwsClients | None = None) -> AsyncIterator[Fleet]:
    """Local backend: worker subprocesses (logs in `<data_dir>/logs`), stopped on exit. AWS backend: the
    EC2 app tier, on `aws` when given (the caller's clients), else on clients opened and closed here."""
    max_workers = settings.max_workers if settings.max_workers is not None else 1
    async with AsyncExitStack() as stack:
        fleet: Fleet
        if settings.backend == "local":
            from facerec.adapters.local_fleet import LocalFleet

            local = LocalFleet(settings, max_workers=max_workers, log_dir=settings.data_dir / "logs")
            stack.push_async_callback(local.close)
            await local.prepare()  # the worker template loads while the web tier starts
            fleet = local
        else:
            from facerec.adapters.ec2_fleet import Ec2Fleet

            if aws is None:
                aws = await stack.enter_async_context(AwsClients(settings))
            fleet = Ec2Fleet(aws, settings, max_workers=max_workers)
            stack.push_async_callback(fleet.close)
        yield fleet
