"""The labeler's page: GET /label shows (offers) the next item, POST /label stores (or skips) a label for it.

The rules (which item comes next, which items a labeler may label, what makes a label valid, double submits)
live in labels.py; this module only turns them into pages and redirects. After a POST the browser is redirected
(post/redirect/get), so a reload never resubmits; `?already=1` tells the page that a double submit was stored
once. A refused label gets the error page: 400 for a malformed one, 409 for an item not offered or full.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from rlhfkit.labeling.webapp import db, labels
from rlhfkit.labeling.webapp.deps import Deps, checked_form, first


def register_label_routes(app: FastAPI, deps: Deps) -> None:
    """GET/POST /label, for any signed-in labeler (the admin included)."""

    @app.get("/label", response_class=HTMLResponse)
    def label_page(request: Request, who: db.Who = Depends(deps.current)):
        item = labels.offer_next_item(deps.engine, who.labeler_id, deps.labels_per_item)
        prog = labels.progress(deps.engine, who.labeler_id, deps.labels_per_item)
        if item is None:
            return deps.page(request, "label.html", who=who, item=None, progress=prog)
        responses = item.responses
        shown = [(i, responses[i]) for i in labels.display_order(item.id, who.labeler_id, len(responses))]
        return deps.page(request, "label.html", who=who, item=item, shown=shown, k=len(responses),
                         progress=prog, flags=db.FLAGS)

    @app.post("/label")
    async def submit(request: Request, who: db.Who = Depends(deps.current)):
        form = await checked_form(request, who)
        try:
            stored = await run_in_threadpool(_submit, deps.engine, who, form, deps.labels_per_item)
        except labels.InvalidLabel as err:
            return deps.page(request, "error.html", err.status, who=who, message=f"not saved: {err}")
        return RedirectResponse("/label" if stored else "/label?already=1", status_code=303)


def _submit(engine: Engine, who: db.Who, form: dict[str, list[str]], labels_per_item: int) -> bool:
    """Check the whole form, then write once. Raises InvalidLabel (nothing written) on any problem."""
    iid = first(form, "item_id")
    item = labels.get_item(engine, iid)
    if item is None:
        raise labels.InvalidLabel(f"unknown item id {iid[:40]!r}")
    action = first(form, "action", "submit")
    if action not in ("submit", "skip"):
        raise labels.InvalidLabel(f"unknown action {action[:40]!r}")
    sub = None if action == "skip" else labels.parse_submission(form, len(item.responses))
    return labels.store_label(engine, who.labeler_id, iid, sub, labels_per_item)
