"""The application `facerec serve` runs: the web tier with the scaler as its companion.

`serve_app(settings)` for the one process `facerec serve` runs itself; `serve_app_from_environment` is the factory
each of uvicorn's worker processes calls with `facerec serve --web-processes N` (they are fresh interpreters:
their settings come from the FACEREC_* variables `serve` exported, like the app-tier workers')."""

from __future__ import annotations

import os

from fastapi import FastAPI

from facerec.scaler.service import ScalerService
from facerec.settings import Settings
from facerec.web.app import create_app

LOG_LEVEL_ENV = "FACEREC_SERVE_LOG_LEVEL"
"""`serve --log-level`, handed to the web processes uvicorn starts (not a setting: the CLI's option)."""


def serve_app(settings: Settings, web_id: str | None = None) -> tuple[FastAPI, ScalerService]:
    service = ScalerService(settings)
    app = create_app(
        settings,
        worker_count=service.worker_count,
        worker_states=service.worker_states,
        companions=[service.companion],
        web_id=web_id,
    )
    return app, service


def serve_app_from_environment() -> FastAPI:
    from facerec.logs import configure_logging

    configure_logging(os.environ.get(LOG_LEVEL_ENV, "INFO").upper())
    app, _ = serve_app(Settings())
    return app
