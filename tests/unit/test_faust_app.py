"""The worker's Faust app takes its table settings from the worker's configuration."""

from __future__ import annotations

import pytest

from tests.support.worker_app import worker_faust_app


def test_a_worker_keeps_no_standby_copies_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    # Faust's own default is one standby per table; a standby reads every changelog
    # record the other workers write (docs/performance.md, "Standby replicas").
    monkeypatch.delenv("METER_STANDBY_REPLICAS", raising=False)
    assert worker_faust_app().conf.table_standby_replicas == 0


@pytest.mark.parametrize("replicas", [1, 2])
def test_standby_copies_are_what_the_setting_asks(
    monkeypatch: pytest.MonkeyPatch, replicas: int
) -> None:
    monkeypatch.setenv("METER_STANDBY_REPLICAS", str(replicas))
    assert worker_faust_app().conf.table_standby_replicas == replicas
