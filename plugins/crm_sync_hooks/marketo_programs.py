"""Marketo programs, program membership and activity exports, as a mixin of
:class:`~crm_sync_hooks.marketo.MarketoHook`.

Programs come from the asset API (``/rest/asset/v1/programs.json``, paged by ``offset`` and
``maxReturn``); members from the lead database API (``/rest/v1/programs/{id}/members.json``,
paged by ``nextPageToken``). A member's progression status is one of its program's channel's
statuses; a status change (or a removal) shows in the activity feed as "Change Status in
Progression", which is how an incremental sync reads membership changes. Large programs and
activity history go through bulk extract jobs (``program/members``, ``activities``) run by the
same job code as the lead export (:class:`~crm_sync_hooks.marketo_bulk.MarketoBulkMixin`).
Every call goes through the hook's ``call``, so it counts against the daily call budget.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from crm_sync_hooks.marketo_bulk import MAX_EXTRACT_WINDOW, extract_windows, marketo_time
from crm_sync_hooks.marketo_writes import MAX_BATCH
from crm_sync_hooks.records import chunked

if TYPE_CHECKING:
    from collections.abc import Generator, Iterator, Mapping, Sequence
    from pathlib import Path

    from crm_sync_hooks.results import WriteResult

ASSET_PAGE = 200  # the asset API's largest maxReturn
MEMBERS = "program/members"
ACTIVITIES = "activities"
ALL_MEMBERS = ("true", "false")  # reachedSuccess is true or false for every member


@dataclass
class BulkExportFile:
    """A bulk export written to a local file.

    Attributes:
        path: The CSV file (one header line; empty values are the literal ``null``).
        rows: Records in the file (the jobs' ``numberOfRecords`` summed).
        export_ids: The jobs that made it, in order.
    """

    path: Path
    rows: int = 0
    export_ids: list[str] = field(default_factory=list)


class MarketoProgramsMixin:
    """Program, membership and activity-export methods; the host class provides the calls."""

    if TYPE_CHECKING:

        @property
        def bulk_queue_wait(self) -> float: ...

        def call_json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]: ...
        def _pages(
            self, path: str, form: dict[str, Any], batch_size: int
        ) -> Iterator[list[dict[str, Any]]]: ...
        def _write(
            self,
            path: str,
            records: Sequence[Mapping[str, Any]],
            body: dict[str, Any],
            required: Sequence[str],
            id_fields: Sequence[str],
        ) -> list[WriteResult]: ...
        def export_windows(
            self, object_path: str, bodies: Iterator[Mapping[str, Any]], **kwargs: Any
        ) -> Generator[tuple[str, dict[str, Any], Path], None, None]: ...

    # --- programs (asset API) ------------------------------------------------------------
    def get_programs(
        self,
        max_return: int = ASSET_PAGE,
        *,
        status: str | None = None,
        updated_since: datetime | None = None,
        updated_until: datetime | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        """Yield pages of programs (browse by ``offset``), optionally only those updated in a range."""
        if not 1 <= max_return <= ASSET_PAGE:
            raise ValueError(f"max_return must be 1..{ASSET_PAGE}, got {max_return}")
        params: dict[str, Any] = {"maxReturn": max_return}
        if status:
            params["status"] = status
        if updated_since is not None:
            params["earliestUpdatedAt"] = marketo_time(updated_since)
        if updated_until is not None:
            params["latestUpdatedAt"] = marketo_time(updated_until)
        offset = 0
        while True:
            body = self.call_json("GET", "/rest/asset/v1/programs.json", params={**params, "offset": offset})
            page = list(body.get("result") or [])  # past the end: a warning and no result
            if page:
                yield page
            if len(page) < max_return:
                return
            offset += len(page)

    def get_program(self, program_id: int) -> dict[str, Any] | None:
        """Return a program by id, or None when Marketo finds none."""
        body = self.call_json("GET", f"/rest/asset/v1/program/{int(program_id)}.json")
        return _first_or_none(body)

    def get_program_by_name(self, name: str) -> dict[str, Any] | None:
        """Return a program by name, or None when Marketo finds none."""
        return _first_or_none(
            self.call_json("GET", "/rest/asset/v1/program/byName.json", params={"name": name})
        )

    def get_channel(self, name: str) -> dict[str, Any] | None:
        """Return a channel (with its ``progressionStatuses``) by name, or None."""
        return _first_or_none(
            self.call_json("GET", "/rest/asset/v1/channel/byName.json", params={"name": name})
        )

    # --- members ---------------------------------------------------------------------------
    def get_program_members(
        self,
        program_id: int,
        *,
        filter_type: str = "reachedSuccess",
        filter_values: Sequence[str | int | bool] = ALL_MEMBERS,
        fields: Sequence[str] | None = None,
        batch_size: int = MAX_BATCH,
        updated_between: tuple[datetime, datetime] | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        """Yield pages of a program's members.

        The default filter (``reachedSuccess`` true or false) matches every member. With
        ``updated_between`` the filter is ``updatedAt`` (a range of at most seven days). Marketo
        caps non-``leadId`` filters at 100,000 members; export bigger programs instead
        (:meth:`export_program_members`). Calls are ``POST ...?_method=GET`` so long value lists
        never hit the 8 KB URI limit.
        """
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1..{MAX_BATCH}, got {batch_size}")
        path = f"/rest/v1/programs/{int(program_id)}/members.json"
        form: dict[str, Any] = {"batchSize": batch_size}
        if fields:
            form["fields"] = ",".join(fields)
        if updated_between is not None:
            start, end = updated_between
            form.update(
                {"filterType": "updatedAt", "startAt": marketo_time(start), "endAt": marketo_time(end)}
            )
            yield from self._pages(path, form, batch_size)
            return
        values = [str(v).lower() if isinstance(v, bool) else str(v) for v in filter_values]
        for _, chunk in chunked(values, MAX_BATCH):
            yield from self._pages(
                path, {**form, "filterType": filter_type, "filterValues": ",".join(chunk)}, batch_size
            )

    def set_program_member_status(
        self, program_id: int, lead_ids: Sequence[int], status_name: str
    ) -> list[WriteResult]:
        """Set ``status_name`` for each lead (a member is created when needed), one result per lead.

        A lead already in or past the status is skipped (1037); an unknown status fails the call
        (1025). The result ids are the lead ids.
        """
        records = [{"leadId": int(i)} for i in lead_ids]
        path = f"/rest/v1/programs/{int(program_id)}/members/status.json"
        return _with_lead_ids(
            self._write(path, records, {"statusName": status_name}, ["leadId"], ()), lead_ids
        )

    def remove_program_members(self, program_id: int, lead_ids: Sequence[int]) -> list[WriteResult]:
        """Remove leads from a program, one result per lead (1037 for a lead that is not a member)."""
        records = [{"leadId": int(i)} for i in lead_ids]
        path = f"/rest/v1/programs/{int(program_id)}/members/delete.json"
        return _with_lead_ids(self._write(path, records, {}, ["leadId"], ()), lead_ids)

    def change_lead_program_status(
        self, program_id: int, lead_ids: Sequence[int], status: str
    ) -> list[WriteResult]:
        """The lead API's form (Change Lead Program Status; Adobe says it is superseded by
        :meth:`set_program_member_status` and changes existing members only)."""
        records = [{"id": int(i)} for i in lead_ids]
        path = f"/rest/v1/leads/programs/{int(program_id)}/status.json"
        return _with_lead_ids(self._write(path, records, {"status": status}, ["id"], ()), lead_ids)

    def get_lead_program_memberships(
        self, lead_id: int, program_ids: Sequence[int] = (), batch_size: int = MAX_BATCH
    ) -> list[dict[str, Any]]:
        """Return a lead's memberships (``id`` = program id, ``progressionStatus``, ...)."""
        path = f"/rest/v1/leads/{int(lead_id)}/programMembership.json"
        params: dict[str, Any] = {"batchSize": batch_size}
        if program_ids:
            params.update({"filterType": "id", "filterValues": ",".join(str(int(i)) for i in program_ids)})
        out: list[dict[str, Any]] = []
        while True:
            body = self.call_json("GET", path, params=params)
            out.extend(body.get("result") or [])
            token = body.get("nextPageToken")
            if not body.get("moreResult") or not token:
                return out
            params["nextPageToken"] = token

    # --- activities --------------------------------------------------------------------------
    def get_activity_types(self) -> list[dict[str, Any]]:
        """Return the instance's activity types (id, name, primaryAttribute, attributes)."""
        return list(self.call_json("GET", "/rest/v1/activities/types.json").get("result") or [])

    # --- bulk exports ------------------------------------------------------------------------
    def export_program_members(
        self,
        program_ids: int | Sequence[int],
        fields: Sequence[str],
        dest: Path,
        *,
        status_names: Sequence[str] = (),
        **job: Any,
    ) -> BulkExportFile:
        """Export the current members of one program (or up to 10) to ``dest`` (CSV).

        ``fields`` are program member and person fields by REST name; the columns are named by
        their REST names whatever Marketo's default headers are. With several programs the file
        starts with a ``programId`` column. ``job`` takes :meth:`export_windows`' options
        (``poll_seconds``, ``max_wait_seconds``, ``first_poll_seconds``, ``workdir``).
        """
        if not fields:
            raise ValueError("a program member export needs at least one field")
        ids = [int(program_ids)] if isinstance(program_ids, int) else [int(i) for i in program_ids]
        export_filter: dict[str, Any] = {"programId": ids[0]} if len(ids) == 1 else {"programIds": ids}
        if status_names:
            export_filter["statusNames"] = list(status_names)
        body = {
            "format": "CSV",
            "fields": list(fields),
            "columnHeaderNames": {f: f for f in fields},
            "filter": export_filter,
        }
        return self._export_to_file(MEMBERS, iter([body]), dest, job)

    def export_activities(
        self,
        start: datetime,
        end: datetime,
        dest: Path,
        *,
        activity_type_ids: Sequence[int] = (),
        fields: Sequence[str] = (),
        window: timedelta = MAX_EXTRACT_WINDOW,
        **job: Any,
    ) -> BulkExportFile:
        """Export the activities created in ``[start, end)`` to one CSV file at ``dest``.

        One job runs per window of at most 31 days, two at a time; each window ends one second
        before the next starts (filters take whole seconds), so no activity is in two files.
        Delete Lead activities are never exported (read the deleted-leads feed). The files are
        appended in date order under a single header.
        """
        if window > MAX_EXTRACT_WINDOW:
            raise ValueError("bulk extract windows cannot exceed 31 days")
        export_filter: dict[str, Any] = {}
        if activity_type_ids:
            export_filter["activityTypeIds"] = [int(i) for i in activity_type_ids]
        last = timedelta(seconds=1)
        bodies = (
            {
                "format": "CSV",
                **({"fields": list(fields)} if fields else {}),
                "filter": {
                    "createdAt": {"startAt": marketo_time(lower), "endAt": marketo_time(upper - last)},
                    **export_filter,
                },
            }
            for lower, upper in extract_windows(start, end, window)
        )
        return self._export_to_file(ACTIVITIES, bodies, dest, job)

    def _export_to_file(
        self, object_path: str, bodies: Iterator[Mapping[str, Any]], dest: Path, job: dict[str, Any]
    ) -> BulkExportFile:
        options = {"poll_seconds": self.bulk_queue_wait, "max_wait_seconds": 6 * 3600.0, **job}
        out = BulkExportFile(dest)
        files = self.export_windows(object_path, bodies, **options)
        try:
            with dest.open("wb") as target:
                for export_id, status, path in files:
                    with path.open("rb") as source:
                        if out.export_ids:
                            source.readline()  # the header is written once
                        shutil.copyfileobj(source, target)
                    out.export_ids.append(export_id)
                    out.rows += int(status.get("numberOfRecords") or 0)
        except BaseException:
            dest.unlink(missing_ok=True)  # never leave part of an export looking like all of it
            raise
        finally:
            files.close()
        return out


def _first_or_none(body: Mapping[str, Any]) -> dict[str, Any] | None:
    result = body.get("result")
    return dict(result[0]) if isinstance(result, list) and result else None


def _with_lead_ids(results: list[WriteResult], lead_ids: Sequence[int]) -> list[WriteResult]:
    """Name each result's lead (skipped entries come back without one)."""
    return [dataclasses.replace(r, id=str(int(lead_ids[r.index]))) for r in results]
