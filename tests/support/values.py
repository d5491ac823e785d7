"""Kafka record values that a test expects to be there."""

from __future__ import annotations


def present(value: bytes | None) -> bytes:
    """The value, which must not be a tombstone here: a None fails the test, never skips."""
    assert value is not None, "a record without a value (a tombstone) where one was expected"
    return value
