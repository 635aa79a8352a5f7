"""Spec of paged, server-filtered lists and the instance watch, over both stores: `limit` and `continue` visit
every item once in list order (also while instances come and go between pages), filters and the reader's apps
are applied by the query (full pages, no other app), a bad token is a 400 naming `continue`, and a watch
answers the changes after a resourceVersion — deletions too — as soon as there are any."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert, update

from ballast.core import paging
from ballast.core.authz import Action, Binding, Role, allowed, readable_apps
from ballast.services.instances import TOMBSTONE_SECONDS, WATCH_TOPICS, record_deletions
from ballast.store.engine import Store
from ballast.store.schema import endpoints, instances
from tests.conftest import Api
from tests.unit.test_api_resources import apply_ok, cell, register_nodes, token_for

APPS, CELLS = ("a", "b", "c"), ("cell-1", "cell-2")


def row(tx: Any, app: str, cell_name: str, iid: str, n: int, **over: Any) -> dict[str, Any]:
    values = dict(id=iid, app=app, revision=1, node=f"n-{cell_name}", cell=cell_name, zone="z", ip="10.0.0.1",
                  port=20000 + n, desired="running", phase="Running", granted_revision=1, granted_desired="running",
                  mesh_port=None, ready=True, restarts=0, pid=None, message="", created_seq=tx.rv * 10_000 + n,
                  desired_version=tx.rv, running_revision=1, replaces=None, ordinal=None, changed_at=tx.now,
                  created_at=tx.now, updated_at=tx.now, resource_version=tx.rv)
    values.update(over)
    return values


async def seed(store: Store, keys: list[tuple[str, str, str]], **over: Any) -> None:
    """Instance rows (app, cell, id), inserted in one transaction as the scheduler would leave them."""
    if keys:
        async with store.write() as tx:
            await tx.conn.execute(insert(instances), [row(tx, a, c, i, n, **over) for n, (a, c, i) in enumerate(keys)])


async def forget(store: Store, ids: list[str]) -> None:
    """Delete instance rows as the registry does: their tombstones in the same transaction."""
    async with store.write() as tx:
        await record_deletions(tx, instances.c.id.in_(ids))
        await tx.conn.execute(delete(instances).where(instances.c.id.in_(ids)))


def grid(per_cell: int) -> list[tuple[str, str, str]]:
    return [(a, c, f"{a}-{c}-{k:03d}") for a in APPS for c in CELLS for k in range(per_cell)]


async def pages(client: Any, path: str, limit: int, **params: Any) -> list[dict[str, Any]]:
    """Every page's answer, following metadata.continue."""
    out, token = [], None
    while True:
        r = await client.get(path, params={**params, "limit": limit, **({"continue": token} if token else {})})
        assert r.status_code == 200, r.text
        out.append(r.json())
        token = r.json()["metadata"].get("continue")
        if token is None:
            return out


def names(answers: list[dict[str, Any]]) -> list[str]:
    return [i["metadata"]["name"] for a in answers for i in a["items"]]


# --- paging ------------------------------------------------------------------------------------------------------


async def test_pages_visit_every_instance_once_in_list_order(api: Api) -> None:
    """Pages of 5 hold what the unpaged list holds, in the same (app, cell, id) order; only the last page has no
    continue token, and every page names the store's version."""
    keys = grid(4)
    await seed(api.store, list(reversed(keys)))
    whole = (await api.http.get("/v1/instances")).json()
    assert "continue" not in whole["metadata"] and int(whole["metadata"]["resourceVersion"]) >= 1
    answers = await pages(api.http, "/v1/instances", 5)
    assert names(answers) == [i["metadata"]["name"] for i in whole["items"]] == [k[2] for k in sorted(keys)]
    assert [len(a["items"]) for a in answers] == [5] * 4 + [4]
    assert all(int(a["metadata"]["resourceVersion"]) >= 1 for a in answers)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limit=st.integers(1, 7), start=st.sets(st.sampled_from(grid(3)), min_size=0, max_size=18),
       churn=st.lists(st.tuples(st.sampled_from(grid(3)), st.booleans()), max_size=12))
async def test_paging_while_instances_come_and_go_never_repeats_and_never_skips_a_survivor(
        api: Api, limit: int, start: set[tuple[str, str, str]], churn: list[tuple[tuple[str, str, str], bool]]) -> None:
    """Between pages, instances are created and deleted: no instance is returned twice, every one that existed
    throughout is returned, and nothing is returned that never existed."""
    async with api.store.write() as tx:
        await tx.conn.execute(delete(instances))
    await seed(api.store, sorted(start))
    present, ever, survivors = set(start), set(start), set(start)
    seen: list[str] = []
    token, moves = None, iter(churn)
    while True:
        r = await api.http.get("/v1/instances", params={"limit": limit, **({"continue": token} if token else {})})
        assert r.status_code == 200, r.text
        seen += [i["metadata"]["name"] for i in r.json()["items"]]
        token = r.json()["metadata"].get("continue")
        if token is None:
            break
        for key, create in [m for m in [next(moves, None)] if m is not None]:
            if create and key not in present:
                await seed(api.store, [key])
                present.add(key)
                ever.add(key)
            elif not create and key in present:
                await forget(api.store, [key[2]])
                present.discard(key)
                survivors.discard(key)
    assert len(seen) == len(set(seen)), f"returned twice: {seen}"
    assert {k[2] for k in survivors} <= set(seen) <= {k[2] for k in ever}


@pytest.mark.parametrize(("params", "expected"), [
    ({"app": "b"}, {"b-1", "b-2", "b-3"}),
    ({"cell": "cell-2"}, {"a-2", "b-2", "c-2"}),
    ({"app": "b", "cell": "cell-2"}, {"b-2"}),
    ({"phase": "Failed"}, {"a-3", "b-3"}),
    ({"ready": "false"}, {"a-3", "b-3", "c-3"}),
    ({"ready": "true", "app": "c"}, {"c-1", "c-2"}),
    ({"revision": 2}, {"c-1", "c-2", "c-3"}),
    ({"desired": "deleted"}, {"a-1"}),
    ({"node": "n-cell-1"}, {"a-1", "b-1", "c-1"}),
    ({"app": "a", "phase": "Running", "ready": "true"}, {"a-1", "a-2"}),
    ({"app": "zzz"}, set()),
])
async def test_filters_are_anded_on_the_server(api: Api, params: dict[str, Any], expected: set[str]) -> None:
    async with api.store.write() as tx:
        rows = [row(tx, a, f"cell-{k}", f"{a}-{k}", n, revision=2 if a == "c" else 1,
                    phase="Failed" if k == 3 and a != "c" else "Running", ready=k != 3,
                    desired="deleted" if (a, k) == ("a", 1) else "running")
                for n, (a, k) in enumerate((a, k) for a in APPS for k in (1, 2, 3))]
        await tx.conn.execute(insert(instances), rows)
    answers = await pages(api.http, "/v1/instances", 2, **params)
    assert set(names(answers)) == expected
    assert all(len(a["items"]) == 2 for a in answers[:-1]), "every page but the last is full"


@pytest.mark.parametrize(("params", "field"), [
    ({"phase": "Dancing"}, "phase"), ({"ready": "maybe"}, "ready"), ({"revision": "0"}, "revision"),
    ({"desired": "gone"}, "desired"), ({"limit": "0"}, "limit"), ({"limit": "5001"}, "limit"),
    ({"cell": "x" * 64}, "cell"),
])
async def test_invalid_filters_are_refused_naming_the_field(api: Api, params: dict[str, str], field: str) -> None:
    r = await api.http.get("/v1/instances", params=params)
    assert r.status_code == 422, r.text
    assert [p["path"] for p in r.json()["problems"]] == [field]


async def test_a_scoped_reader_gets_full_pages_of_its_own_apps_only(api: Api) -> None:
    """The reader's apps are part of the query: pages of 4 are full and never hold app b."""
    await seed(api.store, grid(3))
    viewer = api.as_(await token_for(api, "vic", "viewer", ["a", "c"]))
    answers = await pages(viewer, "/v1/instances", 4)
    got = names(answers)
    assert got == [k[2] for k in sorted(grid(3)) if k[0] in ("a", "c")]
    assert [len(a["items"]) for a in answers] == [4, 4, 4]
    assert (await viewer.get("/v1/instances", params={"app": "b"})).status_code == 403


@pytest.mark.parametrize("bindings", [
    (), (Binding(Role.VIEWER),), (Binding(Role.VIEWER, ("a",)),), (Binding(Role.OPERATOR, ("a", "b")),),
    (Binding(Role.VIEWER, ("a",)), Binding(Role.OPERATOR, ("c",))), (Binding(Role.VIEWER, ("a",)), Binding(Role.ADMIN)),
    (Binding(Role.NODE),), (Binding(Role.GATEWAY), Binding(Role.APPROVER, ("b",))), (Binding(Role.VIEWER, ()),),
])
def test_the_readable_app_set_is_exactly_what_allowed_says(bindings: tuple[Binding, ...]) -> None:
    readable = readable_apps(bindings)
    for app in ("a", "b", "c", "d"):
        assert allowed(bindings, Action.READ, app) == (readable is None or app in readable)


def _token(body: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")


@pytest.mark.parametrize(("token", "params", "says"), [
    ("!!not-base64!!", {}, "does not decode"),
    (_token([1, 2]), {}, "does not decode"),
    ("bm90IGpzb24", {}, "does not decode"),                                        # "not json"
    (_token({"l": "instances", "k": ["a", "cell-1"], "f": {}}), {}, "previous page"),   # a key of another shape
    (_token({"l": "instances", "k": ["a", "cell-1", 7], "f": {}}), {}, "previous page"),
    (_token({"l": "audit", "k": ["a", "cell-1", "x"], "f": {}}), {}, "'audit' list"),
    (_token({"l": "instances", "k": ["a", "cell-1", "x"], "f": {"app": "a"}}), {"app": "b"}, "app='a'"),
    (_token({"l": "instances", "k": ["a", "cell-1", "x"], "f": {"ready": True}}), {}, "no filters"),
    ("x" * 3000, {}, "at most"),
], ids=["not-base64", "not-an-object", "not-json", "short-key", "key-of-other-types", "other-list",
        "other-filters", "filters-dropped", "too-long"])
async def test_a_bad_or_mismatched_continue_token_is_a_400_naming_it(api: Api, token: str, params: dict[str, str],
                                                                        says: str) -> None:
    r = await api.http.get("/v1/instances", params={**params, "continue": token})
    if says == "at most":     # longer than any token of ours: refused by its bound, as any parameter
        assert r.status_code == 422 and r.json()["problems"][0]["path"] == "continue", r.text
        return
    assert r.status_code == 400, r.text
    [problem] = r.json()["problems"]
    assert problem["path"] == "continue" and problem["value"] == token[:200]
    assert says in problem["expected"], problem


async def test_a_token_is_good_only_with_the_filters_it_was_made_for(api: Api) -> None:
    await seed(api.store, grid(2))
    first = (await api.http.get("/v1/instances", params={"app": "a", "limit": 1})).json()
    token = first["metadata"]["continue"]
    assert (await api.http.get("/v1/instances", params={"app": "a", "continue": token})).status_code == 200
    r = await api.http.get("/v1/instances", params={"app": "a", "cell": "cell-1", "continue": token})
    assert r.status_code == 400 and r.json()["problems"][0]["path"] == "continue", r.text


async def test_audit_pages_back_from_the_newest_and_forward_from_the_oldest(api: Api) -> None:
    """`continue` goes on in the first page's direction; `limit` and `after` keep working as before."""
    for n in range(7):
        await apply_ok(api, cell(f"c{n}"))
    every = [r["seq"] for r in (await api.http.get("/v1/audit", params={"limit": 10_000})).json()["items"]]
    back = await pages(api.http, "/v1/audit", 3)
    assert [[r["seq"] for r in a["items"]] for a in back][0] == every[-3:], "the first page: the newest, oldest first"
    assert sorted(r["seq"] for a in back for r in a["items"]) == every
    forward = await pages(api.http, "/v1/audit", 3, oldest="true")
    assert [r["seq"] for a in forward for r in a["items"]] == every
    after = (await api.http.get("/v1/audit", params={"after": every[2], "limit": 2})).json()
    assert [r["seq"] for r in after["items"]] == every[3:5] and "continue" in after["metadata"]
    wrong = await api.http.get("/v1/audit", params={"continue": back[0]["metadata"]["continue"], "oldest": "true"})
    assert wrong.status_code == 400 and wrong.json()["problems"][0]["path"] == "continue"


async def test_endpoints_page_by_cell_and_id(api: Api) -> None:
    await apply_ok(api, cell("cell-1"), {"apiVersion": "ballast.io/v1alpha1", "kind": "AppService",
                                         "metadata": {"name": "shop"}, "spec": {"template": {"command": ["x"]},
                                                                                "cells": {"cell-1": 0}}})
    async with api.store.write() as tx:
        await tx.conn.execute(insert(endpoints), [
            dict(id=f"shop-{k}", service="shop", node="n", cell=f"cell-{k % 2}", zone="z", ip="10.0.0.1",
                 port=20000 + k, revision=1, state="ready", generation=tx.rv, since=tx.now, required=[], note="")
            for k in range(7)])
    answers = await pages(api.http, "/v1/apps/shop/endpoints", 3)
    assert names(answers) == sorted((f"shop-{k}" for k in range(7)), key=lambda i: (f"cell-{int(i[5:]) % 2}", i))
    assert [len(a["items"]) for a in answers] == [3, 3, 1]
    r = await api.http.get("/v1/apps/pay/endpoints", params={"continue": answers[0]["metadata"]["continue"]})
    assert r.status_code in (400, 404), r.text   # another app's token: refused (or the app is not there)


# --- watch -------------------------------------------------------------------------------------------------------


async def watch(client: Any, since: str, **params: Any) -> dict[str, Any]:
    r = await client.get("/v1/instances", params={"watch": "true", "resourceVersion": since, "timeout": 0, **params})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def events(answer: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["type"], e["object"]["metadata"]["name"]) for e in answer["events"]]


async def test_a_watch_answers_additions_changes_and_deletions_after_a_version_in_order(api: Api) -> None:
    await seed(api.store, [("a", "cell-1", "a-1"), ("a", "cell-1", "a-2"), ("b", "cell-1", "b-1")])
    since = (await api.http.get("/v1/instances")).json()["metadata"]["resourceVersion"]
    assert (await watch(api.http, since))["events"] == []
    async with api.store.write() as tx:
        await tx.conn.execute(update(instances).where(instances.c.id == "a-1").values(phase="Failed",
                                                                                     resource_version=tx.rv))
    await seed(api.store, [("a", "cell-2", "a-3"), ("b", "cell-2", "b-2")])
    await forget(api.store, ["a-2", "b-1"])
    answer = await watch(api.http, since)
    assert events(answer) == [("MODIFIED", "a-1"), ("ADDED", "a-3"), ("ADDED", "b-2"), ("DELETED", "a-2"),
                              ("DELETED", "b-1")]
    assert answer["events"][0]["object"]["status"]["phase"] == "Failed"
    assert answer["events"][3]["object"]["status"]["phase"] == "Running", "a deletion shows the instance as it was"
    assert events(await watch(api.http, since, app="a", phase="Running")) == [("ADDED", "a-3"), ("DELETED", "a-2")]
    assert (await watch(api.http, answer["metadata"]["resourceVersion"]))["events"] == []
    viewer = api.as_(await token_for(api, "vic", "viewer", ["b"]))
    assert events(await watch(viewer, since)) == [("ADDED", "b-2"), ("DELETED", "b-1")]


async def test_a_waiting_watch_wakes_on_a_change(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """A watch with nothing to report waits; a change answers it, long before its timeout."""
    await seed(api.store, [("a", "cell-1", "a-1")])
    since = (await api.http.get("/v1/instances")).json()["metadata"]["resourceVersion"]
    waiting = asyncio.Event()
    real_wait = api.store.wait_for_topics

    async def observed_wait(topics: frozenset[str], after: int, timeout: float) -> int:
        assert topics == WATCH_TOPICS
        waiting.set()
        return int(await real_wait(topics, after, timeout))

    monkeypatch.setattr(api.store, "wait_for_topics", observed_wait)
    poll = asyncio.create_task(api.http.get("/v1/instances", params={"watch": "true", "resourceVersion": since,
                                                                     "timeout": 60}))
    await asyncio.wait_for(waiting.wait(), timeout=10)
    assert not poll.done()
    await forget(api.store, ["a-1"])
    answer = await asyncio.wait_for(poll, timeout=10)
    assert events(answer.json()) == [("DELETED", "a-1")]


async def test_deleting_a_node_leaves_deletions_a_watch_reports(api: Api) -> None:
    """The registry's own deletion (a node deleted with its instances) writes the tombstones."""
    await apply_ok(api, cell("cell-1"))
    await register_nodes(api, {"n-cell-1": "cell-1"})
    await seed(api.store, [("a", "cell-1", "a-1"), ("a", "cell-1", "a-2")])
    since = (await api.http.get("/v1/instances")).json()["metadata"]["resourceVersion"]
    assert (await api.http.delete("/v1/nodes/n-cell-1")).status_code == 200
    assert events(await watch(api.http, since)) == [("DELETED", "a-1"), ("DELETED", "a-2")]


async def test_a_watch_from_before_the_deletions_kept_is_410_gone(api: Api) -> None:
    await seed(api.store, [("a", "cell-1", "a-1"), ("a", "cell-1", "a-2")])
    since = (await api.http.get("/v1/instances")).json()["metadata"]["resourceVersion"]
    await forget(api.store, ["a-1"])
    clock = api.store.clock
    api.store.clock = lambda: clock() + TOMBSTONE_SECONDS + 60   # later: the first deletion is pruned
    await forget(api.store, ["a-2"])
    r = await api.http.get("/v1/instances", params={"watch": "true", "resourceVersion": since, "timeout": 0})
    assert r.status_code == 410 and "list again" in r.json()["message"], r.text
    fresh = (await api.http.get("/v1/instances")).json()["metadata"]["resourceVersion"]
    assert (await watch(api.http, fresh))["events"] == []


@pytest.mark.parametrize(("params", "fields"), [
    ({}, ["resourceVersion"]), ({"resourceVersion": "1", "limit": "5"}, ["limit"]),
    ({"resourceVersion": "1", "continue": "x"}, ["continue"]),
])
async def test_a_watch_needs_a_version_and_takes_no_paging(api: Api, params: dict[str, str], fields: list[str]) -> None:
    r = await api.http.get("/v1/instances", params={"watch": "true", "timeout": 0, **params})
    assert r.status_code == 422 and [p["path"] for p in r.json()["problems"]] == fields, r.text


def test_a_token_round_trips_and_carries_its_filters() -> None:
    token = paging.encode("instances", ("a", "cell-1", "a-1"), {"app": "a", "node": None, "ready": False})
    assert paging.decode(token, "instances", {"ready": False, "app": "a"}, (str, str, str)) == ("a", "cell-1", "a-1")
    assert "=" not in token and "+" not in token and "/" not in token
