"""Traffic simulator for local runs, demos and soak tests.

Plays the systems around the processor against the topics fixed in CONTRACT.md:
telephony and conferencing (usage events; no calls for a tenant `credits.alerts` says
is exhausted), admins (manual top-ups and auto-recharge settings) and the billing
system (answers every recharge request with funds or a failure). It talks to Kafka
with aiokafka directly, so it exercises the processor's edges the way a foreign system
would, not through faust's own serialisation.

Everything that decides *what* to send is pure and seeded (``generate_tenants``,
``make_*``, ``TrafficGenerator``, ``BillingBook``, ``CallGate``,
``DuplicateScheduler``), so the unit tests need no broker; ``Simulator`` only adds
pacing and I/O.

Its parts: `contract` (topic names, rejection reasons, value formats), `phones`,
`tenants`, `events` (the records), `billing`, `gate` (telephony's call gate), `config`
(settings and counters), `traffic` (what to send and when), `runner` (Kafka I/O) and
`cli`.
"""

from processor.dev.simulator.billing import BillingBook
from processor.dev.simulator.cli import (
    build_arg_parser,
    config_from_args,
    main,
    run_until_signalled,
)
from processor.dev.simulator.config import SimulatorConfig, SimulatorStats
from processor.dev.simulator.contract import (
    ALERTS,
    BILLING_GROUP_ID,
    COMMANDS,
    EXPECTED_REJECT_REASON,
    GARBAGE_KINDS,
    RECHARGE_REQUESTS,
    SIMULATOR_TOPICS,
    USAGE_CALLS,
    USAGE_CONFERENCING,
    rfc3339,
)
from processor.dev.simulator.events import (
    OutRecord,
    encode,
    make_auto_recharge_configured,
    make_call_usage,
    make_conference_usage,
    make_funds_added,
    make_garbage,
    make_recharge_failed,
)
from processor.dev.simulator.gate import CallGate
from processor.dev.simulator.runner import Simulator, wait_for_topics
from processor.dev.simulator.tenants import AutoRecharge, TenantProfile, generate_tenants
from processor.dev.simulator.traffic import DuplicateScheduler, TokenBucket, TrafficGenerator

__all__ = [
    "ALERTS",
    "BILLING_GROUP_ID",
    "COMMANDS",
    "EXPECTED_REJECT_REASON",
    "GARBAGE_KINDS",
    "RECHARGE_REQUESTS",
    "SIMULATOR_TOPICS",
    "USAGE_CALLS",
    "USAGE_CONFERENCING",
    "AutoRecharge",
    "BillingBook",
    "CallGate",
    "DuplicateScheduler",
    "OutRecord",
    "Simulator",
    "SimulatorConfig",
    "SimulatorStats",
    "TenantProfile",
    "TokenBucket",
    "TrafficGenerator",
    "build_arg_parser",
    "config_from_args",
    "encode",
    "generate_tenants",
    "main",
    "make_auto_recharge_configured",
    "make_call_usage",
    "make_conference_usage",
    "make_funds_added",
    "make_garbage",
    "make_recharge_failed",
    "rfc3339",
    "run_until_signalled",
    "wait_for_topics",
]
