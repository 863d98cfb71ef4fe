"""The data directory: database, server key and development PKI, created by `gatehouse init`."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATA_DIR = Path("gatehouse-data")


@dataclass(frozen=True)
class DataDir:
    root: Path

    @property
    def database(self) -> Path:
        return self.root / "gatehouse.db"

    @property
    def server_key(self) -> Path:
        return self.root / "gatehouse.key"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    def exists(self) -> bool:
        return self.database.exists() and self.server_key.exists()

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)  # it holds the server key and private keys
