"""Spec of component identities: which node or gateway a credential may act as, and what a join token joins."""

from __future__ import annotations

import pytest

from ballast.core.authz import Binding, Role
from ballast.core.identity import JoinGrant, acting_as_denial, join_denial

NODE_A1 = ("node/n-a1", (Binding(Role.NODE),))
EDGE = ("gateway/edge", (Binding(Role.GATEWAY),))


@pytest.mark.parametrize(("who", "kind", "name", "denied_with"), [
    (NODE_A1, "node", "n-a1", None),
    (EDGE, "gateway", "edge", None),
    (NODE_A1, "gateway", "edge", "the credential of node 'n-a1' may not act as gateway 'edge'"),
    (NODE_A1, "node", "n-b1", "the credential of node 'n-a1' may not act as node 'n-b1'"),
    (EDGE, "gateway", "evil", "the credential of gateway 'edge' may not act as gateway 'evil'"),
    (EDGE, "node", "n-a1", "the credential of gateway 'edge' may not act as node 'n-a1'"),
    # A name alone is not an identity: the component's role must come with it, and no person's role will do.
    (("node/n-a1", (Binding(Role.ADMIN),)), "node", "n-a1", "user 'node/n-a1' may not act as node 'n-a1'"),
    (("node/n-a1", (Binding(Role.GATEWAY),)), "node", "n-a1", "user 'node/n-a1' may not act as node 'n-a1'"),
    (("admin", (Binding(Role.ADMIN),)), "node", "n-a1", "user 'admin' may not act as node 'n-a1'"),
    (("n-a1", (Binding(Role.NODE),)), "node", "n-a1", "user 'n-a1' may not act as node 'n-a1'"),
])
def test_a_credential_acts_only_as_its_own_component(who: tuple[str, tuple[Binding, ...]], kind: str, name: str,
                                                     denied_with: str | None) -> None:
    denial = acting_as_denial(who[0], who[1], kind, name)
    assert (denial is None) if denied_with is None else (denial is not None and denial.startswith(denied_with))


ANY = JoinGrant("jt_1", None, None, "admin")
ANY_NODE = JoinGrant("jt_2", "node", None, "admin")
FOR_N1 = JoinGrant("jt_3", "node", "n-1", "admin")


@pytest.mark.parametrize(("grant", "kind", "name", "exists", "denied_with"), [
    (ANY, "node", "n-1", False, None),
    (ANY, "gateway", "gw", False, None),
    (ANY, "node", "n-1", True, "node 'n-1' has joined already"),
    (ANY_NODE, "node", "n-2", False, None),
    (ANY_NODE, "gateway", "gw", False, "join token jt_2 is for a node, not a gateway"),
    (FOR_N1, "node", "n-1", False, None),
    (FOR_N1, "node", "n-1", True, None),                       # rotation: a token made for that name
    (FOR_N1, "node", "n-2", False, "join token jt_3 is for node 'n-1', not 'n-2'"),
    (FOR_N1, "gateway", "n-1", False, "join token jt_3 is for a node, not a gateway"),
])
def test_a_join_token_joins_what_it_was_made_for(grant: JoinGrant, kind: str, name: str, exists: bool,
                                                 denied_with: str | None) -> None:
    denial = join_denial(grant, kind, name, exists)
    assert (denial is None) if denied_with is None else (denial is not None and denial.startswith(denied_with))
