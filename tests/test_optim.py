"""Optimizers apart from the loop: the schedule, lr multipliers per group, and several optimizers
stepping as one (OptimizerSet) through the Trainer, its checkpoints and an exact resume."""
import pytest
import torch

from helpers import pattern_stream, quick_config, tiny_gpt
from mingpt import optim
from mingpt.model import GPT
from mingpt.optim import OptimizerSet
from mingpt.trainer import Trainer


class TwoOptimizers(GPT):
    """A GPT whose matrices take SGD with momentum at 10x the schedule's rate and the rest
    AdamW: the shape Muon + AdamW will have."""

    def configure_optimizers(self, c):
        matrices = [p for p in self.parameters() if p.dim() >= 2]
        others = [p for p in self.parameters() if p.dim() < 2]
        return OptimizerSet([
            torch.optim.SGD([{"params": matrices, "lr_mult": 10.0}], lr=c.learning_rate, momentum=0.9),
            torch.optim.AdamW([{"params": others}], lr=c.learning_rate, betas=tuple(c.betas))])


def two_optimizer_gpt() -> TwoOptimizers:
    torch.manual_seed(0)
    config = tiny_gpt(vocab_size=7).config
    return TwoOptimizers(config)


def test_set_lr_scales_each_group_by_its_multiplier():
    model = two_optimizer_gpt()
    optimizer = model.configure_optimizers(quick_config())
    optim.set_lr(optimizer, 0.02)
    assert [g["lr"] for g in optimizer.param_groups] == [pytest.approx(0.2), pytest.approx(0.02)]
    assert len(optimizer.param_groups) == 2
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_an_optimizer_set_steps_each_member_and_its_state_round_trips():
    model = two_optimizer_gpt()
    optimizer = model.configure_optimizers(quick_config())
    x = torch.randint(7, (4, 16))
    model(x, x)[1].backward()
    optimizer.step()
    sd = optimizer.state_dict()
    assert sorted(sd["state"]) == list(range(len(list(model.parameters()))))  # one numbering
    assert "momentum_buffer" in sd["state"][0] and "exp_avg" in sd["state"][len(sd["state"]) - 1]
    again = two_optimizer_gpt().configure_optimizers(quick_config())
    again.load_state_dict(sd)
    for a, b in zip(again.optimizers, optimizer.optimizers):
        for sa, sb in zip(a.state_dict()["state"].values(), b.state_dict()["state"].values()):
            assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_two_optimizers_train_checkpoint_and_resume_exactly(tmp_path):
    def run(work_dir, max_iters, resume=False):
        trainer = Trainer(quick_config(max_iters=max_iters, eval_interval=5, learning_rate=1e-2, lr_decay=False),
                          two_optimizer_gpt(), pattern_stream(), work_dir=work_dir, resume=resume)
        trainer.run()
        return trainer

    straight = run(tmp_path / "straight", 20)
    assert straight.metrics[-1]["loss"] < 0.7 * straight.metrics[0]["loss"]
    run(tmp_path / "cut", 10)
    resumed = run(tmp_path / "cut", 20, resume=True)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
