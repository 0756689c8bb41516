"""An EC2 timing model: the part of the EC2 API the pool fleet uses, with EC2's state machine and latencies on
a virtual clock.

moto changes instance states instantly, which hides everything that makes a real fleet slow: a started
instance is `pending` for 10-40 s, then boots and loads the model before its worker takes work; a stopped
one is `stopping` for 5-30 s and cannot be started meanwhile. This model keeps those states, refuses what EC2
refuses (StartInstances on anything not `stopped`, StopInstances on `pending`), and bills per second with a
60 s minimum per start (pending and stopping are not billed). `Ec2Fleet` runs on it unchanged
(`Ec2Fleet(model, settings, clock=model.clock)`), so tests and `facerec bench elastic` exercise the real
fleet and scaler in simulated time: minutes of EC2 in milliseconds.

Latencies are drawn uniformly from the configured ranges with a seeded generator (reproducible runs).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import ClientError

from facerec.adapters.ec2_fleet import NAME_PREFIX, PREFIX_TAG

if TYPE_CHECKING:
    from types_aiobotocore_ec2 import EC2Client


class VirtualClock:
    """Seconds since the start of a simulation; only `advance` moves it."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not run backwards")
        self.now += seconds


Range = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Ec2Latencies:
    """Seconds, as (low, high) ranges. Defaults: a t3.micro-class instance started from `stopped`."""

    pending_s: Range = (10.0, 40.0)
    """StartInstances -> `running` (EC2's own allocation and EBS attach)."""
    boot_s: Range = (8.0, 15.0)
    """`running` -> the worker's systemd unit starts (kernel, cloud-init, network-online)."""
    worker_ready_s: Range = (8.0, 15.0)
    """Worker start -> taking requests (imports, weights, warm-up: 6-8 s on a 2-core AVX2 machine)."""
    stopping_s: Range = (5.0, 30.0)
    """StopInstances -> `stopped` (the worker's SIGTERM grace, then the OS shutdown)."""
    billing_minimum_s: float = 60.0
    """EC2 bills each start at least this long (Linux on-demand: per second with a 60 s minimum)."""

    def __post_init__(self) -> None:
        for name in ("pending_s", "boot_s", "worker_ready_s", "stopping_s"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"{name}: need 0 <= low <= high, got {(low, high)}")

    def worst_case(self) -> Ec2Latencies:
        """Every transition at the top of its range (the deterministic upper bound)."""
        return Ec2Latencies(
            pending_s=(self.pending_s[1],) * 2,
            boot_s=(self.boot_s[1],) * 2,
            worker_ready_s=(self.worker_ready_s[1],) * 2,
            stopping_s=(self.stopping_s[1],) * 2,
            billing_minimum_s=self.billing_minimum_s,
        )


@dataclass(slots=True)
class SimulatedInstance:
    instance_id: str
    name: str
    state: str = "stopped"
    until: float = 0.0
    """When the current transition (pending, stopping) ends."""
    ready_at: float | None = None
    """When the worker takes requests (set on start; None while stopped)."""
    billed_from: float | None = None
    periods: list[tuple[float, float]] = field(default_factory=list)
    """Billed running periods (start, end)."""


def _incorrect_state(operation: str, instance: SimulatedInstance) -> ClientError:
    message = f"The instance '{instance.instance_id}' is not in a state from which it can be {operation}."
    return ClientError({"Error": {"Code": "IncorrectInstanceState", "Message": message}}, operation)


class Ec2TimingModel:
    """A pool of `size` instances named app-tier-instance-1..size under `prefix`, all `stopped` at first."""

    def __init__(
        self,
        size: int,
        *,
        prefix: str = "facerec",
        latencies: Ec2Latencies | None = None,
        seed: int = 0,
        clock: VirtualClock | None = None,
    ) -> None:
        self.clock = clock or VirtualClock()
        self.latencies = latencies or Ec2Latencies()
        self.prefix = prefix
        self._rng = random.Random(seed)
        self.instances = {
            f"i-{n:017x}": SimulatedInstance(f"i-{n:017x}", f"{NAME_PREFIX}{n}") for n in range(1, size + 1)
        }
        self.instance_starts = 0
        self.calls: dict[str, int] = {}
        """API calls by operation name (the scaler's polling cost)."""

    # --- the EC2 client surface Ec2Fleet uses ------------------------------------------------------

    async def ec2(self) -> EC2Client:
        # Duck-typed: the fleet calls only the methods below.
        return cast("EC2Client", self)

    async def describe_instances(self, **kwargs: Any) -> dict[str, Any]:
        self._count("DescribeInstances")
        self.settle()
        launch = datetime.fromtimestamp(0, UTC)
        instances = [
            {
                "InstanceId": i.instance_id,
                "State": {"Name": i.state},
                "LaunchTime": launch,
                "Tags": [{"Key": "Name", "Value": i.name}, {"Key": PREFIX_TAG, "Value": self.prefix}],
            }
            for i in self.instances.values()
        ]
        return {"Reservations": [{"Instances": instances}]}

    async def start_instances(self, InstanceIds: Sequence[str]) -> dict[str, Any]:
        self._count("StartInstances")
        self.settle()
        chosen = [self.instances[i] for i in InstanceIds]
        # EC2 accepts a start of a running/pending instance as a no-op, and refuses one that is stopping.
        if refused := next((i for i in chosen if i.state in ("stopping", "shutting-down")), None):
            raise _incorrect_state("started", refused)
        now = self.clock.now
        for instance in chosen:
            if instance.state != "stopped":
                continue
            instance.state = "pending"
            self.instance_starts += 1
            instance.until = now + self._draw(self.latencies.pending_s)
            instance.ready_at = (
                instance.until + self._draw(self.latencies.boot_s) + self._draw(self.latencies.worker_ready_s)
            )
        return {"StartingInstances": [{"InstanceId": i.instance_id} for i in chosen]}

    async def stop_instances(self, InstanceIds: Sequence[str]) -> dict[str, Any]:
        self._count("StopInstances")
        self.settle()
        chosen = [self.instances[i] for i in InstanceIds]
        if refused := next((i for i in chosen if i.state == "pending"), None):
            raise _incorrect_state("stopped", refused)
        now = self.clock.now
        for instance in chosen:
            if instance.state != "running":
                continue  # stopping/stopped: a no-op, as on EC2
            instance.state = "stopping"
            instance.until = now + self._draw(self.latencies.stopping_s)
            instance.ready_at = None
            self._end_billing(instance, now)
        return {"StoppingInstances": [{"InstanceId": i.instance_id} for i in chosen]}

    # --- observation for simulations ---------------------------------------------------------------

    def settle(self) -> None:
        """Apply every transition due by now."""
        now = self.clock.now
        for instance in self.instances.values():
            if instance.state == "pending" and instance.until <= now:
                instance.state = "running"
                instance.billed_from = instance.until
            elif instance.state == "stopping" and instance.until <= now:
                instance.state = "stopped"

    def ready(self) -> list[str]:
        """Instances whose worker takes requests now (running, booted, model loaded)."""
        self.settle()
        now = self.clock.now
        return [
            i.instance_id
            for i in self.instances.values()
            if i.state == "running" and i.ready_at is not None and i.ready_at <= now
        ]

    def count(self, *states: str) -> int:
        self.settle()
        return sum(1 for i in self.instances.values() if i.state in states)

    def billed_seconds(self) -> float:
        """Instance-seconds billed so far (running periods, each at least the minimum; open ones until now)."""
        self.settle()
        minimum = self.latencies.billing_minimum_s
        total = 0.0
        for instance in self.instances.values():
            periods = list(instance.periods)
            if instance.billed_from is not None:
                periods.append((instance.billed_from, self.clock.now))
            total += sum(max(minimum, end - start) for start, end in periods)
        return total

    def _end_billing(self, instance: SimulatedInstance, now: float) -> None:
        if instance.billed_from is not None:
            instance.periods.append((instance.billed_from, now))
            instance.billed_from = None

    def _draw(self, bounds: Range) -> float:
        return self._rng.uniform(*bounds)

    def _count(self, operation: str) -> None:
        self.calls[operation] = self.calls.get(operation, 0) + 1
