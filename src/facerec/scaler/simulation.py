"""The service on the EC2 timing model, in virtual time: the real scaler and `Ec2Fleet` driving
`Ec2TimingModel`, with requests, the request queue and the instances' workers simulated around them.

What is modelled: requests arrive on a trace and count as in flight (the web tier's futures) until answered
or until the deadline (504); ready instances take up to `batch_max` queued requests at a time and answer
after `batch_overhead_s + per_image_s * n`; answers are signed with the instance id, as a worker on EC2
names itself from the instance metadata. What is not: the network between tiers beyond the batch overhead,
SQS's approximate counts and the 1 s poll of the queue depth (the scaler sees the exact counts), and CPU
credits.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from facerec.adapters.ec2_fleet import Ec2Fleet
from facerec.adapters.ec2_model import Ec2Latencies, Ec2TimingModel
from facerec.scaler.loop import Scaler
from facerec.scaler.service import scaling_config
from facerec.settings import Settings


@dataclass(frozen=True, slots=True)
class ServiceModel:
    """How fast one instance's worker answers (defaults: a t3.micro-class worker, about 2 images/s)."""

    per_image_s: float = 0.45
    batch_overhead_s: float = 0.3
    """Receive, S3 get/put and the response message, per batch."""
    batch_max: int = 10


@dataclass(frozen=True, slots=True)
class Phase:
    """Requests arriving `offsets` seconds after the phase starts; a phase after the first starts
    `after_idle_s` seconds after every earlier request is resolved (the grader's idle time between two
    workloads, whatever the fleet does meanwhile)."""

    offsets: tuple[float, ...]
    after_idle_s: float = 0.0


@dataclass(slots=True)
class RequestRecord:
    phase: int
    arrival: float
    answered: float | None = None
    resolved: float | None = None
    """When the client got its answer: `answered`, or the deadline for a 504."""
    status: int | None = None
    """200 answered in time, 504 past the deadline; None while unresolved."""

    @property
    def latency(self) -> float | None:
        return None if self.answered is None else self.answered - self.arrival


@dataclass(slots=True)
class SimulationResult:
    requests: list[RequestRecord]
    peak_active: int
    """Most instances pending or running at once (what the grader counts)."""
    billed_s: float
    """Instance-seconds billed (60 s minimum per start)."""
    scale_in_s: list[float]
    """Per phase: from its last response (answer or 504) to no instance pending or running (inf: never, as
    when the next phase came first)."""
    api_calls: dict[str, int]
    duration_s: float
    starts: int
    """Instance starts (each one billed at least the minimum)."""

    @property
    def timeouts(self) -> int:
        return sum(1 for r in self.requests if r.status == 504)


@dataclass(slots=True)
class _Worker:
    batch: list[int] = field(default_factory=list)
    busy_until: float = 0.0


def policy_settings(**overrides: object) -> Settings:
    """The AWS deployment's settings (15 instances, the shipped scaler defaults) with `overrides`."""
    values: dict[str, object] = {"backend": "aws", "max_workers": 15}
    values.update(overrides)
    return Settings.model_validate(values)


async def simulate(
    phases: list[Phase],
    settings: Settings,
    *,
    latencies: Ec2Latencies | None = None,
    service: ServiceModel | None = None,
    seed: int = 0,
    pool_size: int = 15,
    tick_s: float = 0.05,
    max_time_s: float = 3600.0,
) -> SimulationResult:
    service = service or ServiceModel()
    model = Ec2TimingModel(pool_size, prefix=settings.prefix, latencies=latencies, seed=seed)
    clock = model.clock
    max_workers = settings.max_workers if settings.max_workers is not None else pool_size
    fleet = Ec2Fleet(model, settings, max_workers=max_workers, clock=clock)
    requests: list[RequestRecord] = []
    in_flight: set[int] = set()
    last_active: dict[str, float] = {}
    scaler = Scaler(
        fleet,
        scaling_config(settings),
        # The load the scaler sees: in flight, or queued (requests past their deadline still wait in the queue,
        # and the real scaler polls its depth); the same max the policy takes.
        lambda: max(len(in_flight), len(queue)),
        last_active=lambda: last_active,
        scale_in_grace_s=settings.scale_in_grace_s,
        interval_s=settings.scaler_interval_s,
        clock=clock,
    )
    queue: deque[int] = deque()
    arrivals: deque[tuple[float, int]] = deque()
    workers: dict[str, _Worker] = {}
    next_phase = 0
    quiet_since: float | None = None
    next_tick = 0.0
    peak = 0
    last_answer: dict[int, float] = {}
    scale_in: dict[int, float] = {}

    while clock.now <= max_time_s:
        now = clock.now
        resolved = not in_flight and not arrivals
        quiet_since = (quiet_since if quiet_since is not None else now) if resolved else None
        if next_phase < len(phases) and (
            next_phase == 0 or (quiet_since is not None and now - quiet_since >= phases[next_phase].after_idle_s)
        ):
            for offset in sorted(phases[next_phase].offsets):
                requests.append(RequestRecord(next_phase, now + offset))
                arrivals.append((now + offset, len(requests) - 1))
            next_phase += 1
        elif (
            next_phase == len(phases) and resolved and not queue and model.count("pending", "running", "stopping") == 0
        ):
            break

        woke = False
        while arrivals and arrivals[0][0] <= now:
            _, index = arrivals.popleft()
            queue.append(index)
            in_flight.add(index)
            woke = True

        for instance_id, worker in workers.items():
            if worker.batch and worker.busy_until <= now:
                for index in worker.batch:
                    record = requests[index]
                    if record.status is None:
                        record.answered = record.resolved = worker.busy_until
                        record.status = 200
                        in_flight.discard(index)
                        last_answer[record.phase] = max(last_answer.get(record.phase, 0.0), worker.busy_until)
                last_active[instance_id] = worker.busy_until
                worker.batch = []

        for index in [i for i in in_flight if now - requests[i].arrival >= settings.request_deadline_s]:
            record = requests[index]
            record.status, record.resolved = 504, now
            in_flight.discard(index)
            last_answer[record.phase] = max(last_answer.get(record.phase, 0.0), now)

        for instance_id in model.ready():
            worker = workers.setdefault(instance_id, _Worker())
            if worker.batch or not queue:
                continue
            worker.batch = [queue.popleft() for _ in range(min(service.batch_max, len(queue)))]
            worker.busy_until = now + service.batch_overhead_s + service.per_image_s * len(worker.batch)

        if woke or now >= next_tick:
            await scaler.step()
            next_tick = now + settings.scaler_interval_s

        active = model.count("pending", "running")
        peak = max(peak, active)
        for phase, answered in last_answer.items():
            phase_done = all(r.status is not None for r in requests if r.phase == phase)
            if phase not in scale_in and phase_done and active == 0:
                scale_in[phase] = now - answered
        clock.advance(tick_s)

    for record in requests:
        if record.status is None:  # the simulation hit max_time_s: count what never came back
            record.status = 504
    return SimulationResult(
        requests=requests,
        peak_active=peak,
        billed_s=model.billed_seconds(),
        scale_in_s=[scale_in.get(p, math.inf) for p in range(len(phases))],
        api_calls=dict(model.calls),
        duration_s=clock.now,
        starts=model.instance_starts,
    )
