"""Request-scoped helpers shared by the routes: who is calling, may they, writes with their retries, and
the one item a read by name found."""

from __future__ import annotations

from typing import Annotated, Any, Awaitable, Callable, Sequence, TypeVar

from fastapi import Path, Request
from pydantic import BaseModel, ConfigDict, model_validator

from ballast.core.authz import Action, allowed, explain_denial, may_read
from ballast.core.identity import acting_as_denial
from ballast.errors import Conflict, Forbidden, NotFound, RetryableConflict
from ballast.services.access import Principal, authenticate
from ballast.store.engine import Store, Tx
from ballast.wire.message import integral_floats

T = TypeVar("T")
WRITE_ATTEMPTS = 5

# Names in paths, bounded by the columns that hold them: a longer one names nothing (422, not a store error).
AppName = Annotated[str, Path(max_length=63, description="an app's name")]
Name = Annotated[str, Path(max_length=63)]
InstanceId = Annotated[str, Path(max_length=80)]
TokenId = Annotated[str, Path(max_length=32)]


class RequestBody(BaseModel):
    """A request body: unknown fields refused, and strict, so `true` is no number and `1` no boolean."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _integral_floats(cls, data: Any) -> Any:
        return integral_floats(data)


def store_of(request: Request) -> Store:
    return request.app.state.store  # type: ignore[no-any-return]


async def principal(request: Request) -> Principal:
    known = getattr(request.state, "principal", None)
    if isinstance(known, Principal):  # the admission middleware authenticated this request already
        return known
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    store = store_of(request)
    who = await authenticate(store, token.strip() if scheme.lower() == "bearer" else None, store.clock())
    request.state.principal = who
    return who


def require(who: Principal, action: Action, app: str | None = None) -> None:
    if not allowed(who.bindings, action, app):
        raise Forbidden(explain_denial(who.user, who.bindings, action, app))


def may_read_app(who: Principal, app: str) -> bool:
    return allowed(who.bindings, Action.READ, app)


def require_topology_read(who: Principal) -> None:
    """Cells and nodes are visible to any reader, scoped or not: they hold no app data. A component credential
    is no reader: it reads only its own assignments, their artifacts and the registry."""
    if not may_read(who.bindings):
        raise Forbidden(f"user {who.user!r} has no role that may read")


def require_person(who: Principal) -> None:
    """A person's token (some role that reads): component credentials and join tokens neither read nor mint."""
    if not may_read(who.bindings):
        raise Forbidden(f"user {who.user!r} is no person's token: a node's or gateway's credential acts only as "
                        "itself and reads only its assignments, their artifacts and the registry")


def require_self(who: Principal, kind: str, name: str) -> None:
    """Only the component's own credential acts as it (403 naming both otherwise)."""
    denial = acting_as_denial(who.user, who.bindings, kind, name)
    if denial is not None:
        raise Forbidden(denial)


def mark_audited(request: Request) -> None:
    """The handler wrote its own audit record inside its transaction."""
    request.state.audited = True


def exempt_from_audit(request: Request) -> None:
    """Telemetry (heartbeats, status reports) is not a change of intent."""
    request.state.audit_exempt = True


async def audited_write(request: Request, change: Callable[[Tx], Awaitable[T]]) -> T:
    """One write transaction that audits itself (`change` appends its record), retried on a lost race."""
    result = await _write(request, change)
    mark_audited(request)
    return result


async def telemetry_write(request: Request, change: Callable[[Tx], Awaitable[T]]) -> T:
    """One write transaction of telemetry (heartbeats, acknowledgements): not audited, retried on a lost race,
    and ahead of every other writer waiting (the data plane's facts may not queue behind anybody's traffic)."""
    exempt_from_audit(request)
    return await _write(request, change, urgent=True)


async def _write(request: Request, change: Callable[[Tx], Awaitable[T]], *, urgent: bool = False) -> T:
    async def attempt() -> T:
        async with store_of(request).write(urgent=urgent) as tx:
            return await change(tx)

    return await retrying(attempt)


async def retrying(attempt: Callable[[], Awaitable[T]]) -> T:
    """Re-run a whole write decision when a compare-and-set lost a race; a race lost on every attempt is the
    user's 409 (their change was not made: they may try again), never a 500."""
    for remaining in range(WRITE_ATTEMPTS - 1, -1, -1):
        try:
            return await attempt()
        except RetryableConflict as exc:
            if not remaining:
                raise Conflict(f"{exc.what} changed concurrently; try again") from exc
    raise AssertionError("unreachable")


def one(found: Sequence[T], missing: str) -> T:
    """The item a read by name found, or NotFound with `missing` as its message."""
    if not found:
        raise NotFound(missing)
    return found[0]
