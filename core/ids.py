"""Prefixed ids: lowercase [a-z0-9_], sortable by creation time."""

from __future__ import annotations

import secrets
import time


def new_id(prefix: str) -> str:
    # Millisecond time in base 36 first keeps ids roughly time-ordered (cursor pagination by id).
    ms = int(time.time() * 1000)
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while ms:
        ms, r = divmod(ms, 36)
        out = digits[r] + out
    return f"{prefix}_{out.rjust(9, '0')}{secrets.token_hex(6)}"
