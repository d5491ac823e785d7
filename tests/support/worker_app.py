"""The worker's Faust app as unit tests build it: default settings, a broker never reached."""

from __future__ import annotations

import faust

from processor.config.settings import Settings
from processor.worker.faust_app import faust_app


def worker_faust_app() -> faust.App:
    cfg = Settings(_env_file=None)
    return faust_app(cfg, ["kafka://127.0.0.1:9092"], partitions=6, web_host="127.0.0.1")
