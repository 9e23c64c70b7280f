"""nucleate.io.iter_json_array: the elements of a JSON array one by one, equal to json.load; bad files name where."""

from __future__ import annotations

import json

import pytest

from nucleate.io import JsonStreamError, iter_json_array

VALUES = [{"id": 1, "data": {"image_id": "a" * 40, "text": "ü, ] [ \" \\ {"}}, 12345678901234567890, -0.5e-3,
          "x" * 300, [], {}, None, True, False, [[1, 2], {"k": [3]}]]


@pytest.mark.parametrize("chunk", [1, 2, 7, 64, 1 << 20])
@pytest.mark.parametrize("indent", [None, 2])
def test_elements_equal_json_load_whatever_the_chunk(tmp_path, chunk, indent):
    path = tmp_path / "a.json"
    path.write_text(" \n" + json.dumps(VALUES, indent=indent, ensure_ascii=False) + "\n\n", encoding="utf-8")
    assert list(iter_json_array(path, chunk=chunk)) == json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("text", ["[]", " [ ] \n", "[\n]"])
def test_empty_list(tmp_path, text):
    (tmp_path / "e.json").write_text(text)
    assert list(iter_json_array(tmp_path / "e.json", chunk=1)) == []


@pytest.mark.parametrize(("text", "says", "before"), [
    ("", "expected a JSON list, got nothing (empty file)", 0),
    ('{"a": 1}', "expected a JSON list, got an object at character 0", 0),
    ('[{"a": 1}, {"b": ', "element 1: ", 1),                       # truncated mid-element
    ('[{"a": 1}, {"b": 2}', "after element 1: the list is not closed", 2),
    ('[1, 2 3]', "after element 1: expected ',' or ']' at character 6, got '3'", 2),
    ('[1, {"a": nope}]', "element 1: Expecting value at character 10", 1),
    ('[1] 2', "extra data after the list at character 4", 1),
])
@pytest.mark.parametrize("chunk", [1, 3, 1 << 20])
def test_bad_files_say_where(tmp_path, text, says, before, chunk):
    path = tmp_path / "bad.json"
    path.write_text(text)
    got = []
    with pytest.raises(JsonStreamError) as err:
        for value in iter_json_array(path, chunk=chunk):
            got.append(value)
    assert says in str(err.value) and len(got) == before
