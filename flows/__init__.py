"""Prefect 3 flows: thin orchestration of the DVC pipeline (``unet`` never imports Prefect)."""

import os

# Embedded defaults, before Prefect reads its settings: no analytics, and an ephemeral local server
# (used when PREFECT_API_URL is unset) that is given time to start on a slow machine.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
