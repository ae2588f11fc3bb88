"""The web console at /console: static files shipped in service/console, no build step and no
external asset (a strict Content-Security-Policy says so to the browser). It calls the same
public API as any client, with the key the user types (kept in the tab's sessionStorage)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse
from starlette.staticfiles import StaticFiles

CONSOLE = Path(__file__).resolve().parent.parent / "console"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(tags=["console"], include_in_schema=False)


@router.get("/console")
async def console() -> FileResponse:
    return FileResponse(CONSOLE / "index.html", media_type="text/html",
                        headers=SECURITY_HEADERS)


@router.get("/console/")
async def console_slash() -> RedirectResponse:
    return RedirectResponse("/console")


class ConsoleAssets(StaticFiles):
    """The console's scripts and styles, with the same security headers as its page."""

    async def get_response(self, path, scope):
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response


def mount(app) -> None:
    app.include_router(router)
    app.mount("/console/assets", ConsoleAssets(directory=CONSOLE), name="console-assets")
