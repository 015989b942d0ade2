"""Politeness towards a server: a rate limit shared by all threads, and retries with backoff.

:func:`retry_call` retries a :class:`~allen_sr.data.errors.TransientError` with exponential
backoff and jitter, honouring the server's ``Retry-After``; :class:`RateLimiter` caps the
requests per second of every thread together. A ``stop_event`` interrupts every wait at once.
"""
from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from allen_sr.data.errors import Cancelled, GaveUpError, TransientError

__all__ = [
    "DEFAULT_RATE", "DEFAULT_RETRIES", "DEFAULT_BACKOFF", "DEFAULT_MAX_BACKOFF",
    "RateLimiter", "RetryPolicy", "parse_retry_after", "retry_call", "is_retryable_status",
]

log = logging.getLogger(__name__)

# No rate limit is documented; a few requests per second keeps us a polite, small client.
DEFAULT_RATE = 4.0
DEFAULT_RETRIES = 4
DEFAULT_BACKOFF = 1.0
DEFAULT_MAX_BACKOFF = 60.0

T = TypeVar("T")


class RateLimiter:
    """A shared minimum-interval limiter (a token bucket with a small burst) for all threads.

    Each :meth:`acquire` reserves the next free slot under a lock and then sleeps outside it, so
    N workers together never exceed ``rate`` requests per second, however many there are.
    ``rate=None`` (or <= 0) disables limiting.
    """

    def __init__(self, rate: float | None, burst: int = 1) -> None:
        self.rate = rate if rate and rate > 0 else None
        self.burst = max(1, int(burst))
        self._lock = threading.Lock()
        self._next_slot = time.monotonic()

    def acquire(self, stop_event: threading.Event | None = None) -> None:
        """Block until the caller may send one request; raise :class:`Cancelled` if stopped."""
        if stop_event is not None and stop_event.is_set():
            raise Cancelled("stopped before sending a request")
        if self.rate is None:
            return
        interval = 1.0 / self.rate
        with self._lock:
            now = time.monotonic()
            slot = max(now - (self.burst - 1) * interval, self._next_slot)
            self._next_slot = slot + interval
        _sleep(slot - now, stop_event)


def _sleep(seconds: float, stop_event: threading.Event | None) -> None:
    if seconds <= 0:
        return
    if stop_event is None:
        time.sleep(seconds)
    elif stop_event.wait(seconds):
        raise Cancelled("stopped while waiting")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), else ``None``."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a :class:`TransientError`.

    ``attempts`` counts the first try. The n-th retry waits ``backoff * 2**(n-1)`` seconds, capped
    at ``max_backoff`` and scaled by a random factor in [0.5, 1] so that workers that failed
    together do not come back together. A server's ``Retry-After`` wins when it is longer (capped at
    ``max_retry_after`` so one odd header cannot park a worker for hours).
    """

    attempts: int = DEFAULT_RETRIES + 1
    backoff: float = DEFAULT_BACKOFF
    max_backoff: float = DEFAULT_MAX_BACKOFF
    max_retry_after: float = 300.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoff times must be >= 0")

    def delay(self, failed_attempts: int, retry_after: float | None = None) -> float:
        """Seconds to wait after ``failed_attempts`` consecutive failures."""
        base = min(self.max_backoff, self.backoff * 2 ** max(0, failed_attempts - 1))
        wait = base * random.uniform(0.5, 1.0)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_retry_after))
        return wait


def retry_call(
    attempt: Callable[[int], T],
    policy: RetryPolicy,
    *,
    stop_event: threading.Event | None = None,
    describe: str = "request",
) -> T:
    """Call ``attempt(n)`` for n = 1, 2, ... until it returns, retrying on :class:`TransientError`.

    Other exceptions propagate at once (they are not going to get better by asking again). After
    the last attempt a :class:`GaveUpError` carries the final error.
    """
    for number in range(1, policy.attempts + 1):
        try:
            return attempt(number)
        except TransientError as error:
            if number == policy.attempts:
                raise GaveUpError(policy.attempts, error) from error
            wait = policy.delay(number, error.retry_after)
            log.info("%s: attempt %d/%d failed (%s); retrying in %.2f s",
                     describe, number, policy.attempts, error, wait)
            _sleep(wait, stop_event)
    raise AssertionError("unreachable")  # pragma: no cover


def is_retryable_status(status: int) -> bool:
    """5xx and 429 are worth retrying; other 4xx mean the request itself is wrong."""
    return status == 429 or 500 <= status <= 599
