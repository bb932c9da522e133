"""``GET /metrics``: the Prometheus text format, for the ``scrape`` role and above."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from vmatlas.security.tokens import Role
from vmatlas.server.http.access import requires
from vmatlas.server.http.listener import SERVICES


@requires(Role.SCRAPE)
async def metrics(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    # Collecting reads the store: off the event loop. The 0.0.4 text format is the
    # one every Prometheus version reads (our names need none of 1.0.0's UTF-8).
    body = await services.blocking(generate_latest, services.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics)
