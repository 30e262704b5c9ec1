"""Recipes (mingpt/jobs/recipes.py): named overrides that every training job takes with --recipe=NAME,
applied to the job's defaults before the command line's own overrides, which win; listed by
--help; recorded in config.json. The mechanism is tested with small recipes of the tests' own,
put into the table for one test."""
import importlib
import json
import math

import pytest
import torch

from mingpt.cli import JOBS, run_job, take_recipe
from mingpt.jobs import recipes
from mingpt.jobs.recipes import Recipe
from mingpt.utils import cpu_multiplies_bf16

TRAINING_JOBS = ("adder", "chargpt", "train", "words")
TINY = ["--model.model_type=None", "--model.n_layer=1", "--model.n_head=2", "--model.n_embd=16",
        "--model.block_size=16", "--trainer.eval_interval=2", "--trainer.batch_size=4",
        "--trainer.eval_iters=1", "--trainer.progress_bar=False", "--sample.max_new_tokens=2"]


def job_config(job: str, *args: str):
    """The config `mingpt <job> *args` would run with: defaults, then the recipe, then the args."""
    config = importlib.import_module(JOBS[job][0]).get_config()
    config.merge_from_args(take_recipe(job, config, list(args)))
    return config


@pytest.fixture
def own_recipes(monkeypatch):
    """Two recipes of the tests' own in the table, for the length of one test."""
    monkeypatch.setitem(recipes.RECIPES, "quick", Recipe(
        "a short, fast run", {"trainer.learning_rate": 5e-3, "trainer.max_iters": 7, "model.n_embd": 24}))
    monkeypatch.setitem(recipes.RECIPES, "bpe-512", Recipe("a smaller BPE", {"tokenizer.vocab_size": 512}))


def test_the_training_jobs_take_a_recipe_and_the_others_do_not(capsys):
    takes = {job for job, (module, _) in JOBS.items()
             if recipes.KEY in importlib.import_module(module).get_config().keys_flat()}
    assert takes == set(TRAINING_JOBS)
    assert run_job("sample", ["--recipe=gpt2"]) == 2
    assert "mingpt sample: config error: mingpt sample takes no --recipe" in capsys.readouterr().err


@pytest.mark.parametrize("job", TRAINING_JOBS)
def test_gpt2_is_the_jobs_own_defaults_by_name(job):
    default, named = job_config(job).to_dict(), job_config(job, "--recipe=gpt2").to_dict()
    assert default.pop("recipe") is None and named.pop("recipe") == "gpt2"
    assert named == default


def test_a_recipe_goes_on_the_defaults_and_the_command_line_wins(own_recipes):
    config = job_config("chargpt", "--trainer.max_iters=3", "--recipe=quick")  # (wherever it is written)
    assert config.recipe == "quick"
    assert config.trainer.learning_rate == 5e-3 and config.model.n_embd == 24  # the recipe's
    assert config.trainer.max_iters == 3  # the command line's, over the recipe's 7
    assert config.trainer.batch_size == job_config("chargpt").trainer.batch_size  # the job's own


def test_every_recipe_in_the_table_fits_the_training_jobs_that_have_its_keys():
    """A typo in a recipe's key, or a value of the wrong type, fails here rather than in a run."""
    for name, recipe in recipes.RECIPES.items():
        assert recipe.about and "\n" not in recipe.about, name
        fits = [job for job in TRAINING_JOBS
                if set(recipe.overrides) <= set(job_config(job).keys_flat())]
        assert fits, f"recipe {name!r} fits no job"
        for job in fits:
            assert job_config(job, f"--recipe={name}").recipe == name


def test_help_lists_the_recipes_and_shows_a_named_recipes_values(own_recipes, capsys):
    assert run_job("chargpt", ["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: mingpt chargpt [--recipe=NAME]" in out and "--recipe=None" in out
    assert "recipes (--recipe=NAME" in out
    for name, recipe in recipes.RECIPES.items():
        assert f"  {name} " in out and recipe.about in out
    assert "trainer.learning_rate=0.005" in out  # the quick recipe's overrides, listed with it
    assert run_job("chargpt", ["--recipe=quick", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--trainer.max_iters=7" in out and "--recipe='quick'" in out  # the defaults it makes
    assert run_job("sample", ["--help"]) == 0
    assert "recipes" not in capsys.readouterr().out


def test_an_unknown_recipe_is_refused_in_one_line_listing_the_valid_ones(own_recipes, capsys):
    assert run_job("chargpt", ["--recipe=speedrun2"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"mingpt chargpt: config error: unknown recipe 'speedrun2'; choose one of: {', '.join(recipes.RECIPES)}"]
    assert "quick" in err and "gpt2" in err


def test_a_recipe_key_the_job_does_not_have_is_refused_naming_the_recipe_and_the_key(own_recipes, capsys):
    assert run_job("chargpt", ["--recipe=bpe-512"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "recipe 'bpe-512' sets tokenizer.vocab_size, a key mingpt chargpt does not have" in err[0]
    assert job_config("words", "--recipe=bpe-512").tokenizer.vocab_size == 512  # words has it


def test_a_recipe_value_of_the_wrong_type_is_refused_naming_the_recipe(monkeypatch):
    monkeypatch.setitem(recipes.RECIPES, "typo", Recipe("a string for a number", {"trainer.max_iters": "ten"}))
    with pytest.raises(recipes.ConfigError, match="recipe 'typo': trainer.max_iters must be of type int"):
        job_config("chargpt", "--recipe=typo")
    with pytest.raises(recipes.ConfigError, match="--recipe is given 2 times"):
        job_config("chargpt", "--recipe=gpt2", "--recipe=typo")


@pytest.fixture
def corpus(tmp_path):
    """A small text for the recipes' end-to-end runs."""
    path = tmp_path / "corpus.txt"
    path.write_text("to be or not to be, that is the question.\n" * 100)
    return path


def test_the_run_folder_records_the_recipe_and_the_values_it_resolved_to(own_recipes, corpus, tmp_path, capsys):
    work_dir = tmp_path / "run"
    status = run_job("chargpt", [f"--data.input={corpus}", f"--system.work_dir={work_dir}", "--recipe=quick",
                                 *TINY, "--model.n_embd=16", "--trainer.max_iters=4"])
    assert status == 0, capsys.readouterr().err
    config = json.loads((work_dir / "config.json").read_text())
    assert config["recipe"] == "quick"
    assert config["trainer"]["learning_rate"] == 5e-3  # the recipe's
    assert config["trainer"]["max_iters"] == 4 and config["model"]["n_embd"] == 16  # the command line's
    assert json.loads((work_dir / "summary.json").read_text())["iters"] == 4


def test_the_speedrun_recipe_trains_its_model_end_to_end(corpus, tmp_path, capsys):
    work_dir = tmp_path / "run"
    status = run_job("chargpt", [f"--data.input={corpus}", f"--system.work_dir={work_dir}", "--recipe=speedrun",
                                 "--trainer.max_iters=6", "--trainer.eval_interval=6", "--trainer.eval_iters=2",
                                 "--trainer.progress_bar=False", "--sample.max_new_tokens=5"])
    assert status == 0, capsys.readouterr().err
    config = json.loads((work_dir / "config.json").read_text())
    assert config["model"]["position_encoding"] == "rope" and config["trainer"]["optimizer"] == "muon"
    assert config["resolved"]["dtype"] == ("bf16" if cpu_multiplies_bf16() else "fp32")  # dtype 'fast'
    summary = json.loads((work_dir / "summary.json").read_text())
    vocab = len(set(corpus.read_text()))
    assert summary["iters"] == 6 and summary["val_loss"] < math.log(vocab)  # it learnt something


def test_the_five_minutes_recipe_trains_until_its_time_budget(corpus, tmp_path, capsys):
    work_dir = tmp_path / "run"
    status = run_job("chargpt", [f"--data.input={corpus}", f"--system.work_dir={work_dir}", "--recipe=five-minutes",
                                 "--trainer.max_seconds=3", "--trainer.warmup_iters=0", "--model.n_embd=32",
                                 "--model.block_size=16",
                                 "--trainer.eval_iters=2", "--trainer.log_interval=1",
                                 "--trainer.progress_bar=False", "--sample.max_new_tokens=5"])
    assert status == 0, capsys.readouterr().err
    config = json.loads((work_dir / "config.json").read_text())
    assert config["trainer"]["max_iters"] is None and config["model"]["n_layer"] == 4
    summary = json.loads((work_dir / "summary.json").read_text())
    assert summary["stop_reason"] == "max_seconds" and summary["run_s"] >= 3
    rows = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]
    lrs = [row["lr"] for row in rows]
    assert lrs[0] == config["trainer"]["learning_rate"]  # (no warmup here)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # the cooldown follows the clock: test_trainer.py
    # and toward the recipe's floor, 0: the last iteration's rate was set from the clock as it read
    # after the row before last was written, so it is at most lr_at of that row's time
    from types import SimpleNamespace
    from mingpt.training.schedule import lr_at
    trainer, before_last = SimpleNamespace(**config["trainer"]), rows[-3]
    assert lr_at(0, trainer, time_fraction=1.0) == 0.0
    assert lrs[-1] <= lr_at(0, trainer, time_fraction=before_last["elapsed_s"] / trainer.max_seconds)


def test_the_gpt2_124m_recipe_is_the_published_model_and_524288_tokens_a_step_on_8_ranks():
    from mingpt.model import GPT
    from mingpt.trainer import resolve_accumulation

    config = job_config("train", "--recipe=gpt2-124m")
    t, m = config.trainer, config.model
    assert (m.model_type, m.block_size, m.embd_pdrop, m.resid_pdrop, m.attn_pdrop) == ("gpt2", 1024, 0.0, 0.0, 0.0)
    m.vocab_size = 50257  # (what train_on_prepared sets from GPT-2's tokenizer)
    with torch.device("meta"):
        model = GPT(m)
    assert (model.config.n_layer, model.config.n_head, model.config.n_embd) == (12, 12, 768)
    assert sum(p.numel() for p in model.parameters()) == 124_439_808  # OpenAI's GPT-2 124M
    for ranks, accumulation in ((8, 1), (4, 2), (1, 8)):
        steps = resolve_accumulation(t, ranks)
        assert steps == accumulation and t.batch_size * steps * ranks * m.block_size == 524_288
    with pytest.raises(ValueError, match="global_batch_size=512 must be a multiple of .* 64 x 16 = 1024"):
        resolve_accumulation(t, 16)  # 2 nodes of 8: halve the micro-batch
    two_nodes = job_config("train", "--recipe=gpt2-124m", "--trainer.batch_size=32").trainer
    assert resolve_accumulation(two_nodes, 16) * 32 * 16 * 1024 == 524_288
    assert (t.learning_rate, t.warmup_iters, t.lr_schedule, t.min_lr_ratio) == (6e-4, 700, "cosine", 0.1)
    assert (t.weight_decay, tuple(t.betas), t.grad_norm_clip, t.max_iters) == (0.1, (0.9, 0.95), 1.0, 19073)
    assert t.max_iters == 10**10 // 524_288  # 10B tokens: one pass over FineWeb-Edu's sample-10BT


def test_the_gpt2_124m_schedule_warms_up_for_700_steps_and_ends_at_a_tenth():
    from mingpt.training import schedule

    t = job_config("train", "--recipe=gpt2-124m").trainer
    assert schedule.lr_at(0, t) < 1e-6 and math.isclose(schedule.lr_at(700, t), 6e-4)
    assert schedule.lr_at(350, t) == pytest.approx(3e-4, rel=0.01)
    assert math.isclose(schedule.lr_at(19073, t), 6e-5, rel_tol=1e-6)
