"""Helpers for tests and benchmarks that need real services (not used by fednas itself)."""

from __future__ import annotations

from fednas.testing._machines import as_other_machine, can_fake_machines
from fednas.testing._postgres import PostgresUnavailable, postgres_binaries, temporary_postgres
from fednas.testing._wait import wait_for

__all__ = ["PostgresUnavailable", "as_other_machine", "can_fake_machines", "postgres_binaries", "temporary_postgres", "wait_for"]
