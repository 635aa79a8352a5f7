"""Spec of a write that keeps losing its race, over both stores: the API retries the whole decision, then
answers 409 naming what changed, leaves nothing half-written, and audits the refusal like any other."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import pytest

from ballast.api.deps import WRITE_ATTEMPTS
from ballast.core.manifests import API_VERSION
from ballast.errors import RetryableConflict
from ballast.services import artifacts, registry
from tests.archives import app_package
from tests.conftest import Api

CELL = {"apiVersion": API_VERSION, "kind": "Cell", "metadata": {"name": "cell-a"}, "spec": {"zone": "zone-a"}}


def always_losing(real: Callable[..., Awaitable[Any]], what: str, attempts: list[int]) -> Callable[..., Awaitable[Any]]:
    """The real change, made in its transaction, whose compare-and-set then loses every time."""
    async def change(*args: Any, **kwargs: Any) -> Any:
        attempts.append(1)
        await real(*args, **kwargs)
        raise RetryableConflict(what)
    return change


@pytest.mark.parametrize(("service", "name", "what", "method", "path", "content"), [
    (registry, "delete_cell", "cell 'cell-a'", "DELETE", "/v1/cells/cell-a", None),
    (artifacts, "push", "the audit chain", "POST", "/v1/artifacts", app_package()),
], ids=["delete-cell", "push-artifact"])
async def test_a_race_lost_on_every_attempt_is_a_409_that_changes_nothing_and_is_audited(
        api: Api, monkeypatch: pytest.MonkeyPatch, service: Any, name: str, what: str, method: str, path: str,
        content: bytes | None) -> None:
    assert (await api.http.post("/v1/apply", json={"items": [CELL]})).status_code == 200
    attempts: list[int] = []
    monkeypatch.setattr(service, name, always_losing(getattr(service, name), what, attempts))
    before = (await api.http.get("/v1/audit", params={"limit": 1})).json()["items"][-1]["seq"]

    r = await api.http.request(method, path, content=content)

    assert r.status_code == 409
    assert r.json() == {"error": "Conflict", "message": f"{what} changed concurrently; try again"}
    assert len(attempts) == WRITE_ATTEMPTS
    assert (await api.http.get("/v1/cells/cell-a")).status_code == 200
    assert (await api.http.get("/v1/artifacts")).json()["items"] == []
    [refusal] = (await api.http.get("/v1/audit", params={"after": before})).json()["items"]
    assert (refusal["actor"], refusal["action"], refusal["result"]) == ("admin", f"{method} {path}",
                                                                        "refused: HTTP 409")
