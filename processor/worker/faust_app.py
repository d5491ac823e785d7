"""The worker's Faust configuration: the app's settings and the tables' codecs. (The
plain `Record` a Faust message becomes is processor/worker/fetched.py's.)"""

from __future__ import annotations

from typing import Any

import faust
from faust.serializers import codecs

from processor.config.settings import Settings
from processor.kafka import options as kafka_options
from processor.worker.codec import dump_stored, load_stored


def faust_app(cfg: Settings, urls: list[str], partitions: int, web_host: str) -> faust.App:
    """The worker's Faust app, `urls` its brokers (kafka://host:port)."""
    return faust.App(
        cfg.app_id,
        broker=urls,
        broker_credentials=kafka_options.faust_credentials(cfg),
        store=cfg.store,
        datadir=str(cfg.data_dir),
        topic_partitions=partitions,
        topic_replication_factor=cfg.replication_factor,
        topic_allow_declare=True,
        topic_disable_leader=True,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=cfg.session_timeout_seconds,
        broker_heartbeat_interval=max(0.5, cfg.session_timeout_seconds / 10),
        web_enabled=True,
        # Faust's own pages are off: /router/ lists the cluster's workers,
        # /table/... serves table data to anyone, /graph/ and the statistics at
        # / describe the worker's insides. The worker's pages are its own; it finds
        # a tenant's owner in process, not via /router/.
        # web_metrics_enabled is Faust's JSON /performance/ page, not our
        # /metrics: off (its default), said here so it stays a decision.
        web_router_enabled=False,
        web_tables_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        web_metrics_enabled=False,
        web_port=cfg.web_port,
        web_bind=cfg.web_host,
        web_host=web_host,
        web_in_thread=False,
        autodiscover=False,
        table_standby_replicas=cfg.standby_replicas,
    )


class _Utf8Codec(codecs.Codec):
    def _dumps(self, obj: Any) -> bytes:
        return str(obj).encode()

    def _loads(self, s: bytes) -> Any:
        return s.decode()


class _AccountCodec(codecs.Codec):
    def _dumps(self, obj: Any) -> bytes:
        return dump_stored(obj)

    def _loads(self, s: bytes) -> Any:
        return load_stored(s)


def register_codecs() -> None:
    """Name the tables' codecs for Faust ("meter-str", "meter-account"):
    before any table that uses them is built. Registering again replaces them."""
    codecs.register("meter-str", _Utf8Codec())
    codecs.register("meter-account", _AccountCodec())
