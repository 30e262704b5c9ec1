"""The options since GPT-2 (RoPE, RMSNorm, QK-norm, ReLU^2, no biases, zero-initialised
projections, logit soft-capping, grouped-query attention): each against its definition."""
import pytest
import torch
from torch.nn import functional as F

from helpers import MODEL_OPTIONS as OPTIONS  # every option at once, with a local layer
from helpers import ULPS_FORWARD, ULPS_OP, assert_close_to, ulps_apart
from mingpt.model import GPT
from mingpt.nn import layers


def gpt(block_size=24, seed=0, **options):
    config = GPT.get_default_config()
    config.n_layer, config.n_head, config.n_embd, config.vocab_size, config.block_size = 2, 4, 32, 13, block_size
    config.embd_pdrop = config.resid_pdrop = config.attn_pdrop = 0.0
    for key, value in options.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    return GPT(config).eval()


def tokens(T, B=2, seed=1):
    return torch.randint(0, 13, (B, T), generator=torch.Generator().manual_seed(seed))


def test_rope_scores_depend_only_on_the_distance_between_positions():
    config = gpt(position_encoding="rope", block_size=128).config
    rotary = layers.Rotary(config)
    q, k = torch.randn(1, 4, 1, 8, dtype=torch.float64), torch.randn(1, 4, 1, 8, dtype=torch.float64)

    def at(position):
        return torch.tensor([position])

    def score(m, n):  # the query at position m against the key at position n
        return (rotary(q, k, at(m))[0] * rotary(q, k, at(n))[1]).sum(-1)
    # (float64 queries and keys, but the angles are made in float32: their precision is float32's)
    assert_close_to(score(5, 2), score(105, 102), ULPS_OP, dtype=torch.float32)
    assert_close_to((q * k).sum(-1), score(7, 7), ULPS_OP, dtype=torch.float32)  # equal positions: the plain product
    assert ulps_apart(score(5, 2), score(5, 3)) > 1e6
    rq, _ = rotary(q, k, at(33))
    assert_close_to(q.norm(dim=-1), rq.norm(dim=-1), ULPS_OP, dtype=torch.float32)  # a rotation


def test_rope_models_have_no_position_table_and_see_positions_through_attention():
    model = gpt(position_encoding="rope", n_layer=1)  # (one layer: causality alone tells nothing apart)
    assert not list(model.transformer.wpe.parameters())
    idx = tokens(12)
    reordered = torch.cat([idx[:, :11].flip(1), idx[:, 11:]], dim=1)  # the same context, reversed
    assert ulps_apart(model(idx)[0][:, -1], model(reordered)[0][:, -1]) > 100 * ULPS_FORWARD
    for block in model.transformer.h:  # without the rotation nothing tells the positions apart
        block.attn.rotate = layers.NoRotation(model.config)
    assert_close_to(model(idx)[0][:, -1], model(reordered)[0][:, -1], ULPS_FORWARD)  # (sums in another order)


def test_a_rope_model_trains_after_generating_at_the_same_length():
    model = gpt(position_encoding="rope")
    idx = tokens(12)
    model.eval()
    with torch.inference_mode():  # (as generate runs) the angles of positions 0..11, without autograd
        model(idx)
    model.train()
    _, loss = model(idx, idx)  # the same positions again, now to be differentiated
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("options", [dict(position_encoding="rope"), dict(n_kv_head=1), dict(n_kv_head=2),
                                     {**OPTIONS, "attention_pattern": ("global",)}, OPTIONS])
def test_generation_with_the_kv_cache_equals_recomputation_with_options(options):
    model = gpt(**options)
    idx = tokens(7)
    assert torch.equal(model.generate(idx, 30, use_cache=True), model.generate(idx, 30, use_cache=False))


@pytest.mark.parametrize("pattern", [("global",), ("local",)])
def test_grouped_query_attention_equals_multi_head_attention_with_repeated_kv_heads(pattern):
    grouped = gpt(n_kv_head=2, attention_pattern=pattern, window_size=4)
    full = gpt(n_kv_head=4, attention_pattern=pattern, window_size=4, seed=1)
    state = grouped.state_dict()
    C, hd = 32, 8
    for name, tensor in list(state.items()):
        if name.endswith("c_attn.weight") or name.endswith("c_attn.bias"):
            q, k, v = tensor.split([C, 2 * hd, 2 * hd], dim=0)
            k, v = (t.view(2, hd, *t.shape[1:]).repeat_interleave(2, dim=0).reshape(4 * hd, *t.shape[1:]) for t in (k, v))
            state[name] = torch.cat([q, k, v], dim=0)
    full.load_state_dict(state)
    idx = tokens(20)
    assert_close_to(full(idx)[0], grouped(idx)[0], ULPS_FORWARD)
    assert grouped.transformer.h[0].attn.c_attn.out_features == C + 2 * 2 * hd


def test_a_grouped_query_kv_cache_stores_only_the_kv_heads():
    from mingpt.nn.cache import KVCache
    model = gpt(n_kv_head=1)
    seen = {}
    original = KVCache.update

    def spy(self, layer, k, v):
        seen["heads"] = self.keys[layer].shape[1]
        return original(self, layer, k, v)
    KVCache.update = spy
    try:
        model.generate(tokens(3), 2)
    finally:
        KVCache.update = original
    assert seen["heads"] == 1


def test_rmsnorm_divides_by_the_root_mean_square_and_the_no_gain_one_learns_nothing():
    x = torch.randn(3, 16)
    norm = layers.NORMS["rmsnorm"](16)
    assert_close_to(x / (x.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt(), norm(x), ULPS_OP)
    assert not list(layers.NORMS["rmsnorm_no_gain"](16).parameters())
    assert "transformer.ln_f.weight" in gpt(norm="rmsnorm").state_dict()


def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys():
    def scaled_output(qk_norm, factor):
        model = gpt(qk_norm=qk_norm, norm="rmsnorm_no_gain")
        with torch.no_grad():
            for block in model.transformer.h:
                w, b = block.attn.c_attn.weight, block.attn.c_attn.bias
                w[:64].mul_(factor)  # the query and key rows
                b[:64].mul_(factor)
        return model(tokens(10))[0]
    # (the norm rounds 10x larger queries and keys otherwise, and the softmax carries it on: a few forwards' worth)
    assert_close_to(scaled_output(True, 1.0), scaled_output(True, 10.0), 4 * ULPS_FORWARD)
    assert ulps_apart(scaled_output(False, 1.0), scaled_output(False, 10.0)) > 100 * ULPS_FORWARD


def test_relu_squared_is_relu_squared():
    x = torch.randn(100)
    assert torch.equal(layers.ReLUSquared()(x), F.relu(x) ** 2)
    assert isinstance(gpt(activation="relu2").transformer.h[0].mlp.act, layers.ReLUSquared)


def test_without_biases_no_layer_has_one():
    names = [n for n, _ in gpt(bias=False).named_parameters()]
    assert not [n for n in names if n.endswith(".bias")]
    assert [n for n, _ in gpt().named_parameters() if n.endswith(".bias")]


def test_zero_initialised_projections_make_every_block_start_as_the_identity():
    model = gpt(zero_init_projections=True)
    assert all(not p.any() for n, p in model.named_parameters() if n.endswith("c_proj.weight"))
    idx = tokens(6)
    t = model.transformer
    direct = model.lm_head(t.ln_f(t.wpe(t.wte(idx), torch.arange(6))))
    assert_close_to(direct, model(idx)[0], ULPS_OP)


def test_logit_softcap_bounds_the_logits_smoothly():
    capped, plain = gpt(logit_softcap=2.0), gpt()
    idx = tokens(8)
    with torch.no_grad():
        for p in plain.parameters():
            p.mul_(3.0)
        capped.load_state_dict(plain.state_dict())
    raw, bounded = plain(idx)[0], capped(idx)[0]
    assert raw.abs().max() > 2.0 and bounded.abs().max() < 2.0
    assert_close_to(2.0 * torch.tanh(raw / 2.0), bounded, ULPS_OP)


def test_every_option_together_trains_checkpoints_and_loads_back(tmp_path):
    from helpers import pattern_stream, quick_config

    from mingpt.trainer import Trainer
    model = gpt(block_size=16, **OPTIONS)
    model.train()
    first = None

    def remember(trainer):
        nonlocal first
        first = first if first is not None else trainer.loss.item()
    trainer = Trainer(quick_config(max_iters=30), model, pattern_stream(), work_dir=tmp_path)
    trainer.add_callback("on_batch_end", remember)
    trainer.run()
    assert trainer.loss.item() < first
    loaded = GPT.from_pretrained(tmp_path).eval()
    assert {k: loaded.config.to_dict()[k] for k in OPTIONS} == OPTIONS
    idx = tokens(16)
    assert torch.equal(loaded(idx)[0], model.eval()(idx)[0])


@pytest.mark.parametrize("option", ["position_encoding", "norm", "activation", "bias", "qk_norm",
                                    "logit_softcap", "n_kv_head"])
def test_a_model_with_an_option_no_hugging_face_family_has_is_not_exported(tmp_path, option):
    model = gpt(**{option: OPTIONS[option]})
    with pytest.raises(ValueError, match="none of them has this model"):
        model.save_pretrained(tmp_path / "hf")
    assert not (tmp_path / "hf" / "config.json").exists()


@pytest.mark.parametrize("change,message", [
    (dict(n_kv_head=3), r"n_kv_head=3 must divide n_head=4"),
    (dict(n_kv_head=0), r"n_kv_head must be a positive integer"),
    (dict(position_encoding="alibi"), r"model.position_encoding='alibi' must be one of 'learned', 'rope'"),
    (dict(norm="batchnorm"), r"model.norm='batchnorm' must be one of 'layernorm', 'rmsnorm', 'rmsnorm_no_gain'"),
    (dict(activation="swish"), r"model.activation='swish' must be one of"),
    (dict(logit_softcap=-1.0), r"model.logit_softcap=-1.0 must be > 0"),
    (dict(position_encoding="rope", n_embd=36, n_head=4), r"head_dim=9 must be even"),
])
def test_bad_option_values_are_refused_in_one_line(change, message):
    with pytest.raises(ValueError, match=message):
        gpt(**change)
