"""One CoAP request with aiocoap's client, for tests that need the answer's CoAP code, type or
options (libcoap's command-line clients run as processes where a shell user's view counts)."""
from __future__ import annotations

import asyncio

import aiocoap
from aiocoap import Code, Message

TIMEOUT = 20  # seconds a request waits for its answer


async def coap_request(uri: str, method=Code.GET, payload: bytes = b"", **options) -> Message:
    """One CoAP request in a client context of its own, awaited in the caller's event loop."""
    context = await aiocoap.Context.create_client_context(transports=["udp6"])
    try:
        request = Message(code=method, uri=uri, payload=payload, **options)
        return await asyncio.wait_for(context.request(request).response, TIMEOUT)
    finally:
        await context.shutdown()


def coap(uri: str, method=Code.GET, payload: bytes | str = b"", **options) -> Message:
    """One CoAP request with aiocoap's client (CON unless mtype says otherwise)."""
    if isinstance(payload, str):
        payload = payload.encode()
    return asyncio.run(coap_request(uri, method, payload, **options))
