"""Prometheus metrics of the serving path (exported by `GET /metrics`)."""

from __future__ import annotations

from prometheus_client import Counter

GENERATIONS_CANCELLED = Counter(
    "ftserve_generations_cancelled",
    "Streaming generations stopped because the client went away",
    ["model"],
)
GENERATION_TOKENS_CANCELLED = Counter(
    "ftserve_generation_cancelled_tokens",
    "New tokens produced by streaming generations before their client went away",
    ["model"],
)
