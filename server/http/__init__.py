"""The server's HTTP listener (``vmatlas server --http``, by default
``127.0.0.1:50580``): ``/metrics`` for Prometheus, and whatever else
:data:`vmatlas.server.http.routes.ROUTES` adds.

- :mod:`.listener`: the application factory (:func:`~.listener.make_app`), and
  :class:`~.listener.HttpListener`, which runs it on its own event loop in its own
  thread and starts and stops with the server.
- :mod:`.access`: bearer-token roles (``scrape`` reads metrics and nothing else),
  failing closed, and domain errors as HTTP statuses with JSON bodies.
- :mod:`.routes`: the list of route hooks; add yours there.
"""

from vmatlas import defaults

DEFAULT_HTTP_LISTEN = defaults.HTTP_LISTEN
