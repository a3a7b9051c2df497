"""How long a watcher waits before its next peek.

Fast while changes flow; doubling up to an idle ceiling while nothing new arrives; and never so
often that the watcher's share of a budget runs out: for Marketo a share of the daily quota
(the watcher keeps enough of it to poll at the idle ceiling until the quota day ends, and slows
down when it would not), for Dataverse a share of the service-protection window.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PollPolicy:
    """The pace of one watcher.

    Attributes:
        fast: Seconds between peeks while changes arrive.
        idle_max: The longest wait between peeks when nothing changes.
        daily_budget: Calls this watcher may send per quota day (None: no daily budget).
        window_calls: Calls this watcher may send per ``window_seconds`` (None: no window).
        window_seconds: Length of the request window.
    """

    fast: float
    idle_max: float
    daily_budget: int | None = None
    window_calls: int | None = None
    window_seconds: float = 300.0

    def __post_init__(self) -> None:
        if not 0 < self.fast <= self.idle_max:
            raise ValueError(f"poll policy: need 0 < fast ({self.fast}) <= idle_max ({self.idle_max})")
        if self.daily_budget is not None and self.daily_budget < 0:
            raise ValueError(f"poll policy: daily budget must be zero or more, not {self.daily_budget}")
        if self.window_calls is not None and self.window_calls <= 0:
            raise ValueError(f"poll policy: window calls must be more than zero, not {self.window_calls}")


def next_interval(
    policy: PollPolicy,
    previous: float,
    *,
    saw_new: bool,
    calls_today: int = 0,
    seconds_left_today: float = 86_400.0,
) -> float:
    """Seconds to wait before the next peek.

    Args:
        policy: The watcher's pace.
        previous: The wait before this peek.
        saw_new: This peek saw changes the previous one had not.
        calls_today: Calls the watcher sent in the current quota day.
        seconds_left_today: Seconds until the quota day ends (the daily budget renews).
    """
    wait = policy.fast if saw_new else min(max(previous, policy.fast) * 2.0, policy.idle_max)
    if policy.window_calls is not None:
        wait = max(wait, policy.window_seconds / policy.window_calls)
    if policy.daily_budget is not None:
        left = policy.daily_budget - calls_today
        if left <= 0:
            return max(seconds_left_today, policy.idle_max)  # spent: wait for the new quota day
        # Keep enough to poll at the idle ceiling until the day ends; spread what is left otherwise.
        if left < seconds_left_today / policy.idle_max:
            wait = max(wait, seconds_left_today / left)
    return wait
