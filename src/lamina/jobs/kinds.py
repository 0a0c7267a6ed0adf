"""How a kind of job is described: an ordered list of steps, each with its undo."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from lamina.errors import ConfigError


@dataclass
class StepContext:
    """What a step sees: the job's parameters, the state earlier steps left, the services
    of this manager, and a way to report progress. ``state`` is saved after every step."""

    job_id: str
    params: dict[str, Any]
    state: dict[str, Any]
    services: Any
    report: Callable[..., None] = field(default=lambda **_: None)


StepFn = Callable[[StepContext], None]


@dataclass(frozen=True)
class Step:
    """One recorded step. ``do`` and ``undo`` must be idempotent: after a crash the step that
    was running is run again (or undone), since nobody knows how far it got."""

    name: str
    do: StepFn
    undo: StepFn | None = None
    timeout: float = 60.0


@dataclass(frozen=True)
class JobKind:
    name: str
    steps: tuple[Step, ...]
    #: Seconds from creation after which the job fails, whatever step it is in.
    deadline: float = 600.0
    #: What a manager does with a job it finds interrupted by a crash.
    on_interrupt: Literal["resume", "rollback"] = "resume"
    #: Called after a failure (and its rollback) with the error: marks the resource.
    on_failure: Callable[[StepContext, str], None] | None = None


class JobRegistry:
    def __init__(self) -> None:
        self._kinds: dict[str, JobKind] = {}

    def register(self, kind: JobKind) -> JobKind:
        if kind.name in self._kinds:
            raise ConfigError(f"job kind {kind.name!r} registered twice")
        self._kinds[kind.name] = kind
        return kind

    def get(self, name: str) -> JobKind:
        try:
            return self._kinds[name]
        except KeyError:
            raise ConfigError(f"unknown job kind {name!r}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._kinds
