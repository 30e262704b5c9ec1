"""Muon (optim.py): the Newton-Schulz iteration, one step written out, which parameters it takes,
AdamW for the rest, checkpoints and exact resume, and 2 processes (DDP, FSDP2) matching one.

The 2-process part runs this file under torchrun (the `__main__` block at the end):
    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/test_muon.py OUT
"""
import copy
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from helpers import (BATCH, STEPS, ULPS_FORWARD, ULPS_OP, ULPS_TRAINING, assert_close_to, final_tensors, pattern_stream,
                     quick_config, rows_without_timing, states_ulps_apart, tiny_gpt, tiny_run)
from mingpt.model import GPT
from mingpt.trainer import Trainer
from mingpt.training import optim, schedule
from mingpt.training.muon import Muon, ns_dtype, orthogonalize
from mingpt.training.optim import OptimizerSet


def muon_config(**overrides):
    return quick_config(optimizer="muon", **overrides)


def matrix_with_singular_values(rows: int, cols: int, values: torch.Tensor) -> torch.Tensor:
    u, _ = torch.linalg.qr(torch.randn(rows, rows))
    v, _ = torch.linalg.qr(torch.randn(cols, cols))
    return u[:, :len(values)] @ torch.diag(values) @ v[:, :len(values)].T


# -- the Newton-Schulz iteration --------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(96, 24), (24, 96), (64, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_newton_schulz_moves_every_singular_value_into_the_quintic_band(shape, dtype):
    """The quintic's 5 steps do not converge to 1: they leave singular values in about [0.68, 1.21]
    (measured on these shapes), for inputs whose singular values span a factor of up to 100.
    (A random square matrix has some far smaller ones, which 5 steps do not lift all the way.)"""
    rows, cols = shape
    g = matrix_with_singular_values(rows, cols, torch.logspace(1, -1, min(shape)))  # 10 .. 0.1
    o = orthogonalize(g, dtype=dtype)
    assert o.shape == g.shape and o.dtype == g.dtype
    s = torch.linalg.svdvals(o)
    assert 0.6 < s.min() and s.max() < 1.25, (s.min().item(), s.max().item())
    # the singular vectors stay: o is close to U V^T of g (cosine similarity of the entries)
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    assert torch.nn.functional.cosine_similarity((u @ vh).flatten(), o.flatten(), dim=0) > 0.97


def test_newton_schulz_of_random_tall_and_wide_matrices_is_near_orthogonal():
    for shape in [(384, 128), (128, 512)]:
        s = torch.linalg.svdvals(orthogonalize(torch.randn(shape)))
        assert 0.6 < s.min() and s.max() < 1.25


# -- one step, written out -----------------------------------------------------------------------------
def newton_schulz_written_out(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Keller Jordan's quintic, as the papers write it, on the wide form of g."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.T if g.shape[0] > g.shape[1] else g
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + b * gram @ x + c * gram @ gram @ x
    return x.T if g.shape[0] > g.shape[1] else x


@pytest.mark.parametrize("nesterov", [True, False])
def test_two_muon_steps_match_the_update_written_out(nesterov):
    lr, mu, decay = 0.1, 0.9, 0.01
    weights = [torch.randn(12, 8), torch.randn(8, 12)]  # tall (scale sqrt(12/8)) and wide (scale 1)
    params = [nn.Parameter(w.clone()) for w in weights]
    muon = Muon(params, lr=lr, momentum=mu, nesterov=nesterov, weight_decay=decay)
    buffers = [torch.zeros_like(w) for w in weights]
    for _ in range(2):
        grads = [torch.randn_like(w) for w in weights]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        muon.step()
        for i, (w, g) in enumerate(zip(weights, grads)):
            buffers[i] = mu * buffers[i] + (1 - mu) * g
            update = (1 - mu) * g + mu * buffers[i] if nesterov else buffers[i]
            scale = math.sqrt(max(1.0, w.shape[0] / w.shape[1]))
            weights[i] = w * (1 - lr * decay) - lr * scale * newton_schulz_written_out(update)
    for p, w, buf in zip(params, weights, buffers):
        assert_close_to(w, p.detach(), ULPS_FORWARD)  # (five Newton-Schulz steps, their products in another order)
        assert_close_to(buf, muon.state[p]["momentum_buffer"], ULPS_OP)


def test_in_bf16_muon_steps_as_torchs_own_muon_does():
    """torch.optim.Muon (which always iterates in bf16, one matrix at a time) and ours with
    ns_dtype="bf16" (the matrices of one shape batched) take the same steps, up to bf16's rounding
    of the update: they compute the same thing, as README says of ours."""
    torch.manual_seed(0)
    weights = [torch.randn(24, 16), torch.randn(16, 24), torch.randn(16, 24)]
    ours_params, theirs_params = ([nn.Parameter(w.clone()) for w in weights] for _ in range(2))
    ours = Muon(ours_params, lr=0.02, momentum=0.95, weight_decay=0.01, ns_dtype="bf16")
    theirs = torch.optim.Muon(theirs_params, lr=0.02, momentum=0.95, weight_decay=0.01)
    for _ in range(3):
        grads = [torch.randn_like(w) for w in weights]
        for params in (ours_params, theirs_params):
            for p, g in zip(params, grads):
                p.grad = g.clone()
        ours.step()
        theirs.step()
    for a, b, w in zip(ours_params, theirs_params, weights):
        steps = (b.detach() - w)  # what torch's Muon moved the weight by: bf16's ulps are of this size
        assert (a.detach() - b.detach()).abs().max() <= ULPS_OP * torch.finfo(torch.bfloat16).eps * steps.abs().max()


def test_muon_refuses_what_is_not_a_matrix_and_a_momentum_outside_0_1():
    with pytest.raises(ValueError, match=r"Muon takes 2-D matrices only, got a parameter of shape \(8,\)"):
        Muon([nn.Parameter(torch.zeros(8))])
    with pytest.raises(ValueError, match="momentum=1.0 must be in"):
        Muon([nn.Parameter(torch.zeros(2, 2))], momentum=1.0)
    with pytest.raises(ValueError, match="ns_dtype='fp8' must be one of 'auto', 'fast', 'fp32', 'bf16'"):
        Muon([nn.Parameter(torch.zeros(2, 2))], ns_dtype="fp8")


# -- which parameters go where --------------------------------------------------------------------------
def untied_gpt() -> GPT:
    config = tiny_gpt().config
    config.tie_embeddings = False
    return GPT(config)


def names_by_member(model: nn.Module, optimizer: OptimizerSet) -> list[set[str]]:
    name_of = {id(p): name for name, p in model.named_parameters()}
    return [{name_of[id(p)] for g in o.param_groups for p in g["params"]} for o in optimizer.optimizers]


@pytest.mark.parametrize("tied", [True, False])
def test_muon_takes_the_blocks_matrices_and_adamw_the_embeddings_head_and_vectors(tied):
    model = tiny_gpt() if tied else untied_gpt()
    optimizer = optim.build(model, muon_config())
    assert [type(o) for o in optimizer.optimizers] == [Muon, torch.optim.AdamW]
    muon, adamw = names_by_member(model, optimizer)
    matrices = {f"transformer.h.{i}.{m}.weight" for i in range(2)
                for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert muon == matrices
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight"} <= adamw
    assert ("lm_head.weight" in adamw) == (not tied)  # tied: the head is wte itself
    assert muon | adamw == {name for name, _ in model.named_parameters()} and not muon & adamw
    # AdamW decays only an untied head, as configure_optimizers does
    groups = optimizer.optimizers[1].param_groups
    if tied:
        assert [g["weight_decay"] for g in groups] == [0.0]
    else:
        assert [g["weight_decay"] for g in groups] == [0.1, 0.0] and groups[0]["params"] == [model.lm_head.weight]


def test_each_group_follows_the_schedule_at_its_own_peak_rate():
    optimizer = optim.build(tiny_gpt(), muon_config(learning_rate=1e-3, muon_lr=0.05))
    schedule.apply_schedule(optimizer, 0, muon_config(learning_rate=1e-3, muon_lr=0.05, warmup_iters=10))
    muon_group, adamw_group = optimizer.param_groups
    assert muon_group["lr"] == pytest.approx(0.005) and adamw_group["lr"] == pytest.approx(1e-4)


class EmbeddingModel(nn.Module):
    """Not a GPT, without parameter_roles(): an embedding, a tied head, a hidden matrix, a gain."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 8)
        self.hidden = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 7, bias=False)
        self.head.weight = self.embed.weight  # shared with the embedding
        self.kernel = nn.Parameter(torch.randn(2, 2, 2))  # neither a matrix nor a vector

    def forward(self, x, y):
        logits = self.head(self.norm(torch.relu(self.hidden(self.embed(x))) + self.kernel.sum()))
        return logits, nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())


def test_a_model_without_parameter_roles_gives_muon_its_2d_parameters_but_embeddings():
    model = EmbeddingModel()
    muon, adamw = names_by_member(model, optim.build(model, muon_config()))
    assert muon == {"hidden.weight"}
    assert adamw == {"embed.weight", "hidden.bias", "norm.weight", "norm.bias", "kernel"}
    trainer = Trainer(muon_config(max_iters=30, learning_rate=0.01), model, pattern_stream())
    trainer.run()
    assert trainer.metrics[-1]["loss"] < 0.8 * trainer.metrics[0]["loss"]


def test_parameter_roles_that_leave_a_parameter_out_are_refused():
    model = tiny_gpt()
    roles = model.parameter_roles()
    model.parameter_roles = lambda: {**roles, "vectors": roles["vectors"][1:]}
    refusal = r"parameter_roles\(\) must name every trainable parameter once: it leaves out \['transformer"
    with pytest.raises(ValueError, match=refusal):
        optim.build(model, muon_config())


# -- the AdamW part ----------------------------------------------------------------------------------------
def test_the_adamw_part_is_exactly_torchs_adamw_on_those_parameters():
    """With the same gradients, the embeddings, head and vectors move exactly as under a plain
    torch AdamW given the same groups (and Muon's matrices are left to Muon)."""
    model = untied_gpt()
    reference = copy.deepcopy(model)
    optimizer = optim.build(model, muon_config(learning_rate=1e-2))
    roles = reference.parameter_roles()
    adamw = torch.optim.AdamW([{"params": roles["head"], "weight_decay": 0.1},
                               {"params": roles["embeddings"] + roles["vectors"], "weight_decay": 0.0}],
                              lr=1e-2, betas=(0.9, 0.95), fused=True)
    for _ in range(3):
        for p, q in zip(model.parameters(), reference.parameters()):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        optimizer.step()
        adamw.step()
    others = {id(p) for ps in (roles["head"], roles["embeddings"], roles["vectors"]) for p in ps}
    compared = 0
    for p, q in zip(model.parameters(), reference.parameters()):
        if id(q) in others:
            assert torch.equal(p, q)
            compared += 1
    assert compared == len(others)


# -- state, checkpoints, resume --------------------------------------------------------------------------
def test_the_state_dict_round_trips_and_training_goes_on_alike():
    torch.manual_seed(0)
    model = tiny_gpt(vocab_size=7)
    optimizer = optim.build(model, muon_config())
    x = torch.randint(7, (4, 16))
    model(x, x)[1].backward()
    optimizer.step()
    sd = optimizer.state_dict()
    assert all("momentum_buffer" in sd["state"][i] for i in range(8))  # Muon's 8 matrices first
    again_model = copy.deepcopy(model)
    again = optim.build(again_model, muon_config())
    again.load_state_dict(copy.deepcopy(sd))  # (a copy: loading keeps the very tensors it is given)
    for m, opt in ((model, optimizer), (again_model, again)):
        opt.zero_grad()
        m(x, x)[1].backward()
        opt.step()
    for a, b in zip(model.parameters(), again_model.parameters()):
        assert torch.equal(a, b)


def test_muon_trains_checkpoints_and_resumes_exactly(tmp_path):
    """Stopped after 10 of 20 iterations, inside the momentum warmup (15) and before the wsd
    cooldown (the last 5), and resumed: the weights and metrics are the straight run's, bitwise."""
    def run(work_dir, stop_after=None, resume=False):
        torch.manual_seed(0)
        c = muon_config(max_iters=20, eval_interval=5, lr_schedule="wsd", cooldown_fraction=0.25,
                        muon_momentum_warmup_iters=15, muon_weight_decay=0.01)
        trainer = Trainer(c, tiny_gpt(vocab_size=7), pattern_stream(), work_dir=work_dir, resume=resume)
        if stop_after is not None:
            trainer.add_callback("on_batch_end", lambda t: t.iter_num + 1 == stop_after and t.stop())
        trainer.run()
        return trainer

    straight = run(tmp_path / "straight")
    assert run(tmp_path / "cut", stop_after=10).iter_num == 10
    resumed = run(tmp_path / "cut", resume=True)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    assert rows_without_timing(tmp_path / "straight") == rows_without_timing(tmp_path / "cut")
    assert resumed.optimizer.optimizers[0].param_groups[0]["momentum"] == 0.95  # warmed up


def test_muon_learns_the_toy_problem():
    """50 iterations on the cycle of 7 tokens. (Against AdamW at the same steps it is about even
    on this toy: better on some seeds, worse on others; so only that it learns is asserted.)"""
    torch.manual_seed(0)
    trainer = Trainer(muon_config(max_iters=50), tiny_gpt(vocab_size=7), pattern_stream())
    trainer.run()
    assert trainer.metrics[-1]["loss"] < 0.3 * trainer.metrics[0]["loss"]


# -- two processes: DDP and FSDP2 -------------------------------------------------------------------------
def test_two_processes_under_ddp_and_fsdp_match_one_and_fsdp_resumes_exactly(tmp_path):
    """2 gloo processes of batch b, Muon on the matrices: DDP averages the gradients before the
    step; FSDP2 orthogonalises each sharded matrix whole. Both match 1 process of batch 2b; an FSDP
    run cut at 3 of 6 steps and resumed is bitwise the straight one."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               __file__, str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    one = tiny_run(batch_size=2 * BATCH, optimizer="muon")
    one.run()
    expected = {name: t.detach() for name, t in one.model.state_dict().items()}
    for name in ("ddp", "fsdp"):
        apart = states_ulps_apart(expected, GPT.from_pretrained(tmp_path / name).state_dict())
        print(f"Muon, {name} 2 x b={BATCH} vs 1 x {2 * BATCH}, k={STEPS}: weights {apart:.1f} ulps apart")
        assert apart <= ULPS_TRAINING, name
    straight, resumed = final_tensors(tmp_path / "fsdp"), final_tensors(tmp_path / "fsdp_resumed")
    assert straight.keys() == resumed.keys()
    assert any(".momentum_buffer" in k for k in straight)
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k


def two_process_runs(out: Path) -> None:
    """Under torchrun: the runs the test above compares with one process."""
    torch.set_num_threads(1)
    tiny_run(out / "ddp", optimizer="muon").run()
    tiny_run(out / "fsdp", optimizer="muon", fsdp=True).run()  # checkpoints at 3 and 6
    tiny_run(out / "fsdp_resumed", optimizer="muon", fsdp=True, max_iters=STEPS // 2).run()
    tiny_run(out / "fsdp_resumed", optimizer="muon", fsdp=True, resume=True).run()


if __name__ == "__main__":
    two_process_runs(Path(sys.argv[1]))


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(False, False, torch.float32), (True, False, torch.bfloat16),
                                                        (False, True, torch.bfloat16)])
def test_fast_newton_schulz_is_bf16_only_on_cpus_that_multiply_bf16_natively(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    cpu = torch.device("cpu")
    assert ns_dtype("fast", cpu) == expected
    assert ns_dtype("auto", cpu) == torch.float32  # the same result on every CPU
    assert ns_dtype("auto", torch.device("cuda")) == ns_dtype("fast", torch.device("cuda")) == torch.bfloat16
    assert ns_dtype("fp32", torch.device("cuda")) == torch.float32 and ns_dtype("bf16", cpu) == torch.bfloat16
