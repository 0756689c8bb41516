"""The README's "Deploying on AWS", followed step by step against moto's server, once per test session.

`rehearse()` runs the commands a reader runs (`facerec aws provision --create-roles --pool 3`, `aws status`,
`enroll --store`, `serve --backend aws`), starts two `facerec worker` processes with exactly the environment the
pool's user data and systemd unit give an instance, sends 50 recognitions plus an enrollment and a delete
through the API, then starts a second web process of the same deployment (`serve` on another port, as a second
host behind a load balancer would) and spreads recognitions over both, stops the second and then the first with
Ctrl-C and tears everything down. The web tier and the workers log every AWS call (`FACEREC_AWS_CALL_LOG`) for
the IAM tests, which check them against the shipped policies.

Only these differ from a real deployment: the endpoint (moto), the dummy credentials, the colour model
standing in for the face model (`tests.colour_model`), the web tier's long-poll wait and scale-in grace
(shorter polls for a quick stop; a long grace, so that the instances are still running when Ctrl-C comes and
the stop is what scales the fleet to zero), and the workers' gallery refresh (every 0.3 s instead of 2 s: the
API enrollment is waited for until every worker knows the newcomer; the same calls, sooner).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from click.testing import CliRunner

from facerec.cli import main
from facerec.provision import DEPLOY_DIR
from facerec.testing import MOTO_REGION, jpeg_bytes
from tests.aws import boto3_client, first_boots, image_id
from tests.colour_model import GATE_ENV, GATED
from tests.e2e.processes import free_port, wait_for_http
from tests.paths import REPO_ROOT

FACTORY = "tests.colour_model:colour_recognizer"
PEOPLE = {"Ada": (200, 40, 40), "Bob": (40, 40, 200), "Carol": (40, 200, 40)}
NEWCOMER = ("Dave", (200, 200, 40))
TORCH_INDEX = "https://torch-index.invalid/whl/cpu"
REQUESTS = 50
SPREAD_REQUESTS = 20
"""Per web process, once there are two."""
WORKERS = 2
POOL = 3
CALIBRATION_PHOTOS = 16


@dataclass
class Rehearsal:
    prefix: str
    endpoint: str
    commands: list[tuple[list[str], int, str]] = field(default_factory=list)
    """Each `facerec` command line run as the README says, its exit code and output."""
    user_data: str = ""
    wheel_download: bytes = b""
    calibration_download: bytes = b""
    worker_environment: dict[str, str] = field(default_factory=dict)
    answers: list[tuple[str, str]] = field(default_factory=list)
    """(answer, expected) for every recognition request."""
    enrolled: dict[str, Any] = field(default_factory=dict)
    deleted_while_enrolling: int = 0
    late_enrollment: dict[str, Any] = field(default_factory=dict)
    running_before_stop: int = 0
    running_after_stop: int = -1
    serve_returncode: int | None = None
    serve_log: str = ""
    instance_tags: dict[str, dict[str, str]] = field(default_factory=dict)
    calls: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Role (web, worker) -> the AWS calls its processes made."""
    one_process_calls: list[dict[str, Any]] = field(default_factory=list)
    """The web tier's AWS calls while it was the deployment's only web process."""
    queues_alone: list[str] = field(default_factory=list)
    """The deployment's queues while one web process served."""
    spread_answers: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    """Web process (first, second) -> (answer, expected) of the requests it received while both served."""
    second_calls: list[dict[str, Any]] = field(default_factory=list)
    """The second web process's AWS calls."""
    second_returncode: int | None = None
    second_log: str = ""
    queues_after_second_stopped: list[str] = field(default_factory=list)
    most_running: int = 0
    """The most app-tier instances pending or running at any sample during the run."""
    leftovers: dict[str, list[str]] = field(default_factory=dict)


def facerec(rehearsal: Rehearsal, *args: str, input_env: dict[str, str] | None = None) -> str:
    """One `facerec` command, in this process (as fast as a function call); recorded with its output."""
    result = CliRunner().invoke(main, list(args), env=input_env, catch_exceptions=False)
    rehearsal.commands.append((list(args), result.exit_code, result.output))
    assert result.exit_code == 0, f"facerec {shlex.join(args)}:\n{result.output}"
    return result.output


def user_data_environment(user_data: str) -> dict[str, str]:
    """The settings file the user data writes (between its heredoc markers)."""
    match = re.search(r"<<'FACEREC_SETTINGS'\n(.*?)\nFACEREC_SETTINGS\n", user_data, re.DOTALL)
    assert match, "no settings heredoc in the user data"
    return dict(_assignment(line) for line in match.group(1).splitlines() if line.strip())


def unit_environment(unit: str) -> dict[str, str]:
    """The `Environment=` assignments of a systemd unit."""
    found: dict[str, str] = {}
    for line in unit.splitlines():
        if line.startswith("Environment="):
            found.update(_assignment(word) for word in shlex.split(line.removeprefix("Environment=")))
    return found


def _assignment(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    return key, value.strip('"')


def running_instances(ec2: Any, prefix: str) -> int:
    reply = ec2.describe_instances(
        Filters=[
            {"Name": "tag:facerec:prefix", "Values": [prefix]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )
    return sum(len(r["Instances"]) for r in reply["Reservations"])


def leftovers(endpoint: str, prefix: str) -> dict[str, list[str]]:
    """Every bucket, queue, live instance, role and instance profile whose name carries the prefix."""
    s3, sqs, ec2, iam = (boto3_client(service, endpoint) for service in ("s3", "sqs", "ec2", "iam"))
    reply = ec2.describe_instances(Filters=[{"Name": "tag:facerec:prefix", "Values": [prefix]}])
    return {
        "buckets": [b["Name"] for b in s3.list_buckets()["Buckets"] if b["Name"].startswith(prefix)],
        "queues": sqs.list_queues(QueueNamePrefix=prefix).get("QueueUrls", []),
        "instances": [
            i["InstanceId"] for r in reply["Reservations"] for i in r["Instances"] if i["State"]["Name"] != "terminated"
        ],
        "roles": [r["RoleName"] for r in iam.list_roles()["Roles"] if r["RoleName"].startswith(prefix)],
        "profiles": [
            p["InstanceProfileName"]
            for p in iam.list_instance_profiles()["InstanceProfiles"]
            if p["InstanceProfileName"].startswith(prefix)
        ],
    }


def read_calls(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def photo(colour: tuple[int, int, int]) -> bytes:
    return jpeg_bytes(colour, size=(32, 32))


def _mark(step: str, started: list[float]) -> None:
    print(f"rehearsal: {step} at {time.monotonic() - started[0]:.2f} s")


def rehearse(endpoint: str, workdir: Path) -> Rehearsal:
    started = [time.monotonic()]
    prefix = f"rehearsal-{uuid.uuid4().hex[:8]}"
    rehearsal = Rehearsal(prefix, endpoint)
    aws_options = ["--prefix", prefix, "--region", MOTO_REGION, "--endpoint-url", endpoint]
    ec2 = boto3_client("ec2", endpoint)

    # 1. The wheel the instances install (its content does not matter to moto's instances).
    wheel = workdir / "dist" / "facerec-0.0-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(b"rehearsal wheel")
    # The face photos the instances calibrate their int8 model on (moto's instances build nothing).
    calibration = workdir / "calibration"
    calibration.mkdir()
    for number in range(CALIBRATION_PHOTOS):
        (calibration / f"face-{number}.jpg").write_bytes(photo((number * 12, 100, 200)))
    # 2. Resources, roles and the stopped pool (each instance stops itself after its first boot), then check them.
    with first_boots(endpoint, prefix):
        facerec(
            rehearsal,
            "aws",
            "provision",
            *aws_options,
            "--create-roles",
            "--pool",
            str(POOL),
            "--ami",
            image_id(ec2),
            "--wheel",
            str(wheel),
            "--torch-index",
            TORCH_INDEX,
            "--calibration-dir",
            str(calibration),
        )
    facerec(rehearsal, "aws", "status", *aws_options)

    _mark("provisioned", started)
    # 3. The people, into the deployment's gallery store.
    photos = workdir / "photos"
    for name, colour in PEOPLE.items():
        (photos / name).mkdir(parents=True)
        (photos / name / f"{name.lower()}.jpg").write_bytes(photo(colour))
    deployment_env = {"FACEREC_AWS_ENDPOINT_URL": endpoint, "FACEREC_AWS_REGION": MOTO_REGION}
    facerec(
        rehearsal,
        "enroll",
        str(photos),
        "--store",
        "--backend",
        "aws",
        "--prefix",
        prefix,
        input_env={**deployment_env, "FACEREC_WORKER_RECOGNIZER_FACTORY": FACTORY},
    )

    _mark("enrolled", started)
    # 4. The workers, as an instance of the pool runs them: the user data's settings file + the unit's Environment=.
    instance = ec2.describe_instances(Filters=[{"Name": "tag:facerec:prefix", "Values": [prefix]}])
    first_id = instance["Reservations"][0]["Instances"][0]["InstanceId"]
    encoded = ec2.describe_instance_attribute(InstanceId=first_id, Attribute="userData")["UserData"]["Value"]
    unit = (DEPLOY_DIR / "systemd" / "facerec-worker.service").read_text()
    rehearsal.user_data = base64.b64decode(encoded).decode()
    wheel_url = re.search(r"^wheel_url='([^']+)'$", rehearsal.user_data, re.MULTILINE)
    if wheel_url:  # what the instance's curl does: no credentials, only the presigned URL
        rehearsal.wheel_download = httpx.get(wheel_url.group(1), timeout=10).content
    calibration_url = re.search(r"^calibration_url='([^']+)'$", rehearsal.user_data, re.MULTILINE)
    if calibration_url:
        rehearsal.calibration_download = httpx.get(calibration_url.group(1), timeout=10).content
    rehearsal.worker_environment = {
        **user_data_environment(rehearsal.user_data),
        **unit_environment(unit),
    }
    base_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        **deployment_env,
    }
    logs = workdir / "logs"
    logs.mkdir()
    (workdir / "gate").mkdir()
    workers = [_worker(number, base_env, rehearsal.worker_environment, logs) for number in range(1, WORKERS + 1)]

    _mark("workers started", started)
    # 5. The web tier, Ctrl-C'd at the end.
    port = free_port()
    serve_log = logs / "serve.log"
    serve_args = ["serve", "--backend", "aws", "--prefix", prefix, "--port", str(port)]
    serve = _web_process(serve_args, base_env, serve_log, logs / "web-calls.jsonl")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/readyz", timeout_s=30, process=serve, log=serve_log)
        _mark("serving", started)
        with PoolWatch(ec2, prefix) as watch:
            asyncio.run(_traffic(rehearsal, url, workdir / "gate"))
            _mark("answered", started)
            rehearsal.one_process_calls = read_calls(logs / "web-calls.jsonl")
            rehearsal.queues_alone = queue_names(endpoint, prefix)
            _second_web_process(rehearsal, base_env, serve_args, url, logs)
            _mark("two web processes answered", started)
        rehearsal.most_running = watch.most
        rehearsal.running_before_stop = running_instances(ec2, prefix)
        serve.send_signal(signal.SIGINT)
        rehearsal.serve_returncode = serve.wait(timeout=30)
        rehearsal.commands.append((serve_args, rehearsal.serve_returncode, ""))
        rehearsal.running_after_stop = running_instances(ec2, prefix)
    finally:
        for process in (serve, *workers):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # what stopping an instance sends the worker unit
        for process in (serve, *workers):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        rehearsal.serve_log = serve_log.read_text(errors="replace")
    _mark("stopped", started)
    rehearsal.calls = {
        "web": read_calls(logs / "web-calls.jsonl") + rehearsal.second_calls,
        "worker": read_calls(logs / "worker-calls.jsonl"),
    }
    reply = ec2.describe_instances(Filters=[{"Name": "tag:facerec:prefix", "Values": [prefix]}])
    rehearsal.instance_tags = {
        i["InstanceId"]: {t["Key"]: t["Value"] for t in i.get("Tags", [])}
        for r in reply["Reservations"]
        for i in r["Instances"]
    }

    # 6. Everything goes.
    facerec(rehearsal, "aws", "teardown", *aws_options, "--yes")
    rehearsal.leftovers = leftovers(endpoint, prefix)
    _mark("torn down", started)
    return rehearsal


def queue_names(endpoint: str, prefix: str) -> list[str]:
    urls = boto3_client("sqs", endpoint).list_queues(QueueNamePrefix=prefix).get("QueueUrls", [])
    return sorted(url.rsplit("/", 1)[-1] for url in urls)


class PoolWatch:
    """Samples the app tier's pending and running instances in a thread until closed: the most it saw."""

    def __init__(self, ec2: Any, prefix: str) -> None:
        self._ec2, self._prefix = ec2, prefix
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.most = 0

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.most = max(self.most, running_instances(self._ec2, self._prefix))

    def __enter__(self) -> PoolWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _web_process(serve_args: list[str], base_env: dict[str, str], log: Path, call_log: Path) -> subprocess.Popen[bytes]:
    """`facerec <serve_args>` as a web process of the rehearsal's deployment, output to `log`, AWS calls to
    `call_log`; short response polls, and no scale-in during the rehearsal."""
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "facerec", *serve_args],
            env={
                **base_env,
                "FACEREC_AWS_CALL_LOG": str(call_log),
                "FACEREC_WEB_POLL_WAIT_S": "1",
                "FACEREC_SCALE_IN_GRACE_S": "600",
            },
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )


def _second_web_process(
    rehearsal: Rehearsal, base_env: dict[str, str], serve_args: list[str], first_url: str, logs: Path
) -> None:
    """A second `facerec serve` of the same deployment on another port: requests spread over both, each
    answered by the process that received it; then a clean stop (Ctrl-C) of the second."""
    port = free_port()
    args = [*serve_args[: serve_args.index("--port")], "--port", str(port)]
    second_log = logs / "serve-2.log"
    second = _web_process(args, base_env, second_log, logs / "web-2-calls.jsonl")
    try:
        second_url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{second_url}/readyz", timeout_s=30, process=second, log=second_log)
        rehearsal.spread_answers = asyncio.run(_spread({"first": first_url, "second": second_url}))
        second.send_signal(signal.SIGINT)
        rehearsal.second_returncode = second.wait(timeout=30)
        rehearsal.commands.append((args, rehearsal.second_returncode, ""))
        rehearsal.queues_after_second_stopped = queue_names(rehearsal.endpoint, rehearsal.prefix)
    finally:
        if second.poll() is None:
            second.kill()
            second.wait(5)
        rehearsal.second_log = second_log.read_text(errors="replace")
        rehearsal.second_calls = read_calls(logs / "web-2-calls.jsonl")


async def _spread(urls: dict[str, str]) -> dict[str, list[tuple[str, str]]]:
    names = list(PEOPLE)

    async def one(client: httpx.AsyncClient, tag: str, index: int) -> tuple[str, str]:
        person = names[index % len(names)]
        filename = f"{tag}{index}"
        answer = await client.post("/", files={"inputFile": (f"{filename}.jpg", photo(PEOPLE[person]))})
        return answer.text, f"{filename}:{person}"

    async def process(tag: str, url: str) -> list[tuple[str, str]]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return list(await asyncio.gather(*(one(client, tag, i) for i in range(SPREAD_REQUESTS))))

    tags = list(urls)
    results = await asyncio.gather(*(process(tag, urls[tag]) for tag in tags))
    return dict(zip(tags, results, strict=True))


def _worker(number: int, base_env: dict[str, str], instance_env: dict[str, str], logs: Path) -> subprocess.Popen[bytes]:
    with (logs / f"worker-{number}.log").open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "facerec", "worker", f"--recognizer-factory={FACTORY}"],
            env={
                **base_env,
                **instance_env,
                "FACEREC_AWS_CALL_LOG": str(logs / "worker-calls.jsonl"),
                "FACEREC_WORKER_NAME": f"app-tier-instance-{number}",
                "FACEREC_GALLERY_REFRESH_S": "0.3",
                GATE_ENV: str(logs.parent / "gate"),
            },
            stdout=subprocess.DEVNULL,
            stderr=sink,
            cwd=REPO_ROOT,
        )


async def _traffic(rehearsal: Rehearsal, url: str, gate: Path) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        # An enrollment through the API (web tier -> worker -> gallery store), then everyone is asked for.
        name, colour = NEWCOMER
        reply = await client.post(f"/v1/people/{name}/photos", files={"photos": ("dave.jpg", photo(colour))})
        rehearsal.enrolled = {"status": reply.status_code, **reply.json()}
        everyone = {**PEOPLE, name: colour}
        names = list(everyone)
        await _until_known(client, name, colour)

        async def one(index: int) -> tuple[str, str]:
            person = names[index % len(names)]
            answer = await client.post("/", files={"inputFile": (f"probe{index}.jpg", photo(everyone[person]))})
            return answer.text, f"probe{index}:{person}"

        rehearsal.answers = list(await asyncio.gather(*(one(i) for i in range(REQUESTS))))
        # Forgetting a person (the web tier's deletes in the gallery store).
        await client.delete(f"/v1/people/{name}")
        # A person deleted while their photo is being embedded: the worker withdraws the record it wrote.
        enrolling = asyncio.create_task(
            client.post("/v1/people/Eve/photos", files={"photos": ("eve.jpg", photo(GATED))})
        )
        await _until_exists(gate / "entered")
        rehearsal.deleted_while_enrolling = (await client.delete("/v1/people/Eve")).status_code
        (gate / "open").touch()
        rehearsal.late_enrollment = (await enrolling).json()


async def _until_exists(path: Path) -> None:
    deadline = time.monotonic() + 20
    while not await asyncio.to_thread(path.exists):
        assert time.monotonic() < deadline, f"{path.name} did not appear"
        await asyncio.sleep(0.02)


async def _until_known(client: httpx.AsyncClient, name: str, colour: tuple[int, int, int]) -> None:
    """Workers pick up an enrollment at their next gallery refresh (`gallery_refresh_s`): wait until every
    worker has answered the newcomer's photo with their name."""
    knowing: set[str] = set()
    deadline = time.monotonic() + 30
    while len(knowing) < WORKERS:
        assert time.monotonic() < deadline, f"only {sorted(knowing)} know {name}"
        reply = (await client.post("/v1/recognitions", files={"inputFile": ("wait.jpg", photo(colour))})).json()
        if reply.get("name") == name:
            knowing.add(reply["worker"])
        else:
            await asyncio.sleep(0.1)
