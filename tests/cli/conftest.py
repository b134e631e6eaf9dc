"""The in-process API of tests/api (TestClient on SQLite in a temp dir) for the CLI's tests."""

from tests.api.conftest import make_api

__all__ = ["make_api"]
