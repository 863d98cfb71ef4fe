"""Device payloads: telemetry, client attributes, attribute requests and client-side RPC requests.

I/O-free, and ThingsBoard-compatible because devices written against TB must keep working
unchanged. The typing rules follow TB's JsonConverter (common/proto/.../adaptor/JsonConverter.java,
the transport path `parseProtoValues`): TB reads every number through BigDecimal from its literal
text, so "1e5" is a LONG, "1.0" a DOUBLE and 0.10000000000000000001 (scale > 16) a STRING.

TB parses JSON leniently (Gson), and its own CoAP docs send `{temperature:25}`. Parsing goes
fastest first, and each payload meets one strict parser and, only if that fails, the lenient one:

1. orjson, strict: nearly all traffic is strict JSON with ordinary numbers.
2. When some number literal has an exponent or a run of 17+ digits, the stdlib json parser
   (also C, also strict) with hooks that keep such literals as written: a double cannot tell
   "1e5" from "100000.0", and orjson turns integers past 64 bits into floats. A regex over the
   raw bytes makes that choice up front.
3. json5, lenient. It is pure Python and about a thousand times slower than orjson, so it is
   only tried on payloads up to LENIENT_MAX_BYTES.

The public functions never raise on bad input: they return a PayloadError.

Why one module of about 550 lines: it is one algorithm, ThingsBoard's reading of a payload, whose
three stages (the public API, the strict-then-lenient JSON loading, the JsonConverter typing)
share the literal-keeping number hooks and the error texts; split, each part would be
unreadable without the others.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import json5
import orjson

from .models import java_trim

DEFAULT_MAX_BYTES = 65536
# Bounds the time json5 can take on one payload (~0.1-0.4 s at 4 KiB); hand-written lenient
# payloads from small devices are far smaller.
LENIENT_MAX_BYTES = 4096

_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_MAX_KEY_LENGTH = 255  # TB's KvUtils.validate, counted in UTF-16 units like Java's length()
# A literal such as 1e999999999 would expand to that many digits when written out plainly for a
# STRING entry; TB would try. Past this many added zeros we refuse instead.
_MAX_PLAIN_ZEROS = 1024

_TELEMETRY_SHAPE = "Telemetry must be a JSON object or array of objects"
_NON_FINITE = "NaN and Infinity values are not supported"
_BIG_NUMBER = "Big integer values are not supported!"  # TB's message, kept verbatim

# Matches when a number literal (outside strings) has an exponent or a run of 17+ digits:
# only then can orjson's int/float lose what TB's BigDecimal typing looks at. Possessive
# quantifiers keep it linear on any input.
_NUMBER_TEXT_MATTERS = re.compile(
    rb'(?:"[^"\\]*+(?:\\.[^"\\]*+)*+"|[^"0-9]++|[0-9]{1,16}+(?![0-9eE]))*+(?:[0-9]{17}|[0-9]++[eE])',
    re.DOTALL,
)
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# commons-lang3 NumberUtils.isParsable, which TB's type cast uses: optional '-', then digits with
# at most one '.'. Java's Character.isDigit accepts any Unicode decimal digit, as does \d here.
_PARSABLE = re.compile(r"-?\d*\.?\d*")
_LONG_TEXT = re.compile(r"[+-]?\d{1,19}")  # what Java's Long.parseLong accepts
# Java's Character.isWhitespace (TB's StringUtils.isBlank), which unlike str.isspace excludes
# the no-break spaces.
_JAVA_WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                    "\u2008\u2009\u200a\u2028\u2029\u205f\u3000")


@dataclass(frozen=True)
class PayloadError:
    """Why a payload was rejected; the message is safe to send back to the device."""

    message: str


class ValueKind(str, enum.Enum):
    BOOLEAN = "BOOLEAN"
    LONG = "LONG"
    DOUBLE = "DOUBLE"
    STRING = "STRING"
    JSON = "JSON"


@dataclass(frozen=True)
class KvEntry:
    key: str
    kind: ValueKind
    value: bool | int | float | str  # JSON kind: compact JSON text


@dataclass(frozen=True)
class TelemetryRecord:
    ts: int | None  # None: stamp with server time when stored
    values: tuple[KvEntry, ...]


@dataclass(frozen=True)
class AttributeRequest:
    """Requested attribute keys per scope; None means no keys were named for that scope."""

    client_keys: tuple[str, ...] | None
    shared_keys: tuple[str, ...] | None


@dataclass(frozen=True)
class RpcRequest:
    method: str
    params: object


# --- public API ---------------------------------------------------------------------------------


def parse_json(data, *, max_bytes: int = DEFAULT_MAX_BYTES) -> object | PayloadError:
    """Any JSON value, strict first and then lenient, as plain Python values."""
    return _load(data, max_bytes, _plain_number)


def parse_telemetry(data, *, type_cast: bool = True, max_string_length: int = 0,
                    max_bytes: int = DEFAULT_MAX_BYTES) -> list[TelemetryRecord] | PayloadError:
    """SPEC §2.3: {k: v}, {"ts": ms, "values": {k: v}}, or an array of either."""
    value = _load(data, max_bytes, _typed_number)
    if _has_fractional_ts(value):
        # TB truncates the exact literal; a double may have rounded it across an integer
        # (1699999999999.99999 -> 1.7e12), so read the literals as written.
        value = _load(data, max_bytes, _typed_number, keep_literals=True)
    if isinstance(value, PayloadError):
        return value
    if isinstance(value, dict):
        items = [value]
    elif isinstance(value, list):
        items = value
    else:
        return PayloadError(_TELEMETRY_SHAPE)
    records = []
    for item in items:
        if not isinstance(item, dict):
            return PayloadError(_TELEMETRY_SHAPE)
        ts, values = None, item
        # As TB: only both keys together mean a timestamped record; `ts` alone is just a key.
        if "ts" in item and "values" in item:
            ts = _epoch_ms(item["ts"])
            if isinstance(ts, PayloadError):
                return ts
            values = item["values"]
            if not isinstance(values, dict):
                return PayloadError("values must be a JSON object")
        entries = kv_entries(values, type_cast=type_cast, max_string_length=max_string_length)
        if isinstance(entries, PayloadError):
            return entries
        records.append(TelemetryRecord(ts, entries))
    return records


def parse_attributes(data, *, type_cast: bool = True, max_string_length: int = 0,
                     max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[KvEntry, ...] | PayloadError:
    """SPEC §2.4 client attributes: a JSON object of key/values."""
    value = _load(data, max_bytes, _typed_number)
    if isinstance(value, PayloadError):
        return value
    if not isinstance(value, dict):
        return PayloadError("Attributes must be a JSON object")
    return kv_entries(value, type_cast=type_cast, max_string_length=max_string_length)


def parse_attribute_request(data, *, max_bytes: int = DEFAULT_MAX_BYTES) -> AttributeRequest | PayloadError:
    """SPEC §2.4 attribute request: {"clientKeys": "k1,k2", "sharedKeys": "s1"}, both optional.

    An empty payload is an error, not "all": TB's MQTT adaptor parses it anyway, Gson yields
    JsonNull and getAsJsonObject() throws. `{}` is the way to ask for everything.
    """
    value = _load(data, max_bytes, _plain_number)
    if isinstance(value, PayloadError):
        return value
    if not isinstance(value, dict):
        return PayloadError("Attribute request must be a JSON object")
    client_keys = _key_list(value, "clientKeys")
    if isinstance(client_keys, PayloadError):
        return client_keys
    shared_keys = _key_list(value, "sharedKeys")
    if isinstance(shared_keys, PayloadError):
        return shared_keys
    return AttributeRequest(client_keys, shared_keys)


def attribute_request_from_keys(client_keys: str | None, shared_keys: str | None) -> AttributeRequest:
    """An attribute request whose key lists come as text, e.g. HTTP's `?clientKeys=a,b&sharedKeys=c`
    (None: not given); read with the same rules as the JSON request."""
    body = {field: keys for field, keys in (("clientKeys", client_keys), ("sharedKeys", shared_keys))
            if keys is not None}
    # Strings never make _key_list fail.
    return AttributeRequest(_key_list(body, "clientKeys"), _key_list(body, "sharedKeys"))


def parse_rpc_request(data, *, max_bytes: int = DEFAULT_MAX_BYTES) -> RpcRequest | PayloadError:
    """Client-side RPC: {"method": "...", "params": any}; missing params are None, as TB's "null"."""
    value = _load(data, max_bytes, _plain_number)
    if isinstance(value, PayloadError):
        return value
    if not isinstance(value, dict):
        return PayloadError("RPC request must be a JSON object")
    method = value.get("method")
    if not isinstance(method, str) or not method:
        return PayloadError("RPC method must be a non-empty string")
    return RpcRequest(method, value.get("params"))


def kv_entries(obj: dict, *, type_cast: bool = True,
               max_string_length: int = 0) -> tuple[KvEntry, ...] | PayloadError:
    """Types the values of an already-parsed object as TB does; null values are skipped."""
    if not isinstance(obj, dict):
        return PayloadError("Key/values must be a JSON object")
    entries = []
    for key, value in obj.items():
        # TB's transport drops nulls before its storage layer validates keys.
        if value is None:
            continue
        error = _key_error(key)
        if error:
            return error
        entry = _entry(key, value, type_cast, max_string_length)
        if isinstance(entry, PayloadError):
            return entry
        entries.append(entry)
    return tuple(entries)


def entry_to_json_value(entry: KvEntry) -> object:
    """The entry's value as a JSON-able Python value; JSON text is parsed back."""
    if entry.kind != ValueKind.JSON:
        return entry.value
    text = entry.value.encode()
    # Literals kept as written (1e400, integers past 64 bits) are beyond orjson; the stdlib
    # parser keeps big integers exact.
    return json.loads(entry.value) if _NUMBER_TEXT_MATTERS.match(text) else orjson.loads(text)


def json_bytes(value) -> bytes:
    """Compact JSON of values as entry_to_json_value gives them, for devices and applications.
    A JSON entry may hold integers past 64 bits, which orjson refuses and the stdlib writes."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


# --- parsing ------------------------------------------------------------------------------------


class _Literal(str):
    """A JSON number as written, for numbers whose TB type a float or int could not preserve."""


# Number hooks for json.loads and json5.loads; json5 also passes base=16 for hex literals.


def _plain_number(text: str, base: int = 10) -> object:
    if not _JSON_NUMBER.fullmatch(text):
        return _gson_unquoted(text)
    if _is_integer_text(text):
        return int(text)
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number out of range: {text}")
    return value


def _typed_number(text: str, base: int = 10) -> object:
    if not _JSON_NUMBER.fullmatch(text):
        return _gson_unquoted(text)
    if len(text) <= 20 and _is_integer_text(text):
        value = int(text)
        if _LONG_MIN <= value <= _LONG_MAX:
            return value
    return _Literal(text)


def _is_integer_text(text: str) -> bool:
    return "." not in text and "e" not in text and "E" not in text


def _gson_unquoted(text: str) -> str:
    # json5-only number syntax (0x1F, .5, 5.) is no number to Gson, which reads it as an
    # unquoted string; TB's type cast then decides (".5" becomes a DOUBLE, "0x1F" stays text).
    return str(text)


def _reject_constant(text: str) -> object:
    raise ValueError(_NON_FINITE)


def _load(data, max_bytes: int, number: Callable[..., object], *,
          keep_literals: bool = False) -> object | PayloadError:
    raw = _payload_bytes(data, max_bytes)
    if isinstance(raw, PayloadError):
        return raw
    strict_error = None
    if not keep_literals and not _NUMBER_TEXT_MATTERS.match(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            strict_error = exc
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return PayloadError("Payload is not valid UTF-8")
    hooks = {"parse_int": number, "parse_float": number, "parse_constant": _reject_constant}
    try:
        if strict_error is None:
            try:
                value = json.loads(text, **hooks)
            except ValueError as exc:
                strict_error = exc
        if strict_error is not None:
            if not text.strip():
                return PayloadError("Payload is empty")
            if len(raw) > LENIENT_MAX_BYTES:
                return PayloadError(f"Invalid JSON: {strict_error}")
            value = json5.loads(text, **hooks)
        return _joined_surrogates(value) if _SURROGATE_ESCAPE.search(raw) else value
    except ValueError as exc:
        return PayloadError(f"Invalid JSON: {exc}")
    except RecursionError:
        return PayloadError("Invalid JSON: nested too deeply")


def _payload_bytes(data, max_bytes: int) -> bytes | bytearray | PayloadError:
    if isinstance(data, str):
        # Encoding never shrinks text, so an oversize str is refused before being copied.
        if len(data) > max_bytes:
            return _too_large(max_bytes)
        try:
            data = data.encode()
        except UnicodeEncodeError:
            return PayloadError("Payload is not valid UTF-8")
    elif isinstance(data, memoryview):
        if data.nbytes > max_bytes:
            return _too_large(max_bytes)
        data = data.tobytes()
    elif not isinstance(data, (bytes, bytearray)):
        return PayloadError(f"Payload must be bytes or str, not {type(data).__name__}")
    return _too_large(max_bytes) if len(data) > max_bytes else data


def _too_large(max_bytes: int) -> PayloadError:
    return PayloadError(f"Payload is larger than {max_bytes} bytes")


def _joined_surrogates(value):
    """json5 leaves an escaped pair such as \\ud83d\\ude00 as two code points, and both it and the
    stdlib parser let a lone one through; pair them up and refuse lone ones, which can be
    neither stored as UTF-8 nor sent back."""
    if type(value) is str:
        if not _SURROGATE.search(value):
            return value
        try:
            return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
        except UnicodeDecodeError:
            raise ValueError("unpaired surrogate escape in string") from None
    if isinstance(value, dict):
        return {_joined_surrogates(k): _joined_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_joined_surrogates(v) for v in value]
    return value


# --- typing (TB's JsonConverter) ----------------------------------------------------------------


def _entry(key: str, value, type_cast: bool, max_string_length: int) -> KvEntry | PayloadError:
    if isinstance(value, bool):
        return KvEntry(key, ValueKind.BOOLEAN, value)
    if isinstance(value, _Literal):
        return _number_entry(key, value, type_cast)
    if isinstance(value, str):
        return _string_entry(key, value, type_cast, max_string_length)
    if isinstance(value, int):
        return _int_entry(key, value, type_cast)
    if isinstance(value, float):
        if not math.isfinite(value):
            return PayloadError(_NON_FINITE)
        # Adding 0.0 turns -0.0 into 0.0, as BigDecimal has no negative zero.
        return KvEntry(key, ValueKind.DOUBLE, value + 0.0)
    if isinstance(value, (dict, list)):
        return _json_entry(key, value)
    return PayloadError(f"Can't parse value for key [{key}]: {value!r}")


def _string_entry(key: str, text: str, type_cast: bool, max_string_length: int) -> KvEntry | PayloadError:
    if max_string_length > 0:
        length = _java_length(text)
        if length > max_string_length:
            return PayloadError(f"String value length [{length}] for key [{key}] is greater than "
                                f"maximum allowed [{max_string_length}]")
    if type_cast and _is_parsable(text):
        entry = _number_entry(key, text, type_cast)
        # TB keeps the string as it was when the numeric conversion fails.
        if isinstance(entry, KvEntry):
            return entry
    return KvEntry(key, ValueKind.STRING, text)


def _number_entry(key: str, text: str, type_cast: bool) -> KvEntry | PayloadError:
    """TB's buildNumericKeyValueProto, with Decimal standing in for BigDecimal."""
    try:
        number = Decimal(text)
    except InvalidOperation:  # an exponent past what Decimal (or Java's int scale) can hold
        return PayloadError(f"Number out of range for key [{key}]")
    if number.is_zero():
        number = number.copy_abs()
    _, digits, exponent = number.as_tuple()
    scale = -exponent
    significant = "".join(map(str, digits)).rstrip("0")
    # Java's stripTrailingZeros().scale(); zero strips to scale 0.
    stripped_scale = scale - (len(digits) - len(significant)) if significant else 0
    is_simple_double = "." in text and "e" not in text and "E" not in text
    if stripped_scale <= 0 and not is_simple_double:
        # Integral: LONG when longValueExact() succeeds. Counting digits first avoids building
        # a huge int for a literal like 1e999999.
        if len(significant) - stripped_scale <= 19:
            value = int(number)
            if _LONG_MIN <= value <= _LONG_MAX:
                return KvEntry(key, ValueKind.LONG, value)
        return _big_number_entry(key, number, type_cast)
    if scale <= 16:
        value = float(number)
        if math.isinf(value):
            return PayloadError(f"Number out of range for key [{key}]")
        return KvEntry(key, ValueKind.DOUBLE, value)
    return _big_number_entry(key, number, type_cast)


def _big_number_entry(key: str, number: Decimal, type_cast: bool) -> KvEntry | PayloadError:
    if not type_cast:
        return PayloadError(_BIG_NUMBER)
    _, digits, exponent = number.as_tuple()
    if exponent > _MAX_PLAIN_ZEROS or -exponent - len(digits) > _MAX_PLAIN_ZEROS:
        return PayloadError(f"Number out of range for key [{key}]")
    return KvEntry(key, ValueKind.STRING, format(number, "f"))  # BigDecimal.toPlainString()


def _int_entry(key: str, value: int, type_cast: bool) -> KvEntry | PayloadError:
    # Parsed payloads carry out-of-range integers as literals; this is for kv_entries callers.
    if _LONG_MIN <= value <= _LONG_MAX:
        return KvEntry(key, ValueKind.LONG, value)
    if not type_cast:
        return PayloadError(_BIG_NUMBER)
    try:
        return KvEntry(key, ValueKind.STRING, str(value))
    except ValueError:  # past Python's int-to-str digit limit
        return PayloadError(f"Number out of range for key [{key}]")


def _json_entry(key: str, value: dict | list) -> KvEntry | PayloadError:
    try:
        text = orjson.dumps(value, default=_literal_fragment, option=orjson.OPT_PASSTHROUGH_SUBCLASS)
    except orjson.JSONEncodeError as exc:
        return PayloadError(f"Can't encode value for key [{key}] as JSON: {exc}")
    # orjson writes NaN and Infinity as null; refuse them like top-level ones.
    if _has_non_finite(value):
        return PayloadError(_NON_FINITE)
    return KvEntry(key, ValueKind.JSON, text.decode())


def _literal_fragment(value) -> orjson.Fragment:
    # Written as it came in, like Gson's toString() of a parsed number.
    if isinstance(value, _Literal):
        return orjson.Fragment(str(value))
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def _has_non_finite(value) -> bool:
    # Runs after orjson.dumps accepted the value, so it is acyclic and of bounded depth.
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, float) and not math.isfinite(item):
            return True
        elif isinstance(item, _Literal) and not _is_integer_text(item) and math.isinf(float(item)):
            # Kept verbatim in the text, but it would read back as Infinity.
            return True
    return False


def _is_parsable(text: str) -> bool:
    # Java tests UTF-16 chars, so a digit outside the BMP (a surrogate pair there) is no digit.
    return (text not in ("", "-") and text[-1] != "." and _PARSABLE.fullmatch(text) is not None
            and (text.isascii() or max(text) <= "\uffff"))


def _java_length(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-16-le", "surrogatepass")) // 2


def _key_error(key) -> PayloadError | None:
    # TB's storage layer (KvUtils.validate) refuses these keys; refusing them here gives the
    # device the same outcome without a half-done write.
    if not isinstance(key, str):
        return PayloadError(f"Key must be a string: {key!r}")
    if not key.strip(_JAVA_WHITESPACE):
        return PayloadError("Key can't be null or empty")
    if _java_length(key) > _MAX_KEY_LENGTH:
        return PayloadError(f"Validation error: key length must be equal or less than {_MAX_KEY_LENGTH}")
    return None


def _has_fractional_ts(value) -> bool:
    items = value if isinstance(value, list) else [value]
    return any(isinstance(item, dict) and "values" in item and isinstance(item.get("ts"), float)
               for item in items)


def _epoch_ms(value) -> int | PayloadError:
    """TB reads ts with Gson's getAsLong(): numbers truncated toward zero, numeric strings parsed.
    Gson wraps values past 64 bits around silently; those are refused here."""
    millis = None
    if isinstance(value, _Literal):
        try:
            number = Decimal(value)
        except InvalidOperation:
            number = None
        if number is not None and number.adjusted() < 19:
            millis = int(number)
    elif isinstance(value, int) and not isinstance(value, bool):
        millis = value
    elif isinstance(value, str) and _LONG_TEXT.fullmatch(value):
        millis = int(value)
    if millis is None or not _LONG_MIN <= millis <= _LONG_MAX:
        return PayloadError("ts must be an integer")
    return millis


def _key_list(body: dict, field: str) -> tuple[str, ...] | None | PayloadError:
    if field not in body:
        return None
    value = body[field]
    # Gson's getAsString() unwraps a one-element array, so TB takes ["k1,k2"] as well.
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        return PayloadError(f"{field} must be a string of comma-separated keys")
    keys = (java_trim(piece) for piece in value.split(","))
    # TB's device actor treats an empty name list like a missing one ("all"), so report it so.
    return tuple(dict.fromkeys(key for key in keys if key)) or None
