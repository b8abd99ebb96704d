"""Bad input is refused at the door, naming the offending item (no model needed)."""

import pytest

from hivemem.embed.validate import check_text, check_texts

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)


def test_bare_string_is_refused():
    with pytest.raises(TypeError, match="bare str"):
        check_texts("hello")


@pytest.mark.parametrize("value", [None, 3, 4.5])
def test_non_list_is_refused(value):
    with pytest.raises(TypeError, match="expected a list of strings"):
        check_texts(value)


def test_non_string_item_names_its_index():
    with pytest.raises(TypeError, match=r"texts\[2\] is int"):
        check_texts(["a", "b", 7])
    with pytest.raises(TypeError, match=r"texts\[0\] is NoneType"):
        check_texts([None])


def test_lone_surrogate_names_index_and_position():
    with pytest.raises(ValueError, match=r"texts\[1\].*position 3"):
        check_texts(["ok", "abc\ud800def"])


def test_valid_input_passes_through():
    assert check_texts(("a", "ünïcode ✓", "")) == ["a", "ünïcode ✓", ""]
    assert check_text("x") == "x"
