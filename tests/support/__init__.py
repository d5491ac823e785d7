"""Builders and helpers shared by the unit, agent and integration tests (no fixtures here)."""
