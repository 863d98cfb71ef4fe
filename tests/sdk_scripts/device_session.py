"""One device session of ThingsBoard's own SDK, unchanged; run under .venv-sdk/bin/python.

    device_session.py '{"host": "127.0.0.1", "port": 1883, "token": "...", "steps": [...], ...}'

Connects a `TBDeviceMqttClient` (which speaks MQTT 5) with the token, waits until the SDK is
connected, its four subscriptions are acknowledged and it has handled the answer to its
`getSessionLimits` call, then runs the steps in order and disconnects.

The token may be null (an X.509 device). Plan keys besides host, port and token: "client_id";
"tls" ({"ca_certs": ..., "cert_file": ..., "key_file": ...}, passed to `connect(tls=True, ...)`);
"timeout" (seconds each wait may take,
default 20); "watch_keys" (attribute keys to register `subscribe_to_attribute` callbacks for,
besides the one `subscribe_to_all_attributes` callback); "rpc_reply" (merged into the answer the
server-side RPC handler sends: {"received": <the request body>, **rpc_reply}).

Steps:
    {"step": "send_telemetry", "values": {...} or [...]}  -> {"event": "telemetry", "rc", "published"}
    {"step": "send_attributes", "values": {...}}          -> {"event": "attributes_sent", "rc", "published"}
    {"step": "request_attributes", "client_keys": [...], "shared_keys": [...]}
                                                           -> {"event": "attributes", "value", "error"}
    {"step": "await_attribute_update"}  -> {"event": "awaiting_attribute_update"}, then
                                           {"event": "attribute_update", "all": {...}, "by_key": {key: {...}}}
    {"step": "await_rpc"}               -> {"event": "awaiting_rpc"}, then (after the SDK handler has
                                           answered with send_rpc_reply) {"event": "rpc_request", "request_id", "body"}
    {"step": "rpc_call", "method": "...", "params": ...}
                                        -> {"event": "rpc_response", "request_id", "value", "error"}

Output: one JSON object per line on stdout, flushed at once so the test can act between steps:
first {"event": "connected", ...} (what the SDK made of the session limits), then one line per
step (two for the await_* steps), then {"event": "done"}. A failure prints {"event": "error",
"message": ...} and exits with 1. The SDK's own log, at DEBUG, goes to stderr.
"""
import json
import logging
import queue
import sys
import time

from tb_device_mqtt import TBDeviceMqttClient

logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                    format="%(asctime)s %(levelname)s %(name)s %(threadName)s: %(message)s")

SDK_SUBSCRIPTIONS = 4  # attributes, attributes/response/+, rpc/request/+, rpc/response/+


class StepFailed(Exception):
    pass


def emit(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise StepFailed(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def take(q: queue.Queue, timeout: float, what: str):
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        raise StepFailed(f"timed out after {timeout} s waiting for {what}") from None


def published(info) -> bool:
    """Whether every PUBLISH behind a TBPublishInfo got its PUBACK."""
    infos = info.message_info if isinstance(info.message_info, list) else [info.message_info]
    return bool(infos) and all(i.is_published() for i in infos)


def wait_published(info, timeout: float, what: str) -> int:
    rc = info.get()  # the SDK's own wait: one second per message
    wait_for(lambda: published(info), timeout, f"the PUBACK for {what}")
    return rc


def run(plan: dict) -> None:
    timeout = float(plan.get("timeout", 20))
    client = TBDeviceMqttClient(plan["host"], port=int(plan["port"]), username=plan["token"],
                                client_id=plan.get("client_id", ""))

    # Observing, not changing, the SDK: the SUBACKs of the paho client it owns (the SDK sets no
    # on_subscribe of its own), so that no step races the SDK's subscriptions, and below its CONNACK.
    subacks = []
    client._client.on_subscribe = lambda _c, _u, _mid, codes, _p=None: subacks.append(
        [getattr(code, "value", code) for code in codes])

    connacks = queue.Queue()
    updates = queue.Queue()  # (subscription, content)
    rpc_requests = queue.Queue()
    attribute_answers = queue.Queue()
    rpc_answers = queue.Queue()

    client.subscribe_to_all_attributes(lambda content, error: updates.put(("*", content)))
    watch_keys = list(plan.get("watch_keys", []))
    for key in watch_keys:
        client.subscribe_to_attribute(key, lambda content, error, key=key: updates.put((key, content)))

    rpc_reply = plan.get("rpc_reply", {})

    def on_server_side_rpc(request_id, body):
        # As the SDK's examples do: answer from the handler itself.
        client.send_rpc_reply(request_id, {"received": body, **rpc_reply})
        rpc_requests.put((request_id, body))

    client.set_server_side_rpc_request_handler(on_server_side_rpc)

    # The CONNACK's reason code, seen before the SDK's own handler runs. (Not through the callback
    # of `connect`: the SDK stores that only after starting paho's loop, so a quick CONNACK can
    # come before it and the callback is then never called.)
    sdk_on_connect = client._client.on_connect

    def on_connect(paho_client, userdata, flags, result_code, *extra):
        connacks.put((getattr(result_code, "value", result_code), str(result_code)))
        sdk_on_connect(paho_client, userdata, flags, result_code, *extra)

    client._client.on_connect = on_connect
    tls = plan.get("tls")  # {"ca_certs": ..., "cert_file": ..., "key_file": ...}: connect over TLS
    client.connect(timeout=timeout, **({"tls": True, **tls} if tls else {}))
    try:
        code, name = take(connacks, timeout, "the CONNACK")
        if code != 0:
            raise StepFailed(f"connection refused: {code} ({name})")
        wait_for(lambda: len(subacks) >= SDK_SUBSCRIPTIONS, timeout, "the SUBACKs of the SDK's subscriptions")
        wait_for(lambda: client.rate_limits_received, timeout, "the SDK to handle its getSessionLimits answer")
        emit("connected", reason_code=code, subacks=subacks, rate_limits_received=client.rate_limits_received,
             max_payload_size=client.max_payload_size, max_inflight_messages=client._client._max_inflight_messages,
             max_queued_messages=client._client._max_queued_messages)

        for step in plan.get("steps", []):
            kind = step["step"]
            if kind == "send_telemetry":
                info = client.send_telemetry(step["values"])
                rc = wait_published(info, timeout, "the telemetry")
                emit("telemetry", rc=rc, published=published(info))
            elif kind == "send_attributes":
                info = client.send_attributes(step["values"])
                rc = wait_published(info, timeout, "the client attributes")
                emit("attributes_sent", rc=rc, published=published(info))
            elif kind == "request_attributes":
                client.request_attributes(client_keys=step.get("client_keys"), shared_keys=step.get("shared_keys"),
                                          callback=lambda content, error: attribute_answers.put((content, error)))
                content, error = take(attribute_answers, timeout, "the attribute response")
                emit("attributes", value=content, error=None if error is None else repr(error))
            elif kind == "await_attribute_update":
                emit("awaiting_attribute_update")
                source, content = take(updates, timeout, "a shared attribute update")
                if source != "*":
                    raise StepFailed(f"the {source!r} callback fired before the all-attributes one: {content!r}")
                by_key = {}
                for _ in [key for key in watch_keys if isinstance(content, dict) and key in content]:
                    key, keyed = take(updates, timeout, "the per-key attribute callbacks")
                    by_key[key] = keyed
                emit("attribute_update", all=content, by_key=by_key)
            elif kind == "await_rpc":
                emit("awaiting_rpc")
                request_id, body = take(rpc_requests, timeout, "a server-side RPC request")
                emit("rpc_request", request_id=request_id, body=body)
            elif kind == "rpc_call":
                client.send_rpc_call(step["method"], step.get("params", {}),
                                     lambda request_id, content, error: rpc_answers.put((request_id, content, error)))
                request_id, content, error = take(rpc_answers, timeout, "the client-side RPC response")
                emit("rpc_response", request_id=request_id, value=content,
                     error=None if error is None else repr(error))
            else:
                raise StepFailed(f"unknown step {kind!r}")
        leftover = []
        while not updates.empty():
            leftover.append(updates.get())
        if leftover:
            raise StepFailed(f"attribute callbacks nobody waited for: {leftover!r}")
    finally:
        client.stop()
        client.disconnect()
    emit("done")


def main() -> int:
    try:
        run(json.loads(sys.argv[1]))
    except StepFailed as e:
        emit("error", message=str(e))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
