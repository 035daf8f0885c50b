import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data import caseops
from data import tokenizer as tok

# Letters, the operators themselves, spaces, digits, accents and astral characters, mixed densely.
TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from("aAbBzZ \n\t.'-0ÉéßŉǅＡ" + "".join(caseops.OPERATORS)), st.characters(codec="utf-8")
    ),
    max_size=80,
)


@settings(max_examples=600, deadline=None)
@given(TEXT)
def test_decode_inverts_encode(s):
    assert caseops.decode(caseops.encode(s)) == s


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_encoded_text_has_no_ascii_capitals(s):
    # The point of the transform: capitals are carried by operators, letters are all lowercase.
    assert not any("A" <= c <= "Z" for c in caseops.encode(s))


@pytest.mark.parametrize(
    "text, encoded",
    [
        ("the cat", "the cat"),
        ("The NASA iPhone", "\ue001the \ue002nasa i\ue003phone"),
        ("OpenAI I", "\ue001open\ue003a\ue003i \ue001i"),
        ("x\ue001y", "x\ue004\ue001y"),
        ("Café", "\ue001café"),  # only ASCII letters form words
    ],
)
def test_encoding_follows_the_reference_rules(text, encoded):
    assert caseops.encode(text) == encoded


@pytest.mark.parametrize("bad", ["\ue001", "a\ue003", "\ue002 x", "\ue004", "\ue001\ue004\ue001"])
def test_malformed_operator_sequences_are_refused(bad):
    with pytest.raises(caseops.CaseOpsError):
        caseops.decode(bad)


def test_official_caseops_model_roundtrip_with_reserved_operators(caseops_model, val_head_texts):
    sp = tok.load_tokenizer(caseops_model)
    assert tok.is_caseops(sp)
    assert [sp.id_to_piece(i) for i in range(4, 8)] == list(caseops.OPERATORS)
    for text in val_head_texts[:20]:
        ids = tok.encode_docs(sp, [text], True)[0]
        assert tok.decode_doc(sp, ids, True) == text


@pytest.mark.parametrize(
    "text",
    [
        "The NASA Launch in iPhone OpenAI.",  # 33 original bytes; piece lengths would count 54
        "Literal operators \ue001\ue004 stay, ESC ESC: \ue004\ue004x and Ünïcödé 😀.",
        "MIXED case McDonald's iOS 123 ABC",
    ],
)
def test_caseops_bytes_are_original_bytes(caseops_model, text):
    sp = tok.load_tokenizer(caseops_model)
    ids = np.array([1, *tok.encode_docs(sp, [text], True)[0]])
    assert tok.charged_bytes(ids, tok.byte_tables(sp)).sum() == len(text.encode("utf-8"))
