"""Entity keys: normalisation and checksum validation.

A natural person is identified by the 18-digit citizen identification number
(公民身份号码, GB 11643-1999); an organisation by the 18-character unified social
credit code (统一社会信用代码, GB 32100-2015). Both carry a check character, so a
typo is caught at the edge of the gateway instead of silently returning nothing.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date

__all__ = [
    "KEY_KINDS",
    "InvalidKey",
    "KeyKind",
    "credit_code_check_char",
    "id_number_check_char",
    "normalise_credit_code",
    "normalise_id_number",
]


class InvalidKey(ValueError):
    """An entity key that fails its format or checksum; the message says which and why."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"invalid {kind}: {reason}")
        self.kind = kind
        self.reason = reason


def _canonical(value: str) -> str:
    """NFKC folds the full-width digits and letters Chinese input methods produce (１２３Ｘ) into
    ASCII; spaces anywhere are dropped, letters upper-cased."""
    return "".join(unicodedata.normalize("NFKC", value).split()).upper()


# --- GB 11643-1999: citizen identification number ----------------------------------------

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
_ID_SHAPE = re.compile(r"^[0-9]{17}[0-9X]$")


def id_number_check_char(first17: str) -> str:
    """The check character for the first 17 digits (ISO 7064 MOD 11-2)."""
    total = sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11]


def normalise_id_number(value: str) -> str:
    """Return the canonical form (upper-case X, no spaces) or raise InvalidKey.

    The reason never echoes the value itself: a mistyped ID number is still
    personal data and error messages end up in logs.
    """
    if not isinstance(value, str):
        raise InvalidKey("ID number", "expected a string of 18 characters")
    v = _canonical(value)
    if len(v) != 18:
        raise InvalidKey("ID number", f"expected 18 characters, got {len(v)}")
    if not _ID_SHAPE.match(v):
        raise InvalidKey("ID number", "expected 17 digits followed by a digit or X")
    try:
        date(int(v[6:10]), int(v[10:12]), int(v[12:14]))
    except ValueError:
        raise InvalidKey("ID number", "characters 7-14 are not a valid birth date") from None
    if id_number_check_char(v[:17]) != v[17]:
        raise InvalidKey("ID number", "check digit does not match (GB 11643)")
    return v


# --- GB 32100-2015: unified social credit code -------------------------------------------

_CC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"  # no I, O, S, V, Z
_CC_VALUE = {c: i for i, c in enumerate(_CC_ALPHABET)}
_CC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)


def credit_code_check_char(first17: str) -> str:
    """The check character for the first 17 characters (GB 32100 §4, mod 31)."""
    total = sum(_CC_VALUE[c] * w for c, w in zip(first17, _CC_WEIGHTS, strict=True))
    return _CC_ALPHABET[(31 - total % 31) % 31]


def normalise_credit_code(value: str) -> str:
    """Return the canonical form (upper case, no spaces) or raise InvalidKey."""
    if not isinstance(value, str):
        raise InvalidKey("credit code", "expected a string of 18 characters")
    v = _canonical(value)
    if len(v) != 18:
        raise InvalidKey("credit code", f"expected 18 characters, got {len(v)}")
    if any(c not in _CC_VALUE for c in v):
        raise InvalidKey(
            "credit code", "contains characters outside GB 32100's alphabet (I, O, S, V, Z are never used)"
        )
    if credit_code_check_char(v[:17]) != v[17]:
        raise InvalidKey("credit code", "check character does not match (GB 32100)")
    return v


@dataclass(frozen=True, slots=True)
class KeyKind:
    """A kind of entity key the catalogue may declare."""

    code: str
    label: str
    normalise: Callable[[str], str]


KEY_KINDS: dict[str, KeyKind] = {
    "id_number": KeyKind("id_number", "resident ID number (GB 11643)", normalise_id_number),
    "credit_code": KeyKind("credit_code", "unified social credit code (GB 32100)", normalise_credit_code),
}


# Where a key may hide in free text: inside a longer name ("P990111198009303439"), or, for an ID
# number, written in groups of digits ("1101 0519 4912 3100 2X"). The patterns find candidates at C
# speed (an ID number's birth date must look like one; a credit code's 3rd to 8th characters are its
# region's digits); only candidates pay for the checksum.
_ID_CANDIDATE = re.compile(r"(?=(\d{6}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx]))")
# Credit codes as they are written: upper case, a registration authority (1-9, A, N or Y) and an
# entity type (1-9) first. Lower-case hex (request ids, hashes) would otherwise give false matches.
_CC_CANDIDATE = re.compile(r"(?=([1-9ANY][1-9]\d{6}[0-9A-HJ-NPQRTUWXY]{10}))")
_DIGIT_SEPARATOR = re.compile(r"(?<=\d)[ \-](?=[\dXx])")  # only between digits: never joins words
MAX_CANDIDATES = 256  # more key-like windows than this in one text: it is withheld whole, not scanned
WITHHELD = "[withheld: too many key-like strings]"


def scrub_keys(text: str, pseudonym: Callable[[str], str], kinds: tuple[str, ...] = ("id_number", "credit_code")
               ) -> str:
    """``text`` with every valid ID number or credit code in it replaced by ``[kind:pseudonym]``.

    For free text that ends up in records (aliases, operation and variable names, case and request
    ids); ``kinds`` limits what is looked for. A text with more than ``MAX_CANDIDATES`` key-like
    windows (a long run of digits) is replaced whole by ``WITHHELD``: the work stays bounded and
    nothing raw is kept."""
    if len(text) < 18:
        return text
    # For ID numbers: the text without separators between digits, and where each character came from.
    dropped = {m.start() for m in _DIGIT_SEPARATOR.finditer(text)} if "id_number" in kinds else set()
    if dropped:
        origin: Sequence[int] = [i for i in range(len(text)) if i not in dropped]
        compact = "".join(text[i] for i in origin)
    else:  # the usual case: nothing to drop, so the text is its own compact form (no per-character work)
        origin, compact = range(len(text)), text
    spans: list[tuple[int, int, str]] = []
    seen = 0
    for kind, pattern, where, at in (("id_number", _ID_CANDIDATE, compact, origin),
                                     ("credit_code", _CC_CANDIDATE, text, range(len(text)))):
        if kind not in kinds:
            continue
        for m in pattern.finditer(where):
            seen += 1
            if seen > MAX_CANDIDATES:
                return WITHHELD
            try:
                key = KEY_KINDS[kind].normalise(m.group(1))
            except InvalidKey:
                continue
            spans.append((at[m.start(1)], at[m.end(1) - 1] + 1, f"[{kind}:{pseudonym(key)[:16]}]"))
    if not spans:
        return text
    chosen: list[tuple[int, int, str]] = []
    for span in spans:  # ID numbers first: a credit code found across one (a 1 in 31 chance) yields
        if all(span[1] <= c[0] or span[0] >= c[1] for c in chosen):
            chosen.append(span)
    out, at = [], 0
    for start, end, tag in sorted(chosen):
        out += [text[at:start], tag]
        at = end
    return "".join([*out, text[at:]])
