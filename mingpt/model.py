"""GPT: the GPT-2 Transformer language model, written to be read top to bottom.

tokens (B, T) -> token + position embeddings -> n_layer x Block -> LayerNorm -> logits (B, T, vocab)
A Block is pre-LayerNorm: x + attention(ln(x)), then x + mlp(ln(x)). The token embedding is
tied to the output head, linear layers have biases, GELU is the tanh approximation: all as in
OpenAI's GPT-2, so its weights load unchanged. Generation keeps a KV cache of past keys/values.

References: "Language Models are Unsupervised Multitask Learners" (GPT-2, 2019);
"Attention Is All You Need" (2017).
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn
from torch.nn import functional as F

from mingpt import checkpoint, hf
from mingpt.linear import Linear, decoding  # nn.Linear, with faster kernels on the CPU
from mingpt.utils import CfgNode

# (n_layer, n_head, n_embd) of the named model shapes
PRESETS = {
    "openai-gpt": (12, 12, 768),  # 117M, GPT-1
    "gpt2": (12, 12, 768),  # 124M
    "gpt2-medium": (24, 16, 1024),  # 350M
    "gpt2-large": (36, 20, 1280),  # 774M
    "gpt2-xl": (48, 25, 1600),  # 1558M
    "gopher-44m": (8, 16, 512),
    "gpt-mini": (6, 6, 192),
    "gpt-micro": (4, 4, 128),
    "gpt-nano": (3, 3, 48),
}


class KVCache:
    """Keys and values of the positions seen so far, for every layer.

    During generation each new token only needs its own query against all past keys, so we keep
    the keys/values instead of recomputing them: one step costs O(T) instead of O(T^2).
    """

    def __init__(self, n_layer: int, batch_size: int, n_head: int, max_len: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        shape = (n_layer, batch_size, n_head, max_len, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # positions filled so far (advanced once per forward, after all layers)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new k, v (B, n_head, T, head_dim) and return all keys and values so far."""
        keys, values = self.keys[layer], self.values[layer]
        keys.narrow(2, self.length, k.size(2)).copy_(k)
        values.narrow(2, self.length, v.size(2)).copy_(v)
        end = self.length + k.size(2)
        return keys.narrow(2, 0, end), values.narrow(2, 0, end)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where each position sees only itself and the past."""

    def __init__(self, config: CfgNode) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd)  # query, key, value in one matmul
        self.c_proj = Linear(config.n_embd, config.n_embd)
        self.attn_pdrop = config.attn_pdrop
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim): each head attends independently
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if kv_cache is not None:
            k, v = kv_cache.update(layer, k, v)
        # softmax(q k^T / sqrt(head_dim)) v, masked so position t attends to positions <= t.
        # A cache is filled by one prompt (T > 1, causal) then one token at a time (T == 1: the
        # single new query may see every cached key, so no mask is needed).
        y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1,
                                           dropout_p=self.attn_pdrop if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """The position-wise feed-forward network: expand 4x, GELU, project back."""

    def __init__(self, config: CfgNode) -> None:
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2 used the tanh approximation
        self.c_proj = Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """One Transformer block: communicate (attention), then compute (MLP), each on a residual."""

    def __init__(self, config: CfgNode) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), kv_cache, layer)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    """The GPT-2 language model."""

    @staticmethod
    def get_default_config() -> CfgNode:
        return CfgNode(
            # either model_type (a name in PRESETS) or n_layer, n_head, n_embd must be given;
            # dimensions given explicitly override the preset's
            model_type=None,
            n_layer=None,
            n_head=None,
            n_embd=None,
            # these depend on the data and must be set
            vocab_size=None,
            block_size=None,
            # dropout probabilities
            embd_pdrop=0.1,
            resid_pdrop=0.1,
            attn_pdrop=0.1,
        )

    def __init__(self, config: CfgNode) -> None:
        super().__init__()
        self.config = config = resolve_config(config)
        self.block_size = config.block_size
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embedding
            wpe=nn.Embedding(config.block_size, config.n_embd),  # learned position embedding
            drop=nn.Dropout(config.embd_pdrop),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd),
        ))
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2

        # GPT-2 init: N(0, 0.02), and the projections that write into the residual stream scaled
        # by 1/sqrt(2 n_layer) so that the stream's variance does not grow with depth
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """Number of parameters (the tied embedding/head counted once)."""
        return sum(p.numel() for p in self.parameters())

    def hidden_states(self, idx: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """The final (layer-normed) hidden state of every position: (B, T) -> (B, T, n_embd)."""
        if idx.dim() != 2 or idx.dtype != torch.long:
            raise ValueError(f"idx must be a (batch, time) LongTensor, got shape {tuple(idx.shape)} "
                             f"and dtype {idx.dtype}")
        start = kv_cache.length if kv_cache is not None else 0
        T = idx.size(1)
        if start + T > self.block_size:
            raise ValueError(f"sequence length {start + T} exceeds block_size={self.block_size}; "
                             f"crop the input to the last {self.block_size} tokens")
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for layer, block in enumerate(self.transformer.h):
            x = block(x, kv_cache, layer)
        if kv_cache is not None:
            kv_cache.length += T
        return self.transformer.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for the next token at every position, and the cross-entropy loss if targets
        (B, T) are given; targets equal to -1 are ignored (e.g. the prompt part of an example)."""
        logits = self.lm_head(self.hidden_states(idx))
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
        embeddings = {id(self.transformer.wte.weight), id(self.transformer.wpe.weight)}
        params = list(self.parameters())  # unique: the tied head/embedding appears once
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

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 do_sample: bool = False, top_k: int | None = None, top_p: float | None = None,
                 use_cache: bool = True) -> torch.Tensor:
        """Continue each row of idx (B, T) by max_new_tokens tokens; returns (B, T + max_new_tokens).

        Greedy by default; do_sample=True samples from the softmax at `temperature`, restricted to
        the top_k most likely tokens and/or the smallest set whose probability reaches top_p.
        Call model.eval() first to switch dropout off.
        """
        new = list(self.generate_stream(idx, max_new_tokens, temperature, do_sample, top_k, top_p,
                                        use_cache))
        return torch.cat([idx, *new], dim=1)

    @torch.inference_mode()  # like no_grad, and also skips autograd's bookkeeping of versions and views
    def generate_stream(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                        do_sample: bool = False, top_k: int | None = None,
                        top_p: float | None = None, use_cache: bool = True) -> Iterator[torch.Tensor]:
        """Like generate(), but yields each new token, shape (B, 1), as soon as it is chosen."""
        if temperature < 0:
            raise ValueError(f"temperature={temperature} must be >= 0 (0 means greedy)")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k={top_k} must be >= 1 (or None for no limit)")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p={top_p} must be in (0, 1] (or None for no limit)")
        if idx.dim() != 2 or idx.size(1) == 0:
            raise ValueError(f"idx must be a non-empty (batch, time) tensor, got shape {tuple(idx.shape)}")

        cache = None
        if use_cache and idx.size(1) < self.block_size:
            p = next(self.parameters())
            cache = KVCache(self.config.n_layer, idx.size(0), self.config.n_head, self.block_size,
                            self.config.n_embd // self.config.n_head, p.device, p.dtype)
        step_input = idx  # with a cache: the prompt first, then one token at a time
        # with a cache each step multiplies a few vectors by every weight: decoding() lays the
        # weights out for that (linear.py)
        with decoding(self, max_new_tokens) if cache is not None else nullcontext():
            for _ in range(max_new_tokens):
                if cache is not None and cache.length + step_input.size(1) <= self.block_size:
                    h = self.hidden_states(step_input, cache)
                else:
                    # no cache, or the context outgrew block_size: recompute on the last block_size
                    # tokens (positions shift, so cached keys can no longer be reused)
                    cache = None
                    h = self.hidden_states(idx[:, -self.block_size:])
                logits = self.lm_head(h[:, -1, :])
                next_token = self._choose_next(logits, temperature, do_sample, top_k, top_p)
                idx = torch.cat([idx, next_token], dim=1)
                step_input = next_token
                with torch.inference_mode(False):  # hand out an ordinary tensor, usable anywhere
                    token = next_token.clone()
                yield token

    @staticmethod
    def _choose_next(logits: torch.Tensor, temperature: float, do_sample: bool,
                     top_k: int | None, top_p: float | None) -> torch.Tensor:
        """Pick the next token (B, 1) from the last position's logits (B, vocab)."""
        if not do_sample or temperature == 0:
            return logits.argmax(dim=-1, keepdim=True)
        logits = logits / temperature
        if top_k is not None:
            kth_best = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
            logits = logits.masked_fill(logits < kth_best, float("-inf"))
        if top_p is not None:
            sorted_logits, order = torch.sort(logits, descending=True)
            cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            # drop a token when the ones ranked above it already reach top_p (keeps at least one)
            drop_sorted = cumulative - sorted_logits.softmax(dim=-1) >= top_p
            drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)  # back to vocab order
            logits = logits.masked_fill(drop, float("-inf"))
        return torch.multinomial(logits.softmax(dim=-1), num_samples=1)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: str | torch.device = "cpu") -> "GPT":
        """Load a model: a mingpt run folder (its latest checkpoint) or checkpoint folder, a
        Hugging Face GPT-2 folder (config.json + weights), or OpenAI's GPT-2 by its hub name
        (gpt2, gpt2-medium, gpt2-large, gpt2-xl; downloaded into the Hugging Face cache)."""
        path = Path(name_or_path)
        is_mingpt = any((path / f).exists() for f in (checkpoint.LATEST_FILE, checkpoint.META_FILE))
        if not is_mingpt and hf.is_hf_folder(path):
            return hf.load_hf_gpt2(cls, path, device)
        if not path.exists():
            if str(name_or_path) in hf.HUB_MODELS:  # a local folder of that name would win
                return hf.load_hf_gpt2(cls, str(name_or_path), device)
            if str(name_or_path) in PRESETS:
                raise ValueError(f"{name_or_path!r} names a model shape without released weights; "
                                 f"pass a mingpt run folder or one of {', '.join(hf.HUB_MODELS)}")
            raise FileNotFoundError(f"no mingpt run or checkpoint at {str(path)!r}; pass the "
                                    f"--system.work_dir of a finished run, a Hugging Face GPT-2 "
                                    f"folder, or one of {', '.join(hf.HUB_MODELS)}")
        meta, folder = checkpoint.locate(path)
        if meta.get("model_config") is None:
            raise ValueError(f"the checkpoint in {str(path)!r} is not of a GPT (no model config)")
        config = GPT.get_default_config()
        config.merge_from_dict(meta["model_config"])
        model = cls(config)
        checkpoint.load_weights(model, folder, device)
        return model.to(device)

    def crop_block_size(self, block_size: int) -> None:
        """Shrink the context to block_size (e.g. GPT-2's 1024 to 256 for a cheaper fine-tune) by
        keeping only the first block_size learned positions."""
        if not 1 <= block_size <= self.block_size:
            raise ValueError(f"block_size={block_size} must be between 1 and the model's {self.block_size}")
        wpe = self.transformer.wpe
        wpe.weight = nn.Parameter(wpe.weight.detach()[:block_size].clone())
        wpe.num_embeddings = block_size
        self.block_size = self.config.block_size = block_size

    def save_pretrained(self, directory: str | Path) -> Path:
        """Export as a Hugging Face GPT-2 folder that transformers' GPT2LMHeadModel loads."""
        return hf.save_hf_gpt2(self, directory)


def resolve_config(config: CfgNode) -> CfgNode:
    """Return a copy of config with n_layer/n_head/n_embd filled in from model_type, checked."""
    resolved = CfgNode(**config.to_dict())
    if resolved.model_type is not None:
        if resolved.model_type not in PRESETS:
            raise ValueError(f"unknown model_type {resolved.model_type!r}; choose one of "
                             f"{', '.join(PRESETS)} or set n_layer, n_head and n_embd")
        for key, value in zip(("n_layer", "n_head", "n_embd"), PRESETS[resolved.model_type]):
            if getattr(resolved, key) is None:
                setattr(resolved, key, value)
    for key in ("n_layer", "n_head", "n_embd", "vocab_size", "block_size"):
        value = getattr(resolved, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            hint = "" if key in ("vocab_size", "block_size") else " (or choose a model_type)"
            raise ValueError(f"model.{key} must be a positive integer{hint}, got {value!r}")
    if resolved.n_embd % resolved.n_head != 0:
        raise ValueError(f"n_embd={resolved.n_embd} must be divisible by n_head={resolved.n_head}")
    for key in ("embd_pdrop", "resid_pdrop", "attn_pdrop"):
        if not 0.0 <= getattr(resolved, key) < 1.0:
            raise ValueError(f"model.{key}={getattr(resolved, key)} must be in [0, 1)")
    return resolved
