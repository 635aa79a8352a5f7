"""The API answers a first apply and reads over both stores."""

from tests.conftest import Api

CELLS = [{"apiVersion": "ballast.io/v1alpha1", "kind": "Cell", "metadata": {"name": "cell-a"}, "spec": {"zone": "zone-a"}}]


async def test_apply_cell_then_list(api: Api) -> None:
    r = await api.http.post("/v1/apply", json={"items": CELLS})
    assert r.status_code == 200, r.text
    assert r.json()["results"] == [{"kind": "Cell", "name": "cell-a", "outcome": "created"}]
    cells = (await api.http.get("/v1/cells")).json()["items"]
    assert [c["metadata"]["name"] for c in cells] == ["cell-a"]
