"""The chargpt project on Tiny Shakespeare (from ../shared/data, skipped where it is absent)."""
import json

import pytest

from mingpt.jobs import chargpt
from mingpt.model import GPT


@pytest.mark.slow
def test_chargpt_learns_tiny_shakespeare(tmp_path, shakespeare_path, capsys):
    config = chargpt.get_config()
    config.merge_from_args([f"--data.input={shakespeare_path}", f"--system.work_dir={tmp_path}",
                            "--trainer.max_iters=250", "--trainer.eval_interval=250",
                            "--trainer.eval_iters=20", "--sample.max_new_tokens=100",
                            "--trainer.progress_bar=False"])
    summary = chargpt.main(config)
    # chance is ln(65) = 4.17; the recipe is at about 2.45 after 250 iterations
    assert summary["val_loss"] < 2.6
    assert json.loads((tmp_path / "config.json").read_text())["data"]["input"] == str(shakespeare_path)
    assert GPT.from_pretrained(tmp_path).config.vocab_size == 65
    assert len(capsys.readouterr().out) > 100  # the closing sample
