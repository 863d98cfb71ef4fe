"""The bulk import page: upload a ThingsBoard-format CSV, watch its progress, read the result
and the refused lines."""
from __future__ import annotations

import csv

from flask import abort, current_app, g, jsonify, redirect, render_template, url_for

from gatehouse import bulk_import
from gatehouse.errors import ValidationError

from ..admin_payloads import MAX_BODY_BYTES
from .blueprint import ui
from .forms import FieldError, ImportForm, show_error, uploaded_text
from .import_jobs import ImportJob, ImportJobs


def _jobs() -> ImportJobs:
    return current_app.extensions[ImportJobs.EXTENSION]


@ui.route("/import", methods=["GET", "POST"])
def import_devices():
    form = ImportForm()
    if form.validate_on_submit():
        try:
            text = uploaded_text(form, "file", limit=MAX_BODY_BYTES)
            if text is None:
                raise FieldError("file", "Choose a CSV file")
            delimiter = form.delimiter.data
            mapping = bulk_import.BulkImportMapping.from_header(bulk_import.read_header(text, delimiter),
                                                                delimiter=delimiter, update=form.update.data)
            rows = bulk_import.parse_rows(text, mapping)
        except (ValidationError, csv.Error) as e:
            show_error(form, FieldError("file", f"Header line: {e}" if isinstance(e, ValidationError) else str(e)))
        except FieldError as e:
            show_error(form, e)
        else:
            job = _jobs().start(g.admin, form.file.data.filename, rows, mapping)
            return redirect(url_for("ui.import_job", job_id=job.id))
        return render_template("ui/import.html", form=form), 400
    return render_template("ui/import.html", form=form)


def _job(job_id: str) -> ImportJob:
    job = _jobs().get(job_id, g.admin)
    if job is None:
        abort(404, "No such import (imports are kept while the sidecar runs)")
    return job


@ui.route("/import/<job_id>")
def import_job(job_id: str):
    job = _job(job_id)
    return render_template("ui/import_job.html", job=job, status=job.status())


@ui.route("/import/<job_id>/status")
def import_status(job_id: str):
    return jsonify(_job(job_id).status())
