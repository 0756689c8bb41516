"""Where the repository and the shared test data are (the data is never copied into the repository)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("FACEREC_DATASETS", REPO_ROOT.parent / "shared" / "datasets"))
