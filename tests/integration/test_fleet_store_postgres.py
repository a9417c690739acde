"""The fleet store's tests (tests/unit/test_fleet_store.py) again, on a real PostgreSQL server
(scripts/bootstrap postgres: 127.0.0.1:5432, user postgres). Each test gets a database of its
own, dropped after it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.unit.test_fleet_store import *  # noqa: F403 - the same tests, collected here too
from worker.fleet import store as st

PG = "postgresql+psycopg://postgres@127.0.0.1:5432"


@pytest.fixture
def engine() -> Iterator[Engine]:  # replaces the unit tests' SQLite store
    name = f"fleet_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    e = st.open_store(f"{PG}/{name}")
    try:
        yield e
    finally:
        e.dispose()
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def test_the_store_here_is_postgresql(engine):
    assert engine.dialect.name == "postgresql"
    with engine.connect() as c:
        assert c.exec_driver_sql("SELECT 1").scalar() == 1
