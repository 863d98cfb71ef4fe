"""What every operator's command shares: the registry of the data dir it was given, and output
as text or, with --json, as JSON with ThingsBoard's field names."""
from __future__ import annotations

import json

import click

from ..registry import Registry

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON (ThingsBoard's field names).")


def emit(as_json: bool, data, text: str) -> None:
    click.echo(json.dumps(data, indent=2) if as_json else text)


def open_registry(ctx: click.Context) -> Registry:
    """The data dir's registry, closed when the command ends."""
    registry = Registry.open(ctx.obj)
    ctx.call_on_close(registry.close)
    return registry
