"""Byte-level BPE and byte tokenizers: round trips, save/load, the HF wrapper."""

from __future__ import annotations

import pytest

from nestlearn.data import EOT_TOKEN, BPETokenizer, ByteTokenizer, load_tokenizer

TRAIN_TEXT = [
    (
        "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n"
    ),
    (
        "Anarchism is a political philosophy that advocates self-governed societies based on "
        "voluntary institutions. These are often described as stateless societies.\n"
    ),
    (
        "The jury further said in term-end presentments that the City Executive Committee, which "
        "had over-all charge of the election, deserves the praise and thanks of the City.\n"
    ),
] * 8

HARD_TEXTS = [
    "",
    "plain words",
    "  leading spaces and trailing  \n\n\ttabs\r\n",
    "Ünïcödé — “quotes” ’tis café 東京 🙂 \u200b zero-width",
    f"a literal {EOT_TOKEN} inside a document",
    "numbers 1234567890 and symbols <>{}[]#*_\\",
]


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train(TRAIN_TEXT, vocab_size=400)


def test_bpe_has_eot_and_learned_merges(bpe):
    assert bpe.eot_id == 0
    assert 257 < bpe.vocab_size <= 400
    assert len(bpe.encode("the question")) < len("the question")


@pytest.mark.parametrize("text", HARD_TEXTS)
def test_bpe_decode_encode_is_identity(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_literal_eot_text_is_not_the_eot_token(bpe):
    assert bpe.eot_id not in bpe.encode(f"x {EOT_TOKEN} y")
    assert ByteTokenizer().eot_id not in ByteTokenizer().encode(f"x {EOT_TOKEN} y")


def test_bpe_save_load_round_trip(bpe, tmp_path):
    path = bpe.save(tmp_path / "tok")
    assert path.name == "tokenizer.json" and path.is_file()
    for loaded in (
        BPETokenizer.load(path),
        BPETokenizer.load(tmp_path / "tok"),
        load_tokenizer(path),
    ):
        assert isinstance(loaded, BPETokenizer)
        assert loaded.fingerprint == bpe.fingerprint
        assert loaded.encode_batch(HARD_TEXTS) == bpe.encode_batch(HARD_TEXTS)
        assert loaded.eot_id == bpe.eot_id and loaded.vocab_size == bpe.vocab_size


def test_bpe_training_is_deterministic(bpe):
    again = BPETokenizer.train(TRAIN_TEXT, vocab_size=400)
    assert again.fingerprint == bpe.fingerprint


def test_hf_wrapper_matches(bpe):
    hf = bpe.to_hf()
    for text in HARD_TEXTS[1:4]:
        assert hf(text, add_special_tokens=False)["input_ids"] == bpe.encode(text)
        assert hf.decode(bpe.encode(text)) == text
    assert hf.eos_token == EOT_TOKEN and hf.eos_token_id == bpe.eot_id
    assert hf.pad_token_id == bpe.eot_id
    assert len(hf) == bpe.vocab_size


@pytest.mark.parametrize("text", HARD_TEXTS)
def test_byte_tokenizer_round_trip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids + [tok.eot_id]) == text


def test_byte_tokenizer_save_load(tmp_path):
    path = ByteTokenizer().save(tmp_path)
    loaded = load_tokenizer(path)
    assert isinstance(loaded, ByteTokenizer) and loaded.vocab_size == 257 and loaded.eot_id == 256


def test_tokenizer_errors(tmp_path):
    with pytest.raises(ValueError, match="vocab_size must be an integer >= 257"):
        BPETokenizer.train(TRAIN_TEXT, vocab_size=100)
    with pytest.raises(ValueError, match="empty training split"):
        BPETokenizer.train([], vocab_size=300)
    with pytest.raises(FileNotFoundError, match="tokenizer file not found"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not a tokenizer.json"):
        load_tokenizer(tmp_path / "broken.json")
