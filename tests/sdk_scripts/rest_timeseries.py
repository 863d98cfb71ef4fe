"""Read a device's telemetry history with ThingsBoard's own REST client (tb-rest-client,
unchanged); run under .venv-sdk/bin/python.

    rest_timeseries.py URL '{"username", "password", "device_id", "queries": {NAME: {...}}}'

Logs in and, for each named query, calls `get_timeseries` (getTimeseriesHistory) with the
query's keyword arguments (start_ts, end_ts, keys, limit, order_by, use_strict_data_types,
agg; "device_id" names another device than the plan's), and `get_latest_timeseries` once,
then prints what the client returned as one JSON object:
{NAME: {key: [{"ts", "value"}]}, ..., "latest": ...}; a query the server refuses gives
{"status", "body"} instead. The client's log goes to stderr.
"""
import json
import logging
import sys

from tb_rest_client.rest import ApiException

try:  # tb-rest-client 3.x: one client per edition
    from tb_rest_client.rest_client_ce import *
    from tb_rest_client.rest_client_ce import RestClientCE as RestClient
except ImportError:  # 4.x: one client for both editions
    from tb_rest_client.rest_client import *

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")

url, plan = sys.argv[1], json.loads(sys.argv[2])


def points(answer: dict) -> dict:
    """{key: [TsData]} as JSON-able data."""
    return {key: [point.to_dict() for point in items] for key, items in answer.items()}


said = {}
with RestClient(base_url=url) as client:
    client.login(username=plan["username"], password=plan["password"])
    device_id = DeviceId(plan["device_id"], "DEVICE")
    for name, query in plan["queries"].items():
        queried = DeviceId(query.pop("device_id"), "DEVICE") if "device_id" in query else device_id
        try:
            said[name] = points(client.get_timeseries(queried, **query))
        except ApiException as e:
            said[name] = {"status": e.status, "body": json.loads(e.body)}
    said["latest"] = points(client.get_latest_timeseries(device_id, use_strict_data_types=True))

print(json.dumps(said))
