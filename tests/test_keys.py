"""Entity keys: GB 11643 ID numbers and GB 32100 unified social credit codes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from catalog.keys import (
    InvalidKey,
    credit_code_check_char,
    id_number_check_char,
    normalise_credit_code,
    normalise_id_number,
)

# Published examples: the GB 11643 standard's own sample, and a registered company's code.
GB11643_SAMPLE = "11010519491231002X"
CREDIT_CODE_SAMPLE = "91350100M000100Y43"


def test_known_valid_keys() -> None:
    assert normalise_id_number(GB11643_SAMPLE) == GB11643_SAMPLE
    assert normalise_id_number(" 11010519491231002x ") == GB11643_SAMPLE  # lower-case x and spaces
    assert normalise_credit_code(CREDIT_CODE_SAMPLE.lower()) == CREDIT_CODE_SAMPLE


@pytest.mark.parametrize(("value", "reason"), [
    ("1101051949123100", "expected 18 characters, got 16"),
    ("11010519491231002XX", "expected 18 characters, got 19"),
    ("1101051949123100AX", "17 digits followed by a digit or X"),
    ("110105194913310028", "not a valid birth date"),
    ("110105194912310021", "check digit does not match"),
])
def test_invalid_id_numbers_say_why(value: str, reason: str) -> None:
    with pytest.raises(InvalidKey) as exc:
        normalise_id_number(value)
    assert reason in str(exc.value)
    assert value not in str(exc.value)  # the message never echoes the (personal) value


@pytest.mark.parametrize(("value", "reason"), [
    ("91350100M000100Y4", "expected 18 characters"),
    ("91350100M000100I43", "outside GB 32100's alphabet"),
    ("91350100M000100Y44", "check character does not match"),
])
def test_invalid_credit_codes_say_why(value: str, reason: str) -> None:
    with pytest.raises(InvalidKey) as exc:
        normalise_credit_code(value)
    assert reason in str(exc.value)


def test_non_strings_are_refused() -> None:
    with pytest.raises(InvalidKey):
        normalise_id_number(110105194912310021)  # type: ignore[arg-type]


birth = st.dates(min_value=__import__("datetime").date(1900, 1, 1), max_value=__import__("datetime").date(2026, 1, 1))


@given(region=st.from_regex(r"\A[1-9][0-9]{5}\Z"), day=birth, seq=st.from_regex(r"\A[0-9]{3}\Z"))
def test_generated_id_numbers_validate_and_any_single_digit_change_is_caught(region: str, day: object,
                                                                               seq: str) -> None:
    first17 = f"{region}{day:%Y%m%d}{seq}"  # type: ignore[str-format]
    valid = first17 + id_number_check_char(first17)
    assert normalise_id_number(valid) == valid
    # ISO 7064 MOD 11-2 detects every single-character substitution; keep the date valid by
    # changing the sequence digits only.
    for pos in (14, 15, 16):
        wrong = valid[:pos] + str((int(valid[pos]) + 1) % 10) + valid[pos + 1:]
        with pytest.raises(InvalidKey):
            normalise_id_number(wrong)


@given(body=st.from_regex(r"\A[0-9A-HJ-NPQRTUWXY]{17}\Z"))
def test_generated_credit_codes_validate(body: str) -> None:
    code = body + credit_code_check_char(body)
    assert normalise_credit_code(code) == code


def test_full_width_input_is_folded_and_other_scripts_refused() -> None:
    # What a Chinese input method produces in full-width mode.
    assert normalise_id_number("１１０１０５１９４９１２３１００２ｘ") == GB11643_SAMPLE
    assert normalise_credit_code("９１３５０１００Ｍ０００１００Ｙ４３") == CREDIT_CODE_SAMPLE
    with pytest.raises(InvalidKey, match="17 digits"):
        normalise_id_number("١١٠١٠٥١٩٤٩١٢٣١٠٠٢X")  # Arabic-Indic digits are digits, but not these


def test_scrub_keys_replaces_keys_inside_names_and_in_groups_and_bounds_its_work() -> None:
    from catalog.keys import MAX_CANDIDATES, WITHHELD, scrub_keys

    def tag(key: str) -> str:
        return f"<{key[-4:]}>"

    person, org = "990111198009303439", "91110000MA01T8HB03"
    assert normalise_credit_code(org) == org
    assert scrub_keys(f"query P{person} {{ _{person}: x }}", tag) == \
        "query P[id_number:<3439>] { _[id_number:<3439>]: x }"
    assert scrub_keys("case 9901 1119 8009 3034 39 done", tag) == "case [id_number:<3439>] done"
    assert scrub_keys(f"org P{org}", tag) == "org P[credit_code:<HB03>]"
    # A hex request id is checked for ID numbers only: its digit runs pass a credit code's checksum 1 in 31.
    import random

    rng = random.Random(11)
    hex_ids = [f"{rng.getrandbits(128):032x}" for _ in range(20_000)]
    assert sum("credit_code" in scrub_keys(h, tag) for h in hex_ids) > 0  # what a full scan would do
    assert not any("credit_code" in scrub_keys(h, tag, ("id_number",)) for h in hex_ids)
    assert scrub_keys(f"x{person}", tag, ("id_number",)) == "x[id_number:<3439>]"
    assert scrub_keys("CASE-2026-000123 and 99011119800930343", tag) == "CASE-2026-000123 and 99011119800930343"
    # A long run of digits holds thousands of key-like windows: withheld whole, at bounded cost.
    digits = "1234567890" * 10_000
    assert scrub_keys(digits, tag) == WITHHELD and MAX_CANDIDATES < 1000
