"""How a kind of job is described: an ordered list of steps, each with its undo."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import select

from lamina.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from lamina.identity.principal import Principal


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


#: Whether ``who`` may see the target ``target_id`` of a job (a member sees the jobs on what
#: they own), for one target type; registered by the domain that holds such targets.
VisibilityCheck = Callable[["Session", str, "Principal"], bool]
#: The names of the targets of these ids (those that still exist), for one target type;
#: registered by the domain that holds such targets, so a job list shows names, not ids.
TargetNames = Callable[["Session", Collection[str]], dict[str, str]]


def names_by_id(model: Any) -> TargetNames:
    """The ``TargetNames`` of a table whose rows have an ``id`` and a ``name``."""

    def names(session: Session, ids: Collection[str]) -> dict[str, str]:
        if not ids:
            return {}
        rows = session.execute(select(model.id, model.name).where(model.id.in_(list(ids))))
        return {str(ident): str(name) for ident, name in rows if name}

    return names


class JobRegistry:
    """The kinds of job this manager runs, and who may see a job by its target's type; the
    domains fill it (through ``lamina.manager``)."""

    def __init__(self) -> None:
        self._kinds: dict[str, JobKind] = {}
        self._visibility: dict[str, VisibilityCheck] = {}
        self._names: dict[str, TargetNames] = {}

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

    def kinds(self) -> list[str]:
        """The names of the registered kinds, sorted."""
        return sorted(self._kinds)

    def register_names(self, target_type: str, names: TargetNames) -> None:
        """Let ``names`` say what the targets of ``target_type`` are called."""
        if target_type in self._names:
            raise ConfigError(f"names of {target_type!r} targets registered twice")
        self._names[target_type] = names

    def target_names(
        self, session: Session, targets: Collection[tuple[str | None, str | None]]
    ) -> dict[str, str]:
        """Target id -> its name now, for the ``(target_type, target_id)`` pairs whose type
        registered its names and whose target still exists."""
        by_type: dict[str, set[str]] = {}
        for target_type, target_id in targets:
            if target_type in self._names and target_id:
                by_type.setdefault(target_type, set()).add(target_id)
        found: dict[str, str] = {}
        for target_type, ids in by_type.items():
            found.update(self._names[target_type](session, ids))
        return found

    def register_visibility(self, target_type: str, check: VisibilityCheck) -> None:
        """Let ``check`` say who, besides the job's owner and administrators, may see the
        jobs on targets of ``target_type``."""
        if target_type in self._visibility:
            raise ConfigError(f"visibility of {target_type!r} jobs registered twice")
        self._visibility[target_type] = check

    def target_visible(
        self, session: Session, target_type: str | None, target_id: str | None, who: Principal
    ) -> bool:
        """Whether ``who`` may see the target of a job (False for a job without one, or on
        a type nobody registered)."""
        check = self._visibility.get(target_type or "")
        return check is not None and target_id is not None and check(session, target_id, who)
