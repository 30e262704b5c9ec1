"""The run folder: a damaged newest checkpoint is skipped (with a warning) when resuming or
loading, a named one is used as named, and every file is written atomically."""
import logging

import pytest
import torch

from helpers import Bigram, pattern_stream, quick_config, tiny_gpt
from mingpt.model import GPT
from mingpt.trainer import Trainer
from mingpt.training.checkpoint import CheckpointError
from mingpt.training.run_folder import RunFolder
from mingpt.utils import atomic_path, atomic_write


def trained_run(work_dir, max_iters=20, resume=False, checkpoint=None) -> Trainer:
    torch.manual_seed(0)
    trainer = Trainer(quick_config(max_iters=max_iters, eval_interval=5, keep_last=3, lr_schedule="constant"), tiny_gpt(vocab_size=7),
                      pattern_stream(), pattern_stream(800), work_dir=work_dir, resume=resume, checkpoint=checkpoint)
    trainer.run()
    return trainer


def damage(run: RunFolder, name: str) -> None:
    weights = run.path / "checkpoints" / name / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def test_a_damaged_newest_checkpoint_is_skipped_with_a_warning_naming_it(tmp_path, caplog):
    run = RunFolder(tmp_path)
    trained_run(tmp_path)
    assert run.checkpoint_names() == ["iter_0000020", "iter_0000015", "iter_0000010"]
    damage(run, "iter_0000020")
    with caplog.at_level(logging.WARNING, logger="mingpt"):
        meta, folder = run.find_checkpoint()
    assert folder.name == "iter_0000015" and meta["iter_num"] == 15
    assert "skipped the damaged iter_0000020" in caplog.text and "truncated or corrupt" in caplog.text
    assert GPT.from_pretrained(tmp_path) is not None  # loading falls back the same way
    with pytest.raises(CheckpointError, match="iter_0000020.*is truncated or corrupt"):
        run.find_checkpoint("iter_0000020")  # named: no fallback


def test_resume_falls_back_to_the_newest_intact_checkpoint_and_continues_exactly(tmp_path, caplog):
    """Resumed from iteration 15 (20 is damaged) to 25: the same as a straight run of 25."""
    straight = trained_run(tmp_path / "straight", max_iters=25)
    trained_run(tmp_path / "broken", max_iters=20)
    damage(RunFolder(tmp_path / "broken"), "iter_0000020")
    with caplog.at_level(logging.WARNING, logger="mingpt"):
        resumed = trained_run(tmp_path / "broken", max_iters=25, resume=True)
    assert "skipped the damaged iter_0000020" in caplog.text
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


def test_resume_from_a_named_checkpoint(tmp_path):
    trained_run(tmp_path, max_iters=20)
    resumed = trained_run(tmp_path, max_iters=20, resume=True, checkpoint="iter_0000010")
    assert [r["iter"] for r in resumed.metrics if "val_loss" in r] == [5, 10, 15, 20]
    with pytest.raises(FileNotFoundError, match="no checkpoint 'iter_0000003'.*choose one of latest, best"):
        trained_run(tmp_path, max_iters=20, resume=True, checkpoint="iter_0000003")


def test_the_trainer_constructor_changes_nothing(tmp_path):
    """Nothing happens until run(): no folder made, no RNG drawn or reseeded, no process group."""
    model, data = Bigram(7), pattern_stream()
    state = torch.get_rng_state()
    Trainer(quick_config(), model, data, work_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.distributed.is_initialized()


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "summary.json"
    atomic_write(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed midway")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
    atomic_write(target, b"new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
