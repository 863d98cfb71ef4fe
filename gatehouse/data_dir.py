"""The data directory (`--data-dir`): server key, development PKI and, by default, the SQLite
database, created by `gatehouse init`; and where a deployment keeps them elsewhere instead
(`--database URL`, `--server-key-file`)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_DATA_DIR = Path("gatehouse-data")
DATABASE_URL_VARIABLE = "GATEHOUSE_DATABASE_URL"
SQLITE_URL_PREFIX = "sqlite:///"


def redacted_url(url: str) -> str:
    """A database URL without its password: what messages and logs show."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:***@" if parts.username else ":***@"
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=user + host).geturl()


@dataclass(frozen=True)
class DataDir:
    root: Path
    # A database URL (gatehouse.storage.urls); None: gatehouse.db in the data dir.
    database_url: str | None = None
    # The server key elsewhere than in the data dir: the same file on every node.
    server_key_file: Path | None = None

    @classmethod
    def of(cls, value: DataDir | Path | str) -> DataDir:
        """A DataDir, or a plain data dir path (its database and key inside)."""
        return value if isinstance(value, DataDir) else cls(Path(value))

    @property
    def database(self) -> str:
        """The database URL."""
        return self.database_url or SQLITE_URL_PREFIX + str(self.root / "gatehouse.db")

    @property
    def sqlite_file(self) -> Path | None:
        """The database's file when it is SQLite."""
        url = self.database
        return Path(url[len(SQLITE_URL_PREFIX):]) if url.startswith(SQLITE_URL_PREFIX) else None

    @property
    def database_shown(self) -> str:
        """The database as messages show it: the file's name, or the URL without its password."""
        return redacted_url(self.database_url) if self.database_url else "gatehouse.db"

    @property
    def server_key(self) -> Path:
        return self.server_key_file or self.root / "gatehouse.key"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    def exists(self) -> bool:
        if not self.server_key.exists():
            return False
        return self.sqlite_file is None or self.sqlite_file.exists()

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)  # it holds the server key and private keys

    def resolve(self) -> DataDir:
        """With absolute paths, for processes started in another working directory."""
        return DataDir(self.root.resolve(), self.database_url,
                       self.server_key_file.resolve() if self.server_key_file else None)

    def command_options(self) -> list[str]:
        """The `gatehouse` options that name this data dir for a child process. The database URL
        is not among them (a password on a command line is readable by every local user): it
        goes in the child's environment (`environment`)."""
        options = ["--data-dir", str(self.root)]
        if self.server_key_file is not None:
            options += ["--server-key-file", str(self.server_key_file)]
        return options

    def environment(self) -> dict[str, str]:
        return {DATABASE_URL_VARIABLE: self.database_url} if self.database_url else {}
