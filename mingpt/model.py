"""GPT: the GPT-2 Transformer language model, written to be read top to bottom.

tokens (B, T) -> token + position embeddings -> n_layer x Block -> LayerNorm -> logits (B, T, vocab)
A Block is pre-LayerNorm: x + attention(ln(x)), then x + mlp(ln(x)). Linear layers have biases,
GELU is the tanh approximation, positions are learned: all as in OpenAI's GPT-2, so its weights
load unchanged. Generation keeps a KV cache of past keys/values (nn/cache.py): the same forward,
given the new tokens' positions and a cache that tells attention what it sees.
Each part (norm, positions, activation, the attention of each layer) is chosen once, by name, from
the tables in nn/layers.py; GPT-2's are the defaults. The family around GPT-2 is a few choices away:
    GPT-1:   norm_position="post" (LayerNorm after each residual sum, none at the end)
    GPT-3:   attention_pattern=("global", "local"): every other layer sees only the last
             window_size positions (GPT-Neo too, with attention_scale=1.0 and no q/k/v biases)

References: "Improving Language Understanding by Generative Pre-Training" (GPT-1, 2018);
"Language Models are Unsupervised Multitask Learners" (GPT-2, 2019); "Language Models are
Few-Shot Learners" (GPT-3, 2020); "Attention Is All You Need" (2017).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn
from torch.nn import functional as F

from mingpt.formats import pretrained
from mingpt.nn import decode, layers
from mingpt.nn.cache import KVCache
from mingpt.nn.generate import check_request, choose_next, decoding
from mingpt.utils import CfgNode, ConfigError, Setting


def _shape(n_layer: int, n_head: int, n_embd: int, **parts) -> dict:
    return dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, **parts)


# the parts a config leaves at None, unless its preset has its own: GPT-2's
PARTS = dict(norm_position="pre", activation="gelu_tanh", attention_pattern=("global",), window_size=256)
GPT3 = dict(block_size=2048, attention_pattern=("global", "local"), window_size=256)
# the named models: a shape, and for GPT-1 and GPT-3 their parts; each fills only the config
# values left at None
PRESETS = {
    "openai-gpt": _shape(12, 12, 768),  # 117M: GPT-1's shape on GPT-2's blocks (minGPT's preset)
    "gpt1": _shape(12, 12, 768, block_size=512, norm_position="post"),  # GPT-1 itself
    "gpt2": _shape(12, 12, 768),  # 124M
    "gpt2-medium": _shape(24, 16, 1024),  # 350M
    "gpt2-large": _shape(36, 20, 1280),  # 774M
    "gpt2-xl": _shape(48, 25, 1600),  # 1558M
    # GPT-3, the paper's Table 2.1. Two of its rows do not divide: XL's 2048 dims in 24 heads of
    # 128 (we keep the 128-dim heads: 16, as GPT-Neo 1.3B does) and 13B's 5140 dims (40 x 128 = 5120)
    "gpt3-small": _shape(12, 12, 768, **GPT3),  # 125M
    "gpt3-medium": _shape(24, 16, 1024, **GPT3),  # 350M
    "gpt3-large": _shape(24, 16, 1536, **GPT3),  # 760M
    "gpt3-xl": _shape(24, 16, 2048, **GPT3),  # 1.3B
    "gpt3-2.7b": _shape(32, 32, 2560, **GPT3),
    "gpt3-6.7b": _shape(32, 32, 4096, **GPT3),
    "gpt3-13b": _shape(40, 40, 5120, **GPT3),
    "gpt3-175b": _shape(96, 96, 12288, **GPT3),
    "gopher-44m": _shape(8, 16, 512),
    "gpt-mini": _shape(6, 6, 192),
    "gpt-micro": _shape(4, 4, 128),
    "gpt-nano": _shape(3, 3, 48),
}


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where each position sees only itself and the past."""

    def __init__(self, config: CfgNode, kind: str) -> None:
        super().__init__()
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head  # (fewer k, v heads: GQA)
        self.head_dim = config.n_embd // config.n_head
        kv_dim = self.n_kv_head * self.head_dim
        # query, key and value in one matmul
        self.c_attn = nn.Linear(config.n_embd, config.n_embd + 2 * kv_dim, bias=config.qkv_bias and config.bias)
        self.q_norm, self.k_norm = (layers.NORMS[config.norm](self.head_dim) if config.qk_norm else nn.Identity()
                                    for _ in range(2))
        self.rotate = layers.ROTATIONS[config.position_encoding](config)  # RoPE: by position
        self.attend = layers.ATTENTIONS[kind](config)  # which past positions a query sees, and how
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, kv_cache: KVCache | None = None,
                layer: int = 0) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split([C, self.n_kv_head * self.head_dim, self.n_kv_head * self.head_dim], dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim): each head attends independently
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k, v = (t.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2) for t in (k, v))
        q, k = self.rotate(self.q_norm(q), self.k_norm(k), positions)
        mask = None  # (causal)
        if kv_cache is not None:  # the keys and values of the positions so far, and which it sees
            k, v, mask = kv_cache.update(layer, k, v)
        y = self.attend(q, k, v, mask)  # softmax(q k^T / sqrt(head_dim)) v over the positions it may see
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """The position-wise feed-forward network: expand 4x, activation, project back."""

    def __init__(self, config: CfgNode) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.act = layers.ACTIVATIONS[config.activation]()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    """One Transformer block: communicate (attention), then compute (MLP), each on a residual."""

    def __init__(self, config: CfgNode, attention: str) -> None:
        super().__init__()
        norm = layers.NORMS[config.norm]
        self.ln_1 = norm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, attention)
        self.ln_2 = norm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, kv_cache: KVCache | None = None,
                layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), positions, kv_cache, layer)
        x = x + self.mlp(self.ln_2(x))
        return x


class PostNormBlock(Block):
    """GPT-1's block, as in the original Transformer: the norm comes after each residual sum, so
    every block's output is normalised (and the model needs no final norm)."""

    def forward(self, x: torch.Tensor, positions: torch.Tensor, kv_cache: KVCache | None = None,
                layer: int = 0) -> torch.Tensor:
        x = self.ln_1(x + self.attn(x, positions, kv_cache, layer))
        return self.ln_2(x + self.mlp(x))


BLOCKS = {"pre": Block, "post": PostNormBlock}  # config.norm_position


class GPT(nn.Module):
    """The GPT-2 language model (and, by its config, GPT-1's and GPT-3's)."""

    @staticmethod
    def get_default_config() -> CfgNode:
        whole = dict(kind=int, min=1)  # a positive whole number, or None
        return CfgNode(
            # either model_type (a name in PRESETS) or n_layer, n_head, n_embd must be given;
            # values given explicitly override the preset's
            model_type=Setting(None, kind=str),
            n_layer=Setting(None, **whole),
            n_head=Setting(None, **whole),
            n_embd=Setting(None, **whole),
            # these depend on the data and must be set
            vocab_size=Setting(None, **whole),
            block_size=Setting(None, **whole),
            # dropout probabilities
            embd_pdrop=Setting(0.1, min=0, below=1),
            resid_pdrop=Setting(0.1, min=0, below=1),
            attn_pdrop=Setting(0.1, min=0, below=1),
            # the output head shares the token embedding's weights (GPT-2 does; minGPT does not)
            tie_embeddings=False,
            # the parts, by their names in nn/layers.py; None: the preset's, else GPT-2's (PARTS)
            norm=Setting("layernorm", choices=tuple(layers.NORMS)),
            # "pre"; "post": GPT-1's LayerNorm after each residual sum
            norm_position=Setting(None, choices=tuple(BLOCKS)),
            position_encoding=Setting("learned", choices=tuple(layers.POSITIONS)),
            # "gelu_tanh" (GPT-1's and GPT-2's); "gelu": the exact GELU
            activation=Setting(None, choices=tuple(layers.ACTIVATIONS)),
            # layer i attends as attention_pattern[i % len], e.g. ("global", "local") for GPT-3;
            # a local layer sees the window_size positions ending at itself
            attention_pattern=None,  # ("global",); on the command line also global,local
            window_size=Setting(None, **whole),  # 256
            attention_scale=Setting(None, kind=float, above=0),  # multiplies q k^T; None: 1/sqrt(head_dim) (GPT-Neo: 1.0)
            qkv_bias=True,  # biases on the query, key and value projections (GPT-Neo has none)
            # options since GPT-2, all off by default (see README, "Options since GPT-2"):
            # position_encoding="rope" and norm="rmsnorm" / "rmsnorm_no_gain" above, activation="relu2",
            rope_base=Setting(10000.0, above=0),  # RoPE: pair i of a head turns by position * rope_base^(-2i / head_dim)
            n_kv_head=Setting(None, **whole),  # key/value heads (grouped-query attention); None: n_head
            qk_norm=False,  # normalise each head's queries and keys (the model's norm) before attending
            bias=True,  # False: no biases in any linear layer or norm
            zero_init_projections=False,  # the projections into the residual stream start at zero
            logit_softcap=Setting(None, kind=float, above=0),  # e.g. 15.0: logits = cap * tanh(logits / cap)
        ).also_check(layers.check_parts)

    def __init__(self, config: CfgNode) -> None:
        super().__init__()
        self.config = config = resolve_config(config)
        self.block_size = config.block_size
        pattern, block = config.attention_pattern, BLOCKS[config.norm_position]
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embedding
            wpe=layers.POSITIONS[config.position_encoding](config),  # learned: a vector per position
            drop=nn.Dropout(config.embd_pdrop),
            h=nn.ModuleList([block(config, pattern[i % len(pattern)]) for i in range(config.n_layer)]),
            # post-norm blocks end normalised already
            ln_f=layers.NORMS[config.norm](config.n_embd, bias=config.bias) if config.norm_position == "pre"
            else nn.Identity(),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.cap = layers.SoftCap(config.logit_softcap) if config.logit_softcap else nn.Identity()

        # GPT-2 init: N(0, 0.02), and the projections that write into the residual stream scaled
        # by 1/sqrt(2 n_layer) so that the stream's variance does not grow with depth
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
                if config.zero_init_projections:  # each block starts as the identity (modded-nanogpt)
                    nn.init.zeros_(p)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """Number of parameters (a tied embedding/head counted once)."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> int:
        """Training FLOPs per token, 6 N + 12 L T C: N counts the parameters without the position
        embedding (a lookup, not a matmul), 12 L T C the attention's score and value products
        (PaLM, appendix B), where a local layer's T is at most its window."""
        c = self.config
        n = self.num_params() - sum(p.numel() for p in self.transformer.wpe.parameters())
        seen = sum(min(c.block_size, b.attn.attend.window or c.block_size) for b in self.transformer.h)
        return 6 * n + 12 * seen * c.n_embd

    def hidden_states(self, idx: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """The final (normed) hidden state of every position: (B, T) -> (B, T, n_embd). With a KV
        cache, idx are the tokens that follow the ones it holds, and it gives their positions."""
        if idx.dim() != 2 or idx.dtype != torch.long:
            raise ValueError(f"idx must be a (batch, time) LongTensor, got shape {tuple(idx.shape)} "
                             f"and dtype {idx.dtype}")
        T = idx.size(1)
        if kv_cache is None:
            if T > self.block_size:
                raise ValueError(f"sequence length {T} exceeds block_size={self.block_size}; "
                                 f"crop the input to the last {self.block_size} tokens")
            positions = torch.arange(T, device=idx.device)
        else:
            positions = kv_cache.positions(T, idx.device)
        x = self.transformer.drop(self.transformer.wpe(self.transformer.wte(idx), positions))
        for layer, block in enumerate(self.transformer.h):
            x = block(x, positions, kv_cache, layer)
        if kv_cache is not None:
            kv_cache.advance(T)
        return self.transformer.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for the next token at every position, and the cross-entropy loss if targets
        (B, T) are given; targets equal to -1 are ignored (e.g. the prompt part of an example)."""
        logits = self.cap(self.lm_head(self.hidden_states(idx)))
        loss = None
        if targets is not None:
            if targets.shape != idx.shape:
                raise ValueError(f"targets shape {tuple(targets.shape)} must equal idx shape "
                                 f"{tuple(idx.shape)}")
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def configure_optimizers(self, train_config: CfgNode) -> torch.optim.Optimizer:
        """AdamW with weight decay on the matmul weights only: decaying biases, LayerNorm gains
        and embeddings (which are lookups, not matmuls) only hurts."""
        embeddings = {id(p) for table in (self.transformer.wte, self.transformer.wpe) for p in table.parameters()}
        params = list(self.parameters())  # unique: a tied head/embedding appears once
        decay = [p for p in params if p.dim() >= 2 and id(p) not in embeddings]
        no_decay = [p for p in params if p.dim() < 2 or id(p) in embeddings]
        groups = [
            {"params": decay, "weight_decay": train_config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        # the fused kernel does the whole update in one pass; torch has it for CPU and CUDA
        fused = all(p.device.type in ("cpu", "cuda") for p in params)
        return torch.optim.AdamW(groups, lr=train_config.learning_rate,
                                 betas=tuple(train_config.betas), fused=fused)

    def parameter_roles(self) -> dict[str, list[nn.Parameter]]:
        """The parameters by what they do, for optimizers that treat them apart (Muon orthogonalises
        only the hidden matrices): "matrices" (the blocks' 2-D weights), "embeddings" (the token and
        position tables; a tied head is the token table), "head" (an untied output head) and
        "vectors" (norm gains and biases). Each parameter appears once."""
        tables = [p for table in (self.transformer.wte, self.transformer.wpe) for p in table.parameters()]
        head = [] if self.config.tie_embeddings else [self.lm_head.weight]
        known = {id(p) for p in tables + head}
        rest = [p for p in self.parameters() if id(p) not in known]
        return {"matrices": [p for p in rest if p.dim() >= 2], "embeddings": tables, "head": head,
                "vectors": [p for p in rest if p.dim() < 2]}

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 do_sample: bool = False, top_k: int | None = None, top_p: float | None = None,
                 use_cache: bool = True, static: bool | str | None = None) -> torch.Tensor:
        """Continue each row of idx (B, T) by max_new_tokens tokens; returns (B, T + max_new_tokens).

        Greedy by default; do_sample=True samples from the softmax at `temperature`, restricted to
        the top_k most likely tokens and/or the smallest set whose probability reaches top_p.
        Call model.eval() first to switch dropout off. static=True decodes with a fixed-shape step
        that compiles once (nn/decode.py; a compile mode such as "reduce-overhead" picks how);
        static=None leaves the choice to decode.wanted.
        """
        new = list(self.generate_stream(idx, max_new_tokens, temperature, do_sample, top_k, top_p,
                                        use_cache, static))
        return torch.cat([idx, *new], dim=1)

    @torch.inference_mode()  # like no_grad, and also skips autograd's bookkeeping of versions and views
    def generate_stream(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                        do_sample: bool = False, top_k: int | None = None,
                        top_p: float | None = None, use_cache: bool = True,
                        static: bool | str | None = None) -> Iterator[torch.Tensor]:
        """Like generate(), but yields each new token, shape (B, 1), as soon as it is chosen."""
        check_request(idx, temperature, top_k, top_p)
        if decode.wanted(self, idx, max_new_tokens, use_cache, static):
            sampling = decode.Sampling(do_sample, temperature, top_k, top_p)
            for token in decode.generate(self, idx, max_new_tokens, sampling, True if static is None else static):
                with torch.inference_mode(False):
                    yield token.clone()
            return
        cache = None
        if use_cache and idx.size(1) < self.block_size:
            p, c = next(self.parameters()), self.config
            windows = [block.attn.attend.window for block in self.transformer.h]  # local layers: a ring
            cache = KVCache(c.n_layer, idx.size(0), c.n_kv_head, self.block_size, c.n_embd // c.n_head,
                            p.device, p.dtype, windows)
        step_input = idx  # with a cache: the prompt first, then one token at a time
        with decoding(self, max_new_tokens if cache is not None else 0):
            for _ in range(max_new_tokens):
                if cache is not None and cache.length + step_input.size(1) <= self.block_size:
                    h = self.hidden_states(step_input, cache)
                else:
                    # no cache, or the context outgrew block_size: recompute on the last block_size
                    # tokens (positions shift, so cached keys can no longer be reused)
                    cache = None
                    h = self.hidden_states(idx[:, -self.block_size:])
                logits = self.cap(self.lm_head(h[:, -1, :]))
                next_token = choose_next(logits, temperature, do_sample, top_k, top_p)
                idx = torch.cat([idx, next_token], dim=1)
                step_input = next_token
                with torch.inference_mode(False):  # hand out an ordinary tensor, usable anywhere
                    token = next_token.clone()
                yield token

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: str | torch.device = "cpu",
                        checkpoint: str | None = None) -> "GPT":
        """Load a model: a mingpt run folder (its newest intact checkpoint, or the one named by
        `checkpoint`: 'best', 'latest' or a folder name such as 'iter_0002000') or checkpoint
        folder, a Hugging Face folder of GPT-2, GPT-1 (openai-gpt) or GPT-Neo (config.json +
        weights), or a released model by its hub name (gpt2 ... gpt2-xl, openai-gpt,
        EleutherAI/gpt-neo-125m ...; downloaded into the Hugging Face cache)."""
        if str(name_or_path) in PRESETS and str(name_or_path) not in pretrained.HUB_MODELS \
                and not Path(name_or_path).exists():
            raise ValueError(f"{name_or_path!r} names a model shape without released weights; pass "
                             f"a mingpt run folder or one of {', '.join(pretrained.HUB_MODELS)}")
        return pretrained.load(cls, name_or_path, device, checkpoint)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Export as the Hugging Face folder of the family this model is (GPT-2, GPT-1 or GPT-Neo),
        which transformers loads; a model none of them describes exactly is refused."""
        return pretrained.save(self, directory)

    def crop_block_size(self, block_size: int) -> None:
        """Shrink the context to block_size (e.g. GPT-2's 1024 to 256 for a cheaper fine-tune) by
        keeping only the first block_size learned positions (rotary positions need nothing)."""
        if not 1 <= block_size <= self.block_size:
            raise ValueError(f"block_size={block_size} must be between 1 and the model's {self.block_size}")
        wpe = self.transformer.wpe
        if isinstance(wpe, nn.Embedding):
            wpe.weight = nn.Parameter(wpe.weight.detach()[:block_size].clone())
            wpe.num_embeddings = block_size
        self.block_size = self.config.block_size = block_size


def describe_presets() -> str:
    """For --help: the model_type presets, and what the parts left at None become."""
    parts = ", ".join(f"{key}={value!r}" for key, value in PARTS.items())
    return (f"model.model_type presets: {', '.join(PRESETS)}\n"
            f"model parts left at None take the preset's value, else GPT-2's: {parts}")


def resolve_config(config: CfgNode) -> CfgNode:
    """Return a copy of config with n_layer/n_head/n_embd filled in from model_type (and the parts
    left at None from the preset or GPT-2), checked: every key against its Setting and the parts
    together (layers.check_parts), each problem named in one line."""
    resolved = GPT.get_default_config()  # (a config saved before a key existed gets its default)
    resolved.merge_from_dict(config.to_dict(), "model.")
    if resolved.model_type is not None:
        if resolved.model_type not in PRESETS:
            raise ConfigError(f"unknown model_type {resolved.model_type!r}; choose one of "
                              f"{', '.join(PRESETS)} or set n_layer, n_head and n_embd")
        for key, value in PRESETS[resolved.model_type].items():
            if getattr(resolved, key) is None:
                setattr(resolved, key, value)
    for key, value in PARTS.items():
        if getattr(resolved, key) is None:
            setattr(resolved, key, value)
    if isinstance(resolved.attention_pattern, str):  # from the command line: global,local
        resolved.attention_pattern = tuple(resolved.attention_pattern.split(","))
    if resolved.n_kv_head is None:
        resolved.n_kv_head = resolved.n_head
    for key in ("n_layer", "n_head", "n_embd", "vocab_size", "block_size", "n_kv_head"):
        value = getattr(resolved, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            hint = "" if key in ("vocab_size", "block_size") else " (or choose a model_type)"
            raise ConfigError(f"model.{key} must be a positive integer{hint}, got {value!r}")
    resolved.check("model.")
    resolved.attention_pattern = tuple(resolved.attention_pattern)
    return resolved
