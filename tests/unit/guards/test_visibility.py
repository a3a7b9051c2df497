"""The visibility guard's arithmetic: a collapse of visible rows stops a run, noise does not."""

from __future__ import annotations

import pytest

from crm_sync.guards.visibility import VisibilityCollapsed, check_visibility


@pytest.mark.parametrize(
    ("seen", "expected", "collapsed"),
    [
        (40, 40, False),
        (21, 40, False),  # under half gone
        (19, 40, True),  # more than half gone
        (0, 40, True),
        (3, 12, False),  # nine gone: below the ten-row floor
        (0, None, False),  # nothing known yet: the first full read sets the baseline
        (400, 40, False),  # more rows are never a collapse
    ],
)
def test_a_collapse_is_more_than_the_tolerance_and_the_floor(
    seen: int, expected: int | None, collapsed: bool
) -> None:
    if collapsed:
        with pytest.raises(VisibilityCollapsed, match=f"sees {seen} rows, the last full read saw {expected}"):
            check_visibility("account", seen, expected)
    else:
        assert check_visibility("account", seen, expected)["seen"] == seen


def test_accepted_counts_pass_and_a_bad_tolerance_is_refused() -> None:
    assert check_visibility("account", 0, 40, accepted=True)["accepted"] is True
    with pytest.raises(ValueError, match="mds_visibility_tolerance"):
        check_visibility("account", 40, 40, tolerance=1.5)
