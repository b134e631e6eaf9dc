"""Every setting is documented in .env.example with its default, and nothing there is unknown."""

from __future__ import annotations

import re
from pathlib import Path

from core.settings import Settings

ENV_EXAMPLE = Path(__file__).resolve().parents[1] / ".env.example"


def test_env_example_lists_every_setting_and_no_other() -> None:
    text = ENV_EXAMPLE.read_text()
    listed = set(re.findall(r"^#? ?(FTSERVE_[A-Z0-9_]+)=", text, re.MULTILINE))
    fields = {f"FTSERVE_{name.upper()}" for name in Settings.model_fields}
    assert fields - listed == set(), "settings missing from .env.example"
    assert listed - fields == set(), "names in .env.example that are not settings"
