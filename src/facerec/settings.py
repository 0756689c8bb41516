"""All of facerec's settings in one place, read from `FACEREC_*` environment variables (or a `.env` file).

This module must stay importable without torch: the web tier reads it.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from platformdirs import user_cache_dir, user_data_dir
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FACEREC_", env_file=".env", extra="ignore")

    # --- deployment -------------------------------------------------------------------------------
    backend: Literal["local", "aws"] = Field(
        "local", description="`local`: directory + SQLite queue + subprocess workers; `aws`: S3/SQS/EC2."
    )
    prefix: str = Field(
        "facerec",
        pattern=r"^[a-z0-9][a-z0-9-]{1,40}$",
        description="Resource name prefix: <prefix>-in-bucket, <prefix>-out-bucket, <prefix>-req-queue, ...",
    )
    data_dir: Path = Field(
        Path(user_data_dir("facerec")), description="Local backend: where the stores and queues live."
    )

    # --- AWS (only with backend=aws) --------------------------------------------------------------
    aws_region: str = Field("us-east-1", description="AWS region of the buckets, queues and instances.")
    aws_endpoint_url: str | None = Field(None, description="For moto, LocalStack or another S3/SQS endpoint.")
    aws_ami_id: str | None = Field(None, description="Worker AMI for `facerec aws provision`.")
    aws_launch_template: str | None = Field(None, description="Launch template name for fleet_mode=run.")
    aws_instance_type: str = Field("t3.micro", description="Instance type of the app-tier pool.")
    aws_instance_profile: str | None = Field(None, description="Instance profile (worker IAM role) of the pool.")
    fleet_mode: Literal["pool", "run"] = Field(
        "pool", description="`pool`: start/stop pre-created instances (fast); `run`: run/terminate."
    )

    # --- queues -----------------------------------------------------------------------------------
    visibility_timeout_s: float = Field(
        30.0, gt=0, description="A received request is hidden this long; workers extend it while they work."
    )
    max_receives: int = Field(3, ge=1, description="Deliveries before a request goes to the dead-letter queue.")
    message_max_bytes: int = Field(1024, description="Largest queue message (the course's request queue limit).")

    # --- model ------------------------------------------------------------------------------------
    weights: str = Field("casia-webface", description="`casia-webface`, `vggface2`, or the path of a state_dict file.")
    weights_cache_dir: Path = Field(Path(user_cache_dir("facerec")), description="Converted weights go here.")
    crop_size: int = Field(160, ge=32, le=512, description="Face crop side in pixels (160 for casia-webface).")
    margin: int = Field(14, ge=0, le=200, description="Margin around the detected box, in crop pixels.")
    min_face_size: int = Field(20, ge=4, description="Smallest face MTCNN looks for, in pixels.")
    min_face_ratio: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Smallest face MTCNN looks for as a fraction of the detected image's short side, when that is "
        "more than min_face_size: skips the pyramid levels that could only find smaller faces.",
    )
    unknown_threshold: Annotated[float, Field(gt=0)] | Literal["none"] | None = Field(
        None,
        description="L2 distance beyond which a face is answered `Unknown`. Unset: the one recorded in the gallery, "
        "else the calibrated default for its weights (casia-webface: see docs/benchmarks.md); vggface2 and "
        "state_dict files have none, so they need one. `none`: never Unknown (closed set, the course's contract).",
    )
    flip_tta: bool = Field(
        False,
        description="Embed each face and its mirror image and average them (test-time augmentation): costs a "
        "second forward pass per face; see docs/benchmarks.md for what it buys.",
    )
    torch_threads: int = Field(
        max(1, os.cpu_count() or 1), ge=1, description="Intra-op threads per worker (local workers get cores / max)."
    )
    max_image_pixels: int = Field(40_000_000, ge=1, description="Decompression-bomb guard.")
    detect_max_side: int = Field(
        640,
        ge=64,
        description="Larger images are detected on a downscaled copy (detection cost grows with area).",
    )
    decode_max_side: int = Field(
        1280,
        ge=64,
        description="JPEGs whose long side is over twice this are decoded at 1/2, 1/4 or 1/8 size (never below "
        "it): bounds a worker's memory per photo; the face crop is cut from the decoded image.",
    )
    decode_pixel_budget: int = Field(
        6_000_000,
        ge=1,
        description="Most decoded pixels a worker holds at once: a batch whose images would exceed it is decoded "
        "and detected in parts (an image larger than the budget alone is handled alone). 6 Mpx: 16 x 40 Mpx JPEGs "
        "peak at ~800-870 MB vs 935-1066 MB at 16 Mpx; a batch of 16 photos up to 0.37 Mpx never splits. See "
        "docs/reliability.md.",
    )
    gallery: str | None = Field(
        None,
        description="Gallery file made by `facerec enroll` (or a course data.pt); people enrolled through the API "
        "live in the gallery store and are added to it.",
    )
    # -- galleries (recognition helper) --
    course_gallery_made_with: str | None = Field(
        None,
        pattern=r"^[^:]+:\d+:\d+$",
        description="Accept a course-format data.pt gallery (no metadata of its own), stating how it was made: "
        "`WEIGHTS:CROP_SIZE:MARGIN`, e.g. `vggface2:240:0`. It must still match the running model's settings.",
    )

    # --- worker -----------------------------------------------------------------------------------
    batch_max: int = Field(
        16,
        ge=1,
        le=256,
        description="Most requests a worker recognizes in one batch. 16: as fast as 32 here (99% vs 102% of the "
        "raw recognizer) with a peak RSS under 1 GB (884-972 MB vs 985-1092 MB at 32: MTCNN's candidate boxes "
        "grow with the batch).",
    )
    batch_fill_wait_ms: float = Field(
        20.0, ge=0, le=1000, description="How long a worker waits for more requests to fill a batch."
    )
    # -- worker loop (app tier helper) --
    worker_poll_wait_s: float = Field(2.0, ge=0, le=20, description="Long-poll wait for a batch's first message.")
    worker_prefetch: bool = Field(
        False,
        description="Receive and fetch the next batch during inference. Off: no measurable gain locally "
        "(the model is busy 98% of the time either way), and a prefetched batch waits on a busy worker "
        "while a newly started one may be idle.",
    )
    gallery_refresh_s: float = Field(
        2.0, gt=0, description="How often a worker checks the gallery store for people enrolled or deleted."
    )
    visibility_extend_after: float = Field(
        0.5, gt=0, lt=1, description="Extend a held message's visibility after this fraction of the timeout."
    )

    # --- web --------------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Web tier interface (this machine only by default).")
    port: int = Field(8000, ge=1, le=65535, description="Web tier port.")
    request_deadline_s: float = Field(60.0, gt=0, description="Past it the client gets 504.")
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1, description="Upload size limit (413 beyond).")
    max_in_flight: int = Field(2000, ge=1, description="Requests in flight beyond which clients get 503.")
    shutdown_grace_s: float = Field(
        10.0, ge=0, description="On stop: how long the web tier drains requests and a worker finishes its batch."
    )
    # -- web tier response polling (web helper) --
    web_response_pollers: int = Field(
        4, ge=1, le=64, description="Concurrent long-polls of the response queue (each receives up to 10)."
    )
    web_poll_wait_s: float = Field(20.0, ge=0, le=20, description="Long-poll wait of the response/DLQ pollers.")

    # --- scaler -----------------------------------------------------------------------------------
    min_workers: int = Field(0, ge=0, description="Workers kept running when idle.")
    max_workers: int | None = Field(None, ge=0, description="Default: 15 on AWS, the number of cores locally.")
    target_in_flight_per_worker: float = Field(
        1.0, gt=0, description="Requests in flight per worker the scaler aims for."
    )
    scale_in_grace_s: float = Field(1.0, ge=0, description="Workers stop this long after the load that needed them.")
    scaler_interval_s: float = Field(0.2, gt=0, description="Scaler tick (it also wakes on every request).")

    @field_validator("unknown_threshold", mode="before")
    @classmethod
    def _none_spelled_any_case(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == "none":
            return "none"
        if isinstance(value, str) and not value.strip():
            return None  # FACEREC_UNKNOWN_THRESHOLD= (empty): as if unset
        return value

    @model_validator(mode="after")
    def _default_max_workers(self) -> Settings:
        if self.max_workers is None:
            self.max_workers = 15 if self.backend == "aws" else max(1, os.cpu_count() or 1)
        return self

    # Names follow the course's contract.
    @property
    def in_bucket(self) -> str:
        return f"{self.prefix}-in-bucket"

    @property
    def out_bucket(self) -> str:
        return f"{self.prefix}-out-bucket"

    @property
    def req_queue(self) -> str:
        return f"{self.prefix}-req-queue"

    @property
    def resp_queue(self) -> str:
        return f"{self.prefix}-resp-queue"

    @property
    def gallery_bucket(self) -> str:
        return f"{self.prefix}-gallery-bucket"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}-req-dlq"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
