"""Session-wide fixtures every test directory may use; topic fixtures live in sub-directory conftests.

- `postgres_server`: one real PostgreSQL for the session (started on first use, stopped at the end).
- `postgres_url`: a fresh, empty database on it for one test (SQLAlchemy URL, psycopg 3 driver).

Without PostgreSQL binaries the tests that use them are skipped with the reason, repeated in the terminal
summary; under `CI=true` they fail instead (see tests/postgres.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from accord.store.pgserver import PostgresServer
from tests.postgres import running_under_ci, start_for_session

_postgres_skip_reasons: list[str] = []


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server, problem = start_for_session()
    if server is None:
        if running_under_ci():
            pytest.fail(f"CI=true requires PostgreSQL: {problem}", pytrace=False)
        _postgres_skip_reasons.append(problem)
        pytest.skip(f"NO POSTGRESQL: {problem}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    return postgres_server.create_database()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for reason in _postgres_skip_reasons:
        terminalreporter.write_sep("!", "PostgreSQL tests were SKIPPED", red=True, bold=True)
        terminalreporter.write_line(f"  {reason}", red=True, bold=True)
