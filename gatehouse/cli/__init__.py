"""The `gatehouse` command: the root group (`--data-dir`, `--version`, one-line refusals) and the
commands it gathers.

Running processes is not domain code, so the command line is a package of its own, beside the
domain it drives:

- .profiles_and_accounts, .devices: the operator's commands, thin clients of the library API
  (gatehouse.registry), with .output for what they share;
- .serve: the process-launching commands (broker, sidecar, coap, up), the only code in
  `gatehouse` that imports a component, lazily, when the command runs;
- .supervisor: `gatehouse up`'s process supervisor.

What the components themselves need while they run (default ports, the /metrics server, the
readiness notification) is in gatehouse.runtime, which they may import: a component never imports
this package. The domain imports neither.
"""
from __future__ import annotations

from pathlib import Path

import click

from .. import certificates, pki
from ..data_dir import DEFAULT_DATA_DIR
from ..errors import GatehouseError
from ..server_key import ServerKeyError
from . import devices, profiles_and_accounts, serve

_EXPECTED_ERRORS = (GatehouseError, pki.PkiError, certificates.CertificateError, ServerKeyError, OSError)


class GatehouseGroup(click.Group):
    """Turns the library's refusals into one-line errors instead of tracebacks."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except _EXPECTED_ERRORS as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=GatehouseGroup)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="GATEHOUSE_DATA_DIR",
              default=DEFAULT_DATA_DIR, show_default=True, help="Where the database, keys and certificates live.")
@click.version_option(package_name="gatehouse")
@click.pass_context
def main(ctx: click.Context, data_dir: Path) -> None:
    """Gatehouse: ThingsBoard-compatible device credentials and provisioning for MQTT fleets."""
    ctx.obj = data_dir


for _command in (*profiles_and_accounts.COMMANDS, *devices.COMMANDS, *serve.COMMANDS):
    main.add_command(_command)
