"""The adder project: its encoding, its held-out test set, and a short run that learns."""
import json
import re

import pytest
import torch

from mingpt.jobs import adder
from mingpt.utils import CfgNode


def problems(ndigit=2, test_size=100, seed=0):
    return adder.AdditionProblems(CfgNode(ndigit=ndigit, test_size=test_size), seed=seed)


def test_encoding_writes_the_sum_reversed():
    data = problems()
    sequence = data.encode(torch.tensor([[8, 5, 5, 0]]))  # 85 + 50 = 135
    assert sequence.tolist() == [[8, 5, 5, 0, 5, 3, 1]]
    assert data.decode_sum(sequence[:, 4:]).tolist() == [135]


@pytest.mark.parametrize("ndigit", [1, 2, 3, 5, 12])
def test_encoded_sums_are_correct_for_any_ndigit(ndigit):
    data = problems(ndigit=ndigit, test_size=10)
    digits = data.sample_train(200, torch.Generator().manual_seed(1))
    sequences = data.encode(digits)
    assert sequences.shape == (200, 3 * ndigit + 1)
    for row in sequences.tolist()[:50]:
        a = int("".join(map(str, row[:ndigit])))
        b = int("".join(map(str, row[ndigit:2 * ndigit])))
        c = int("".join(map(str, row[2 * ndigit:][::-1])))
        assert a + b == c


def test_targets_cover_only_the_sum():
    data = problems()
    x, y = data.get_batch(8)
    assert x.shape == y.shape == (8, 6)
    assert (y[:, :3] == -1).all() and (y[:, 3:] >= 0).all()
    assert torch.equal(x[:, 1:], torch.where(y[:, :-1] == -1, x[:, 1:], y[:, :-1]))


def test_enumerated_test_set_never_appears_in_training():
    data = problems(ndigit=2, test_size=500)
    assert len(data.test) == 500 and len(data.train) == 10_000 - 500
    test = {tuple(p) for p in data.test.tolist()}
    assert not test & {tuple(p) for p in data.train.tolist()}


def test_sampled_test_set_never_appears_in_training():
    data = problems(ndigit=4, test_size=5000)  # 10^8 problems: drawn on the fly
    assert data.train is None
    test = {tuple(p) for p in data.test.tolist()}
    drawn = data.sample_train(50_000, torch.Generator().manual_seed(3))
    assert not test & {tuple(p) for p in drawn.tolist()}


@pytest.mark.slow
def test_a_short_adder_run_clearly_learns(tmp_path):
    config = adder.get_config()
    config.merge_from_args([f"--system.work_dir={tmp_path}", "--trainer.max_iters=1000",
                            "--trainer.eval_interval=1000", "--data.test_size=500",
                            "--trainer.lr_schedule=constant", "--trainer.progress_bar=False"])
    summary = adder.main(config)
    # chance is 1 in 1000 (three digits of the sum); 1000 iterations get far past it
    assert summary["test_accuracy"] > 0.5
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < 0.6 * rows[0]["loss"]
    # each grading shows (and keeps in the run folder) a few sums the model still gets wrong
    graded = [row for row in rows if "test_accuracy" in row]
    assert graded and all(len(row["mistakes"]) == min(adder.MISTAKES_SHOWN, round(500 * (1 - row["test_accuracy"])))
                          for row in graded)
    for mistake in graded[-1]["mistakes"]:
        a, b, claimed, truth = map(int, re.fullmatch(r"GPT claims that (\d+) \+ (\d+) = (\d+) but gt is (\d+)",
                                                     mistake).groups())
        assert a + b == truth != claimed
    assert json.loads((tmp_path / "summary.json").read_text())["test_accuracy"] == summary["test_accuracy"]
