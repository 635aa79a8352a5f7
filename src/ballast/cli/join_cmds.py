"""`ballast node join-token create` and `ballast node join`: how a node or gateway gets its own credential."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from ballast.cli.common import _fail, command, console
from ballast.client import ApiError, Client
from ballast.errors import BallastError


@click.group("join-token")
def join_token() -> None:
    """One-time join tokens (admins): a new node or gateway exchanges one for its own credential."""


@join_token.command("create")
@click.option("--node", "node_name", help="only for this node (needed to re-join, i.e. rotate, an existing one)")
@click.option("--gateway", "gateway_name", help="only for this gateway")
@click.option("--kind", type=click.Choice(["node", "gateway"]), help="without a name: only this kind (default: either)")
@click.option("--ttl", type=click.FloatRange(min=1), help="seconds until it expires unused (default 3600)")
@command
async def join_token_create(client: Client, node_name: str | None, gateway_name: str | None, kind: str | None,
                            ttl: float | None) -> None:
    """Mint a join token; it is shown once and is good for one join."""
    if node_name and gateway_name:
        raise click.UsageError("give --node or --gateway, not both")
    name = node_name or gateway_name
    if name is not None:
        kind = "node" if node_name else "gateway"
    made = await client.post("/v1/join-tokens", {"kind": kind, "name": name, "ttlSeconds": ttl})
    console.out(made["token"])
    for_what = f"{made['kind'] or 'node or gateway'} {made['name'] or '(any new name)'}"
    click.echo(f"join token {made['id']} for {for_what}, good for one join until {made['expiresAt']:.0f}", err=True)


@click.command("join")
@click.argument("name")
@click.option("--server", "server_url", required=True, help="control plane URL")
@click.option("--join-token", "token", envvar="BALLAST_JOIN_TOKEN", required=True,
              help="the admin's join token (prefer BALLAST_JOIN_TOKEN)")
@click.option("--gateway", "is_gateway", is_flag=True, help="NAME is a gateway, not a node")
@click.option("--credential-file", type=click.Path(dir_okay=False, path_type=Path),
              help="where to write the credential (mode 0600; default ./NAME.credential): the agent's or gateway's "
                   "--credential-file")
def join(name: str, server_url: str, token: str, is_gateway: bool, credential_file: Path | None) -> None:
    """Exchange a join token for NAME's own credential (re-joining an existing NAME revokes its old one)."""
    from ballast.dataplane.credential import join as exchange
    kind = "gateway" if is_gateway else "node"
    try:
        joined = asyncio.run(exchange(server_url, kind, name, token, credential_file or Path(f"{name}.credential")))
    except ApiError as exc:
        _fail(exc.render())
    except BallastError as exc:
        _fail(f"error: {exc.message}")
    console.print(f"{joined['user']} joined: credential {joined['id']} written to {joined['file']}")
