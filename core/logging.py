"""One logging setup for every process."""

from __future__ import annotations

import logging


def setup_logging(level: str = "INFO") -> None:
    """`level`: the process's `Settings.log_level` (FTSERVE_LOG_LEVEL)."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
    )
