"""Optimizers apart from the loop: lr multipliers per group, several optimizers stepping as one
(OptimizerSet) through the Trainer, its checkpoints and an exact resume; the schedules (cosine is
in test_trainer.py, WSD and Muon's momentum warmup here); AdamW as the default, as it was; and the
refusals of settings that make no sense. (Muon itself: test_muon.py.)"""
import pytest
import torch

from helpers import pattern_stream, quick_config, tiny_gpt
from mingpt.model import GPT
from mingpt.trainer import Trainer
from mingpt.training import optim, schedule
from mingpt.training.optim import OptimizerSet


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
    schedule.set_lr(optimizer, 0.02)
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


def test_an_optimizer_set_is_a_torch_optimizer_whose_step_hooks_run():
    """torch's machinery works through it: step pre- and post-hooks run once per step (torchft's
    DiLoCo takes its outer step in one), its groups are the members' own dicts, its state theirs."""
    model = two_optimizer_gpt()
    optimizer = model.configure_optimizers(quick_config())
    assert isinstance(optimizer, torch.optim.Optimizer)
    calls = []
    pre = optimizer.register_step_pre_hook(lambda opt, args, kwargs: calls.append("pre"))
    post = optimizer.register_step_post_hook(lambda opt, args, kwargs: calls.append("post"))
    x = torch.randint(7, (4, 16))
    for _ in range(2):
        model(x, x)[1].backward()
        optimizer.step()
        optimizer.zero_grad()
    assert calls == ["pre", "post"] * 2
    pre.remove(), post.remove()
    optimizer.step()
    assert calls == ["pre", "post"] * 2  # removed: they run no more
    member_groups = [g for o in optimizer.optimizers for g in o.param_groups]
    assert all(a is b for a, b in zip(optimizer.param_groups, member_groups))
    assert len(optimizer.state) == len(list(model.parameters()))
    assert all(optimizer.state[p] is o.state[p] for o in optimizer.optimizers for p in o.state)


def test_two_optimizers_train_checkpoint_and_resume_exactly(tmp_path):
    def run(work_dir, max_iters, resume=False):
        trainer = Trainer(quick_config(max_iters=max_iters, eval_interval=5, learning_rate=1e-2, lr_schedule="constant"),
                          two_optimizer_gpt(), pattern_stream(), work_dir=work_dir, resume=resume)
        trainer.run()
        return trainer

    straight = run(tmp_path / "straight", 20)
    assert straight.metrics[-1]["loss"] < 0.7 * straight.metrics[0]["loss"]
    run(tmp_path / "cut", 10)
    resumed = run(tmp_path / "cut", 20, resume=True)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


# -- schedules ---------------------------------------------------------------------------------------
def schedule_config(**overrides):
    return quick_config(**{**dict(max_iters=100, warmup_iters=10, learning_rate=1.0, min_lr_ratio=0.1), **overrides})


@pytest.mark.parametrize("shape, at_90", [("linear", 0.55), ("1-sqrt", 0.1 + 0.9 * (1 - 0.5 ** 0.5))])
def test_warmup_stable_decay_holds_the_rate_then_cools_down_to_the_floor(shape, at_90):
    c = schedule_config(lr_schedule="wsd", cooldown_fraction=0.2, cooldown_shape=shape)
    assert schedule.lr_at(0, c) == pytest.approx(0.1)  # warmup: (it + 1) / warmup_iters
    assert schedule.lr_at(9, c) == pytest.approx(1.0)  # the warmup's end
    assert schedule.lr_at(50, c) == 1.0 and schedule.lr_at(80, c) == 1.0  # stable, up to the cooldown's start
    assert schedule.lr_at(90, c) == pytest.approx(at_90)  # halfway through the cooldown
    assert schedule.lr_at(100, c) == pytest.approx(0.1)  # the floor, at max_iters
    lrs = [schedule.lr_at(i, c) for i in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_lr_decay_as_code_written_before_lr_schedule_sets_it_still_says_decay_or_not():
    c = schedule_config(lr_schedule="wsd", lr_decay=False)  # (a key the config no longer has: set by hand)
    assert [schedule.lr_at(i, c) for i in (9, 80, 99, 100)] == [1.0, 1.0, 1.0, 1.0]
    cosine, wsd = schedule_config(lr_schedule="constant", lr_decay=True), schedule_config(lr_schedule="wsd", lr_decay=True)
    assert schedule.lr_at(55, cosine) == schedule.lr_at(55, schedule_config(lr_schedule="cosine")) < 1.0
    assert schedule.lr_at(90, wsd) == schedule.lr_at(90, schedule_config(lr_schedule="wsd")) < 1.0
    assert Trainer.get_default_config().lr_schedule == "constant"  # minGPT's rate


def test_a_cooldown_longer_than_the_run_after_warmup_starts_when_the_warmup_ends():
    c = schedule_config(lr_schedule="wsd", cooldown_fraction=1.0)
    assert schedule.lr_at(10, c) == 1.0 and schedule.lr_at(55, c) == pytest.approx(0.55)


def test_a_time_budget_moves_the_wsd_cooldown_to_whichever_comes_first():
    c = schedule_config(lr_schedule="wsd", cooldown_fraction=0.2)  # iterations 80..100, or 80%..100% of the time
    assert schedule.lr_at(50, c, time_fraction=0.5) == 1.0  # neither has begun its cooldown
    assert schedule.lr_at(50, c, time_fraction=0.9) == pytest.approx(0.55)  # halfway through the time's
    assert schedule.lr_at(90, c, time_fraction=0.1) == pytest.approx(0.55)  # halfway through the iterations'
    assert schedule.lr_at(95, c, time_fraction=0.9) == pytest.approx(0.325)  # the further along wins
    assert schedule.lr_at(50, c, time_fraction=1.5) == pytest.approx(0.1)  # over budget: the floor
    no_limit = schedule_config(lr_schedule="wsd", cooldown_fraction=0.2, max_iters=None)
    assert schedule.lr_at(5000, no_limit) == 1.0  # no budget of either kind: constant
    assert schedule.lr_at(5000, no_limit, time_fraction=0.9) == pytest.approx(0.55)
    cosine = schedule_config(lr_schedule="cosine")
    assert schedule.lr_at(50, cosine, time_fraction=0.99) == schedule.lr_at(50, cosine)  # only wsd follows the clock


def test_muon_momentum_warms_up_linearly_then_holds():
    c = quick_config(muon_momentum_start=0.85, muon_momentum=0.95, muon_momentum_warmup_iters=300)
    assert [schedule.momentum_at(i, c) for i in (0, 150, 300, 1000)] == pytest.approx([0.85, 0.90, 0.95, 0.95])
    assert schedule.momentum_at(0, quick_config(muon_momentum_warmup_iters=0)) == 0.95


def test_apply_schedule_sets_every_lr_and_only_muons_momentum():
    model = tiny_gpt(vocab_size=7)
    c = quick_config(optimizer="muon", muon_momentum_warmup_iters=10, warmup_iters=10)
    sgd = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.5)
    optimizer = OptimizerSet([*optim.build(model, c).optimizers, sgd])
    assert schedule.apply_schedule(optimizer, 5, c) == pytest.approx(schedule.lr_at(5, c))
    muon_group, *_, sgd_group = optimizer.param_groups
    assert muon_group["momentum"] == pytest.approx(0.9) and sgd_group["momentum"] == 0.5
    assert muon_group["lr"] == pytest.approx(schedule.lr_at(5, c) * c.muon_lr / c.learning_rate)
    assert schedule.apply_schedule(optimizer, 5, c, lr=0.5) == 0.5 and sgd_group["lr"] == 0.5


def test_a_trainer_that_overrides_lr_at_still_sets_the_rate():
    class Frozen(Trainer):
        def lr_at(self, it):
            return 0.0

    model = tiny_gpt(vocab_size=7)
    before = [p.detach().clone() for p in model.parameters()]
    Frozen(quick_config(max_iters=3), model, pattern_stream()).run()
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


# -- the default is today's AdamW ----------------------------------------------------------------------
def test_adamw_is_the_models_own_optimizer_and_trains_bitwise_as_before(monkeypatch):
    """optimizer="adamw" builds configure_optimizers' AdamW, and the loop with apply_schedule gives
    the very losses and weights of the loop as it was (build = configure_optimizers, set_lr)."""
    model = tiny_gpt(vocab_size=7)
    built, own = optim.build(model, quick_config()), model.configure_optimizers(quick_config())
    assert type(built) is torch.optim.AdamW
    assert [{k: v for k, v in g.items() if k != "params"} for g in built.param_groups] == \
           [{k: v for k, v in g.items() if k != "params"} for g in own.param_groups]

    def train():
        torch.manual_seed(0)
        trainer = Trainer(quick_config(max_iters=8, log_interval=1, warmup_iters=3), tiny_gpt(vocab_size=7),
                          pattern_stream())
        trainer.run()
        return [row["loss"] for row in trainer.metrics], list(trainer.model.parameters())

    losses, weights = train()
    monkeypatch.setattr(optim, "build", lambda model, c: model.configure_optimizers(c))
    monkeypatch.setattr(schedule, "apply_schedule", lambda optimizer, it, c, lr: schedule.set_lr(optimizer, lr))
    old_losses, old_weights = train()
    assert losses == old_losses
    assert all(torch.equal(a, b) for a, b in zip(weights, old_weights))


# -- bad settings ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("key, value, message", [
    ("optimizer", "sgd", "trainer.optimizer='sgd' must be one of 'adamw', 'muon'"),
    ("lr_schedule", "step", "trainer.lr_schedule='step' must be one of 'constant', 'cosine', 'wsd'"),
    ("cooldown_shape", "sqrt", "trainer.cooldown_shape='sqrt' must be one of 'linear', '1-sqrt'"),
    ("muon_ns_dtype", "fp16", "trainer.muon_ns_dtype='fp16' must be one of 'auto', 'fast', 'fp32', 'bf16'"),
    ("cooldown_fraction", -0.1, "trainer.cooldown_fraction=-0.1 must be between 0 and 1"),
    ("min_lr_ratio", 2.0, "trainer.min_lr_ratio=2.0 must be between 0 and 1"),
    ("muon_momentum", 1.0, r"trainer.muon_momentum=1.0 must be in \[0, 1\)"),
    ("muon_momentum_start", -0.5, r"trainer.muon_momentum_start=-0.5 must be in \[0, 1\)"),
    ("muon_momentum_warmup_iters", -1, "trainer.muon_momentum_warmup_iters=-1 must be >= 0"),
    ("warmup_iters", -5, "trainer.warmup_iters=-5 must be >= 0"),
    ("muon_lr", 0.0, r"trainer.muon_lr=0.0 must be > 0"),
    ("muon_weight_decay", -0.1, "trainer.muon_weight_decay=-0.1 must be >= 0"),
])
def test_unknown_names_and_senseless_settings_are_refused_in_one_line(key, value, message):
    with pytest.raises(ValueError, match=message) as refused:
        Trainer(quick_config(**{key: value}), tiny_gpt(vocab_size=7), pattern_stream())
    assert "\n" not in str(refused.value)
