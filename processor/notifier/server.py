"""`meter notifier`'s process: the notifier, with its /metrics, /health and /ready."""

from __future__ import annotations

import asyncio
import logging

from processor.notifier.service import Notifier
from processor.observability import metrics

__all__ = ["serve"]

log = logging.getLogger("processor.notifier")


async def serve(notifier: Notifier, host: str, port: int, stop: asyncio.Event) -> None:
    """The notifier and its /metrics, /health and /ready until `stop` is set."""
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    async def metrics_page(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.NOTIFIER_REGISTRY),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(request: web.Request) -> web.Response:
        ok = notifier.ready
        detail = "consuming" if ok else "waiting for partitions and the settings topic"
        return web.json_response({"ready": ok, "detail": detail}, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("notifier: /metrics and /ready on http://%s:%d", host, port)
        await notifier.run(stop)
    finally:
        await runner.cleanup()
