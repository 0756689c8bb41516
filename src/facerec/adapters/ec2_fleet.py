"""The EC2 Fleet: app-tier instances found by tag, started/stopped (`pool`) or run/terminated (`run`).

State always comes from `describe_instances`; a short cache absorbs the scaler's polling (it wakes on every
request) and is dropped by every start/stop so a decision right after one sees EC2's answer. Between those,
start and stop decide on the cached view: a burst of requests costs at most one DescribeInstances per TTL.

EC2's state machine, as the fleet treats it: only `stopped` instances can be started; `stopping` ones are
counted as not running (the course's contract) and waited for, since they return to `stopped` within
seconds; `pending` ones are never stopped (EC2 may refuse, and they are billed from `running` anyway).
"""

from __future__ import annotations

import asyncio
import builtins
import itertools
import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from facerec.ports import PortError, WorkerInfo, WorkerState
from facerec.settings import Settings

if TYPE_CHECKING:  # stubs from the `test` extra, for annotations only
    from types_aiobotocore_ec2 import EC2Client
    from types_aiobotocore_ec2.type_defs import FilterTypeDef, InstanceTypeDef, TagTypeDef

log = logging.getLogger(__name__)

NAME_PREFIX = "app-tier-instance-"
PREFIX_TAG = "facerec:prefix"
FIRST_BOOT_TAG = "facerec:first-boot"
"""On a pool instance from `facerec aws provision` until it has stopped itself at the end of its first boot. The
fleet leaves such an instance alone: stopped mid-boot, it would never get a worker (cloud-init runs user data
once), and until then it has none to count on."""
_NAME = re.compile(rf"^{NAME_PREFIX}(\d+)$")

EC2_STATES: dict[str, WorkerState] = {
    "pending": WorkerState.PENDING,
    "running": WorkerState.RUNNING,
    "stopping": WorkerState.STOPPING,
    "shutting-down": WorkerState.STOPPING,
    "stopped": WorkerState.STOPPED,
    "terminated": WorkerState.STOPPED,
}
_ACTIVE = (WorkerState.PENDING, WorkerState.RUNNING)
GONE_STATES = ("shutting-down", "terminated")
"""EC2 states of an instance that is going away for good: it frees its name."""


def name_number(name: str) -> int | None:
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


def instance_tags(name: str, prefix: str) -> list[TagTypeDef]:
    return [{"Key": "Name", "Value": name}, {"Key": PREFIX_TAG, "Value": prefix}]


def fleet_filters(prefix: str) -> list[FilterTypeDef]:
    """The tag filters that pick exactly this deployment's app-tier instances."""
    return [
        {"Name": f"tag:{PREFIX_TAG}", "Values": [prefix]},
        {"Name": "tag:Name", "Values": [f"{NAME_PREFIX}*"]},
    ]


async def describe_fleet(ec2: EC2Client, prefix: str) -> list[InstanceTypeDef]:
    """Every app-tier instance of `prefix` (raw EC2 dicts), following pagination."""
    instances: list[InstanceTypeDef] = []
    kwargs: dict[str, Any] = {"Filters": fleet_filters(prefix)}
    while True:
        page = await ec2.describe_instances(**kwargs)
        for reservation in page.get("Reservations", []):
            instances.extend(reservation.get("Instances", []))
        if not page.get("NextToken"):
            return instances
        kwargs["NextToken"] = page["NextToken"]


def tag_value(instance: InstanceTypeDef, key: str) -> str | None:
    return next((tag["Value"] for tag in instance.get("Tags", []) if tag["Key"] == key), None)


def in_first_boot(instance: InstanceTypeDef) -> bool:
    return tag_value(instance, FIRST_BOOT_TAG) is not None


def to_worker(instance: InstanceTypeDef) -> WorkerInfo:
    launched = instance.get("LaunchTime")
    return WorkerInfo(
        worker_id=instance["InstanceId"],
        name=tag_value(instance, "Name") or instance["InstanceId"],
        state=EC2_STATES.get(instance["State"]["Name"], WorkerState.STOPPED),
        launched_at=launched.timestamp() if launched is not None else None,
    )


def _by_number(worker: WorkerInfo) -> tuple[int, str]:
    number = name_number(worker.name)
    return (number if number is not None else 1 << 30, worker.name)


class Ec2Source(Protocol):
    """Where the fleet gets its EC2 client: `AwsClients`, or the timing model (`facerec.adapters.ec2_model`)."""

    async def ec2(self) -> EC2Client: ...


class Ec2Fleet:
    """App-tier instances tagged `Name=app-tier-instance-<n>` and `facerec:prefix=<prefix>`."""

    def __init__(
        self,
        aws: Ec2Source,
        settings: Settings,
        *,
        max_workers: int,
        cache_ttl_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if settings.fleet_mode == "run" and not settings.aws_launch_template:
            raise ValueError("fleet_mode=run needs FACEREC_AWS_LAUNCH_TEMPLATE")
        self.max_workers = max_workers
        self.mode = settings.fleet_mode
        self._aws = aws
        self._prefix = settings.prefix
        self._launch_template = settings.aws_launch_template
        self._cache_ttl_s = cache_ttl_s
        self._cached: tuple[float, list[WorkerInfo]] | None = None
        self._ec2_states: dict[str, str] = {}
        """Instance id -> EC2's own state name (WorkerState merges stopped with terminated)."""
        self._booting_numbers: set[int | None] = set()
        """Name numbers of instances in their first boot: not workers, but their names are taken."""
        self._lock = asyncio.Lock()
        self._clock = clock
        self._waiting: tuple[int, int] | None = None
        """(short of, stopping) last logged while the pool could not start all it was asked: one line per change."""

    async def list(self) -> list[WorkerInfo]:
        async with self._lock:
            return list(await self._listed())

    async def start(self, count: int) -> builtins.list[WorkerInfo]:
        async with self._lock:
            # The cached view is exact for what this fleet did (every start/stop drops it); what EC2 did on its
            # own since (pending -> running, stopping -> stopped) never adds to the active count.
            workers = await self._listed()
            room = self.max_workers - sum(1 for w in workers if w.state in _ACTIVE)
            wanted = max(0, min(count, room))
            if wanted == 0:
                return []
            try:
                started = await (
                    self._start_pool(workers, wanted) if self.mode == "pool" else self._run(workers, wanted)
                )
            finally:
                self._cached = None
            if started:
                log.info("instances_started", extra={"mode": self.mode, "ids": [w.worker_id for w in started]})
            return started

    async def stop(self, worker_ids: Sequence[str]) -> None:
        async with self._lock:
            known = {w.worker_id: w for w in await self._listed()}
            ids = [i for i in dict.fromkeys(worker_ids) if i in known]
            if unknown := [i for i in worker_ids if i not in known]:
                # Never act on an instance outside this fleet's tags, whatever the caller passes.
                log.warning("stop_unknown_instances", extra={"ids": unknown})
            if pending := [i for i in ids if known[i].state == WorkerState.PENDING]:
                # StopInstances may refuse a pending instance (IncorrectInstanceState) and would fail the rest
                # of the call with it: the scaler asks again once it runs.
                log.info("stop_deferred_pending", extra={"ids": pending})
                ids = [i for i in ids if i not in pending]
            if not ids:
                return
            ec2 = await self._ec2()
            try:
                if self.mode == "pool":
                    await ec2.stop_instances(InstanceIds=ids)
                else:
                    await ec2.terminate_instances(InstanceIds=ids)
            except (ClientError, BotoCoreError) as exc:
                raise PortError(f"cannot stop instances {ids}: {exc}") from exc
            finally:
                self._cached = None
            log.info("instances_stopping", extra={"mode": self.mode, "ids": ids})

    async def close(self) -> None:
        """The AWS clients belong to the caller; instances keep their state (the next web process adopts them)."""
        self._cached = None

    async def _ec2(self) -> EC2Client:
        try:
            return await self._aws.ec2()
        except (ClientError, BotoCoreError) as exc:
            raise PortError(f"EC2 client unavailable: {exc}") from exc

    async def _listed(self) -> builtins.list[WorkerInfo]:
        if self._cached is not None and self._clock() - self._cached[0] < self._cache_ttl_s:
            return self._cached[1]
        return await self._refresh()

    async def _refresh(self) -> builtins.list[WorkerInfo]:
        ec2 = await self._ec2()
        try:
            every = await describe_fleet(ec2, self._prefix)
        except (ClientError, BotoCoreError) as exc:
            raise PortError(f"describe_instances failed: {exc}") from exc
        instances = [i for i in every if not in_first_boot(i)]
        self._booting_numbers = {
            name_number(tag_value(i, "Name") or "")
            for i in every
            if in_first_boot(i) and i["State"]["Name"] not in GONE_STATES
        }
        workers = sorted(map(to_worker, instances), key=_by_number)
        self._ec2_states = {i["InstanceId"]: i["State"]["Name"] for i in instances}
        self._cached = (self._clock(), workers)
        return list(workers)

    async def _start_pool(self, workers: builtins.list[WorkerInfo], wanted: int) -> builtins.list[WorkerInfo]:
        # Exactly `stopped`: a stopping instance cannot be started yet, and a terminated one never again.
        candidates = [w for w in workers if self._ec2_states.get(w.worker_id) == "stopped"][:wanted]
        stopping = sum(1 for w in workers if self._ec2_states.get(w.worker_id) == "stopping")
        if len(candidates) < wanted:
            self._log_waiting(wanted - len(candidates), stopping, len(workers))
        else:
            self._waiting = None
        if not candidates:
            return []
        ec2 = await self._ec2()
        ids = [w.worker_id for w in candidates]
        try:
            await ec2.start_instances(InstanceIds=ids)
        except (ClientError, BotoCoreError) as exc:
            raise PortError(f"cannot start instances {ids}: {exc}") from exc
        return [WorkerInfo(w.worker_id, w.name, WorkerState.PENDING, time.time()) for w in candidates]

    def _log_waiting(self, short: int, stopping: int, pool: int) -> None:
        # The scaler asks on every request; one line per change of the situation, not one per request.
        if self._waiting == (short, stopping):
            return
        self._waiting = (short, stopping)
        if stopping:
            # They become startable within seconds: the scaler's next ticks start them.
            log.info("pool_waiting_for_stopping", extra={"short": short, "stopping": stopping, "pool": pool})
        else:
            log.warning("pool_exhausted", extra={"short": short, "pool": pool})

    async def _run(self, workers: builtins.list[WorkerInfo], wanted: int) -> builtins.list[WorkerInfo]:
        # Names held by instances still alive (or going to `stopped`); terminated ones free their name.
        taken = {name_number(w.name) for w in workers if self._ec2_states.get(w.worker_id) not in GONE_STATES}
        taken |= self._booting_numbers
        numbers = list(itertools.islice((n for n in itertools.count(1) if n not in taken), wanted))
        ec2 = await self._ec2()
        results = await asyncio.gather(*(self._run_one(ec2, n) for n in numbers), return_exceptions=True)
        started = [r for r in results if isinstance(r, WorkerInfo)]
        if failures := [r for r in results if isinstance(r, BaseException)]:
            if not started:
                raise PortError(f"run_instances failed: {failures[0]}") from failures[0]
            log.warning("run_instances_partial", extra={"started": len(started), "failed": len(failures)})
        return started

    async def _run_one(self, ec2: EC2Client, number: int) -> WorkerInfo:
        name = f"{NAME_PREFIX}{number}"
        if self._launch_template is None:  # unreachable: __init__ refuses run mode without a template
            raise ValueError("fleet_mode=run needs FACEREC_AWS_LAUNCH_TEMPLATE")
        reply = await ec2.run_instances(
            LaunchTemplate={"LaunchTemplateName": self._launch_template},
            MinCount=1,
            MaxCount=1,
            TagSpecifications=[
                {"ResourceType": "instance", "Tags": instance_tags(name, self._prefix)},
                {"ResourceType": "volume", "Tags": instance_tags(name, self._prefix)},
            ],
        )
        return to_worker(reply["Instances"][0])
