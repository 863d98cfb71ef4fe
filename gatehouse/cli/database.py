"""The operator's commands for the deployment's database as a whole (`gatehouse db ...`): a thin
client of the library API (Registry.copy_database_to, gatehouse/registry/database_copy.py)."""
from __future__ import annotations

import contextlib
import sys

import click

from .output import emit, json_option, open_registry


@click.group("db")
def database() -> None:
    """The deployment's database as a whole."""


@database.command("copy")
@click.option("--to", "target", required=True, metavar="URL",
              help="The database to copy into: postgresql://USER:PASSWORD@HOST:PORT/DBNAME (or sqlite:///PATH); "
                   "new, or a copy this command started before.")
@json_option
@click.pass_context
def database_copy(ctx: click.Context, target: str, as_json: bool) -> None:
    """Copy every row of the database (--database, default gatehouse.db in the data dir) into
    another one, with the same ids and sealed secrets: the same server key opens both, so no
    device needs new credentials. Stop every process that writes to the database first; a copy
    cut short can be run again. Then point every process at the new database (--database or
    GATEHOUSE_DATABASE_URL)."""
    registry = open_registry(ctx)
    total = sum(registry.database_row_counts().values())
    with contextlib.ExitStack() as stack:
        bar = None

        def progress(rows: int) -> None:
            # The bar starts with the first rows copied: a URL refused before that is one line.
            nonlocal bar
            if bar is None:
                bar = stack.enter_context(click.progressbar(length=total, label="Copying", file=sys.stderr))
            bar.update(rows)

        result = registry.copy_database_to(target, progress=progress)
    lines = [f"copied {ctx.obj.database_shown} to {result.target}: {_rows(result.total)} in {result.seconds:.1f} s"]
    lines += [f"{table}: {_rows(rows)}" for table, rows in result.rows.items()]
    emit(as_json, result.to_json(), "\n".join(lines))


def _rows(count: int) -> str:
    return f"{count:,} row{'' if count == 1 else 's'}"


# What the root group (gatehouse.cli.main) adds to itself.
COMMANDS = (database,)
