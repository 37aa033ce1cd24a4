"""The dashboard served by the app itself (`GET /dashboard`) and Swagger UI at `/docs`, both working offline:
every script, style and font ships in `static/` (vendored: uPlot for the charts, Swagger UI; see their LICENSE
files and docs/development.md).

    routes.py    the page and the JSON endpoints it polls (`/v1/stats/timeseries`, `/live`, `/recent`, `/shadows`)
    schemas.py   their reply models, for the OpenAPI document
    static/      index.html, dashboard.js, dashboard.css, vendor/ (uPlot, Swagger UI)

The numbers come from `bandit_router.log.Monitor` (bounded reads of the store's per-minute rollup).
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from .routes import STATIC, router

ASSETS = "/dashboard/static"


def install(app: FastAPI, *, docs_url: str = "/docs") -> None:
    """Add the dashboard's routes, its static files, and Swagger UI at `docs_url` from the vendored assets (create
    the app with `docs_url=None`)."""
    app.include_router(router)
    app.mount(ASSETS, StaticFiles(directory=str(STATIC)), name="dashboard-static")

    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} — API",
            swagger_js_url=f"{ASSETS}/vendor/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/vendor/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/vendor/swagger-ui/favicon-32x32.png",
        )

    app.add_api_route(docs_url, swagger_ui, methods=["GET"], include_in_schema=False)


__all__ = ["install"]
