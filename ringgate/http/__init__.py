"""The HTTP surface: a small router of our own over plain ASGI (Starlette's Request/Response
objects cost ~20% on the hot path, MEASUREMENTS.md), the shared intake every source calls, and
the status endpoints. `create_app` in app.py builds it."""
