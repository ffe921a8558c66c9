"""The element-wise JSON decoder of large request bodies: json.loads' results and errors."""

from __future__ import annotations

import json

import pytest

from feedforge.errors import ValidationError
from feedforge.serving.body import loads_yielding

DOCUMENTS = [
    b"[]",
    b" [ ] ",
    b'[{"a": 1}, {"b": [1, 2]}, 3, "x", null, true, NaN]',
    b"\n[\t1 ,\r\n 2 ]\n",
    b'{"event_id": "e1"}',
    b"  42 ",
    b'"text"',
    '[{"user": "\u00e9\u4e2d"}]'.encode(),
    '[{"user": "\u00e9"}]'.encode("utf-16"),
    b"\xef\xbb\xbf[1]",  # a UTF-8 byte order mark, as json.loads takes it from bytes
    # Invalid ones: the same message and position as json.loads.
    b"",
    b"   ",
    b"[",
    b"[1",
    b"[1 2]",
    b"[1,]",
    b"[1, ]",
    b"[,1]",
    b"[1]]",
    b"[1] x",
    b'[{"a": }]',
    b'{"a": 1',
    b"[1,\n2,\n{]",
]


@pytest.mark.parametrize("data", DOCUMENTS)
def test_same_result_or_error_as_json_loads(data: bytes) -> None:
    try:
        expected = json.loads(data)
    except json.JSONDecodeError as exc:
        with pytest.raises(json.JSONDecodeError) as got:
            loads_yielding(data)
        assert (got.value.msg, got.value.pos) == (exc.msg, exc.pos)
        return
    result = loads_yielding(data)
    # NaN != NaN: compare the JSON text.
    assert json.dumps(result) == json.dumps(expected)


def test_not_utf8_is_a_unicode_error_as_with_json_loads() -> None:
    with pytest.raises(UnicodeDecodeError):
        loads_yielding(b'[{"event_id": "\xff\xfe"}]')


def test_an_array_over_max_items_stops_before_the_rest_is_decoded() -> None:
    assert loads_yielding(b"[1, 2, 3]", max_items=3) == [1, 2, 3]
    with pytest.raises(ValidationError, match="too many events in one request: more than 2"):
        # The tail is not even JSON: decoding stopped at the third element.
        loads_yielding(b"[1, 2, 3, oops", max_items=2, what="events")
