"""Per-field three-way merge: winners per entity, conflict log, echo suppression."""

from __future__ import annotations

import pandas as pd
import pytest

from crm_sync.transforms import field_hashes, hashes_frame, resolve_changes

FIELDS = ["title", "phone", "city"]


def canon(key, **values):
    row = {"dynamics_id": key, **{k: pd.Series([v], dtype="str") for k, v in values.items()}}
    return pd.DataFrame({k: (v if isinstance(v, pd.Series) else [v]) for k, v in row.items()})


def synced(**values):
    """Last synced hashes of record r1 holding ``values``."""
    frame = canon("r1", **values).set_index("dynamics_id")
    return field_hashes(frame, list(values))


BASE = {"title": "Eng", "phone": "1", "city": "Oslo"}


@pytest.mark.parametrize(
    ("entity_name", "winner_value", "winner"), [("lead", "M", "marketo"), ("contact", "D", "dynamics")]
)
def test_same_field_changed_on_both_sides(entities, entity_name, winner_value, winner):
    entity = entities[entity_name]
    res = resolve_changes(
        entity, canon("r1", **{**BASE, "title": "D"}), canon("r1", **{**BASE, "title": "M"}), synced(**BASE)
    )
    if winner == "marketo":
        assert res.to_dynamics_mask.loc["r1"].loc[lambda s: s].index.tolist() == ["title"]
        assert res.to_dynamics.loc["r1", "title"] == winner_value
        assert not res.to_marketo_mask.loc["r1"].any()
    else:
        assert res.to_marketo_mask.loc["r1"].loc[lambda s: s].index.tolist() == ["title"]
        assert res.to_marketo.loc["r1", "title"] == winner_value
        assert not res.to_dynamics_mask.loc["r1"].any()
    assert res.conflicts[
        ["record_key", "field", "marketo_value", "dynamics_value", "winner"]
    ].values.tolist() == [["r1", "title", "M", "D", winner]]
    expected = field_hashes(canon("r1", title=winner_value).set_index("dynamics_id"), ["title"])
    assert res.agreed.loc["r1", "title"] == expected.loc["r1", "title"]


def test_different_fields_changed_on_each_side_both_survive(contact):
    res = resolve_changes(
        contact,
        canon("r1", **{**BASE, "phone": "2"}),
        canon("r1", **{**BASE, "city": "Rome"}),
        synced(**BASE),
    )
    assert res.to_marketo_mask.loc["r1", ["phone", "city", "title"]].tolist() == [True, False, False]
    assert res.to_dynamics_mask.loc["r1", ["phone", "city", "title"]].tolist() == [False, True, False]
    assert res.conflicts.empty


def test_both_sides_same_new_value_is_not_a_conflict(lead):
    res = resolve_changes(
        lead, canon("r1", **{**BASE, "title": "X"}), canon("r1", **{**BASE, "title": "X"}), synced(**BASE)
    )
    assert res.conflicts.empty
    assert res.unchanged_ids.tolist() == ["r1"]
    assert res.agreed.loc["r1", "title"] == synced(title="X").loc["r1", "title"]


def test_echo_of_our_own_write_is_suppressed(lead):
    # The sync wrote BASE to both sides; both change feeds now return those same values.
    res = resolve_changes(lead, canon("r1", **BASE), canon("r1", **BASE), synced(**BASE))
    assert res.unchanged_ids.tolist() == ["r1"]
    assert res.marketo_ids.empty
    assert res.dynamics_ids.empty


def test_new_record_sends_every_field_to_marketo(lead):
    res = resolve_changes(lead, canon("r9", **BASE), None, None)
    assert res.marketo_ids.tolist() == ["r9"]
    assert res.to_marketo_mask.loc["r9", FIELDS].all()


def test_d2m_only_field_changed_in_marketo_is_ignored(lead):
    last = synced(**BASE, msdCreatedDate="2020-01-01T00:00:00Z")
    res = resolve_changes(lead, None, canon("r1", **BASE, msdCreatedDate="2030-01-01T00:00:00Z"), last)
    assert not res.to_dynamics_mask.loc["r1"].any()


def test_owner_lookup_change_alone_is_a_change(lead):
    last = synced(**BASE, externalSalesPersonId="u1")
    res = resolve_changes(lead, canon("r1", **BASE, externalSalesPersonId="u2"), None, last)
    assert res.to_marketo_mask.loc["r1"].loc[lambda s: s].index.tolist() == ["externalSalesPersonId"]


def test_unlinked_marketo_rows_are_left_out(lead):
    res = resolve_changes(lead, None, canon(None, **BASE), None)
    assert res.to_dynamics_mask.empty


def test_agreed_hashes_make_the_next_run_quiet(lead):
    """Property: after applying a resolution, replaying the written values changes nothing."""
    d = canon("r1", **{**BASE, "title": "D", "phone": "5"})
    m = canon("r1", **{**BASE, "title": "M", "city": "Rome"})
    first = resolve_changes(lead, d, m, synced(**BASE))
    # Both systems now hold: Marketo's title (lead rule), Dynamics' phone, Marketo's city.
    final = {"title": "M", "phone": "5", "city": "Rome"}
    stored = hashes_frame([{k: int(v) for k, v in first.agreed.loc["r1"].dropna().items()}], ["r1"])
    again = resolve_changes(lead, canon("r1", **final), canon("r1", **final), stored)
    assert again.unchanged_ids.tolist() == ["r1"]


# --- consent fields (opt_out: true) -------------------------------------------------------------


def flags(key, **values):
    """A canonical row of consent flags (pandas "boolean", as the boolean cast gives them)."""
    columns = {k: pd.array([v], dtype="boolean") for k, v in values.items()}
    return pd.DataFrame({"dynamics_id": [key], **columns})


def flags_synced(**values):
    return field_hashes(flags("r1", **values).set_index("dynamics_id"), list(values))


def test_an_opt_out_wins_even_where_the_other_side_wins_conflicts(lead):
    # Marketo wins lead conflicts, but Dynamics opted out while Marketo cleared the flag.
    res = resolve_changes(
        lead, flags("r1", unsubscribed=True), flags("r1", unsubscribed=False), flags_synced(unsubscribed=None)
    )
    assert bool(res.to_marketo_mask.loc["r1", "unsubscribed"]) is True
    assert bool(res.to_marketo.loc["r1", "unsubscribed"]) is True
    assert not res.to_dynamics_mask.loc["r1", "unsubscribed"]
    assert res.agreed.loc["r1", "unsubscribed"] == flags_synced(unsubscribed=True).loc["r1", "unsubscribed"]
    logged = res.consents[["field", "changed_in", "outcome", "marketo_value", "dynamics_value"]]
    assert logged.values.tolist() == [["unsubscribed", "both", "opt_out", "False", "True"]]


def test_a_resubscribe_outside_the_owner_is_refused_and_the_opt_out_written_back(contact):
    # Contacts: Dynamics wins conflicts, Marketo owns consent. Dynamics dropped the opt-out.
    res = resolve_changes(contact, flags("r1", unsubscribed=False), None, flags_synced(unsubscribed=True))
    assert not res.to_marketo_mask.loc["r1"].any(), "nothing goes to Marketo"
    assert res.to_dynamics_mask.loc["r1"].loc[lambda s: s].index.tolist() == ["unsubscribed"]
    assert bool(res.to_dynamics.loc["r1", "unsubscribed"]) is True
    assert res.consents[["changed_in", "outcome", "marketo_value", "dynamics_value"]].values.tolist() == [
        ["dynamics", "resubscribe_refused", "True", "False"]
    ]


def test_the_owner_side_resubscribes(contact):
    res = resolve_changes(contact, None, flags("r1", unsubscribed=False), flags_synced(unsubscribed=True))
    assert res.to_dynamics_mask.loc["r1", "unsubscribed"]
    assert bool(res.to_dynamics.loc["r1", "unsubscribed"]) is False
    assert res.consents["outcome"].tolist() == ["resubscribe"]


def test_a_write_back_to_marketo_carries_the_person_key_and_type(contact):
    # With Dynamics owning consent, a re-subscribe made in Marketo is written back to Marketo,
    # though Dynamics sent nothing for the record in this batch.
    owned = contact.model_copy(update={"consent_owner": "dynamics"})
    res = resolve_changes(owned, None, flags("r1", unsubscribed=False), flags_synced(unsubscribed=True))
    assert res.to_marketo_mask.loc["r1"].loc[lambda s: s].index.tolist() == ["unsubscribed"]
    assert not res.to_dynamics_mask.loc["r1"].any()
    row = res.to_marketo.loc["r1"]
    assert (bool(row["unsubscribed"]), row["externalPersonId"], row["msdType"]) == (True, "r1", "Contact")


def test_a_flag_unchanged_since_the_last_sync_is_no_consent_event(contact):
    res = resolve_changes(contact, flags("r1", unsubscribed=True), None, flags_synced(unsubscribed=True))
    assert res.consents.empty
    assert res.unchanged_ids.tolist() == ["r1"]
