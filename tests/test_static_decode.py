"""Static-shape decoding (mingpt/nn/decode.py): the same tokens as generate's usual loop, eager and
compiled, with the model options; sampling that is seeded, faithful to its distribution and inside
top-k / top-p; refusals; and the CPU default left as it is."""
import copy

import pytest
import torch

from helpers import MODEL_OPTIONS, tiny_gpt
from mingpt.nn import decode
from mingpt.nn.generate import filtered_logits

# the options that change what the static step does: RoPE (positions from a tensor), GQA (the
# cache holds kv heads), a local layer (a band mask over the whole cache) and a window shorter
# than the prompt and the generation
STEP_OPTIONS = dict(position_encoding="rope", n_kv_head=1, attention_pattern=("global", "local"), window_size=4)
MODELS = {"gpt2": None, "rope_gqa_local": STEP_OPTIONS, "every_option": MODEL_OPTIONS,
          "gpt1_post_norm": dict(norm_position="post")}


def model_with(options: dict | None, vocab_size: int = 50, block_size: int = 32):
    """A tiny GPT in eval mode whose every weight is random (zero-init projections would leave
    the blocks the identity and make any decoding look right)."""
    torch.manual_seed(0)
    model = tiny_gpt(vocab_size=vocab_size, block_size=block_size, options=options).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    return model


@pytest.mark.parametrize("name", MODELS)
def test_static_greedy_tokens_equal_generate_eager(name):
    model = model_with(MODELS[name])
    prompt = torch.randint(50, (3, 7))
    want = model.generate(prompt, 24, static=False)
    got = model.generate(prompt, 24, static=True)  # on the CPU: the eager step
    assert got.shape == (3, 31)
    assert torch.equal(got, want)


def test_a_kept_decoder_is_reused_and_its_stale_slots_are_never_seen():
    model = model_with(STEP_OPTIONS)
    long_prompt, short_prompt = torch.randint(50, (2, 12)), torch.randint(50, (2, 3))
    model.generate(long_prompt, 20, static=True)  # fills slots up to 30
    first = model.__dict__["_static_decoder"]
    got = model.generate(short_prompt, 20, static=True)  # same cache length: the same decoder
    assert model.__dict__["_static_decoder"] is first
    assert torch.equal(got, model.generate(short_prompt, 20, static=False))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2", "rope_gqa_local"])
def test_static_greedy_tokens_equal_generate_compiled_and_compile_once(name):
    torch._dynamo.reset()
    model = model_with(MODELS[name])
    prompt = torch.randint(50, (2, 5))
    want = model.generate(prompt, 20, static=False)
    assert torch.equal(model.generate(prompt, 20, static="default"), want)  # inductor on the CPU
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    other = torch.randint(50, (2, 9))
    assert torch.equal(model.generate(other, 14, static="default"), model.generate(other, 14, static=False))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames, "the step compiled again"


def test_a_copy_of_the_model_keeps_no_decoder_and_forget_frees_it():
    model = model_with(None)
    prompt = torch.randint(50, (1, 4))
    model.generate(prompt, 5, static=True)
    twin = copy.deepcopy(model)
    assert twin.__dict__["_static_decoder"] is None
    assert torch.equal(twin.generate(prompt, 5, static=True), model.generate(prompt, 5, static=False))
    decode.forget(model)
    assert "_static_decoder" not in model.__dict__


def test_sampled_static_decoding_with_a_fixed_seed_is_reproducible():
    model = model_with(STEP_OPTIONS)
    prompt = torch.randint(50, (4, 5))

    def sample(seed):
        torch.manual_seed(seed)
        return model.generate(prompt, 20, do_sample=True, temperature=1.5, top_k=10, static=True)

    a, b, c = sample(1), sample(1), sample(2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, model.generate(prompt, 20, static=True))  # it does sample


def test_the_exponential_race_draws_from_the_softmax():
    # each of 40,000 rows draws once from the same 4 probabilities, as the step does
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    decoder = decode.StaticDecoder(model_with(None, vocab_size=4), 40_000, 8, decode.Sampling(do_sample=True))
    decoder.noise.exponential_()
    picks = decoder._choose(probs.log().expand(40_000, 4))
    frequencies = torch.bincount(picks.view(-1), minlength=4) / 40_000
    assert torch.allclose(frequencies, probs, atol=0.01), frequencies


@pytest.mark.parametrize("top_k, top_p", [(3, None), (None, 0.6), (5, 0.8)])
def test_static_sampling_stays_inside_top_k_and_top_p(top_k, top_p):
    model = model_with(STEP_OPTIONS)
    rows = 256
    prompt = torch.randint(50, (1, 6)).expand(rows, 6)
    out = model.generate(prompt, 3, do_sample=True, top_k=top_k, top_p=top_p, static=True)
    for t in range(6, 9):  # the prefill's token, then two of the step's
        with torch.no_grad():
            logits, _ = model(out[:, :t])
        allowed = filtered_logits(logits[:, -1], 1.0, top_k, top_p) > float("-inf")
        chosen = out[:, t]
        assert allowed[torch.arange(rows), chosen].all(), f"a token outside top_k/top_p at position {t}"
        assert chosen.unique().numel() > 1  # several tokens were allowed and drawn


def test_a_prompt_longer_than_the_static_cache_is_refused_in_one_line():
    model = model_with(None, block_size=16)
    with pytest.raises(ValueError, match="static=False") as error:
        model.generate(torch.zeros(1, 10, dtype=torch.long), 10, static=True)
    assert "\n" not in str(error.value) and "block_size=16" in str(error.value)
    decoder = decode.StaticDecoder(model, 1, 8)
    with pytest.raises(ValueError, match="holds 8"):
        decoder.prefill(torch.zeros(1, 6, dtype=torch.long), 4)


def test_static_decoding_refuses_training_mode_and_unknown_modes():
    model = model_with(None)
    with pytest.raises(ValueError, match="model.eval"):
        model.train().generate(torch.zeros(1, 2, dtype=torch.long), 3, static=True)
    with pytest.raises(ValueError, match="reduce-overhead"):
        model.eval().generate(torch.zeros(1, 2, dtype=torch.long), 3, static="fast")


def test_on_the_cpu_generate_keeps_its_usual_loop_unless_asked():
    model = model_with(None)
    prompt = torch.zeros(1, 2, dtype=torch.long)
    assert not decode.wanted(model, prompt, 1000, use_cache=True, static=None)
    model.generate(prompt, 10)
    assert "_static_decoder" not in model.__dict__
    assert decode.wanted(model, prompt, 10, use_cache=True, static=True)
    assert not decode.wanted(model, prompt, 10, use_cache=False, static=True)  # no cache: no cache of any shape


def test_the_cache_length_is_rounded_and_capped_at_block_size():
    model = model_with(None, block_size=1024)
    assert decode.cache_length(model, 16, 100) == 256
    assert decode.cache_length(model, 16, 241) == 256 and decode.cache_length(model, 16, 242) == 512
    assert decode.cache_length(model, 900, 100) == 1024
