"""A small HTTP client of the sidecar's admin REST API (SPEC §8) for the tests: it checks every
answer against the OpenAPI document when given one (status documented, body valid against the
documented schema), and logs in from a chosen loopback address."""
from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from openapi_schema_validator import OAS30Validator, oas30_format_checker

ADMIN, ADMIN_PASSWORD = "admin@gatehouse.test", "admin-Password-42"


@dataclass
class Answer:
    status: int
    body: object  # parsed JSON, None for an empty body
    text: str
    headers: dict

    @property
    def message(self) -> str:
        return self.body["message"]


def _resolved(schema, schemas: dict):
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _resolved(schemas[schema["$ref"].rsplit("/", 1)[1]], schemas)
        return {key: _resolved(value, schemas) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_resolved(item, schemas) for item in schema]
    return schema


class Api:
    def __init__(self, url: str, document: dict | None = None):
        self.url = url
        self.token: str | None = None
        self.document = document
        self.checked: set[tuple[str, str, int]] = set()

    def call(self, method: str, path: str, body: object = None, *, raw: bytes | None = None,
             token: str | None = "default", headers: dict | None = None) -> Answer:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        token = self.token if token == "default" else token
        if token is not None:
            all_headers["X-Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, content, response_headers = response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as e:
            status, content, response_headers = e.code, e.read(), dict(e.headers)
            e.close()
        text = content.decode("utf-8")
        parsed = json.loads(text) if text else None
        answer = Answer(status, parsed, text, response_headers)
        if status >= 400:
            assert "Traceback" not in text and response_headers["Content-Type"] == "application/json", text
            assert set(parsed) == {"status", "message", "errorCode", "timestamp"} and parsed["status"] == status
        self._check_documented(method, path, answer)
        return answer

    def get(self, path: str, **kwargs) -> Answer:
        return self.call("GET", path, **kwargs)

    def post(self, path: str, body: object = None, **kwargs) -> Answer:
        return self.call("POST", path, body, **kwargs)

    def delete(self, path: str, **kwargs) -> Answer:
        return self.call("DELETE", path, **kwargs)

    def ok(self, method: str, path: str, body: object = None, **kwargs) -> object:
        answer = self.call(method, path, body, **kwargs)
        assert answer.status == 200, answer.text
        return answer.body

    def _check_documented(self, method: str, path: str, answer: Answer) -> None:
        """A documented operation must document this status, and the body must match its schema."""
        if self.document is None:
            return
        template = operation_template(self.document, method, path.split("?", 1)[0])
        if template is None:
            return
        operation = self.document["paths"][template][method.lower()]
        documented = operation["responses"].get(str(answer.status))
        assert documented is not None, f"{method} {template} answered {answer.status}, which is not documented"
        content = documented.get("content")
        if content is None:
            assert answer.body is None, answer.text
        else:
            schema = _resolved(content["application/json"]["schema"], self.document["components"]["schemas"])
            OAS30Validator(schema, format_checker=oas30_format_checker).validate(answer.body)
        self.checked.add((method, template, answer.status))


def operation_template(document: dict, method: str, path: str) -> str | None:
    """The documented template `path` falls under, if it documents `method`. Literal segments beat
    parameters, as in the routing: /api/device/credentials is never a device id."""
    segments = urllib.parse.unquote(path).split("/")
    candidates = []
    for template in document["paths"]:
        parts = template.split("/")
        if len(parts) == len(segments) and all(
                part == segment or (part.startswith("{") and segment) for part, segment in zip(parts, segments)):
            candidates.append((template.count("{"), template))
    if not candidates:
        return None
    template = min(candidates)[1]
    return template if method.lower() in document["paths"][template] else None


def login_from(sidecar, address: str, password: str, forwarded_for: str | None = None) -> tuple[int, dict, str | None]:
    """POST /api/auth/login from a chosen loopback address: (status, JSON body, Retry-After)."""
    connection = http.client.HTTPConnection("127.0.0.1", sidecar.http_port, timeout=10, source_address=(address, 0))
    headers = {"Content-Type": "application/json", **({"X-Forwarded-For": forwarded_for} if forwarded_for else {})}
    try:
        connection.request("POST", "/api/auth/login", json.dumps({"username": ADMIN, "password": password}), headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read()), response.getheader("Retry-After")
    finally:
        connection.close()
