"""`make run`'s own wiring (processor/dev/demo.py) that needs no broker."""

from __future__ import annotations

from processor.dev.demo import DEMO_ENV, demo_env


def test_the_demo_shortens_times_the_environment_does_not_set() -> None:
    env = demo_env({"PATH": "/bin"}, "127.0.0.1:9092")
    assert {name: env[name] for name in DEMO_ENV} == DEMO_ENV
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:9092"
    assert env["PATH"] == "/bin"


def test_a_time_set_in_the_environment_wins_over_the_demos() -> None:
    env = demo_env({"METER_FUNDS_EXPIRE_DAYS": "1"}, "127.0.0.1:9092")
    assert env["METER_FUNDS_EXPIRE_DAYS"] == "1"
    assert env["METER_RECHARGE_TIMEOUT_SECONDS"] == DEMO_ENV["METER_RECHARGE_TIMEOUT_SECONDS"]
