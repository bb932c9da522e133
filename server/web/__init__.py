"""The web view: pages, their static files and the JSON API, on the server's HTTP
listener (:func:`vmatlas.server.web.app.add_web_routes`)."""
