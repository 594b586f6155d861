"""A circuit breaker per source: stop asking a source that keeps failing, and probe it back.

Closed: queries go through; ``failures`` consecutive ones that found the source unavailable or
too slow open the circuit. Open: for ``open_seconds`` every query of that source fails at once
with SOURCE_UNAVAILABLE, without a connection attempt or a timeout to wait out, so a dead
department neither slows every request that touches it nor gets hammered while it restarts.
Half-open: after that, one query goes through as a probe (the others still fail at once); its
success closes the circuit, its failure opens it again, for twice as long (at most
``max_open_seconds``).

Only unavailability and timeouts count: SOURCE_ERROR (a refused query, a wrong answer) says
the source is up. State is per gateway process; /readyz shows it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from resolvers.errors import SourceError, SourceFailure

__all__ = ["Breaker", "CircuitState"]

T = TypeVar("T")
_COUNTED = (SourceFailure.UNAVAILABLE, SourceFailure.TIMEOUT)


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass
class Breaker:
    source: str
    failures: int = 5
    open_seconds: float = 10.0
    max_open_seconds: float = 120.0
    clock: Callable[[], float] = time.monotonic
    state: CircuitState = CircuitState.CLOSED
    consecutive: int = 0
    opened_at: float = 0.0
    wait: float = 0.0
    probing: bool = False
    opened: int = 0  # times opened, for /readyz and the log
    generation: int = 0  # bumped at every change of state: late results of earlier queries are ignored

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        self._admit()
        probe = self.state is CircuitState.HALF_OPEN
        generation = self.generation
        try:
            result = await fn()
        except SourceError as exc:
            if generation == self.generation:  # a query admitted before the circuit last changed says nothing now
                self._failed(exc, probe)
            raise
        except BaseException:
            if probe and generation == self.generation:
                self.probing = False  # cancelled or a bug: let the next query probe
            raise
        if generation == self.generation:
            self._succeeded()
        return result

    def _admit(self) -> None:
        if self.state is CircuitState.OPEN and self.clock() - self.opened_at >= self.wait:
            self.state, self.probing = CircuitState.HALF_OPEN, False
            self.generation += 1
        if self.state is CircuitState.OPEN or (self.state is CircuitState.HALF_OPEN and self.probing):
            left = max(0.0, self.wait - (self.clock() - self.opened_at))
            raise SourceError(self.source, SourceFailure.UNAVAILABLE,
                              f"source {self.source!r} is failing and is not asked for {left:.0f} s more "
                              f"(circuit open after {self.failures} failures in a row)")
        if self.state is CircuitState.HALF_OPEN:
            self.probing = True

    def _failed(self, exc: SourceError, probe: bool) -> None:
        if exc.failure not in _COUNTED:
            if probe:
                self._succeeded()  # it answered: up, if unhappy with this query
            return
        self.consecutive += 1
        if probe:
            self._open(min(self.max_open_seconds, max(self.open_seconds, self.wait * 2)))
        elif self.state is CircuitState.CLOSED and self.consecutive >= self.failures:
            self._open(self.open_seconds)

    def _open(self, wait: float) -> None:
        self.state, self.opened_at, self.wait, self.probing = CircuitState.OPEN, self.clock(), wait, False
        self.opened += 1
        self.generation += 1

    def _succeeded(self) -> None:
        if self.state is not CircuitState.CLOSED:
            self.generation += 1
        self.state, self.consecutive, self.probing, self.wait = CircuitState.CLOSED, 0, False, 0.0

    def status(self) -> dict[str, object]:
        out: dict[str, object] = {"circuit": self.state.value, "consecutive_failures": self.consecutive}
        if self.state is not CircuitState.CLOSED:
            out["retry_in_s"] = round(max(0.0, self.wait - (self.clock() - self.opened_at)), 1)
        return out
