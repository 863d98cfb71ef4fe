"""ThingsBoard's own HTTP device client (`tb_device_http.TBHTTPDevice`), unchanged, against the
Gatehouse sidecar; run under .venv-sdk/bin/python.

    http_device.py '{"url": "http://127.0.0.1:8080", "device_name": "...", "provision_device_key": "...",
                     "provision_device_secret": "...", ...}'

Provisions a device with `TBHTTPDevice.provision`, then with the device it returns: `connect()`
(the SDK posts empty telemetry to test the token, then starts its publish worker),
`send_telemetry(telemetry, timestamp, queued=False)` when "telemetry" is given (with
"telemetry_ts_ms" as the timestamp), `send_telemetry(queued_telemetry)` through the SDK's queue
when "queued_telemetry" is given, `send_attributes(attributes)` when "attributes" is given, and
`request_attributes(client_keys, shared_keys)`. "wrong_token" also tries `connect()` with that
token. "timeout": seconds to wait for the publish worker (default 20).

Prints one JSON object on stdout: {"provision_failure": <what TBProvisionFailure carries>}
when provisioning is refused, else {"token", "connected", "queued_published", "attributes",
"wrong_token_connected"}. The SDK's log goes to stderr.
"""
import json
import logging
import sys
import time
from datetime import UTC, datetime

from tb_device_http import TBHTTPDevice, TBProvisionFailure

logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")

plan = json.loads(sys.argv[1])
url, timeout = plan["url"], plan.get("timeout", 20)
try:
    device = TBHTTPDevice.provision(url, plan["device_name"], plan["provision_device_key"],
                                    plan["provision_device_secret"])
except TBProvisionFailure as failure:
    print(json.dumps({"provision_failure": failure.args[0]}))
    sys.exit(0)

result = {"token": device.token, "connected": device.connect()}
if "telemetry" in plan:
    # The SDK stamps values with the naive datetime it is given, read as UTC.
    timestamp = datetime.fromtimestamp(plan["telemetry_ts_ms"] / 1000, tz=UTC).replace(tzinfo=None)
    device.send_telemetry(plan["telemetry"], timestamp=timestamp, queued=False)
if "queued_telemetry" in plan:
    device.send_telemetry(plan["queued_telemetry"])
    # The SDK has no public way to wait for its publish worker; its queue says when it is done
    # (a failed publish is put back, so the count never reaches 0 then).
    publish_queue = device._TBHTTPDevice__worker["publish"]["queue"]
    deadline = time.monotonic() + timeout
    while publish_queue.unfinished_tasks and time.monotonic() < deadline:
        time.sleep(0.05)
    result["queued_published"] = publish_queue.unfinished_tasks == 0
if "attributes" in plan:
    device.send_attributes(plan["attributes"])
result["attributes"] = device.request_attributes(client_keys=plan.get("client_keys"),
                                                 shared_keys=plan.get("shared_keys"))
device.stop_publish_worker()
if "wrong_token" in plan:
    result["wrong_token_connected"] = TBHTTPDevice(url, plan["wrong_token"]).connect()
print(json.dumps(result))
