"""The `gatehouse` command: the root group (`--data-dir`, `--database`, `--server-key-file`,
`--version`, one-line refusals) and the
commands it gathers.

Running processes is not domain code, so the command line is a package of its own, beside the
domain it drives:

- .profiles_and_accounts, .devices, .database: the operator's commands, thin clients of the
  library API (gatehouse.registry), with .output for what they share;
- .serve: the process-launching commands (broker, sidecar, coap, up), the only code in
  `gatehouse` that imports a component, lazily, when the command runs;
- .supervisor: `gatehouse up`'s process supervisor.

What the components themselves need while they run (default ports, the /metrics server, the
readiness notification) is in gatehouse.runtime, which they may import: a component never imports
this package. The domain imports neither.
"""
from __future__ import annotations

import logging
from pathlib import Path

import click

from .. import certificates, pki
from ..data_dir import DATABASE_URL_VARIABLE, DEFAULT_DATA_DIR, DataDir
from ..errors import GatehouseError, StoreUnavailable
from ..server_key import ServerKeyError
from . import database, devices, profiles_and_accounts, serve

_EXPECTED_ERRORS = (GatehouseError, pki.PkiError, certificates.CertificateError, ServerKeyError, StoreUnavailable,
                    OSError)
# An operator's command configures no logging, so psycopg's pool would print each failed
# connection attempt above the one-line error that says the same; the servers configure logging
# and still log them.
logging.getLogger("psycopg").addHandler(logging.NullHandler())


class GatehouseGroup(click.Group):
    """Turns the library's refusals into one-line errors instead of tracebacks."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ServerKeyError as e:  # which of a deployment's key files this process read
            key = f" (server key file: {ctx.obj.server_key})" if isinstance(ctx.obj, DataDir) else ""
            raise click.ClickException(f"{e}{key}") from None
        except _EXPECTED_ERRORS as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=GatehouseGroup)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="GATEHOUSE_DATA_DIR",
              default=DEFAULT_DATA_DIR, show_default=True,
              help="Where the server key, the certificates and (by default) the database live.")
@click.option("--database", "database_url", envvar=DATABASE_URL_VARIABLE, metavar="URL",
              help="The database: sqlite:///PATH (default: gatehouse.db in the data dir) or "
                   "postgresql://USER:PASSWORD@HOST:PORT/DBNAME, shared by every node. Prefer the environment "
                   f"variable {DATABASE_URL_VARIABLE} for a URL with a password.")
@click.option("--server-key-file", type=click.Path(dir_okay=False, path_type=Path), envvar="GATEHOUSE_SERVER_KEY_FILE",
              help="The server key (default: gatehouse.key in the data dir); every node of a deployment must use "
                   "the same key.")
@click.version_option(package_name="gatehouse")
@click.pass_context
def main(ctx: click.Context, data_dir: Path, database_url: str | None, server_key_file: Path | None) -> None:
    """Gatehouse: ThingsBoard-compatible device credentials and provisioning for MQTT fleets."""
    ctx.obj = DataDir(data_dir, database_url or None, server_key_file)


for _command in (*profiles_and_accounts.COMMANDS, *devices.COMMANDS, *database.COMMANDS, *serve.COMMANDS):
    main.add_command(_command)
