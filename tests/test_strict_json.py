"""JSON from untrusted bytes: deep nesting, repeated keys and NaN are refused as ValueError, from a
bounded scan before the recursive parser sees them."""

import pytest

from ppaia import strict_json


@pytest.mark.parametrize("depth", [0, 1, 3, 32])
@pytest.mark.parametrize(("opening", "closing"), [("[", "]"), ('{"a":', "}")])
def test_nesting_up_to_the_limit_is_read(opening: str, closing: str, depth: int) -> None:
    assert strict_json.loads(opening * depth + "1" + closing * depth, max_depth=depth) is not None


@pytest.mark.parametrize("depth", [4, 33, 1000, 100_000])
@pytest.mark.parametrize("opening", ["[", '{"a":'])
def test_nesting_beyond_the_limit_is_refused_whether_or_not_it_is_closed(opening: str, depth: int) -> None:
    closing = "]" if opening == "[" else "}"
    for text in [opening * depth, opening * depth + "0" + closing * depth]:
        with pytest.raises(ValueError, match="nested deeper than 3 levels"):
            strict_json.loads(text, max_depth=3)


@pytest.mark.parametrize("inside", ['"[[[[[[["', '"{{{{{{"', r'"\"[[[[[[["', r'"\\[[[[\\"', '"]]]]]][[[[[["'])
def test_brackets_within_strings_do_not_count(inside: str) -> None:
    text = '{"a":[' + inside + "]}"
    assert strict_json.loads(text, max_depth=2)["a"] == [strict_json.loads(inside, max_depth=0)]


@pytest.mark.parametrize(
    "text",
    ['{"a":1,"a":1}', '{"a":1,"b":2,"a":3}', '[{"x":{"y":1,"y":2}}]', '{"":0,"":0}', '{"\\u0061":1,"a":2}'],
)
def test_a_repeated_key_at_any_depth_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="repeats the key"):
        strict_json.loads(text, max_depth=3)


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"a":-Infinity}', "nan", "", "{", "[1,]", "'a'"])
def test_what_is_not_json_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        strict_json.loads(text, max_depth=3)
