"""The sync status page: a small FastAPI app the Airflow API server mounts under ``/crm-sync-status``.

It is the sync's operations console: per entity and direction the runs, the change backlog and
today's calls; charts over 24 hours and 7 days (drawn in the page by ``static/charts.js`` from
the JSON embedded in it); record errors with a search and filter form, their CSV export
(``errors.csv``) and the re-queue of the filtered set. Figures come from :mod:`crm_sync.status`
and :mod:`crm_sync.status_charts` (the state store); this module only handles the web side:
who may see or change what, reading the project's Variables, rendering escaped HTML.

Access control: every route resolves the caller through Airflow's own authentication (the
UI's ``_token`` session cookie or an ``Authorization: Bearer`` JWT, exactly as ``/api/v2``
does) and asks the configured auth manager whether the user may read DAG runs (viewing) or
create DAG runs (re-queueing, which schedules work like a trigger does). The re-queue form
carries a token derived from the API server's ``[api] secret_key`` and the user name, and a
cross-origin ``Origin`` is refused, so another page cannot submit it with the user's cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Form, HTTPException, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from crm_sync import status as sync_status
from crm_sync_status.exports import errors_csv

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

URL_PREFIX = "/crm-sync-status"
STATE_URL_VARIABLE = "mds_state_db_url"
QUOTA_VARIABLE = "mds_marketo_daily_quota"
RESERVE_VARIABLE = "mds_quota_reserve_share"
DYNAMICS_RESERVE_VARIABLE = "mds_dynamics_window_reserve"  # default: the Marketo reserve share
STATIC_DIR = Path(__file__).resolve().parent / "static"

_templates = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parent / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
_templates.filters["age"] = sync_status.format_age
_templates.filters["urlencode_params"] = lambda params: urlencode(params)


def _short_time(iso: str | None) -> str:
    """``2026-11-26T16:31:30.697+00:00`` → ``2026-11-26 16:31:30`` (UTC, as the page says)."""
    from datetime import UTC, datetime

    if not iso:
        return "—"
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


_templates.filters["ts"] = _short_time
_bearer = HTTPBearer(auto_error=False)
_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


# --- access control -------------------------------------------------------------------------


async def _user(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Any:
    """The Airflow user of this request (JWT from the bearer header or the UI session cookie)."""
    from airflow.api_fastapi.core_api.security import get_user  # the API server's own resolver

    return await get_user(request, None, credentials)


def _authorize(user: Any, method: Literal["GET", "POST"]) -> Any:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity

    allowed = get_auth_manager().is_authorized_dag(
        method=method, access_entity=DagAccessEntity.RUN, user=user
    )
    if not allowed:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Forbidden")
    return user


def _reader(user: Annotated[Any, Depends(_user)]) -> Any:
    """Users who may read DAG runs may see the status."""
    return _authorize(user, "GET")


def _requeuer(user: Annotated[Any, Depends(_user)]) -> Any:
    """Users who may trigger DAG runs may re-queue record errors."""
    return _authorize(user, "POST")


def _user_name(user: Any) -> str:
    getter = getattr(user, "get_name", None)
    return str(getter() if callable(getter) else getattr(user, "username", ""))


def _form_token(user: Any) -> str:
    """Anti-forgery token of the re-queue form: HMAC of the user name under the API secret key."""
    from airflow.configuration import conf

    key = conf.get("api", "secret_key", fallback="") or ""
    if not key:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "[api] secret_key is not set")
    msg = f"crm-sync-status:requeue:{_user_name(user)}".encode()
    return hmac.new(key.encode(), msg, hashlib.sha256).hexdigest()


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        # Browsers send Origin on POST; "null" comes from sandboxed frames without same-origin.
        return origin is None
    own = f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"
    return origin.rstrip("/") == own


# --- settings from Airflow Variables --------------------------------------------------------


def _variable(key: str) -> str | None:
    from airflow.models.variable import Variable

    value = Variable.get(key, default_var=None)
    return None if value in (None, "") else str(value)


def state_url() -> str:
    """The state store URL: Variable ``mds_state_db_url`` or the project default (as the DAGs use)."""
    from crm_sync.state import default_url

    return _variable(STATE_URL_VARIABLE) or default_url()


def _number(key: str, cast: type[int] | type[float], default: float) -> float:
    raw = _variable(key)
    if raw is None:
        return default
    try:
        return cast(raw.strip())
    except ValueError:
        raise ValueError(f"Variable {key} must be a number ({cast.__name__}), not {raw!r}") from None


def quota_settings() -> tuple[int, float]:
    """``(daily quota, reserve share)`` from the Variables the sync DAGs' budget guard reads.

    Raises:
        ValueError: A Variable is not a number.
    """
    quota = int(_number(QUOTA_VARIABLE, int, sync_status.DEFAULT_DAILY_QUOTA))
    return quota, float(_number(RESERVE_VARIABLE, float, sync_status.DEFAULT_RESERVE_SHARE))


def dynamics_reserve(marketo_reserve: float) -> float:
    """Share of the Dataverse window kept for others: its Variable, else the Marketo share.

    Raises:
        ValueError: The Variable is not a number.
    """
    return float(_number(DYNAMICS_RESERVE_VARIABLE, float, marketo_reserve))


def configured_entities() -> dict[str, str]:
    """Sync name → direction: the marketing syncs and the entity folder the DAG factory reads."""
    from crm_sync.config import load_entities
    from crm_sync.tasks.common import entities_dir

    folder = Path(entities_dir())
    entities = {name: e.direction.value for name, e in load_entities(folder).items()}
    return {**sync_status.MARKETING_SYNCS, **entities}


def _engine(url: str) -> Engine:
    from crm_sync.state import make_engine

    with _engines_lock:
        if url not in _engines:
            _engines[url] = make_engine(url)
        return _engines[url]


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# --- the status itself ----------------------------------------------------------------------


def collect(flt: sync_status.ErrorFilter | None = None) -> dict[str, Any]:
    """Everything the page shows, as plain data (also served as JSON); errors as ``flt`` filters them."""
    from crm_sync import status_charts
    from crm_sync.state import current_revision, session_scope, utcnow

    flt = flt or sync_status.ErrorFilter()
    url = state_url()
    out: dict[str, Any] = {
        "generated_at": utcnow().isoformat(),
        "state_store": _safe_url(url),
        "ready": False,
        "entities": [],
        "quota": None,
        "charts": None,
        "peek_calls": None,
        "filter": flt.params(),
        "facets": {"entities": [], "fields": [], "codes": []},
        "errors": [],
        "errors_total": 0,
        "errors_parked": 0,
        "problems": [],
    }
    configured = configured_entities()
    engine = _engine(url)
    if current_revision(engine) is None:
        out["problems"].append("The state store has no tables yet: no sync has run against it.")
        out["entities"] = [sync_status.blank_row(n, d) for n, d in sorted(configured.items())]
        return out
    with session_scope(engine) as session:
        now = utcnow()
        rows = sync_status.entity_status(session, configured, now=now)
        out["entities"] = status_charts.add_console_columns(session, rows, now=now)
        out["peek_calls"] = status_charts.peek_calls_today(session, now=now)
        try:
            quota, reserve = quota_settings()
            out["quota"] = sync_status.quota_usage(session, daily_quota=quota, reserve_share=reserve, now=now)
            out["charts"] = status_charts.chart_series(
                session,
                usable_budget=out["quota"]["usable"],
                daily_quota=quota,
                dynamics_reserve_share=dynamics_reserve(reserve),
                now=now,
            )
        except ValueError as exc:
            out["problems"].append(str(exc))
        out["facets"] = sync_status.error_facets(session)
        out["errors"], out["errors_total"] = sync_status.error_list(session, flt=flt)
        if flt.state != "retrying":
            parked = sync_status.ErrorFilter(**{**flt.params(), "state": "parked"})
            out["errors_parked"] = sync_status.error_list(session, flt=parked, limit=0)[1]
    out["ready"] = True
    return out


def _filter(
    search: str = "",
    entity: str = "",
    direction: str = "",
    field: str = "",
    code: str = "",
    state: str = "",
    source_id: str = "",
) -> sync_status.ErrorFilter:
    """The record-error filter of a request's query string (the page, ``status.json``, the CSV)."""
    try:
        return sync_status.ErrorFilter(search, entity, direction, field, code, state, source_id)
    except ValueError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None


def _collect_or_503(flt: sync_status.ErrorFilter | None = None) -> dict[str, Any]:
    try:
        return collect(flt)
    except HTTPException:
        raise
    except Exception as exc:
        # The details (which may name hosts or users) go to the API server log only.
        log.exception("sync status: reading the state store failed")
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"state store not readable ({type(exc).__name__}); see the API server log",
        ) from None


def create_app() -> FastAPI:
    """The FastAPI app of the status page (mounted by the plugin under :data:`URL_PREFIX`)."""
    app = FastAPI(title="Marketo-Dynamics sync status", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(HTTPException)
    async def _to_login(request: Request, exc: HTTPException) -> Any:
        """A browser without a session opening the page goes to Airflow's login, then back here."""
        from fastapi.exception_handlers import http_exception_handler

        wants_page = request.method == "GET" and request.url.path.rstrip("/").endswith(URL_PREFIX)
        if (
            exc.status_code == status.HTTP_401_UNAUTHORIZED
            and wants_page
            and "text/html" in request.headers.get("accept", "")
        ):
            from airflow.api_fastapi.app import get_auth_manager

            login = get_auth_manager().get_url_login(next_url=str(request.url))
            return RedirectResponse(login, status_code=status.HTTP_303_SEE_OTHER)
        return await http_exception_handler(request, exc)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", response_class=HTMLResponse, name="status_page")
    def status_page(
        request: Request,
        user: Annotated[Any, Depends(_reader)],
        flt: Annotated[sync_status.ErrorFilter, Depends(_filter)],
        requeued: int | None = None,
        retried: int = 0,
    ) -> HTMLResponse:
        data = _collect_or_503(flt)
        can_requeue = True
        try:
            _authorize(user, "POST")
        except HTTPException:
            can_requeue = False
        html = _templates.get_template("status.html").render(
            data=data,
            user=_user_name(user),
            can_requeue=can_requeue,
            form_token=_form_token(user) if can_requeue else "",
            requeued=requeued,
            retried=retried,
        )
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @app.get("/status.json", name="status_json")
    def status_json(
        user: Annotated[Any, Depends(_reader)], flt: Annotated[sync_status.ErrorFilter, Depends(_filter)]
    ) -> JSONResponse:
        return JSONResponse(_collect_or_503(flt), headers={"Cache-Control": "no-store"})

    @app.get("/errors.csv", name="errors_csv")
    def errors_export(
        user: Annotated[Any, Depends(_reader)], flt: Annotated[sync_status.ErrorFilter, Depends(_filter)]
    ) -> Response:
        from crm_sync.state import session_scope

        try:
            with session_scope(_engine(state_url())) as session:
                body = errors_csv(sync_status.iter_errors(session, flt))
        except Exception as exc:
            log.exception("sync status: exporting record errors failed")
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                f"state store not readable ({type(exc).__name__}); see the API server log",
            ) from None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        return Response(
            body,
            media_type="text/csv; charset=utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="record-errors-{stamp}.csv"',
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
            },
        )

    @app.post("/requeue", name="requeue")
    def requeue(
        request: Request,
        user: Annotated[Any, Depends(_requeuer)],
        token: Annotated[str, Form()],
        search: Annotated[str, Form()] = "",
        entity: Annotated[str, Form()] = "",
        direction: Annotated[str, Form()] = "",
        field: Annotated[str, Form()] = "",
        code: Annotated[str, Form()] = "",
        state: Annotated[str, Form()] = "",
        source_id: Annotated[str, Form()] = "",
    ) -> RedirectResponse:
        if not _same_origin(request) or not hmac.compare_digest(token, _form_token(user)):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, "re-queue form token or origin not valid; reload the page"
            )
        from crm_sync.state import session_scope

        try:
            flt = sync_status.ErrorFilter(search, entity, direction, field, code, state, source_id)
            with session_scope(_engine(state_url())) as session:
                counts = sync_status.requeue_matching(session, flt, known_entities=configured_entities())
        except ValueError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
        log.info(
            "sync status: %s re-queued %d parked and %d retrying record errors (filter %s)",
            _user_name(user),
            counts["parked"],
            counts["retrying"],
            flt.params(),
        )
        # Back to the filtered view re-queued; a row's own button (one record) back to the page.
        shown = {} if flt.source_id else flt.params()
        query = urlencode({"requeued": counts["parked"], "retried": counts["retrying"], **shown})
        return RedirectResponse(f"./?{query}", status_code=status.HTTP_303_SEE_OTHER)

    return app


app = create_app()
