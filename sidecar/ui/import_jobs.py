"""Bulk imports the web UI runs in the background: gatehouse.bulk_import (the code of `gatehouse
device import` and POST /api/device/bulk_import) on a thread of its own with its own registry,
its progress kept for the page to poll."""
from __future__ import annotations

import logging
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from gatehouse import bulk_import
from gatehouse.registry import Registry

log = logging.getLogger(__name__)
KEPT_JOBS = 50  # finished jobs are forgotten oldest first beyond this


@dataclass
class ImportJob:
    id: str
    owner: str
    file_name: str
    total: int
    done: int = 0
    result: bulk_import.BulkImportResult | None = None
    failed: bool = False  # an internal error, not a bad row
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def finished(self) -> bool:
        return self.result is not None or self.failed

    def status(self) -> dict:
        with self.lock:
            answer = {"total": self.total, "done": self.done, "finished": self.finished, "failed": self.failed}
            if self.result is not None:
                answer.update(self.result.to_json())
            return answer

    def advance(self, rows: int) -> None:
        with self.lock:
            self.done += rows


class ImportJobs:
    EXTENSION = "gatehouse_ui_imports"

    def __init__(self, data_dir: Path, shared_attributes_written: bulk_import.SharedAttributesWritten):
        self.data_dir = data_dir
        self.shared_attributes_written = shared_attributes_written  # pushed to connected devices
        self._jobs: OrderedDict[str, ImportJob] = OrderedDict()
        self._lock = threading.Lock()

    def start(self, owner: str, file_name: str, rows: list, mapping: bulk_import.BulkImportMapping) -> ImportJob:
        job = ImportJob(secrets.token_urlsafe(16), owner, file_name, len(rows))
        with self._lock:
            self._jobs[job.id] = job
            while len(self._jobs) > KEPT_JOBS:
                oldest = next(iter(self._jobs.values()))
                if not oldest.finished:
                    break
                self._jobs.popitem(last=False)
        threading.Thread(target=self._run, args=(job, rows, mapping), name=f"ui-import-{job.id[:6]}",
                         daemon=True).start()
        return job

    def _run(self, job: ImportJob, rows: list, mapping: bulk_import.BulkImportMapping) -> None:
        try:
            with Registry.open(self.data_dir) as registry:
                result = bulk_import.import_rows(registry, rows, mapping, progress=job.advance,
                                                 shared_attributes_written=self.shared_attributes_written)
        except Exception:
            log.exception("bulk import %s failed", job.id)
            with job.lock:
                job.failed = True
            return
        with job.lock:
            job.result = result

    def get(self, job_id: str, owner: str) -> ImportJob | None:
        """Another administrator's job is not found: each sees their own."""
        with self._lock:
            job = self._jobs.get(job_id)
        return job if job is not None and job.owner == owner else None
