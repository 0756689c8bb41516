"""`facerec worker` subprocesses on the local data tier, running the fake recognizer from tests.worker.fakes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from facerec.adapters.local_fleet import default_command
from facerec.settings import Settings
from tests.paths import REPO_ROOT


def local_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "backend": "local",
        "data_dir": tmp_path / "data",
        "prefix": "wtest",
        "visibility_timeout_s": 1.0,
        "max_receives": 3,
        "batch_max": 8,
    }
    return Settings(**{**values, **overrides})


@contextmanager
def worker_process(settings: Settings, tmp_path: Path, name: str, delay_s: float = 0.0) -> Iterator[subprocess.Popen]:
    """A `python -m facerec.worker` subprocess running the fake recognizer; killed on exit."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        "FACEREC_WORKER_NAME": name,
        "FACEREC_WORKER_READY_FILE": str(tmp_path / f"{name}.ready"),
        "FAKE_RECOGNIZER_DELAY_S": str(delay_s),
        "FAKE_RECOGNIZER_BATCH_FILE": str(tmp_path / f"{name}.batch"),
    }
    argv = [
        *default_command(settings),  # as the local fleet starts workers
        f"--batch-max={settings.batch_max}",
        f"--visibility-timeout={settings.visibility_timeout_s}",
        f"--max-receives={settings.max_receives}",
        "--recognizer-factory=tests.worker.fakes:process_recognizer",
        "--log-level=WARNING",
    ]
    with open(tmp_path / f"{name}.log", "ab") as log:
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


async def wait_for_path(path: Path, process: subprocess.Popen, within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while not await asyncio.to_thread(path.exists):
        assert process.poll() is None, f"worker exited with {process.returncode}"
        assert time.monotonic() < deadline, f"{path.name} did not appear"
        await asyncio.sleep(0.02)
