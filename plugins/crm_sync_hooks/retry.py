"""Retry policy shared by both hooks: exponential backoff with full jitter, bounded in time.

The policy is an argument of each hook so tests can pass a zero-wait policy and record the delays
instead of sleeping.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often to repeat a call that failed with a retriable error.

    Attributes:
        max_attempts: Attempts in total, the first one included.
        max_elapsed: Seconds after the first attempt beyond which no new attempt starts.
        base_delay: Backoff for the first retry; doubles on each further retry.
        max_delay: Upper bound of one backoff.
        honour_retry_after: Wait at least the server's ``Retry-After`` when it sends one.
        sleep: Function used to wait (tests pass a recorder).
        rng: Source of jitter.
    """

    max_attempts: int = 8
    max_elapsed: float = 300.0
    base_delay: float = 1.0
    max_delay: float = 60.0
    honour_retry_after: bool = True
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Return the seconds to wait before attempt ``attempt + 1``.

        Full jitter (a uniform draw below the exponential cap) keeps parallel workers from
        retrying in lock-step after a shared rate-limit hit.
        """
        cap = min(self.max_delay, self.base_delay * (2 ** max(attempt - 1, 0)))
        backoff = self.rng.uniform(0, cap) if cap > 0 else 0.0
        if retry_after is not None and self.honour_retry_after:
            return max(retry_after, 0.0) + backoff / 4
        return backoff

    @classmethod
    def no_wait(cls, max_attempts: int = 5, sleep: Callable[[float], None] | None = None) -> RetryPolicy:
        """A policy that retries immediately and ignores ``Retry-After`` (for tests)."""
        return cls(
            max_attempts=max_attempts,
            max_elapsed=60.0,
            base_delay=0.0,
            max_delay=0.0,
            honour_retry_after=False,
            sleep=sleep or (lambda _seconds: None),
        )
