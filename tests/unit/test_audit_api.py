"""Spec of the audit trail at the API, over both stores: every attempt to change is recorded; tampering is found."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, select, update

from ballast.api.admission import REFUSAL_BURST, Refusals, record_refusals
from ballast.api.app import create_app
from ballast.core.digests import digest
from ballast.core.manifests import API_VERSION
from ballast.store.schema import audit
from tests.conftest import Api, Fleet

CELL = {"apiVersion": API_VERSION, "kind": "Cell", "metadata": {"name": "cell-a"}, "spec": {"zone": "zone-a"}}


def shop(replicas: int) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "AppService", "metadata": {"name": "shop"},
            "spec": {"replicas": replicas, "template": {"command": ["python", "-m", "shop"]}}}


async def head_seq(api: Api) -> int:
    items = (await api.http.get("/v1/audit", params={"limit": 1})).json()["items"]
    return int(items[-1]["seq"]) if items else 0


async def records_after(api: Api, seq: int) -> list[dict[str, Any]]:
    r = await api.http.get("/v1/audit", params={"after": seq})
    assert r.status_code == 200, r.text
    return r.json()["items"]  # type: ignore[no-any-return]


async def recorded_by(api: Api, call: Callable[[], Awaitable[httpx.Response]], status: int) -> list[dict[str, Any]]:
    """Run one request, check its status, and return the audit records it appended."""
    before = await head_seq(api)
    r = await call()
    assert r.status_code == status, r.text
    return await records_after(api, before)


async def viewer_client(api: Api) -> httpx.AsyncClient:
    assert (await api.http.post("/v1/users", json={"name": "vera", "role": "viewer"})).status_code == 201
    r = await api.http.post("/v1/tokens", json={"user": "vera"})
    return api.as_(r.json()["token"])


async def test_changes_are_recorded_with_actor_resource_and_digests(api: Api) -> None:
    """A successful apply records who changed what, with digests of the spec before and after."""
    [rec] = await recorded_by(api, lambda: api.http.post("/v1/apply", json={"items": [CELL]}), 200)
    assert (rec["actor"], rec["action"], rec["resource"], rec["result"]) == ("admin", "apply", "Cell/cell-a", "ok")
    stored_cell = (await api.http.get("/v1/cells/cell-a")).json()["spec"]
    assert (rec["before"], rec["after"]) == ("", digest(stored_cell))
    assert rec["detail"] == {"outcome": "created"}

    [created] = await recorded_by(api, lambda: api.http.post("/v1/apply", json={"items": [shop(2)]}), 200)
    stored_v1 = (await api.http.get("/v1/apps/shop")).json()["spec"]
    assert (created["resource"], created["before"], created["after"]) == ("AppService/shop", "", digest(stored_v1))

    [changed] = await recorded_by(api, lambda: api.http.post("/v1/apply", json={"items": [shop(3)]}), 200)
    stored_v2 = (await api.http.get("/v1/apps/shop")).json()["spec"]
    assert (changed["before"], changed["after"]) == (digest(stored_v1), digest(stored_v2))
    assert changed["detail"] == {"outcome": "configured", "generation": 2, "revision": 1}

    [same] = await recorded_by(api, lambda: api.http.post("/v1/apply", json={"items": [shop(3)]}), 200)
    assert same["before"] == same["after"] == digest(stored_v2)
    assert same["detail"]["outcome"] == "unchanged"

    [deleted] = await recorded_by(api, lambda: api.http.delete("/v1/apps/shop"), 200)
    assert (deleted["action"], deleted["resource"], deleted["before"], deleted["after"]) == (
        "delete", "AppService/shop", digest(stored_v2), "")


async def test_refused_attempts_of_known_callers_are_recorded_too(api: Api) -> None:
    """Forbidden, invalid and failing requests of a known caller to a route that exists each leave one record
    saying they were refused, attributed to the caller."""
    viewer = await viewer_client(api)
    bad_doc = {**CELL, "spec": {"zone": "Not A Zone"}}
    cases: list[tuple[Callable[[], Awaitable[httpx.Response]], int, str, str]] = [
        (lambda: viewer.post("/v1/apply", json={"items": [shop(1)]}), 403, "vera", "POST /v1/apply"),
        (lambda: api.http.post("/v1/apply", json={"items": [bad_doc]}), 422, "admin", "POST /v1/apply"),
        (lambda: api.http.post("/v1/apply", json={"items": []}), 422, "admin", "POST /v1/apply"),
        (lambda: api.http.delete("/v1/apps/ghost"), 404, "admin", "DELETE /v1/apps/ghost"),
        (lambda: api.http.post("/v1/users", json={"name": "vera", "role": "viewer"}), 409, "admin", "POST /v1/users"),
    ]
    for call, status, actor, action in cases:
        recs = await recorded_by(api, call, status)
        assert len(recs) == 1, (action, status, recs)
        [rec] = recs
        assert (rec["actor"], rec["action"], rec["resource"]) == (actor, action, action.split(" ", 1)[1])
        assert rec["result"] == f"refused: HTTP {status}"
        assert rec["detail"] == {"status": status}
        assert (rec["before"], rec["after"]) == ("", "")
    assert (await api.http.get("/v1/cells")).json()["items"] == []


async def test_strangers_and_unroutable_requests_cost_no_write_and_are_recorded_aggregated(api: Api) -> None:
    """Requests without a valid token, and requests no route takes, are refused before any write: counted, and
    written later as one aggregated record per flush (who knocked how often), not one record each."""
    viewer = await viewer_client(api)
    anonymous, forged = api.as_(None), api.as_("blt_forged")
    cases: list[tuple[Callable[[], Awaitable[httpx.Response]], int]] = [
        (lambda: anonymous.post("/v1/apply", json={"items": [CELL]}), 401),
        (lambda: anonymous.delete("/v1/users/vera"), 401),
        (lambda: anonymous.put("/v1/apps"), 401),
        (lambda: forged.delete("/v1/nothing-here"), 401),
        (lambda: api.http.patch("/v1/apps"), 405),
        (lambda: viewer.post("/v1/nothing-here"), 404),
    ]
    for call, status in cases:
        assert await recorded_by(api, call, status) == [], status
    refusals = api.http._transport.app.state.refusals  # type: ignore[attr-defined]
    assert refusals.totals == {"unauthenticated": 4, "unroutable": 2}

    stop = asyncio.Event()
    stop.set()
    before = await head_seq(api)
    await record_refusals(api.store, refusals, stop)     # the server's flush, once
    [rec] = await records_after(api, before)
    assert (rec["actor"], rec["action"], rec["resource"]) == ("anonymous", "refused-requests", "api")
    assert rec["detail"]["refused"] == 6 and rec["detail"]["sourceCount"] == 1
    [(source, seen)] = rec["detail"]["sources"].items()
    assert seen["refused"] == {"unauthenticated": 4, "unroutable": 2}
    assert "/v1/nothing-here" in seen["paths"]
    await record_refusals(api.store, refusals, stop)
    assert await records_after(api, before + 1) == [], "nothing new refused: nothing written"
    assert (await api.http.get("/v1/cells")).json()["items"] == []


async def test_a_source_that_keeps_knocking_is_throttled_before_its_token_is_looked_up() -> None:
    clock = [0.0]
    refusals = Refusals(clock=lambda: clock[0])
    for _ in range(int(REFUSAL_BURST)):
        assert refusals.allow("10.9.9.9")
        refusals.note("10.9.9.9", "unauthenticated", "/v1/x")
    assert not refusals.allow("10.9.9.9") and refusals.allow("10.1.1.1"), "per source"
    clock[0] += 1.0
    assert refusals.allow("10.9.9.9"), "the bucket refills"


async def test_reads_and_telemetry_append_nothing(api: Api) -> None:
    """GETs, including refused ones, and agents' status reports add no audit records."""
    assert (await api.http.post("/v1/apply", json={"items": [CELL]})).status_code == 200
    node = Fleet(api)
    r = await node.put("/v1/nodes/n1", json={"cell": "cell-a", "ip": "10.0.0.1", "cpuMillis": 1000,
                                              "memoryBytes": 2**30})
    assert r.status_code == 200, r.text
    viewer = await viewer_client(api)
    before = await head_seq(api)
    for client, path in [(api.http, "/v1/apps"), (api.http, "/v1/cells"), (api.http, "/v1/apps/ghost"),
                         (api.http, "/v1/audit/verify"), (api.http, "/v1/tokens"), (viewer, "/v1/users"),
                         (api.as_(None), "/v1/apps")]:
        assert (await client.get(path)).status_code < 500, path
    assert (await node.get("/v1/nodes/n1/assignments")).status_code == 200
    r = await node.post("/v1/nodes/n1/status", json={"instances": []})
    assert r.status_code == 200, r.text
    assert await head_seq(api) == before


async def test_node_registration_and_tokens_are_recorded(api: Api) -> None:
    """Registering a node, issuing and revoking a token are changes of intent and are recorded."""
    assert (await api.http.post("/v1/apply", json={"items": [CELL]})).status_code == 200
    body = {"cell": "cell-a", "ip": "10.0.0.1", "cpuMillis": 1000, "memoryBytes": 2**30}
    node = await Fleet(api).client("node", "n1")
    [reg] = await recorded_by(api, lambda: node.put("/v1/nodes/n1", json=body), 200)
    assert (reg["action"], reg["resource"], reg["detail"]) == (
        "node.register", "Node/n1", {"outcome": "created", "cell": "cell-a", "ip": "10.0.0.1"})
    assert reg["after"].startswith("sha256:")
    [tok] = await recorded_by(api, lambda: api.http.post("/v1/tokens", json={"name": "ci"}), 201)
    assert (tok["action"], tok["detail"]["user"], tok["detail"]["name"]) == ("token.create", "admin", "ci")
    token_id = tok["resource"].removeprefix("Token/")
    [rev] = await recorded_by(api, lambda: api.http.delete(f"/v1/tokens/{token_id}"), 200)
    assert (rev["action"], rev["resource"]) == ("token.revoke", f"Token/{token_id}")


# --- verification and tampering --------------------------------------------------------------------------------------


async def _busy_log(api: Api) -> int:
    """Make a log of several records; return its length."""
    viewer = await viewer_client(api)
    assert (await api.http.post("/v1/apply", json={"items": [CELL, shop(2)]})).status_code == 200
    assert (await viewer.post("/v1/apply", json={"items": [shop(3)]})).status_code == 403
    assert (await api.http.post("/v1/apply", json={"items": [shop(3)]})).status_code == 200
    r = await api.http.get("/v1/audit/verify")
    assert r.status_code == 200, r.text
    assert r.json()["ok"] is True and r.json()["breaks"] == []
    count = int(r.json()["records"])
    assert count >= 8
    return count


async def test_untouched_log_verifies(api: Api) -> None:
    """A log written only through the API verifies, and its head hash is the last record's hash."""
    count = await _busy_log(api)
    verdict = (await api.http.get("/v1/audit/verify")).json()
    [last] = (await api.http.get("/v1/audit", params={"after": count - 1})).json()["items"]
    assert verdict == {"records": count, "ok": True, "headHash": last["hash"], "breaks": [], "checkpoints": None}


async def _edit_actor(api: Api, seq: int) -> None:
    async with api.store.engine.begin() as conn:
        await conn.execute(update(audit).where(audit.c.seq == seq).values(actor="mallory"))


async def _delete_record(api: Api, seq: int) -> None:
    async with api.store.engine.begin() as conn:
        await conn.execute(delete(audit).where(audit.c.seq == seq))


async def _swap_with_next(api: Api, seq: int) -> None:
    """Reorder two records by exchanging all their content while each row keeps its seq."""
    async with api.store.engine.begin() as conn:
        rows = {r.seq: dict(r._mapping) for r in (await conn.execute(
            select(audit).where(audit.c.seq.in_([seq, seq + 1])))).all()}
        for here, there in ((seq, seq + 1), (seq + 1, seq)):
            content = {k: v for k, v in rows[there].items() if k != "seq"}
            await conn.execute(update(audit).where(audit.c.seq == here).values(**content))


@pytest.mark.parametrize(("tamper", "expected"), [
    pytest.param(_edit_actor, [(3, "content edited")], id="edit-actor"),
    pytest.param(_delete_record, [(4, "sequence gap"), (4, "link broken")], id="delete-middle-record"),
    pytest.param(_swap_with_next, [(3, "link broken"), (3, "content edited"), (4, "link broken"),
                                   (4, "content edited"), (5, "link broken")], id="swap-two-records"),
])
async def test_tampering_in_the_database_is_found(api: Api, tamper: Callable[[Api, int], Awaitable[None]],
                                                  expected: list[tuple[int, str]]) -> None:
    """Editing, deleting or reordering stored records makes verify report ok=false with breaks at the right seq."""
    count = await _busy_log(api)
    await tamper(api, 3)
    r = await api.http.get("/v1/audit/verify")
    assert r.status_code == 200, r.text
    verdict = r.json()
    assert verdict["ok"] is False
    assert [(b["seq"], b["problem"].split(":")[0]) for b in verdict["breaks"]] == expected
    assert verdict["records"] == (count - 1 if tamper is _delete_record else count)


async def test_truncating_the_newest_record_is_found(api: Api) -> None:
    """Deleting the newest record leaves every link intact, but the chain head no longer matches."""
    count = await _busy_log(api)
    await _delete_record(api, count)
    verdict = (await api.http.get("/v1/audit/verify")).json()
    assert verdict["ok"] is False
    assert verdict["breaks"] == [{"seq": count - 1, "problem":
                                  f"chain head is record {count} but the log ends at record {count - 1} "
                                  "(records removed or head altered)"}]


async def test_tampering_is_still_reported_after_new_records(api: Api) -> None:
    """Appending after a tampered record does not heal the chain: the edit stays visible."""
    await _busy_log(api)
    await _edit_actor(api, 2)
    assert (await api.http.post("/v1/apply", json={"items": [shop(4)]})).status_code == 200
    verdict = (await api.http.get("/v1/audit/verify")).json()
    assert verdict["ok"] is False
    assert [(b["seq"], b["problem"].split(":")[0]) for b in verdict["breaks"]] == [(2, "content edited")]


async def test_unknown_tokens_from_a_source_refused_too_often_are_not_even_looked_up(api: Api) -> None:
    """Past the burst, a source's unknown tokens get 429 without a store read, while a principal known moments ago
    from the same address (an agent, an admin behind the same proxy) is still served."""
    refusals = Refusals(clock=lambda: 0.0)   # no time passes: the bucket does not refill
    app = create_app(api.store, refusals=refusals)

    def client(token: str | None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ballast", headers=headers)

    admin, forged = client(api.admin_token), client("blt_forged")
    assert (await admin.get("/v1/cells")).status_code == 200   # the admin is known now
    statuses = [(await forged.get("/v1/cells")).status_code for _ in range(int(REFUSAL_BURST) + 5)]
    assert statuses[:int(REFUSAL_BURST)] == [401] * int(REFUSAL_BURST) and set(statuses[-5:]) == {429}, statuses
    assert (await client(None).get("/v1/cells")).status_code == 401, "no token: refused at once, never throttled"
    assert (await admin.get("/v1/cells")).status_code == 200
    totals = refusals.totals
    assert totals["throttled"] == 5 and totals["unauthenticated"] == int(REFUSAL_BURST) + 1
