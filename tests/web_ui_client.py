"""A browser-like client of the operator web UI (`/ui`) for the tests: it keeps the session cookie
and sends the CSRF token of the last page it read, over Flask's test client or over HTTP to a
running sidecar; with the form steps several tests share (a new device, an upload, a bulk import
waited for)."""
from __future__ import annotations

import io
import re
import time

import requests
from flask import Response

ADMIN, PASSWORD = "operator@gatehouse.test", "operator-Password-7"
CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


class HttpClient:
    """What Ui uses of Flask's test client, over HTTP to a running sidecar: for tests that need
    the real process (its logs). It keeps the cookie; answers are werkzeug responses, read as
    the test client's are."""

    def __init__(self, url: str):
        self.url = url
        self.session = requests.Session()

    def get(self, path: str, query_string: dict | None = None):
        return self._response(self.session.get(self.url + path, params=query_string, allow_redirects=False,
                                               timeout=30))

    def post(self, path: str, data: dict, content_type: str | None = None):
        # The test client's form values are text, or (stream, file name) for an upload.
        files = {key: (value[1], value[0]) for key, value in data.items() if isinstance(value, tuple)}
        fields = {key: value for key, value in data.items() if key not in files}
        return self._response(self.session.post(self.url + path, data=fields, files=files or None,
                                                allow_redirects=False, timeout=30))

    @staticmethod
    def _response(answer: requests.Response) -> Response:
        return Response(answer.content, status=answer.status_code, headers=list(answer.headers.items()))


class Ui:
    """A browser-like client of the UI: it keeps the session cookie and sends the CSRF token of
    the last page it read. Flask's test client on `app`, or an HttpClient."""

    def __init__(self, app=None, *, client: HttpClient | None = None):
        self.client = client if client is not None else app.test_client()
        self.token: str | None = None

    def get(self, path: str, **kwargs):
        response = self.client.get(path, **kwargs)
        found = CSRF.search(response.get_data(as_text=True))
        if found:
            self.token = found.group(1)
        return response

    def post(self, path: str, data: dict | None = None, *, csrf: bool = True, **kwargs):
        data = dict(data or {})
        if csrf:
            data.setdefault("csrf_token", self.token)
        response = self.client.post(path, data=data, content_type="multipart/form-data", **kwargs)
        found = CSRF.search(response.get_data(as_text=True))
        if found:
            self.token = found.group(1)
        return response

    def login(self, username: str = ADMIN, password: str = PASSWORD):
        self.get("/ui/login")
        return self.post("/ui/login", {"username": username, "password": password})


def upload(text: str, name: str = "file.pem"):
    return (io.BytesIO(text.encode()), name)


def new_device(ui, **fields):
    ui.get("/ui/devices/new")
    return ui.post("/ui/devices/new", {"credentials_type": "ACCESS_TOKEN", **fields})


def wait_for_import(ui, location: str) -> dict:
    status_path = location + "/status"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = ui.get(status_path).get_json()
        if status["finished"]:
            return status
        time.sleep(0.05)
    raise AssertionError("the import did not finish")
