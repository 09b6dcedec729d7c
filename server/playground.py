"""The web playground: static files served at ``/`` (no build step, no server-side state).

The page calls this gateway's own OpenAI API from the browser, so it needs nothing beyond the
API itself; its files are public (they hold no secrets), while every API call it makes still
carries the key the user types in.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

PLAYGROUND_DIR = Path(__file__).parent / "playground"
ASSETS_PREFIX = "/playground"
FAVICON = "/favicon.ico"


def playground_paths() -> frozenset[str]:
    """The exact paths the playground serves: open to requests without an API key."""
    assets = {f"{ASSETS_PREFIX}/{p.name}" for p in PLAYGROUND_DIR.iterdir() if p.is_file()}
    return frozenset({"/", FAVICON, *assets})


def mount_playground(app: FastAPI) -> None:
    index = PLAYGROUND_DIR / "index.html"
    icon = PLAYGROUND_DIR / "favicon.svg"

    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(index, media_type="text/html")

    # The page links its icon, but browsers still ask for /favicon.ico on other pages of this
    # origin (and log the 404 in the console): the same SVG, which they accept there too.
    @app.get(FAVICON, include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(icon, media_type="image/svg+xml")

    app.mount(ASSETS_PREFIX, StaticFiles(directory=PLAYGROUND_DIR), name="playground")
