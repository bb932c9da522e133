"""Every route the HTTP listener serves, as the hooks that add them.

To serve more (pages, a JSON API), write ``add_routes(app)`` in a module of this package,
mark each handler with :func:`vmatlas.server.http.access.requires` or
:func:`~vmatlas.server.http.access.public` (an unmarked handler is refused with 403),
reach the server through ``request.app[SERVICES]`` (:class:`HttpServices`: the domain's
``queries`` and ``analysis``, the hub, the store, and ``await services.blocking(fn,
...)`` for anything that blocks) and append
the hook to :data:`ROUTES`.
"""

from __future__ import annotations

from vmatlas.server.http import metrics
from vmatlas.server.http.listener import RouteHook
from vmatlas.server.web import app as web_view

ROUTES: list[RouteHook] = [metrics.add_routes, web_view.add_routes]
