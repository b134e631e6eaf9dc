"""Cursor pagination, newest first: `after=<id>` continues with the rows older than that one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import Session

from core.errors import NotFound

T = TypeVar("T")


def paginate(
    session: Session, stmt: Select[Any], model: Any, *, after: str | None, limit: int,
    visible: Callable[[Any], bool] = lambda _: True,
) -> tuple[list[Any], bool]:
    """`visible` says whether the caller may see the cursor row: another owner's id is an unknown cursor."""
    if after is not None:
        cursor = session.get(model, after)
        if cursor is None or not visible(cursor):
            raise NotFound(f"cursor '{after}' not found")
        stmt = stmt.where(or_(model.created_at < cursor.created_at,
                              and_(model.created_at == cursor.created_at, model.id < cursor.id)))
    rows = list(session.scalars(stmt.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)).all())
    return rows[:limit], len(rows) > limit
