"""CaseOps: a lossless case transform, so a lowercase vocabulary spends no pieces on capitals.

Runs of ASCII letters are the words. A lowercase word stays as it is; a TitleCase word becomes
TITLE + word; an all-caps word of two or more letters becomes ALLCAPS + word; any other mix is an
optional TITLE and a CAPNEXT before each later capital. A literal operator character in the input
is escaped with ESC. The operators are private-use code points, reserved in the CaseOps
SentencePiece model as user symbols at ids 4..7. Only ASCII letters change case, and they keep
their one byte, so every character of the original text keeps its UTF-8 length.
"""

from __future__ import annotations

import re

TITLE, ALLCAPS, CAPNEXT, ESC = "\ue001", "\ue002", "\ue003", "\ue004"
OPERATORS = (TITLE, ALLCAPS, CAPNEXT, ESC)

_ENCODE_RE = re.compile(r"[A-Za-z]+|[\ue001-\ue004]")
# An escaped character, a (possibly marked) word, a stray operator, or anything else.
_DECODE_RE = re.compile(
    r"\ue004(.)|([\ue001\ue002]?)((?:\ue003?[A-Za-z])+)|([\ue001-\ue004])|([^\ue001-\ue004A-Za-z]+)",
    re.DOTALL,
)


class CaseOpsError(ValueError):
    """Transformed text that no original text encodes to."""


def _encode_match(m: re.Match) -> str:
    word = m.group(0)
    if word in OPERATORS:
        return ESC + word
    if word.islower():
        return word
    lower = word.lower()
    if len(word) >= 2 and word.isupper():
        return ALLCAPS + lower
    if word[0].isupper() and word[1:].islower():
        return TITLE + lower
    out = [TITLE + lower[0] if word[0].isupper() else lower[0]]
    out += [CAPNEXT + low if orig.isupper() else low for orig, low in zip(word[1:], lower[1:])]
    return "".join(out)


def encode(text: str) -> str:
    return _ENCODE_RE.sub(_encode_match, text)


def decode(text: str) -> str:
    """The exact inverse of encode. Capitals without an operator (NFKC can make them, e.g. from
    full-width letters) are kept as they are."""
    out = []
    for m in _DECODE_RE.finditer(text):
        escaped, mode, word, stray, other = m.groups()
        if escaped is not None:
            out.append(escaped)
        elif word is not None:
            if mode == ALLCAPS:
                out.append(word.replace(CAPNEXT, "").upper())
                continue
            letters = re.sub(r"\ue003([a-z])", lambda c: c.group(1).upper(), word).replace(CAPNEXT, "")
            out.append(letters[0].upper() + letters[1:] if mode == TITLE else letters)
        elif stray is not None:
            raise CaseOpsError(f"operator U+{ord(stray):04X} at offset {m.start()} is not followed by what it marks")
        else:
            out.append(other)
    return "".join(out)
