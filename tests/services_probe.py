"""Run only by tests/test_services_required.py, in a subprocess pointed at closed ports."""

from __future__ import annotations


def test_needs_postgres(pg_url: str) -> None:
    assert pg_url


def test_needs_redis(redis_url: str) -> None:
    assert redis_url
