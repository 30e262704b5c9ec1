"""`mingpt eval` and the lm-eval bridge against lm-evaluation-harness itself, on a HellaSwag-format
file of invented items that the tests write (no download): the same acc and acc_norm for a random
Hugging Face GPT-2, for a mingpt run folder and for that run exported to Hugging Face; then bad
input, the val_loss task, and a task scored during training."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch

from helpers import ULPS_FORWARD, ULPS_OP, assert_close_to, tiny_gpt
from mingpt import cli, utils
from mingpt.bpe import BPETokenizer, find_vocab_files
from mingpt.data import TokenStream, load_prepared
from mingpt.eval import choice, hellaswag
from mingpt.formats.pretrained import load_with_tokenizer
from mingpt.model import GPT
from mingpt.trainer import Trainer
from mingpt.training.run_folder import RunFolder

# pieces of invented items, with what the harness's preprocessing acts on: WikiHow's [title] and
# [step] marks, an empty ctx_b, a lower-case ctx_b (capitalised), non-ASCII text (so a length in
# characters and one in bytes differ), endings of very different lengths
LABELS = ["Baking cookies", "Removing ice from car", "Home and Garden", "Playing guitar", "Café visits"]
CONTEXTS = ["A man stands in the kitchen and opens the oven.", "[header] How to tie a knot [title] Hold the rope.",
            "The woman smiles at the camera", "Two kids run across the yard", "She pours the crème brûlée into cups."]
CONTINUED = ["he", "", "then", "they", "the"]
ENDINGS = ["puts the tray inside and waits.", "jumps into the pool — laughing.", "walks away.",
           ", the man adds wax to the windshield [step] and cuts it.", "plays a song on the piano.",
           "naïve résumé, café au lait.", "eats all of them quickly and happily while singing a long song.",
           "[substeps] Wait for the glue to dry before you move it."]


def write_items(path: Path, n: int = 24, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            item = {"ind": i, "activity_label": rng.choice(LABELS), "ctx_a": rng.choice(CONTEXTS),
                    "ctx_b": rng.choice(CONTINUED), "endings": rng.sample(ENDINGS, 4), "label": rng.randrange(4),
                    "split": "val", "split_type": "indomain", "source_id": f"invented~{i}"}
            item["ctx"] = f"{item['ctx_a']} {item['ctx_b']}".strip()
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("evaluate")


@pytest.fixture(scope="module")
def items(folder) -> Path:
    return write_items(folder / "items.jsonl")


def with_gpt2_tokenizer_files(directory: Path) -> Path:
    """GPT-2's vocab.json and merges.txt (the files mingpt's BPE reads) beside a Hugging Face model."""
    files = find_vocab_files()
    shutil.copy(files["encoder.json"], directory / "vocab.json")
    shutil.copy(files["vocab.bpe"], directory / "merges.txt")
    return directory


@pytest.fixture(scope="module")
def random_hf_gpt2(folder) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=50257)
    GPT2LMHeadModel(config).save_pretrained(folder / "hf")
    return with_gpt2_tokenizer_files(folder / "hf")


@pytest.fixture(scope="module")
def mingpt_run(folder) -> Path:
    """A run folder of a tiny GPT with GPT-2's tokenizer, trained for a few steps on random ids."""
    torch.manual_seed(1)
    model = tiny_gpt(vocab_size=50257, block_size=48)
    tokens = TokenStream(torch.randint(0, 50257, (4000,)), 48)
    c = Trainer.get_default_config()
    c.device, c.max_iters, c.batch_size, c.progress_bar, c.eval_interval, c.eval_iters = "cpu", 4, 4, False, 4, 1
    c.learning_rate = 1e-2
    run = RunFolder(folder / "run")
    Trainer(c, model, tokens, tokens, work_dir=run).run()
    run.save_tokenizer(BPETokenizer())
    return run.path


@pytest.fixture(scope="module")
def exported(folder, mingpt_run) -> Path:
    model, _ = load_with_tokenizer(GPT, str(mingpt_run))
    model.save_pretrained(folder / "export")
    return with_gpt2_tokenizer_files(folder / "export")


@pytest.fixture(scope="module")
def harness_task(folder, items):
    """lm-evaluation-harness's own hellaswag task pointed at the local file: a task config that
    includes the harness's hellaswag.yaml and changes only where the documents come from (and a
    task manager that indexes only it, not the harness's thousands of task files)."""
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager
    tasks = folder / "tasks"
    tasks.mkdir()
    harness_yaml = Path(lm_eval.tasks.__file__).parent / "hellaswag" / "hellaswag.yaml"
    (tasks / "hellaswag_local.yaml").write_text(
        f"include: {harness_yaml}\ntask: hellaswag_local\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    validation: {items}\n  cache_dir: {folder / 'datasets'}\n"
        f"training_split: null\n")
    return TaskManager(include_path=str(tasks), include_defaults=False)


def harness_scores(lm, harness_task) -> tuple[float, float, list[float]]:
    """(acc, acc_norm, every choice's log-likelihood, item by item) as the harness computes them."""
    import lm_eval
    out = lm_eval.simple_evaluate(model=lm, tasks=["hellaswag_local"], log_samples=True, bootstrap_iters=0,
                                  task_manager=harness_task)
    results = out["results"]["hellaswag_local"]
    samples = sorted(out["samples"]["hellaswag_local"], key=lambda s: s["doc_id"])
    lls = [float(r[0]) for s in samples for r in s["filtered_resps"]]
    return results["acc,none"], results["acc_norm,none"], lls


@pytest.fixture(scope="module")
def harness_on_export(exported, harness_task):
    return harness_scores(hflm(exported), harness_task)


def hflm(model_dir: Path):
    from lm_eval.models.huggingface import HFLM
    return HFLM(pretrained=str(model_dir), batch_size=8, device="cpu")


def mingpt_eval(model: Path, items: Path, out: Path, *more: str) -> dict:
    code = cli.main(["eval", f"--model={model}", f"--data.path={items}", "--system.device=cpu",
                     "--progress_bar=False", f"--out={out}", *more])
    assert code == 0
    return json.loads(out.read_text())


def mingpt_lls(model_dir: Path, items: Path) -> list[float]:
    """Every choice's log-likelihood as mingpt computes it (for a closer look than acc)."""
    model, tokenizer = load_with_tokenizer(GPT, str(model_dir))
    questions = hellaswag.read_questions(items)
    task = choice.MultipleChoiceTask(questions, tokenizer.encode, tokenizer.eot_token, model.block_size)
    scored = choice.loglikelihoods(model, task.requests, model.block_size, 16, torch.device("cpu"))
    return [ll for ll, _ in scored]


# -- the harness's preprocessing -------------------------------------------------------------------
def test_questions_are_the_harness_process_docs(items):
    import datasets
    from lm_eval.tasks.hellaswag import utils as harness
    docs = [json.loads(line) for line in items.read_text(encoding="utf-8").splitlines()]
    theirs = harness.process_docs(datasets.Dataset.from_list(docs))
    ours = hellaswag.read_questions(items)
    assert [(q.query, list(q.choices), q.gold) for q in ours] == \
           [(d["query"], d["choices"], d["gold"]) for d in theirs]
    assert any("[" in d["ctx_a"] for d in docs) and not any("[" in q.query for q in ours)


def test_a_pair_is_split_after_the_context_tokens_of_the_whole():
    tok = BPETokenizer()
    context, continuation = choice.encode_pair(tok.encode, "Hello ", "world", tok.eot_token)
    assert context == tok.encode("Hello") and continuation == tok.encode(" world")  # the space moves on
    assert choice.encode_pair(tok.encode, "", " world", tok.eot_token) == ([tok.eot_token], tok.encode(" world"))


def test_loglikelihoods_are_the_sums_of_token_logprobs_batched_or_not():
    torch.manual_seed(0)
    model = tiny_gpt(vocab_size=11, block_size=8).eval()
    requests = [([1, 2, 3], [4, 5]), ([7], [1, 2, 3, 4, 5, 6, 7, 8]), ([2, 2, 2, 2, 2, 2, 2, 2, 2, 2], [3])]
    one = choice.loglikelihoods(model, requests, 8, 1, torch.device("cpu"))
    batched = choice.loglikelihoods(model, requests, 8, 3, torch.device("cpu"))
    for (a, greedy_a), (b, greedy_b) in zip(one, batched):
        assert_close_to(a, b, ULPS_FORWARD) and greedy_a == greedy_b  # (batched: padded, other kernels)
    # by hand: the second is cut to its last 9 tokens, the first 8 of them the input
    tokens = [7, 1, 2, 3, 4, 5, 6, 7, 8][-9:]
    logits = model(torch.tensor([tokens[:-1]]))[0][0].log_softmax(-1)
    by_hand = sum(logits[i, t].item() for i, t in enumerate(tokens[1:]))
    assert_close_to(by_hand, one[1][0], ULPS_FORWARD)


def test_acc_norm_divides_by_characters_and_ties_go_to_the_first_choice():
    q = hellaswag.Question("q", ("ab", "abcd"), gold=1)
    assert choice.score_choices([q], [(-3.0, False), (-4.0, False)]) == {"acc": 0.0, "acc_norm": 1.0, "n": 1}
    tie = hellaswag.Question("q", ("aa", "bb"), gold=1)
    assert choice.score_choices([tie], [(-1.0, False), (-1.0, False)])["acc"] == 0.0


# -- agreement with lm-evaluation-harness ------------------------------------------------------------
@pytest.mark.slow
def test_mingpt_eval_agrees_with_the_harness_on_a_random_hugging_face_gpt2(folder, items, random_hf_gpt2,
                                                                           harness_task):
    acc, acc_norm, lls = harness_scores(hflm(random_hf_gpt2), harness_task)
    ours = mingpt_eval(random_hf_gpt2, items, folder / "hf.json")
    assert (ours["acc"], ours["acc_norm"], ours["n"]) == (acc, acc_norm, 24)
    assert_close_to(lls, mingpt_lls(random_hf_gpt2, items), ULPS_FORWARD)
    assert len({round(x, 3) for x in lls}) > 40  # the choices' scores really differ


@pytest.mark.slow
def test_a_mingpt_run_and_its_hugging_face_export_score_as_the_harness_does(folder, items, mingpt_run, exported,
                                                                            harness_on_export):
    acc, acc_norm, lls = harness_on_export
    run = mingpt_eval(mingpt_run, items, folder / "run.json")
    export = mingpt_eval(exported, items, folder / "export.json")
    assert (run["acc"], run["acc_norm"]) == (export["acc"], export["acc_norm"]) == (acc, acc_norm)
    assert_close_to(lls, mingpt_lls(mingpt_run, items), ULPS_FORWARD)


@pytest.mark.slow
def test_the_bridge_runs_the_harness_task_on_a_mingpt_run(mingpt_run, harness_task, harness_on_export):
    from lm_eval.api.registry import get_model
    from mingpt.lm_eval_bridge import MinGPTLM
    acc, acc_norm, lls = harness_scores(MinGPTLM(str(mingpt_run), batch_size=8), harness_task)
    assert (acc, acc_norm) == harness_on_export[:2]
    assert_close_to(harness_on_export[2], lls, ULPS_FORWARD)
    assert get_model("mingpt") is MinGPTLM  # (simple_evaluate(model="mingpt", model_args="pretrained=..."))


def test_the_bridge_scores_whole_texts_in_windows_and_generates_until_a_stop(mingpt_run):
    from lm_eval.api.instance import Instance
    from mingpt.lm_eval_bridge import MinGPTLM
    lm = MinGPTLM(str(mingpt_run))
    tok, model = lm.tokenizer, lm.model
    text = "the quick brown fox jumps over the lazy dog " * 12  # longer than the 48-token context
    ids = tok.encode(text)
    assert len(ids) > model.block_size
    request = Instance("loglikelihood_rolling", {}, (text,), 0)
    [total] = lm.loglikelihood_rolling([request], disable_tqdm=True)
    # by hand, as the harness cuts a text into windows (its rolling windows, context_len=1): every
    # token predicted once; the first block_size from <|endoftext|> on, then each next block_size
    # tokens (the last ones fewer) from the block_size tokens before the window's end
    stream, B = [tok.eot_token] + ids, model.block_size  # (stream[t + 1] is ids[t])
    by_hand, predicted = 0.0, 0
    with torch.no_grad():
        while predicted < len(ids):
            end = min(predicted + B, len(ids))
            start = max(0, end - B)
            logp = model(torch.tensor([stream[start:end]]))[0][0].log_softmax(-1)  # predicts stream[start + 1 : end + 1]
            by_hand += sum(logp[t - 1 - start, stream[t]].item() for t in range(predicted + 1, end + 1))
            predicted = end
    assert_close_to(by_hand, total, ULPS_FORWARD)

    greedy = tok.decode(model.generate(torch.tensor([tok.encode("The")]), 12)[0, 1:].tolist())
    stop = greedy[len(greedy) // 2:][:2]
    request = Instance("generate_until", {}, ("The", {"until": [stop], "max_gen_toks": 12}), 0)
    assert lm.generate_until([request]) == [greedy.split(stop)[0]]


# -- bad input: one line each -------------------------------------------------------------------------
def the_error(capsys) -> str:
    """The one line of stderr that reports the error (log lines, such as a download's, aside)."""
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mingpt eval:")]
    assert len(errors) == 1, errors
    return errors[0]


@pytest.mark.parametrize("line, says", [
    ("{not json", "line 3 is not JSON"),
    ('{"activity_label": "a", "ctx_a": "b", "ctx_b": "", "endings": ["x", "y"]}', "line 3 lacks label"),
    ('{"activity_label": "a", "ctx_a": "b", "ctx_b": "", "endings": ["x", "y"], "label": 5}', "line 3: label=5"),
    ('{"activity_label": "a", "ctx_a": "b", "ctx_b": "", "endings": "xy", "label": 0}', "line 3: endings"),
])
def test_a_malformed_line_is_named_by_its_number(tmp_path, items, capsys, line, says, random_hf_gpt2):
    bad = tmp_path / "bad.jsonl"
    lines = items.read_text(encoding="utf-8").splitlines()
    bad.write_text("\n".join(lines[:2] + [line] + lines[2:4]) + "\n", encoding="utf-8")
    code = cli.main(["eval", f"--model={random_hf_gpt2}", f"--data.path={bad}", "--system.device=cpu",
                     f"--out={tmp_path / 'never.json'}"])
    assert code == 1 and says in the_error(capsys)
    assert not (tmp_path / "never.json").exists()


def char_run(tmp_path: Path) -> Path:
    """A run folder of a character model, whose vocabulary cannot write HellaSwag's text."""
    from mingpt.data.char import CharTokenizer
    tok = CharTokenizer.from_text("abc def")
    model = tiny_gpt(vocab_size=tok.vocab_size, block_size=16)
    run = RunFolder(tmp_path / "char")
    run.prepare()
    run.save_checkpoint(model, 0)
    run.save_tokenizer(tok)
    return run.path


def test_a_model_whose_tokenizer_cannot_write_the_task_is_refused_in_one_line(tmp_path, items, capsys):
    code = cli.main(["eval", f"--model={char_run(tmp_path)}", f"--data.path={items}", "--system.device=cpu"])
    err = the_error(capsys)
    assert code == 1 and "cannot encode the task's text" in err and "BPE" in err


def test_a_model_with_a_smaller_vocabulary_than_its_tokenizer_is_refused(tmp_path, items, capsys):
    run = RunFolder(tmp_path / "small")
    run.prepare()
    run.save_checkpoint(tiny_gpt(vocab_size=300, block_size=16), 0)
    run.save_tokenizer(BPETokenizer())  # 50257 tokens
    code = cli.main(["eval", f"--model={run.path}", f"--data.path={items}", "--system.device=cpu"])
    assert code == 1 and "50257 tokens but the model knows only 300" in the_error(capsys)


def test_the_validation_set_downloads_once_checked_and_offline_says_what_to_do(tmp_path, monkeypatch, items,
                                                                                capsys, random_hf_gpt2):
    monkeypatch.setenv("MINGPT_CACHE", str(tmp_path / "cache"))
    served = {"data": b""}

    def urlopen(url, timeout):
        if not served["data"]:
            raise OSError("[Errno -3] Temporary failure in name resolution")
        assert url == hellaswag.VAL_URL

        class Response:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def read(self):
                return served["data"]
        return Response()

    monkeypatch.setattr(utils.urllib.request, "urlopen", urlopen)
    code = cli.main(["eval", f"--model={random_hf_gpt2}", "--system.device=cpu"])
    err = the_error(capsys)
    assert code == 1 and "could not download HellaSwag's validation set" in err and "--data.path=FILE.jsonl" in err
    target = tmp_path / "cache" / "hellaswag" / "hellaswag_val.jsonl"
    assert not target.exists()

    served["data"] = items.read_bytes()  # not the real file: its git blob id differs, so it is refused
    with pytest.raises(ValueError, match="not the file its repository records"):
        hellaswag.validation_file()
    assert not target.exists()

    monkeypatch.setattr(hellaswag, "VAL_GIT_BLOB", utils.git_blob_id(served["data"]))  # as if it were
    assert hellaswag.validation_file() == target and target.read_bytes() == served["data"]
    served["data"] = b""  # offline again: the cached copy is used
    assert len(hellaswag.load(limit=5)) == 5


def test_the_checksum_is_git_s_blob_id():
    assert utils.git_blob_id(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"  # `git hash-object`


# -- val_loss ------------------------------------------------------------------------------------------
def test_val_loss_of_a_run_on_prepared_data_is_the_mean_loss_of_its_windows(tmp_path, capsys):
    from mingpt.jobs.pipeline import prepare_data
    from mingpt.utils import CfgNode
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog.\n" * 60)
    data = tmp_path / "data"
    prepare_data(str(corpus), data, 0.5, CfgNode(kind="gpt2", vocab_size=0))
    run = RunFolder(tmp_path / "run")
    run.prepare()
    torch.manual_seed(0)
    model = tiny_gpt(vocab_size=50257, block_size=16).eval()
    run.save_checkpoint(model, 0)
    run.save_tokenizer(BPETokenizer())
    out = tmp_path / "val.json"
    assert cli.main(["eval", f"--model={run.path}", "--task=val_loss", f"--data.dir={data}",
                     "--system.device=cpu", "--batch_size=4", f"--out={out}"]) == 0
    scores = json.loads(out.read_text())
    _, val, _ = load_prepared(data, 16)
    windows = list(val.eval_batches(4))
    with torch.no_grad():
        losses = [model(x, y)[1].item() * len(x) for x, y in windows]
    assert_close_to(sum(losses) / sum(len(x) for x, _ in windows), scores["val_loss"], ULPS_OP)
    capsys.readouterr()

    char_data = tmp_path / "char_data"
    prepare_data(str(corpus), char_data, 0.5, CfgNode(kind="char", vocab_size=0))
    code = cli.main(["eval", f"--model={run.path}", "--task=val_loss", f"--data.dir={char_data}",
                     "--system.device=cpu"])
    assert code == 1 and "tokenized differently" in the_error(capsys)


# -- a task during training ----------------------------------------------------------------------------
def test_a_task_scored_during_training_goes_into_metrics_and_the_plot(tmp_path, items):
    torch.manual_seed(0)
    model = tiny_gpt(vocab_size=50257, block_size=48)
    tok = BPETokenizer()
    questions = hellaswag.read_questions(items, limit=8)
    task = choice.MultipleChoiceTask(questions, tok.encode, tok.eot_token, model.block_size)
    tokens = TokenStream(torch.randint(0, 50257, (2000,)), 48)
    c = Trainer.get_default_config()
    c.device, c.max_iters, c.batch_size, c.progress_bar, c.eval_interval, c.eval_iters = "cpu", 6, 2, False, 3, 1
    c.log_interval, c.eval_task, c.eval_task_interval = 1, "hellaswag", 2
    trainer = Trainer(c, model, tokens, tokens, work_dir=tmp_path / "run", eval_task=task)
    summary = trainer.run()
    rows = RunFolder(tmp_path / "run").read_metrics()
    scored = [r["iter"] for r in rows if "hellaswag_acc" in r]
    assert scored == [2, 4, 6]
    last = next(r for r in rows if r["iter"] == 6)
    assert (last["hellaswag_acc"], last["hellaswag_acc_norm"]) == pytest.approx(
        (summary["hellaswag_acc"], summary["hellaswag_acc_norm"]))
    assert last["hellaswag_acc"] == task(model, torch.device("cpu"))["acc"]  # the final model's score
    assert last["hellaswag_n"] == 8 and trainer.task_scores() == ["hellaswag_acc", "hellaswag_acc_norm"]
    assert (tmp_path / "run" / "loss.png").stat().st_size > 0
    assert model.training  # scoring put it back to training mode


def test_an_eval_task_without_the_task_itself_is_refused():
    c = Trainer.get_default_config()
    c.eval_task = "hellaswag"
    with pytest.raises(ValueError, match="needs the task itself"):
        Trainer(c, tiny_gpt(), TokenStream(torch.arange(100) % 7, 16))


@pytest.mark.slow
def test_mingpt_train_scores_hellaswag_every_n_steps(tmp_path, items):
    from mingpt.jobs.pipeline import prepare_data
    from mingpt.utils import CfgNode
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog.\n" * 60)
    prepare_data(str(corpus), tmp_path / "data", 0.2, CfgNode(kind="gpt2", vocab_size=0))
    code = cli.main(["train", f"--data.dir={tmp_path / 'data'}", f"--system.work_dir={tmp_path / 'run'}",
                     "--model.model_type=None", "--model.n_layer=1", "--model.n_head=2", "--model.n_embd=16",
                     "--model.block_size=32", "--trainer.max_iters=4", "--trainer.eval_interval=2",
                     "--trainer.eval_iters=1", "--trainer.batch_size=2", "--trainer.progress_bar=False",
                     "--trainer.device=cpu", "--sample.max_new_tokens=0", "--trainer.eval_task=hellaswag",
                     f"--task.path={items}", "--task.limit=6"])
    assert code == 0
    rows = RunFolder(tmp_path / "run").read_metrics()
    assert [r["iter"] for r in rows if "hellaswag_acc_norm" in r] == [2, 4]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["hellaswag_n"] == 6
