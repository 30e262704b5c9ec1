"""Property-based tests: CfgNode parses any value it prints, tokenizers round-trip any text."""
import warnings

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mingpt.bpe import BPETokenizer
from mingpt.data import CharTokenizer
from mingpt.utils import CfgNode, ConfigError

KEYS = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GPT2 = BPETokenizer()
GPT2_PYTHON = BPETokenizer(engine="python")


@FAST
@given(st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False)))
def test_a_number_set_from_the_command_line_arrives_unchanged(value):
    c = CfgNode(section=CfgNode(value=0.5))
    c.merge_from_args([f"--section.value={value!r}"])
    assert c.section.value == float(value)


@FAST
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_a_string_set_from_the_command_line_arrives_unchanged(value):
    c = CfgNode(name="default")
    c.merge_from_args([f"--name={value!r}"])  # quoted: any string survives, even '3' or 'None'
    assert c.name == value


@FAST
@given(st.booleans(), st.lists(st.integers(), max_size=4))
def test_bools_and_tuples_keep_their_types(flag, numbers):
    c = CfgNode(flag=False, shape=(1, 2))
    c.merge_from_args([f"--flag={flag}", f"--shape={tuple(numbers)!r}"])
    assert c.flag is flag and c.shape == tuple(numbers)


@FAST
@given(KEYS.filter(lambda k: k not in ("lr", "n_layer")), st.integers())
def test_unknown_keys_are_always_refused_with_the_valid_ones_listed(key, value):
    c = CfgNode(lr=0.1, model=CfgNode(n_layer=2))
    for arg in (f"--{key}={value}", f"--model.{key}={value}"):
        try:
            c.merge_from_args([arg])
        except ConfigError as e:
            assert "valid keys here are" in str(e)
        else:
            raise AssertionError(f"{arg} was accepted")


@FAST
@given(st.text())
def test_gpt2_bpe_round_trips_any_text_in_both_engines(text):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # text may contain '<|endoftext|>': ordinary text here
        ids = GPT2.encode(text)
        assert GPT2_PYTHON.encode(text) == ids
    assert GPT2.decode(ids) == text


@FAST
@given(st.text(min_size=1))
def test_char_tokenizer_round_trips_any_text_it_covers(text):
    tok = CharTokenizer.from_text(text)
    assert tok.decode(tok.encode(text)) == text
