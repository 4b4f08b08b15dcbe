"""The admin's pages: GET /admin (progress, agreement, disputed items) and GET /admin/export (JSONL download).

Both require an admin session (deps.admin); a labeler gets the 403 page. The export is the same bytes that
`rlhfkit label export` writes, so a download and a command-line export of one database are interchangeable.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from rlhfkit.labeling.webapp import db
from rlhfkit.labeling.webapp.deps import Deps
from rlhfkit.labeling.webapp.export import FORMATS, export_records, to_jsonl
from rlhfkit.labeling.webapp.stats import overview


def register_admin_routes(app: FastAPI, deps: Deps) -> None:
    """GET /admin and GET /admin/export?format=preferences|rankings."""

    @app.get("/admin", response_class=HTMLResponse)
    def admin_page(request: Request, who: db.Who = Depends(deps.admin)):
        return deps.page(request, "admin.html", who=who, ov=overview(deps.engine), formats=FORMATS,
                         labels_per_item=deps.labels_per_item)

    # The query parameter is named `format` because that is the public URL; it shadows the builtin only here.
    @app.get("/admin/export")
    def export(format: str = "preferences", who: db.Who = Depends(deps.admin)):
        if format not in FORMATS:
            return PlainTextResponse(f"unknown format {format!r}; use one of {FORMATS}", status_code=400)
        body = to_jsonl(export_records(deps.engine, format))
        return Response(body, media_type="application/x-ndjson",
                        headers={"Content-Disposition": f'attachment; filename="{format}.jsonl"'})
