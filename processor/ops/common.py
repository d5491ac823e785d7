"""What every `meter` command shares: its exit codes and where Kafka is.

Exit codes: 0 success, 1 the command ran and found a problem (broker not running,
check failed), 2 bad usage or configuration (a setting the environment gets wrong is
one line naming the variable, its value and what is allowed; see `processor.ops.cli.main`).
"""

from __future__ import annotations

from typing import Final

from processor.config.settings import Settings

__all__ = ["EXIT_OK", "EXIT_PROBLEM", "EXIT_USAGE", "resolve_bootstrap"]

EXIT_OK: Final = 0
EXIT_PROBLEM: Final = 1
EXIT_USAGE: Final = 2


def resolve_bootstrap(cfg: Settings) -> str:
    """KAFKA_BOOTSTRAP_SERVERS, or the local broker that `meter kafka start` runs."""
    if cfg.kafka_bootstrap_servers:
        return cfg.kafka_bootstrap_servers
    from processor.dev import kafka_local

    state = kafka_local.status(kafka_local.default_state_dir())
    if not state or not state.get("running"):
        raise SystemExit(
            "KAFKA_BOOTSTRAP_SERVERS is not set and the local broker is not running; "
            "start it with `meter kafka start` or point KAFKA_BOOTSTRAP_SERVERS at a cluster"
        )
    return str(state["bootstrap"])
