"""The state store's upsert: the same rows whichever way the statement is executed."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from crm_sync.state import session_scope
from crm_sync.state.db import upsert
from crm_sync.state.models import RecordError

T0 = datetime(2026, 3, 1, 8, 30, 15, 123456, tzinfo=UTC)
KEY = ["entity", "direction", "source_id", "field", "code"]


def _row(source: str, **extra: object) -> dict[str, object]:
    return {
        "entity": "lead",
        "direction": "d2m",
        "source_id": source,
        "code": "FIELD_LENGTH",
        "message": "too long",
        "payload_ref": None,
        "first_seen": T0,
        "last_seen": T0,
        "next_attempt_at": None,
        **extra,
    }


def _stored(engine) -> list[tuple[object, ...]]:
    cols = ["source_id", "field", "attempts", "parked", "message", "payload_ref", "first_seen"]
    with session_scope(engine) as s:
        rows = s.execute(select(*(getattr(RecordError, c) for c in cols)).order_by(RecordError.source_id))
        return [tuple(r) for r in rows]


def test_rows_left_out_columns_defaults_and_clashes_are_stored_as_sqlalchemy_would(engine) -> None:
    # On SQLite the statement is compiled once for the DB-API's executemany; the scalar
    # defaults (field "", attempts 1, parked False) fill the columns the rows leave out.
    with session_scope(engine) as s:
        assert upsert(s, RecordError, [_row("a"), _row("b", message='x, "quoted"')], keys=KEY) == 2
    # Values given for columns that have defaults are stored as given.
    with session_scope(engine) as s:
        upsert(
            s,
            RecordError,
            [_row("c", attempts=3, parked=True), _row("d", attempts=1, parked=False)],
            keys=KEY,
        )
    # A clash updates only the named columns.
    with session_scope(engine) as s:
        upsert(s, RecordError, [_row("a", message="changed"), _row("e")], keys=KEY, update=["message"])
    stored = _stored(engine)
    first_seen = [r[6] for r in stored if isinstance(r[6], datetime)]
    assert [r[:6] for r in stored] == [
        ("a", "", 1, False, "changed", None),
        ("b", "", 1, False, 'x, "quoted"', None),
        ("c", "", 3, True, "too long", None),
        ("d", "", 1, False, "too long", None),
        ("e", "", 1, False, "too long", None),
    ]
    # SQLite hands back naive UTC datetimes, PostgreSQL aware ones: the instant is the same.
    assert len(first_seen) == len(stored)
    assert {v.replace(tzinfo=UTC) if v.tzinfo is None else v for v in first_seen} == {T0}


def test_a_frame_is_stored_as_its_rows_would_be(engine) -> None:
    import pandas as pd

    from crm_sync.state.db import upsert_frame

    frame = pd.DataFrame([_row("a"), _row("b", message="x"), _row("c", payload_ref="p")])
    with session_scope(engine) as s:
        assert upsert_frame(s, RecordError, frame.astype(object).where(frame.notna(), None), keys=KEY) == 3
        # Already stored: the clash leaves the row as it is.
        assert upsert_frame(s, RecordError, frame.iloc[:1].assign(message="again"), keys=KEY) == 1
    assert [r[:6] for r in _stored(engine)] == [
        ("a", "", 1, False, "too long", None),
        ("b", "", 1, False, "x", None),
        ("c", "", 1, False, "too long", "p"),
    ]


def test_a_json_column_given_as_its_text_reads_back_as_the_value(engine) -> None:
    from crm_sync.state import lookup_links, upsert_links
    from crm_sync.state.db import JsonText

    hashes = '{"email":-9223372036854775808,"title":42}'
    with session_scope(engine) as s:
        upsert_links(
            s,
            "lead",
            [
                {"dynamics_id": "a", "marketo_id": "1", "field_hashes": JsonText(hashes)},
                {"dynamics_id": "b", "marketo_id": "2", "field_hashes": None},
            ],
        )
    with session_scope(engine) as s:
        links = lookup_links(s, "lead", dynamics_ids=["a", "b"]).set_index("dynamics_id")
    assert links.loc["a", "field_hashes"] == {"email": -(2**63), "title": 42}
    assert links.loc["b", "field_hashes"] is None
