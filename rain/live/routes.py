"""The live routes' paths (a light module: ComfyUI registers them at pack import, before anything heavy loads).
(method, path under ``PREFIX``, name of the ``LiveRoutes`` handler)."""

PREFIX = "/rain/live"
ROUTES = (
    ("get", "/", "panel_page"),
    ("get", "/viewer", "viewer_page"),
    ("get", "/static/{name}", "static_file"),
    ("get", "/sessions", "list_sessions"),
    ("get", "/ws", "websocket"),
    ("post", "/reference", "upload_reference"),
)
