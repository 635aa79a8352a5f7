"""What every CLI command shares: the consoles, the error exit, and the async-command wrapper."""

from __future__ import annotations

import asyncio
import json
import sys
from functools import wraps
from typing import Any, Awaitable, Callable

import click
import yaml
from rich.console import Console

from ballast.cli import config as client_config
from ballast.cli.output import escape_controls
from ballast.client import ApiError, Client
from ballast.errors import BallastError



class SafeConsole(Console):
    """A console that writes the control characters of any text it is given as escapes: what the CLI prints
    comes in part from stored values (paths, names, messages) that must not steer the terminal."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        super().print(*(escape_controls(o) if isinstance(o, str) else o for o in objects), **kwargs)

    def out(self, *objects: Any, **kwargs: Any) -> None:
        super().out(*(escape_controls(o) if isinstance(o, str) else o for o in objects), **kwargs)


console = SafeConsole(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 240)
err_console = SafeConsole(stderr=True, highlight=False, soft_wrap=True)
KINDS = {"cell": "cells", "cells": "cells", "node": "nodes", "nodes": "nodes", "app": "apps", "apps": "apps",
         "appservice": "apps", "appservices": "apps", "instance": "instances", "instances": "instances",
         "revision": "revisions", "revisions": "revisions", "inst": "instances", "endpoint": "endpoints",
         "endpoints": "endpoints", "ep": "endpoints", "gateway": "gateways", "gateways": "gateways",
         "order": "orders", "orders": "orders", "releaseorder": "orders", "releaseorders": "orders",
         "changewindow": "changewindows", "changewindows": "changewindows", "window": "changewindows",
         "windows": "changewindows", "trafficrule": "trafficrules", "trafficrules": "trafficrules",
         "tr": "trafficrules", "coloringrule": "coloringrules", "coloringrules": "coloringrules",
         "group": "isolationgroups", "groups": "isolationgroups", "isolationgroup": "isolationgroups",
         "isolationgroups": "isolationgroups", "ig": "isolationgroups",
         "scheduledtask": "scheduledtasks", "scheduledtasks": "scheduledtasks", "task": "scheduledtasks",
         "tasks": "scheduledtasks", "taskrun": "taskruns", "taskruns": "taskruns"}


def _fail(message: str, code: int = 1) -> None:
    err_console.print(message, markup=False)
    sys.exit(code)


def command(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    """Run an async command with an API client; turn every Ballast error into a message and exit code."""
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        try:
            cfg = client_config.load(ctx.obj.get("config"), ctx.obj.get("server"), ctx.obj.get("token"))

            async def go() -> Any:
                async with Client(cfg.server, cfg.token) as client:
                    return await fn(client, *args, **kwargs)

            return asyncio.run(go())
        except ApiError as exc:
            _fail(exc.render())
        except BallastError as exc:
            _fail(f"error: {exc.message}")
        except KeyboardInterrupt:   # Ctrl-C: the way a watch ends
            sys.exit(130)
    return wrapper




def print_as(obj: dict[str, Any], fmt: str, render: Callable[[dict[str, Any]], Any] | None) -> None:
    """`-o json|yaml` prints the API's object as it is; a table is `render`'s view of it."""
    if fmt == "json":
        console.out(json.dumps(obj, indent=2))
    elif fmt == "yaml":
        console.out(yaml.safe_dump(obj, sort_keys=False))
    else:
        assert render is not None
        console.print(render(obj))
