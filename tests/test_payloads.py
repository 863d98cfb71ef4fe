"""Tests for gatehouse.payloads: device payload shapes and ThingsBoard's value typing."""

from __future__ import annotations

import math

import pytest

from gatehouse.application_namespace import attributes_message
from gatehouse.payloads import (
    DEFAULT_MAX_BYTES,
    LENIENT_MAX_BYTES,
    AttributeRequest,
    KvEntry,
    PayloadError,
    RpcRequest,
    TelemetryRecord,
    ValueKind,
    attribute_request_from_keys,
    entry_to_json_value,
    json_bytes,
    kv_entries,
    parse_attribute_request,
    parse_attributes,
    parse_json,
    parse_rpc_request,
    parse_telemetry,
)

LONG, DOUBLE, STRING, BOOLEAN, JSON = (ValueKind.LONG, ValueKind.DOUBLE, ValueKind.STRING,
                                       ValueKind.BOOLEAN, ValueKind.JSON)


def single_entry(payload: bytes | str, **options) -> KvEntry:
    """The one entry of a one-record telemetry payload."""
    records = parse_telemetry(payload, **options)
    assert not isinstance(records, PayloadError), records
    [record] = records
    [entry] = record.values
    return entry


def typed(literal: str, **options) -> tuple[ValueKind, object]:
    entry = single_entry('{"v": %s}' % literal, **options)
    return entry.kind, entry.value


def error_message(result) -> str:
    assert isinstance(result, PayloadError), result
    return result.message


# --- telemetry shapes (SPEC §2.3) ---------------------------------------------------------------


def test_telemetry_object_is_one_record_stamped_by_server():
    assert parse_telemetry(b'{"temperature": 25, "active": true}') == [
        TelemetryRecord(None, (KvEntry("temperature", LONG, 25), KvEntry("active", BOOLEAN, True))),
    ]


def test_telemetry_ts_and_values_stamps_the_values_and_ignores_other_keys():
    assert parse_telemetry(b'{"ts": 1700000000000, "values": {"a": 1}, "other": 2}') == [
        TelemetryRecord(1700000000000, (KvEntry("a", LONG, 1),)),
    ]


def test_telemetry_ts_without_values_is_an_ordinary_key():
    assert parse_telemetry(b'{"ts": 1700000000000, "a": 1}') == [
        TelemetryRecord(None, (KvEntry("ts", LONG, 1700000000000), KvEntry("a", LONG, 1))),
    ]


def test_telemetry_values_without_ts_is_an_ordinary_key():
    assert parse_telemetry(b'{"values": {"a": 1}}') == [
        TelemetryRecord(None, (KvEntry("values", JSON, '{"a":1}'),)),
    ]


def test_telemetry_array_elements_are_read_independently():
    payload = b'[{"ts": 1, "values": {"a": 1}}, {"b": 2}, {"ts": 3, "values": {"c": "x"}}]'
    assert parse_telemetry(payload) == [
        TelemetryRecord(1, (KvEntry("a", LONG, 1),)),
        TelemetryRecord(None, (KvEntry("b", LONG, 2),)),
        TelemetryRecord(3, (KvEntry("c", STRING, "x"),)),
    ]


def test_telemetry_empty_array_is_zero_records():
    assert parse_telemetry(b"[]") == []


def test_telemetry_empty_object_is_one_record_without_values():
    # TB still emits the (empty) key/value list for it.
    assert parse_telemetry(b"{}") == [TelemetryRecord(None, ())]


@pytest.mark.parametrize("payload", [b"[1]", b'[{"a": 1}, "x"]', b'[{"a": 1}, [{"b": 2}]]', b"[null]"])
def test_telemetry_array_with_a_non_object_element_is_an_error(payload):
    assert error_message(parse_telemetry(payload)) == "Telemetry must be a JSON object or array of objects"


@pytest.mark.parametrize("payload", [b"5", b'"text"', b"true", b"null"])
def test_telemetry_scalar_is_an_error(payload):
    assert error_message(parse_telemetry(payload)) == "Telemetry must be a JSON object or array of objects"


@pytest.mark.parametrize("values", [b"5", b"null", b"[]", b'"x"'])
def test_telemetry_values_must_be_an_object(values):
    assert error_message(parse_telemetry(b'{"ts": 1, "values": %s}' % values)) == "values must be a JSON object"


@pytest.mark.parametrize(("ts", "expected"), [
    (b"1700000000000", 1700000000000),
    (b'"1700000000000"', 1700000000000),     # Gson's getAsLong parses numeric strings
    (b"1.7e12", 1700000000000),
    (b"1700000000000.9", 1700000000000),     # truncated, as BigDecimal.longValue()
    (b"-1.5", -1),
    (b"0", 0),
    (b"9223372036854775807", 2**63 - 1),
])
def test_telemetry_ts_is_read_like_gson_get_as_long(ts, expected):
    [record] = parse_telemetry(b'{"ts": %s, "values": {"a": 1}}' % ts)
    assert record.ts == expected


def test_telemetry_fractional_ts_is_truncated_from_the_literal_not_the_double():
    # As a double this literal rounds up to 1700000000000.0.
    [record] = parse_telemetry(b'{"ts": 1699999999999.99999, "values": {"a": 1.5}}')
    assert record == TelemetryRecord(1699999999999, (KvEntry("a", DOUBLE, 1.5),))


@pytest.mark.parametrize("ts", [b"true", b"null", b'"abc"', b'"1.5"', b"{}", b"[]", b"1e19",
                                b"9223372036854775808", b'"99999999999999999999"', b"1e400"])
def test_telemetry_ts_that_is_no_64_bit_integer_is_an_error(ts):
    assert error_message(parse_telemetry(b'{"ts": %s, "values": {"a": 1}}' % ts)) == "ts must be an integer"


# --- value typing (TB's JsonConverter) ------------------------------------------------------------


def test_typing_of_booleans_strings_and_nested_json():
    payload = b'{"b": false, "s": "hello", "o": {"z": 1, "a": [1, 2.5, "x", null, true]}, "l": [1, {"k": "v"}]}'
    [record] = parse_telemetry(payload)
    assert record.values == (
        KvEntry("b", BOOLEAN, False),
        KvEntry("s", STRING, "hello"),
        KvEntry("o", JSON, '{"z":1,"a":[1,2.5,"x",null,true]}'),
        KvEntry("l", JSON, '[1,{"k":"v"}]'),
    )


def test_typing_skips_null_values_but_keeps_nested_nulls():
    [record] = parse_telemetry(b'{"a": null, "b": 1, "c": [null]}')
    assert record.values == (KvEntry("b", LONG, 1), KvEntry("c", JSON, "[null]"))


@pytest.mark.parametrize(("literal", "kind", "value"), [
    ("42", LONG, 42),
    ("-7", LONG, -7),
    ("-0", LONG, 0),
    ("4.2", DOUBLE, 4.2),
    ("1.0", DOUBLE, 1.0),             # a '.' without exponent is always a DOUBLE
    ("2.50", DOUBLE, 2.5),
    ("1e5", LONG, 100000),            # integral and not a "simple double": LONG
    ("1E2", LONG, 100),
    ("1.5e3", LONG, 1500),
    ("2.0e0", LONG, 2),
    ("1.5e-3", DOUBLE, 0.0015),
    ("0.1234567890123456", DOUBLE, 0.1234567890123456),   # scale 16
    ("12345678901234567", LONG, 12345678901234567),
    ("9223372036854775807", LONG, 2**63 - 1),
    ("-9223372036854775808", LONG, -(2**63)),
    ("9223372036854775808", STRING, "9223372036854775808"),
    ("-123456789012345678901234567890", STRING, "-123456789012345678901234567890"),
    ("1e19", STRING, "10000000000000000000"),             # toPlainString()
    ("0.12345678901234567", STRING, "0.12345678901234567"),  # scale 17 > 16
    ("1.00000000000000000000", STRING, "1.00000000000000000000"),
    ("1.5E-20", STRING, "0.000000000000000000015"),
    ("-0.00000000000000000000", STRING, "0.00000000000000000000"),  # BigDecimal has no negative zero
    ("1e400", STRING, "1" + "0" * 400),
])
def test_typing_of_numbers_follows_tb_big_decimal_rules(literal, kind, value):
    assert typed(literal) == (kind, value)
    assert type(typed(literal)[1]) is type(value)


def test_typing_negative_zero_double_is_zero():
    kind, value = typed("-0.0")
    assert kind is DOUBLE and value == 0.0 and math.copysign(1.0, value) == 1.0


@pytest.mark.parametrize("literal", ["25.3", "0.1", "1.0", "-2.75", "123456789012345.6",
                                     "0.0000000000000001", "42", "-7", "1234567890123456"])
def test_typing_is_the_same_whether_or_not_a_literal_elsewhere_needs_its_text(literal):
    # 1e0 in the same payload switches parsing to the literal-preserving parser.
    fast = parse_telemetry('{"v": %s}' % literal)[0].values
    with_literals = parse_telemetry('{"v": %s, "w": 1e0}' % literal)[0].values
    assert with_literals == fast + (KvEntry("w", LONG, 1),)
    assert type(with_literals[0].value) is type(fast[0].value)


@pytest.mark.parametrize("payload", [
    b'{"q": "say \\"hi\\" 1", "v": 1e5}',
    b'{"s": "\\\\", "v": 1e5}',
    b'{"n": "1e5", "m": 12, "v": 1e5}',
])
def test_typing_finds_exponent_literals_after_tricky_strings(payload):
    assert parse_telemetry(payload)[0].values[-1] == KvEntry("v", LONG, 100000)


def test_typing_of_number_like_text_inside_strings_is_left_to_type_cast():
    [record] = parse_telemetry(b'{"id": "3e4f", "hex": "12345678901234567890abc", "n": 1.0}')
    assert record.values == (KvEntry("id", STRING, "3e4f"), KvEntry("hex", STRING, "12345678901234567890abc"),
                             KvEntry("n", DOUBLE, 1.0))


@pytest.mark.timeout(10)
@pytest.mark.parametrize("literal", ["1e5000", "-1e999999999", "1e-5000", "1e99999999999999999999"])
def test_typing_refuses_literals_whose_plain_form_would_explode(literal):
    # TB would write 1e999999999 out as a STRING of a billion digits.
    assert error_message(parse_telemetry('{"v": %s}' % literal)) == "Number out of range for key [v]"


@pytest.mark.parametrize("literal", ["9223372036854775808", "0.12345678901234567", "1e400", "1e19"])
def test_typing_without_type_cast_refuses_numbers_tb_cannot_hold(literal):
    assert error_message(parse_telemetry('{"v": %s}' % literal, type_cast=False)) == \
        "Big integer values are not supported!"


def test_typing_without_type_cast_keeps_ordinary_numbers_and_numeric_strings():
    [record] = parse_telemetry(b'{"a": 42, "b": 1e5, "c": 4.2, "d": "42", "e": "4.2"}', type_cast=False)
    assert record.values == (KvEntry("a", LONG, 42), KvEntry("b", LONG, 100000), KvEntry("c", DOUBLE, 4.2),
                             KvEntry("d", STRING, "42"), KvEntry("e", STRING, "4.2"))


@pytest.mark.parametrize(("text", "kind", "value"), [
    ("42", LONG, 42),
    ("-42", LONG, -42),
    ("007", LONG, 7),
    ("4.2", DOUBLE, 4.2),
    ("-4.2", DOUBLE, -4.2),
    ("1.0", DOUBLE, 1.0),
    (".5", DOUBLE, 0.5),
    ("-.5", DOUBLE, -0.5),
    ("9223372036854775808", STRING, "9223372036854775808"),
    ("0009223372036854775808", STRING, "9223372036854775808"),  # TB writes BigDecimal's plain form
    ("0.12345678901234567", STRING, "0.12345678901234567"),
    ("\u0664\u0662", LONG, 42),                                  # Arabic-Indic digits are digits to Java
    ("5.", STRING, "5."),
    ("1e5", STRING, "1e5"),
    ("+5", STRING, "+5"),
    ("-", STRING, "-"),
    ("", STRING, ""),
    (" 42", STRING, " 42"),
    ("1.2.3", STRING, "1.2.3"),
    ("0x1F", STRING, "0x1F"),
    ("NaN", STRING, "NaN"),
    ("Infinity", STRING, "Infinity"),
    ("true", STRING, "true"),
    ("\U0001d7d2", STRING, "\U0001d7d2"),                        # a digit, but outside the BMP
])
def test_type_cast_of_strings_follows_number_utils_is_parsable(text, kind, value):
    entry = kv_entries({"v": text})[0]
    assert (entry.kind, entry.value) == (kind, value)


def test_type_cast_falls_back_to_the_string_when_the_number_overflows_a_double():
    text = "1" * 400 + ".5"
    assert kv_entries({"v": text}) == (KvEntry("v", STRING, text),)


def test_max_string_length_refuses_longer_strings_with_tb_message():
    assert parse_telemetry(b'{"s": "abc"}', max_string_length=3)[0].values == (KvEntry("s", STRING, "abc"),)
    assert error_message(parse_telemetry(b'{"s": "abcd"}', max_string_length=3)) == \
        "String value length [4] for key [s] is greater than maximum allowed [3]"


def test_max_string_length_counts_utf16_units_like_java():
    assert error_message(parse_attributes('{"s": "\U0001f600\U0001f600"}'.encode(), max_string_length=3)) == \
        "String value length [4] for key [s] is greater than maximum allowed [3]"


def test_max_string_length_applies_before_type_cast_and_not_to_json_values():
    assert error_message(parse_telemetry(b'{"n": "12345"}', max_string_length=3)).startswith("String value length [5]")
    assert parse_telemetry(b'{"j": ["abcdef"]}', max_string_length=3)[0].values == (KvEntry("j", JSON, '["abcdef"]'),)


def test_max_string_length_zero_means_no_limit():
    assert parse_telemetry(('{"s": "%s"}' % ("x" * 10000)).encode())[0].values[0].value == "x" * 10000


def test_nested_json_keeps_number_literals_as_written():
    [record] = parse_telemetry(b'{"j": [1e5, 1.50000000000000000001, 123456789012345678901234567890]}')
    assert record.values == (KvEntry("j", JSON, "[1e5,1.50000000000000000001,123456789012345678901234567890]"),)


@pytest.mark.parametrize("payload", [b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}',
                                     b'{"a": [NaN]}', b'{"a": {"b": 1e400}}', b'{"a": [-1.5e999]}'])
def test_nan_and_infinity_are_refused(payload):
    assert "NaN and Infinity values are not supported" in error_message(parse_telemetry(payload))


def test_nan_is_refused_even_in_a_payload_too_big_for_lenient_parsing():
    payload = b'{"pad": "%s", "a": NaN}' % (b"x" * LENIENT_MAX_BYTES)
    assert error_message(parse_telemetry(payload)).startswith("Invalid JSON:")


@pytest.mark.parametrize(("payload", "message"), [
    (b'{"": 1}', "Key can't be null or empty"),
    (b'{"  \\t": 1}', "Key can't be null or empty"),
    (('{"%s": 1}' % ("k" * 256)).encode(), "Validation error: key length must be equal or less than 255"),
])
def test_keys_tb_storage_refuses_are_errors(payload, message):
    assert error_message(parse_telemetry(payload)) == message
    assert error_message(parse_attributes(payload)) == message


def test_keys_tb_accepts_are_kept():
    nbsp = "\u00a0"  # not whitespace to Java's Character.isWhitespace
    payload = ('{"%s": 1, "%s": 2, "": null}' % ("k" * 255, nbsp)).encode()
    assert parse_attributes(payload) == (KvEntry("k" * 255, LONG, 1), KvEntry(nbsp, LONG, 2))


def test_duplicate_keys_keep_the_last_value():
    assert parse_attributes(b'{"a": 1, "b": 2, "a": 3}') == (KvEntry("a", LONG, 3), KvEntry("b", LONG, 2))


def test_json_bytes_writes_an_integer_past_64_bits_inside_a_json_value():
    """Found by tests/test_fuzz_servers.py: orjson refused such a value when the broker and the
    sidecar passed it on to applications."""
    (entry,) = parse_attributes(b'{"k": [123456789012345678901234567890, {"a": 1}]}')
    assert json_bytes(attributes_message([entry])) == b'{"k":[123456789012345678901234567890,{"a":1}]}'
    assert json_bytes({"plain": "caf\u00e9"}) == '{"plain":"café"}'.encode()


def test_json_values_nested_too_deep_to_encode_are_an_error():
    depth = 300
    payload = b'{"a": ' + b"[" * depth + b"]" * depth + b"}"
    assert error_message(parse_telemetry(payload)).startswith("Can't encode value for key [a] as JSON")


# --- lenient JSON -------------------------------------------------------------------------------


@pytest.mark.parametrize(("payload", "expected"), [
    (b"{temperature:25}", (KvEntry("temperature", LONG, 25),)),
    (b"{temperature:25, 'name': 'x'}", (KvEntry("temperature", LONG, 25), KvEntry("name", STRING, "x"))),
    (b'{"a": 1, "b": [1, 2,],}', (KvEntry("a", LONG, 1), KvEntry("b", JSON, "[1,2]"))),
    (b'{/* block */ "a": 1, // line\n}', (KvEntry("a", LONG, 1),)),
    (b"{a: 1e5, b: 0.12345678901234567}", (KvEntry("a", LONG, 100000), KvEntry("b", STRING, "0.12345678901234567"))),
    (b"{a: '42'}", (KvEntry("a", LONG, 42),)),
])
def test_lenient_json_is_accepted(payload, expected):
    assert parse_attributes(payload) == expected


def test_lenient_telemetry_array_with_trailing_comma():
    assert parse_telemetry(b"[{ts: 1, values: {a: 1}}, {b: true},]") == [
        TelemetryRecord(1, (KvEntry("a", LONG, 1),)),
        TelemetryRecord(None, (KvEntry("b", BOOLEAN, True),)),
    ]


def test_lenient_number_syntax_that_gson_reads_as_text_is_typed_as_text():
    # Gson has no hex or ".5" numbers; it reads them as unquoted strings, then type cast applies.
    assert parse_attributes(b"{hex: 0x1F, half: .5, dot: 5.}") == (
        KvEntry("hex", STRING, "0x1F"), KvEntry("half", DOUBLE, 0.5), KvEntry("dot", STRING, "5."))


def test_lenient_parsing_is_not_tried_on_large_payloads():
    body = ", ".join(f"k{i}: {i}" for i in range(LENIENT_MAX_BYTES // 8))
    lenient = ("{" + body + "}").encode()
    assert len(lenient) > LENIENT_MAX_BYTES
    assert error_message(parse_attributes(lenient)).startswith("Invalid JSON:")
    strict = ("{" + ", ".join(f'"k{i}": {i}' for i in range(LENIENT_MAX_BYTES // 8)) + "}").encode()
    assert len(parse_attributes(strict)) == LENIENT_MAX_BYTES // 8


@pytest.mark.parametrize("payload", [b'{"a":', b'{"a" 1}', b"{a: hello}", b'{"a": 1} x', b"{'a': 1", b"[1 2]"])
def test_invalid_json_is_an_error(payload):
    assert error_message(parse_telemetry(payload)).startswith("Invalid JSON:")
    assert error_message(parse_json(payload)).startswith("Invalid JSON:")


@pytest.mark.parametrize("payload", [b"", b"   \n"])
def test_empty_payload_is_an_error(payload):
    assert error_message(parse_telemetry(payload)) == "Payload is empty"
    assert error_message(parse_attributes(payload)) == "Payload is empty"


@pytest.mark.parametrize("payload", [b'{"a": "\xff"}', b"{a: '\xc3'}", b'\xfe\xff{"a": 1}'])
def test_non_utf8_bytes_are_an_error(payload):
    assert error_message(parse_telemetry(payload)) == "Payload is not valid UTF-8"


def test_str_with_lone_surrogate_is_an_error():
    assert error_message(parse_json('{"a": "\ud800"}')) == "Payload is not valid UTF-8"


@pytest.mark.parametrize("payload", [b'{"a": "\\ud83d\\ude00"}', b"{a: '\\ud83d\\ude00'}",
                                     b'{"a": "\\ud83d\\ude00", "n": 1e5}'])
def test_escaped_surrogate_pairs_become_one_character(payload):
    assert parse_json(payload)["a"] == "\U0001f600"


@pytest.mark.parametrize("payload", [b'{"a": "\\ud800"}', b"{a: '\\udc00'}", b'{"a": "\\ud800", "n": 1e5}',
                                     b'{"\\ud800": 1}'])
def test_escaped_lone_surrogates_are_an_error(payload):
    assert error_message(parse_json(payload)) == "Invalid JSON: unpaired surrogate escape in string"


# --- pathological input -------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_deep_nesting_over_the_size_limit_is_refused_by_size():
    assert error_message(parse_telemetry(b"[" * 100000)) == f"Payload is larger than {DEFAULT_MAX_BYTES} bytes"


@pytest.mark.timeout(10)
@pytest.mark.parametrize("payload", [
    b"[" * 100000,                                    # strict parser's depth limit, too big for lenient
    b"[" * 3000,                                      # lenient parser recursion
    b"[" * 2000 + b"]" * 2000,                        # valid but deeper than the strict parser allows
    b"[" * 5000 + b"1e5" + b"]" * 5000,               # literal-preserving parser recursion
    b"{a:" * 1300,
])
def test_deep_nesting_is_an_error_not_a_crash(payload):
    for parse in (parse_json, parse_telemetry, parse_attributes, parse_attribute_request, parse_rpc_request):
        assert error_message(parse(payload, max_bytes=10**6)).startswith("Invalid JSON:")


@pytest.mark.timeout(10)
def test_unterminated_string_of_escapes_is_rejected_quickly():
    assert error_message(parse_json(b'"' + b'\\"' * 30000)).startswith("Invalid JSON:")


def test_oversize_input_is_refused():
    payload = b'{"a": "' + b"x" * (DEFAULT_MAX_BYTES - 9) + b'"}'
    assert len(payload) == DEFAULT_MAX_BYTES
    assert not isinstance(parse_telemetry(payload), PayloadError)
    bigger = payload[:-2] + b'x"}'
    assert error_message(parse_telemetry(bigger)) == f"Payload is larger than {DEFAULT_MAX_BYTES} bytes"
    assert not isinstance(parse_telemetry(bigger, max_bytes=DEFAULT_MAX_BYTES + 1), PayloadError)


def test_oversize_is_measured_in_utf8_bytes_for_str_input():
    text = '{"a": "%s"}' % ("\u00e9" * 40000)  # 40 011 chars, 80 011 bytes
    assert error_message(parse_attributes(text)) == f"Payload is larger than {DEFAULT_MAX_BYTES} bytes"
    assert error_message(parse_attributes(text, max_bytes=len(text))) == f"Payload is larger than {len(text)} bytes"
    assert parse_attributes(text, max_bytes=100000) == (KvEntry("a", STRING, "\u00e9" * 40000),)


@pytest.mark.parametrize("make", [bytes, bytearray, memoryview, lambda raw: raw.decode()])
def test_input_may_be_bytes_bytearray_memoryview_or_str(make):
    assert parse_telemetry(make(b'{temperature: 25.5}')) == [TelemetryRecord(None, (KvEntry("temperature", DOUBLE, 25.5),))]
    assert parse_json(make(b'{"a": [1, "x"]}')) == {"a": [1, "x"]}


def test_oversize_memoryview_is_refused():
    assert error_message(parse_json(memoryview(b"[" + b"1," * 40000 + b"1]"))).startswith("Payload is larger than")


@pytest.mark.parametrize("data", [None, 42, {"a": 1}, ["x"]])
def test_input_of_another_type_is_an_error(data):
    assert error_message(parse_telemetry(data)).startswith("Payload must be bytes or str")


# --- client attributes (SPEC §2.4) --------------------------------------------------------------


def test_attributes_are_typed_entries():
    assert parse_attributes(b'{"fw": "1.2.3", "count": 3, "ratio": "0.5", "cfg": {"x": 1}, "gone": null}') == (
        KvEntry("fw", STRING, "1.2.3"), KvEntry("count", LONG, 3), KvEntry("ratio", DOUBLE, 0.5),
        KvEntry("cfg", JSON, '{"x":1}'))


@pytest.mark.parametrize("payload", [b'[{"a": 1}]', b"[]", b"1", b'"a"', b"null"])
def test_attributes_must_be_an_object(payload):
    assert error_message(parse_attributes(payload)) == "Attributes must be a JSON object"


def test_attributes_type_cast_and_string_limit_options():
    assert parse_attributes(b'{"n": "42"}', type_cast=False) == (KvEntry("n", STRING, "42"),)
    assert error_message(parse_attributes(b'{"n": 1e19}', type_cast=False)) == "Big integer values are not supported!"
    assert error_message(parse_attributes(b'{"s": "ab"}', max_string_length=1)).startswith("String value length [2]")


# --- attribute request (SPEC §2.4) --------------------------------------------------------------


@pytest.mark.parametrize(("payload", "client", "shared"), [
    (b"{}", None, None),
    (b'{"clientKeys": "a,b"}', ("a", "b"), None),
    (b'{"sharedKeys": "s1, s2"}', None, ("s1", "s2")),
    (b'{"clientKeys": "a", "sharedKeys": "s"}', ("a",), ("s",)),
    (b'{"clientKeys": " a , ,b,a,\\t"}', ("a", "b"), None),   # trimmed, empty pieces and repeats dropped
    (b'{"clientKeys": "", "sharedKeys": "s"}', None, ("s",)),   # TB treats an empty list as absent
    (b'{"clientKeys": " , "}', None, None),
    (b'{"clientKeys": ["a,b"]}', ("a", "b"), None),             # Gson's getAsString unwraps it
    (b"{sharedKeys: 'x'}", None, ("x",)),
    (b'{"clientKeys": "a", "other": 1}', ("a",), None),
    ('{"clientKeys": "\u00a0a"}'.encode(), ("\u00a0a",), None),  # Java's trim() leaves U+00A0
])
def test_attribute_request_key_lists(payload, client, shared):
    assert parse_attribute_request(payload) == AttributeRequest(client, shared)


@pytest.mark.parametrize(("payload", "message"), [
    (b"[]", "Attribute request must be a JSON object"),
    (b'"a,b"', "Attribute request must be a JSON object"),
    (b'{"clientKeys": null}', "clientKeys must be a string of comma-separated keys"),
    (b'{"clientKeys": 5}', "clientKeys must be a string of comma-separated keys"),
    (b'{"sharedKeys": ["a", "b"]}', "sharedKeys must be a string of comma-separated keys"),
    (b'{"sharedKeys": {"a": 1}}', "sharedKeys must be a string of comma-separated keys"),
])
def test_attribute_request_malformed(payload, message):
    assert error_message(parse_attribute_request(payload)) == message


def test_attribute_request_with_empty_body_is_an_error_as_in_tb():
    assert error_message(parse_attribute_request(b"")) == "Payload is empty"


@pytest.mark.parametrize(("client_keys", "shared_keys", "client", "shared"), [
    pytest.param(None, None, None, None, id="no keys: all"),
    pytest.param("a,b", None, ("a", "b"), None, id="client keys"),
    pytest.param(None, "s1, s2", None, ("s1", "s2"), id="shared keys trimmed"),
    pytest.param("a", "s", ("a",), ("s",), id="both"),
    pytest.param(" a , ,b,a,\t", None, ("a", "b"), None, id="empty pieces and repeats dropped"),
    pytest.param("", "s", None, ("s",), id="an empty list is absent"),
    pytest.param(" , ", " ", None, None, id="only separators: all"),
    pytest.param("\u00a0a", None, ("\u00a0a",), None, id="java's trim keeps u+00a0"),
])
def test_attribute_request_from_query_keys_reads_them_as_the_json_request(client_keys, shared_keys, client, shared):
    assert attribute_request_from_keys(client_keys, shared_keys) == AttributeRequest(client, shared)


# --- client-side RPC request --------------------------------------------------------------------


@pytest.mark.parametrize(("payload", "expected"), [
    (b'{"method": "getTime", "params": {}}', RpcRequest("getTime", {})),
    (b'{"method": "getTime"}', RpcRequest("getTime", None)),
    (b'{"method": "set", "params": null}', RpcRequest("set", None)),
    (b'{"method": "set", "params": [1, "a", 2.5]}', RpcRequest("set", [1, "a", 2.5])),
    (b'{"method": "set", "params": 123456789012345678901234567890}', RpcRequest("set", 123456789012345678901234567890)),
    (b"{method: 'ping', params: 'x',}", RpcRequest("ping", "x")),
])
def test_rpc_request(payload, expected):
    assert parse_rpc_request(payload) == expected


@pytest.mark.parametrize(("payload", "message"), [
    (b'{"params": {}}', "RPC method must be a non-empty string"),
    (b'{"method": ""}', "RPC method must be a non-empty string"),
    (b'{"method": 5}', "RPC method must be a non-empty string"),
    (b'{"method": null}', "RPC method must be a non-empty string"),
    (b'["getTime"]', "RPC request must be a JSON object"),
    (b'"getTime"', "RPC request must be a JSON object"),
])
def test_rpc_request_malformed(payload, message):
    assert error_message(parse_rpc_request(payload)) == message


# --- parse_json ---------------------------------------------------------------------------------


def test_parse_json_returns_plain_python_values():
    value = parse_json(b'{"a": [1e5, 123456789012345678901234567890, 0.12345678901234567, 2.5, "s", null]}')
    assert value == {"a": [100000.0, 123456789012345678901234567890, 0.12345678901234567, 2.5, "s", None]}
    assert [type(item) for item in value["a"]] == [float, int, float, float, str, type(None)]


def test_parse_json_lenient_and_gson_style_numbers():
    assert parse_json(b"{a: 1, b: 'x', c: [0x1F, .5],}") == {"a": 1, "b": "x", "c": ["0x1F", ".5"]}


@pytest.mark.parametrize("payload", [b"NaN", b"[Infinity]", b'{"a": 1e400}', b"[-1e999]"])
def test_parse_json_refuses_non_finite_numbers(payload):
    assert error_message(parse_json(payload)).startswith("Invalid JSON:")


# --- kv_entries on already-parsed values ----------------------------------------------------------


def test_kv_entries_types_python_values_like_payload_values():
    assert kv_entries({"s": "42", "b": True, "f": 1.5, "i": 7, "d": {"x": [1, None]}, "n": None, "z": -0.0}) == (
        KvEntry("s", LONG, 42), KvEntry("b", BOOLEAN, True), KvEntry("f", DOUBLE, 1.5), KvEntry("i", LONG, 7),
        KvEntry("d", JSON, '{"x":[1,null]}'), KvEntry("z", DOUBLE, 0.0))


def test_kv_entries_big_python_int_follows_type_cast():
    assert kv_entries({"v": 2**70}) == (KvEntry("v", STRING, str(2**70)),)
    assert error_message(kv_entries({"v": 2**70}, type_cast=False)) == "Big integer values are not supported!"
    assert error_message(kv_entries({"v": 10**5000})).startswith("Number out of range")


def test_kv_entries_string_options():
    assert kv_entries({"v": "42"}, type_cast=False) == (KvEntry("v", STRING, "42"),)
    assert error_message(kv_entries({"v": "abc"}, max_string_length=2)).startswith("String value length [3]")


@pytest.mark.parametrize(("obj", "message"), [
    ([("a", 1)], "Key/values must be a JSON object"),
    ({1: "x"}, "Key must be a string: 1"),
    ({"v": float("nan")}, "NaN and Infinity values are not supported"),
    ({"v": float("-inf")}, "NaN and Infinity values are not supported"),
    ({"v": {"x": [float("inf")]}}, "NaN and Infinity values are not supported"),
    ({"v": {1: 2}}, "Can't encode value for key [v] as JSON: Dict key must be str"),
    ({"v": b"raw"}, "Can't parse value for key [v]: b'raw'"),
    ({"v": {"x": {1, 2}}}, "Can't encode value for key [v] as JSON: Type is not JSON serializable: set"),
])
def test_kv_entries_refuses_what_cannot_be_typed(obj, message):
    assert error_message(kv_entries(obj)) == message


def test_kv_entries_refuses_cyclic_values():
    cyclic: list = []
    cyclic.append(cyclic)
    assert error_message(kv_entries({"v": cyclic})).startswith("Can't encode value for key [v] as JSON")


# --- entry_to_json_value ------------------------------------------------------------------------


@pytest.mark.parametrize("entry", [KvEntry("k", BOOLEAN, True), KvEntry("k", LONG, 5), KvEntry("k", DOUBLE, 2.5),
                                   KvEntry("k", STRING, "{not json}")])
def test_entry_to_json_value_passes_scalars_through(entry):
    assert entry_to_json_value(entry) is entry.value


def test_entry_to_json_value_parses_json_text():
    assert entry_to_json_value(KvEntry("k", JSON, '{"a":[1,2.5,null,"x"]}')) == {"a": [1, 2.5, None, "x"]}


def test_entry_to_json_value_round_trips_literals_kept_as_written():
    [entry] = parse_telemetry(b'{"j": [1e5, 123456789012345678901234567890, 0.5]}')[0].values
    assert entry_to_json_value(entry) == [100000.0, 123456789012345678901234567890, 0.5]
