"""Shared by the InferenceService tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def until(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    """Poll `check` on the event loop until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.005)
