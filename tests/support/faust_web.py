"""The aiohttp application behind a Faust app's web server, typed.

Faust types `app.web` as its abstract `Web`; the aiohttp driver the worker runs adds
`web_app`. Narrowing with isinstance keeps the test honest if the driver ever changes.
"""

from __future__ import annotations

import faust
from aiohttp import web
from faust.web.drivers.aiohttp import Web as AiohttpWeb


def aiohttp_app(app: faust.App) -> web.Application:
    driver = app.web
    assert isinstance(driver, AiohttpWeb), type(driver)
    return driver.web_app
