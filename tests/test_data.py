"""Token streams, the character tokenizer, and reading user text."""
import pytest
import torch

from mingpt.data import CharTokenizer, TokenStream, builtin_corpus, load_corpus, read_text


def test_get_batch_cuts_shifted_windows_from_the_stream():
    stream = TokenStream(torch.arange(100), block_size=8)
    x, y = stream.get_batch(5, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 8)
    assert torch.equal(y, x + 1)  # y is x shifted by one token
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(5, 7, dtype=torch.long))
    assert int(y.max()) <= 99


def test_get_batch_is_reproducible_from_the_generator():
    stream = TokenStream(torch.randint(50, (1000,)), block_size=16)
    a = stream.get_batch(4, torch.Generator().manual_seed(7))
    b = stream.get_batch(4, torch.Generator().manual_seed(7))
    assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_eval_batches_are_fixed_and_cover_the_stream():
    stream = TokenStream(torch.arange(1000), block_size=10)
    first = [x for x, _ in stream.eval_batches(batch_size=8)]
    second = [x for x, _ in stream.eval_batches(batch_size=8)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    starts = torch.cat([x[:, 0] for x in first])
    assert len(starts) == 99 and starts.min() == 0 and starts.max() == 989
    limited = list(stream.eval_batches(batch_size=8, max_batches=2))
    assert len(limited) == 2


def test_stream_is_also_a_map_style_dataset():
    stream = TokenStream(torch.arange(20), block_size=4)
    x, y = stream[3]
    assert x.tolist() == [3, 4, 5, 6] and y.tolist() == [4, 5, 6, 7]
    assert len(stream) == 16


def test_a_stream_shorter_than_one_window_is_refused():
    with pytest.raises(ValueError, match="fewer than block_size \\+ 1 = 9"):
        TokenStream(torch.arange(8), block_size=8)


def test_char_tokenizer_round_trips_and_names_unknown_characters(tmp_path):
    tok = CharTokenizer.from_text("hello world")
    assert tok.vocab_size == 8
    assert tok.decode(tok.encode("hold")) == "hold"
    with pytest.raises(ValueError, match="not in this model's vocabulary: 'xz'"):
        tok.encode("xyz"[::2])
    tok.save(tmp_path)
    assert CharTokenizer.load(tmp_path).chars == tok.chars


def test_builtin_corpus_is_available_offline():
    text = builtin_corpus()
    assert 400_000 < len(text) < 600_000
    assert load_corpus("") == text


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"", "is empty"),
    (b"  \n\n", "is empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "looks binary"),
    (b"caf\xe9", "not valid UTF-8"),
])
def test_bad_input_files_get_clear_errors(tmp_path, content, message):
    path = tmp_path / "input.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        read_text(path)


def test_shakespeare_download_fails_offline_with_a_clear_message(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setenv("MINGPT_CACHE", str(tmp_path))
    monkeypatch.setattr("urllib.request.urlopen", no_network)
    with pytest.raises(ConnectionError, match="could not download Tiny Shakespeare .* --data.input=PATH"):
        load_corpus("shakespeare")
    assert not list(tmp_path.iterdir())  # nothing half-written in the cache


def test_shakespeare_is_read_from_the_cache_once_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("MINGPT_CACHE", str(tmp_path))
    (tmp_path / "tinyshakespeare.txt").write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n")
    assert load_corpus("shakespeare").startswith("First Citizen:")
