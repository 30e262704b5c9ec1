"""The Trainer: any (logits, loss) module, both kinds of dataset, the schedule, the run folder,
stopping early (a target val loss, a time budget) and resuming only the model and optimizer it saved."""
import json
import os
import signal

import pytest
import torch
import torch.nn as nn

from helpers import (ULPS_TRAINING, Bigram, assert_close_to, latest_iteration, pattern_stream, quick_config,
                     rows_without_timing, tiny_gpt, ulps_apart)
from mingpt.model import GPT
from mingpt.trainer import Trainer


def test_trains_any_module_that_returns_logits_and_loss():
    trainer = Trainer(quick_config(max_iters=100, learning_rate=0.1), Bigram(7), pattern_stream())
    trainer.run()
    assert trainer.metrics[-1]["loss"] < 0.5 * trainer.metrics[0]["loss"]


def test_a_plain_dataset_of_pairs_still_works():
    class Pairs(torch.utils.data.Dataset):  # minGPT's per-example interface
        def __len__(self):
            return 1000

        def __getitem__(self, i):
            chunk = torch.arange(i, i + 17) % 7
            return chunk[:-1], chunk[1:]

    trainer = Trainer(quick_config(max_iters=40), tiny_gpt(vocab_size=7), Pairs())
    seen = []
    trainer.set_callback("on_batch_end", lambda t: seen.append(t.iter_num))
    trainer.run()
    assert seen == list(range(40))
    assert trainer.iter_num == 40
    assert trainer.metrics[-1]["loss"] < trainer.metrics[0]["loss"]


def test_warmup_then_cosine_decay_to_the_floor():
    trainer = Trainer(quick_config(max_iters=110, warmup_iters=10, learning_rate=1.0, min_lr_ratio=0.1),
                      Bigram(7), pattern_stream())
    assert trainer.lr_at(0) == pytest.approx(0.1)
    assert trainer.lr_at(9) == pytest.approx(1.0)
    assert trainer.lr_at(60) == pytest.approx(0.55)  # halfway through the decay
    assert trainer.lr_at(110) == pytest.approx(0.1)
    lrs = [trainer.lr_at(i) for i in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def train_weights(steps: int, **overrides) -> torch.Tensor:
    """All the weights of a tiny GPT (same init, same data seed) after `steps` optimizer steps
    at the default learning rate, 3e-4 (see the test below for why)."""
    torch.manual_seed(0)
    model = tiny_gpt(vocab_size=7)
    Trainer(quick_config(max_iters=steps, learning_rate=3e-4, **overrides), model, pattern_stream()).run()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_gradient_accumulation_matches_one_big_batch():
    """k=5 steps of 2 micro-batches of b=8 give the weights of 5 steps of one batch of 16: every
    step draws the same 16 examples, and the loss of each micro-batch is divided by 2.

    Only the order of the float sums differs (~1e-7 relative), but Adam divides each gradient by
    its own scale, so where a gradient is nearly zero (the attention's key biases have none) that
    noise becomes a visible part of the update: the difference grows with lr and k (here about
    2e-7, 2 ulps at the weights' magnitude; at lr 1e-3 3.6e-7, at 3e-3 1.2e-6).
    """
    big = train_weights(5, batch_size=16)
    accumulated = train_weights(5, batch_size=8, grad_accum_steps=2)
    stated = train_weights(5, batch_size=8, global_batch_size=16)  # the same, stated globally
    apart = ulps_apart(big, accumulated)
    print(f"accumulation 2 x b=8 vs batch 16, k=5: weights {apart:.1f} ulps apart")
    assert apart <= ULPS_TRAINING
    assert torch.equal(accumulated, stated)


def test_global_batch_size_sets_the_accumulation_and_the_run_folder_records_it(tmp_path):
    trainer = Trainer(quick_config(batch_size=4, global_batch_size=12), Bigram(7), pattern_stream(),
                      work_dir=tmp_path, run_config={"anything": 1})
    assert trainer.grad_accum_steps == 3
    trainer.run()
    resolved = json.loads((tmp_path / "config.json").read_text())["resolved"]
    assert resolved == {"world_size": 1, "grad_accum_steps": 3, "global_batch_size": 12, "dtype": "fp32"}
    with pytest.raises(ValueError, match=r"global_batch_size=10 must be a multiple of trainer.batch_size "
                                         r"x processes = 4 x 1 = 4"):
        Trainer(quick_config(batch_size=4, global_batch_size=10), Bigram(7), pattern_stream())


def test_run_folder_holds_config_metrics_summary_plot_and_a_loadable_checkpoint(tmp_path):
    model = tiny_gpt(vocab_size=7)
    trainer = Trainer(quick_config(), model, pattern_stream(), pattern_stream(800), work_dir=tmp_path,
                      run_config={"anything": 1})
    summary = trainer.run()
    assert json.loads((tmp_path / "config.json").read_text())["anything"] == 1
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all({"iter", "loss", "lr", "ms", "tokens_per_s"} <= row.keys() for row in rows)
    val_rows = [row for row in rows if "val_loss" in row]
    assert [row["iter"] for row in val_rows] == [10, 20, 30]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["iters"] == 30 and saved["val_loss"] == min(r["val_loss"] for r in val_rows)
    assert saved["tokens_per_s"] > 0 and saved["wall_s"] > 0 and summary == saved
    assert (tmp_path / "loss.png").stat().st_size > 1000

    # latest.json names the final checkpoint, best.json the lowest val loss; the final reloads exactly
    best_iter = min(val_rows, key=lambda r: r["val_loss"])["iter"]
    assert json.loads((tmp_path / "latest.json").read_text())["checkpoint"] == "checkpoints/iter_0000030"
    assert json.loads((tmp_path / "best.json").read_text())["checkpoint"].endswith(f"{best_iter:07d}")
    reloaded = GPT.from_pretrained(tmp_path)
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), name
    x = torch.randint(7, (2, 16))
    assert reloaded(x)[0].shape == (2, 16, 7)


def test_stop_ends_training_after_the_current_iteration():
    trainer = Trainer(quick_config(max_iters=100), Bigram(7), pattern_stream())
    trainer.add_callback("on_batch_end", lambda t: t.stop() if t.iter_num == 4 else None)
    summary = trainer.run()
    assert summary["iters"] == 5 and summary["stop_reason"] == "stop()"


def test_logged_values_join_the_metrics_row():
    trainer = Trainer(quick_config(max_iters=7, log_interval=100), Bigram(7), pattern_stream())
    trainer.add_callback("on_batch_end", lambda t: t.log(score=0.5) if t.iter_num == 2 else None)
    trainer.run()
    assert [(r["iter"], r.get("score")) for r in trainer.metrics] == [(3, 0.5), (7, None)]


def test_divergence_names_the_iteration_and_keeps_the_last_good_checkpoint(tmp_path):
    class ExplodesAtSeven(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.calls = tiny_gpt(vocab_size=7), 0

        def forward(self, x, y=None):
            self.calls += 1
            logits, loss = self.inner(x, y)
            return logits, loss * float("nan") if self.calls == 7 else loss

    trainer = Trainer(quick_config(max_iters=20, eval_interval=5), ExplodesAtSeven(), pattern_stream(),
                      work_dir=tmp_path)
    with pytest.raises(FloatingPointError, match="diverged at iteration 7: the loss is nan; the last good"):
        trainer.run()
    assert json.loads((tmp_path / "latest.json").read_text())["checkpoint"] == "checkpoints/iter_0000005"


@pytest.mark.parametrize("key, value, message", [
    ("batch_size", 0, "batch_size=0 must be >= 1"),
    ("learning_rate", 0.0, "learning_rate=0.0 must be > 0"),
    ("grad_accum_steps", 0, "grad_accum_steps=0 must be >= 1"),
    ("dtype", "fp8", "trainer.dtype='fp8' must be one of 'auto', 'fast', 'fp32', 'bf16', 'fp16'"),
    ("max_seconds", 0, "trainer.max_seconds=0 must be > 0, or None"),
    ("target_val_loss", "low", "trainer.target_val_loss='low' must be a finite number, or None"),
])
def test_impossible_settings_are_refused(key, value, message):
    with pytest.raises(ValueError, match=message):
        Trainer(quick_config(**{key: value}), Bigram(7), pattern_stream())


@pytest.mark.slow
def test_compiled_training_matches_eager_and_reports_its_one_time_cost():
    losses = {}
    for compile_model in (False, True):
        torch.manual_seed(0)
        trainer = Trainer(quick_config(max_iters=10, compile=compile_model), tiny_gpt(vocab_size=7),
                          pattern_stream())
        summary = trainer.run()
        losses[compile_model] = [row["loss"] for row in trainer.metrics]
        assert ("compile_s" in summary) == compile_model
    assert_close_to(losses[False], losses[True], ULPS_TRAINING)  # (inductor fuses: other roundings)


# -- stopping early: a target val loss, a time budget (trainer.target_val_loss, trainer.max_seconds) ----
def gpt_run(work_dir=None, resume=False, model=None, **overrides) -> Trainer:
    """A tiny GPT (seeded alike every time) on the 7-token cycle, validated every 5 iterations, at a
    constant learning rate: runs of different lengths train alike up to where they stop."""
    torch.manual_seed(0)
    model = model if model is not None else tiny_gpt(vocab_size=7)
    config = quick_config(**{"eval_interval": 5, "lr_schedule": "constant", **overrides})
    return Trainer(config, model, pattern_stream(), pattern_stream(800), work_dir=work_dir, resume=resume)


def test_a_target_val_loss_ends_the_run_at_the_first_evaluation_that_reaches_it(tmp_path):
    gpt_run(tmp_path / "straight", max_iters=30).run()
    straight = rows_without_timing(tmp_path / "straight")
    evaluations = [(row["iter"], row["val_loss"]) for row in straight if "val_loss" in row]
    target = evaluations[2][1]  # iteration 15's val loss: "at or below" reaches it there at the latest
    first = next(it for it, val_loss in evaluations if val_loss <= target)

    summary = gpt_run(tmp_path / "run", max_iters=1000, target_val_loss=target).run()
    assert summary["stop_reason"] == "target_val_loss" and summary["iters"] == first
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved == summary
    assert saved["target_val_loss"] == target and saved["target_reached"] and saved["target_iter"] == first
    assert 0 < saved["target_s"] <= saved["run_s"]
    assert saved["val_loss"] == min(val_loss for it, val_loss in evaluations if it <= first)  # the best
    # trained exactly as the straight run up to there, and saved there
    assert rows_without_timing(tmp_path / "run") == [row for row in straight if row["iter"] <= first]
    assert latest_iteration(tmp_path / "run") == first


def test_max_seconds_ends_the_run_early_with_a_final_evaluation_and_checkpoint(tmp_path):
    trainer = Trainer(quick_config(max_iters=10**6, max_seconds=0.5, eval_interval=10**6), Bigram(7),
                      pattern_stream(), pattern_stream(800), work_dir=tmp_path)
    summary = trainer.run()
    assert summary["stop_reason"] == "max_seconds" and 0 < summary["iters"] < 10**6
    assert summary["run_s"] >= 0.5
    last = trainer.metrics[-1]  # the normal end, as at max_iters: evaluated and saved
    assert last["iter"] == summary["iters"] and "val_loss" in last
    assert latest_iteration(tmp_path) == summary["iters"]
    assert json.loads((tmp_path / "summary.json").read_text())["stop_reason"] == "max_seconds"


def test_a_time_budget_cools_a_wsd_run_down_without_an_iteration_limit(tmp_path):
    config = quick_config(max_iters=None, max_seconds=2.0, eval_interval=10**6, log_interval=1, learning_rate=0.1,
                          lr_schedule="wsd", cooldown_fraction=0.5, min_lr_ratio=0.1)
    trainer = Trainer(config, Bigram(7), pattern_stream(), pattern_stream(800), work_dir=tmp_path)
    summary = trainer.run()
    lrs = [row["lr"] for row in trainer.metrics]
    assert summary["stop_reason"] == "max_seconds" and lrs[0] == 0.1  # no warmup: the peak at once
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # stable, then down as the clock runs
    assert lrs[-1] < 0.06  # well into the cooldown by the end (halfway: 0.055), unless a step takes 0.4 s


def test_conditions_that_never_trigger_change_nothing_and_both_off_is_todays_run(tmp_path):
    off = gpt_run(tmp_path / "off")
    on = gpt_run(tmp_path / "on", target_val_loss=0.0, max_seconds=1e6)
    off_summary, on_summary = off.run(), on.run()
    assert rows_without_timing(tmp_path / "off") == rows_without_timing(tmp_path / "on")
    for a, b in zip(off.model.parameters(), on.model.parameters()):
        assert torch.equal(a, b)
    assert off_summary["stop_reason"] == on_summary["stop_reason"] == "max_iters"
    assert not {"target_val_loss", "target_reached", "target_iter", "target_s", "run_s"} & off_summary.keys()
    assert on_summary["target_reached"] is False and on_summary["target_iter"] is None


def test_seconds_go_on_across_a_resume_and_a_spent_budget_trains_no_further(tmp_path):
    def run(max_seconds, resume=False):
        config = quick_config(max_iters=10**6, max_seconds=max_seconds, eval_interval=10**6)
        return Trainer(config, Bigram(7), pattern_stream(), pattern_stream(800), work_dir=tmp_path,
                       resume=resume).run()

    first = run(0.3)
    again = run(0.3, resume=True)  # the budget is spent: like a run past its max_iters
    assert again["iters"] == first["iters"] and again["stop_reason"] == "max_seconds"
    longer = run(0.6, resume=True)
    assert longer["iters"] > first["iters"] and longer["stop_reason"] == "max_seconds"
    assert longer["run_s"] >= 0.6 and longer["run_s"] - longer["wall_s"] >= 0.3  # went on from the checkpoint


def test_a_resumed_run_that_reached_its_target_trains_no_further_unless_the_target_is_lowered(tmp_path):
    first = gpt_run(tmp_path, max_iters=1000, target_val_loss=1.5).run()
    again = gpt_run(tmp_path, resume=True, max_iters=1000, target_val_loss=1.5).run()
    assert again["iters"] == first["iters"] == again["target_iter"] and again["stop_reason"] == "target_val_loss"
    assert again["target_s"] == first["target_s"]
    lower = gpt_run(tmp_path, resume=True, max_iters=1000, target_val_loss=first["val_loss"] / 2).run()
    assert lower["stop_reason"] == "target_val_loss" and lower["target_iter"] > first["iters"]
    assert lower["target_s"] > first["target_s"]


def test_a_target_without_validation_data_is_refused():
    with pytest.raises(ValueError, match="trainer.target_val_loss=1.0 needs validation data"):
        Trainer(quick_config(target_val_loss=1.0), Bigram(7), pattern_stream())


def test_a_signal_ends_the_run_with_a_checkpoint_and_a_summary_that_says_interrupted(tmp_path):
    trainer = Trainer(quick_config(max_iters=100), Bigram(7), pattern_stream(), work_dir=tmp_path)
    trainer.add_callback("on_batch_end", lambda t: os.kill(os.getpid(), signal.SIGINT) if t.iter_num == 3 else None)
    with pytest.raises(KeyboardInterrupt, match="after iteration 4; checkpoint saved"):
        trainer.run()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stop_reason"] == "interrupted" and summary["iters"] == 4 == latest_iteration(tmp_path)


# -- resuming: the checkpoint's model and optimizer, or a refusal naming what differs ------------------------
def test_resuming_with_another_model_or_optimizer_setting_is_refused_naming_the_key(tmp_path):
    gpt_run(tmp_path, max_iters=5).run()
    with pytest.raises(ValueError, match=r"cannot resume iter_0000005 with model.n_layer=3: it was trained "
                                         r"with model.n_layer=2, and a run keeps its model"):
        gpt_run(tmp_path, resume=True, model=tiny_gpt(vocab_size=7, n_layer=3), max_iters=10).run()
    with pytest.raises(ValueError, match=r"cannot resume iter_0000005 with trainer.weight_decay=0.0 "
                                         r"\(parameter group 0\): it was trained with 0.1"):
        gpt_run(tmp_path, resume=True, max_iters=10, weight_decay=0.0).run()
    assert latest_iteration(tmp_path) == 5  # nothing was trained or saved
    # what does not change the model or the optimizer's state may change (with a warning)
    summary = gpt_run(tmp_path, resume=True, model=tiny_gpt(vocab_size=7, dropout=0.1), max_iters=10,
                      learning_rate=1e-3).run()
    assert summary["iters"] == 10


def test_resuming_with_another_kind_of_optimizer_is_refused(tmp_path):
    class BigramSGD(Bigram):
        def configure_optimizers(self, c):
            return torch.optim.SGD(self.parameters(), lr=c.learning_rate)

    Trainer(quick_config(max_iters=5), Bigram(7), pattern_stream(), work_dir=tmp_path).run()
    with pytest.raises(ValueError, match="cannot resume iter_0000005 with the optimizer SGD: it was trained with AdamW"):
        Trainer(quick_config(max_iters=10), BigramSGD(7), pattern_stream(), work_dir=tmp_path, resume=True).run()
