"""The steps the language-model jobs share: the `system` section of their configs, text files ->
token files, a model to train (new or pretrained), and a run that trains it into its folder and
ends with a sample.

    mingpt prepare  = prepare_data (text files), prepare_hf_data (hf:NAME, shards.py)
    mingpt train    = train_config, train_on_prepared
    mingpt chargpt  = (its own tokens and model) + train_and_sample
    mingpt words    = prepare_data, then train_on_prepared
    mingpt eval     = encoded_task (also training's); the model and its tokenizer: formats.pretrained
Jobs call these; the jobs never import each other.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch

from mingpt import distributed
from mingpt.data import (TokenStream, check_val_fraction, corpus_path, load_prepared, prepare_corpus, read_pieces,
                         shards, tokenizers)
from mingpt.distributed import diloco
from mingpt.eval import choice, hellaswag
from mingpt.formats import pretrained
from mingpt.model import GPT
from mingpt.trainer import Trainer
from mingpt.training.run_folder import RunFolder
from mingpt.utils import CfgNode, Setting

log = logging.getLogger(__name__)


def system_config(work_dir: str | None, trains: bool = True, **more: Any) -> CfgNode:
    """The `system` section of a job's config: the seed; the run folder (work_dir: where a job
    that trains writes, or where one that reads a run finds it); for a job that trains, resume
    (go on from the run's newest intact checkpoint) and overwrite (start over); the checkpoint
    to resume or read ('latest', 'best', 'iter_N'; None: the newest intact); and more, the job's
    own (device, dtype)."""
    C = CfgNode(seed=3407)
    if work_dir is not None:
        C.work_dir = work_dir
    if trains:
        C.resume, C.overwrite = False, False
    C.checkpoint = None
    for key, value in more.items():
        setattr(C, key, value)
    return C


def sample_config(max_new_tokens: int, top_k: int | None) -> CfgNode:
    """The `sample` section of the jobs that train: the sample printed at the end of a run."""
    return CfgNode(prompt="", max_new_tokens=Setting(max_new_tokens, min=0), temperature=Setting(1.0, min=0),
                   top_k=Setting(top_k, kind=int, min=1))


def train_config() -> CfgNode:
    """The config of `mingpt train` (and of `mingpt words`, which adds its data and tokenizer)."""
    C = CfgNode()
    C.system = system_config("out/train")
    C.recipe = None  # set by --recipe=NAME (jobs/recipes.py; --help lists them), recorded in config.json
    C.data = CfgNode(dir="out/data")
    # a pretrained model to start from: 'gpt2' ... 'gpt2-xl', 'EleutherAI/gpt-neo-125m' ..., a
    # Hugging Face folder (GPT-2, GPT-Neo), or a mingpt run folder; '' trains a new model of the
    # shape in `model` (whose attention_pattern and window_size, if set, must be the model's)
    C.init_from = ""
    C.model = GPT.get_default_config()
    C.model.model_type = "gpt-mini"
    C.model.block_size = 128
    C.model.tie_embeddings = True  # as GPT-2 (minGPT's default is untied)
    C.trainer = Trainer.get_default_config()
    C.trainer.max_iters = 2000
    C.trainer.batch_size = 16
    C.trainer.learning_rate = 1e-3
    C.trainer.warmup_iters = 100
    C.trainer.lr_schedule = "cosine"  # (minGPT's default is a constant rate)
    C.trainer.betas = (0.9, 0.99)
    C.sample = sample_config(max_new_tokens=200, top_k=50)
    # the task that --trainer.eval_task names (hellaswag): path, a local jsonl ('': the validation
    # set, downloaded once); limit, its first N items (None: all); batch_size, endings per forward
    C.task = CfgNode(path="", limit=Setting(None, kind=int, min=1), batch_size=Setting(16, min=1))
    C.diloco = diloco.get_default_config()  # off (sync_every=0); distributed/diloco/
    return C


def train_on_prepared(config: CfgNode) -> dict:
    """What `mingpt train` does once the process is set up: the model, the prepared tokens of
    config.data.dir, training and a sample."""
    data_dir = Path(config.data.dir)
    tokenizer = tokenizers.load(data_dir)
    model = build_model(config, tokenizer.vocab_size)
    train, val, meta = load_prepared(data_dir, model.config.block_size)
    log.info(f"train: {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens; "
             f"model with {model.num_params():,} parameters"
             + (f", from {config.init_from}" if config.init_from else ""))
    return train_and_sample(config, model, tokenizer, train, val)


def prepare_data(inputs: str, out_dir: str | Path, val_fraction: float, tokenizer: CfgNode) -> dict:
    """Encode comma-separated text files (or 'shakespeare', or '' for the built-in corpus) into
    out_dir's train.bin / val.bin with a tokenizer of tokenizer.kind (a learnt BPE of
    tokenizer.vocab_size). Under torchrun one process writes the files and the others wait;
    returns meta.json's contents ({} on those others)."""
    check_val_fraction(val_fraction)
    paths = [corpus_path(name.strip()) for name in (inputs.split(",") if inputs else [""])]

    def prepare() -> dict:
        texts = (piece for path in paths for piece in read_pieces(path))  # (read only by the kinds that learn)
        return prepare_corpus(paths, Path(out_dir), tokenizers.make(tokenizer.kind, texts, tokenizer.vocab_size),
                              val_fraction)

    return _prepare_once(prepare, lambda meta: f"({meta['dtype']}, vocabulary of {meta['vocab_size']:,}) in {out_dir}")


def prepare_hf_data(data: CfgNode, tokenizer: CfgNode) -> dict:
    """Stream the Hugging Face dataset data.input ('hf:NAME': a hub name or a local folder or file
    `datasets` reads; data.subset, data.split, data.text_key) into data.out_dir's token shards of
    data.shard_tokens tokens, tokenized by data.processes processes (None: one per core); a
    preparation stopped half-way resumes (shards.py). One process writes under torchrun."""
    if tokenizer.kind != "gpt2":
        raise ValueError(f"tokenizer.kind={tokenizer.kind!r}: a Hugging Face dataset is tokenized with GPT-2's "
                         f"BPE (--tokenizer.kind=gpt2); a learnt tokenizer would need a pass over all of it first")
    source = shards.parse_input(data.input, data.subset, data.split, data.text_key)
    processes = data.processes or os.cpu_count() or 1

    def prepare() -> dict:
        return shards.prepare_shards(source, Path(data.out_dir), tokenizers.make("gpt2", []), data.shard_tokens,
                                     processes)

    return _prepare_once(prepare, lambda meta: f"in {len(meta['shards']['train'])} + "
                                               f"{len(meta['shards']['val'])} shards in {data.out_dir}")


def _prepare_once(prepare: Callable[[], dict], where: Callable[[dict], str]) -> dict:
    """Run prepare in one process (the others wait), log what it wrote ("prepared N train / M val
    tokens " + where(meta)) and return meta.json's contents ({} on the other processes)."""
    meta = distributed.run_together(prepare, main_only=True)
    if meta is None:
        return {}
    log.info(f"prepared {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens {where(meta)}")
    return meta


def build_model(config: CfgNode, vocab_size: int) -> GPT:
    """A new GPT of config.model for this vocabulary, or the pretrained config.init_from (its own
    dropout; block_size cropped when config.model.block_size is smaller), which must know the
    data's tokenizer (config.data.dir)."""
    if not config.init_from:
        config.model.vocab_size = vocab_size
        return GPT(config.model)
    check_same_tokenizer(config.init_from, Path(config.data.dir))
    model = GPT.from_pretrained(config.init_from)
    check_same_attention(config.model, model.config, config.init_from)
    if model.config.vocab_size < vocab_size:
        raise ValueError(f"the data's tokenizer has {vocab_size} tokens but {config.init_from!r} "
                         f"knows only {model.config.vocab_size}; prepare the data with its tokenizer")
    if config.model.block_size > model.config.block_size:
        raise ValueError(f"model.block_size={config.model.block_size} is larger than the "
                         f"{model.config.block_size} positions {config.init_from!r} was trained with; "
                         f"use at most {model.config.block_size}")
    if config.model.block_size < model.config.block_size:
        model.crop_block_size(config.model.block_size)
    config.model.attention_pattern = None  # (the same per layer, checked above: record the model's tuple)
    config.model.merge_from_dict(model.config.to_dict())  # record what was really trained
    return model


def check_same_attention(asked: CfgNode, trained: CfgNode, init_from: str) -> None:
    """A pretrained model attends as it was trained: refuse a model.attention_pattern or
    model.window_size set explicitly (None means "the model's") to anything else. Patterns are
    compared layer by layer, so ('global', 'local') and ('global', 'local', 'global', 'local')
    are the same for a 4-layer model."""
    def per_layer(pattern) -> list[str]:
        if isinstance(pattern, str):  # from the command line: global,local
            pattern = pattern.split(",")
        pattern = list(pattern)
        return [pattern[i % len(pattern)] for i in range(trained.n_layer)] if pattern else []

    for key in ("attention_pattern", "window_size"):
        value, theirs = getattr(asked, key), getattr(trained, key)
        if value is None:
            continue
        same = per_layer(value) == per_layer(theirs) if key == "attention_pattern" else value == theirs
        if not same:
            raise ValueError(f"model.{key}={value!r} differs from the {theirs!r} that {init_from!r} "
                             f"was trained with, and a pretrained model attends as it was trained; "
                             f"leave model.{key} unset (None) to fine-tune it")


def check_same_tokenizer(init_from: str, data_dir: Path) -> None:
    """A pretrained model only understands the ids of its own tokenizer: refuse other data."""
    data_spec = tokenizers.spec(data_dir)
    if (Path(init_from) / tokenizers.SPEC_FILE).exists():  # a mingpt run folder knows its tokenizer
        same, expected = tokenizers.spec(init_from) == data_spec, f"the tokenizer of {init_from}"
    else:  # a released model or a Hugging Face folder: GPT-2's BPE, unless it is GPT-1
        if pretrained.is_pretrained(init_from) and pretrained.pretrained_kind(init_from) != "gpt2":
            raise ValueError(f"{init_from!r} reads {pretrained.pretrained_kind(init_from)}'s own "
                             f"tokenizer, which `mingpt prepare` does not make, so it cannot be "
                             f"fine-tuned here; try it with `mingpt sample --model={init_from}`")
        same, expected = tokenizers.is_gpt2(data_spec), "GPT-2's tokenizer (mingpt prepare --tokenizer.kind=gpt2)"
    if not same:
        raise ValueError(f"the data in {str(data_dir)!r} was tokenized differently from "
                         f"{init_from!r}; prepare it with {expected}")


def train_and_sample(config: CfgNode, model: GPT, tokenizer: tokenizers.Tokenizer, train: TokenStream,
                     val: TokenStream) -> dict:
    """Train model into the run folder config.system.work_dir (which also keeps the tokenizer, for
    `mingpt sample`), then print a sample of config.sample.max_new_tokens tokens."""
    s = config.system
    diloco_config = getattr(config, "diloco", None)
    if diloco.enabled(diloco_config):
        diloco.check(diloco_config)  # (before the run folder is touched)
    run = RunFolder(diloco.worker_folder(s.work_dir, diloco_config))  # (a DiLoCo worker > 0: its own)
    run.prepare(s.resume, s.overwrite)
    trainer = Trainer(config.trainer, model, train, val, work_dir=run, run_config=config.to_dict(),
                      resume=s.resume, checkpoint=s.checkpoint, diloco=diloco_config,
                      eval_task=eval_task_for(config, tokenizer, model.block_size))
    if trainer.is_main:
        run.save_tokenizer(tokenizer)
    summary = trainer.run()
    ended = "" if summary["stop_reason"] == "max_iters" else f" (ended by {summary['stop_reason']})"
    log.info(f"best val loss {summary['val_loss']:.4f} after {summary['iters']} iterations{ended} in "
             f"{summary['wall_s']:.1f} s ({summary['ms_per_iter']:.1f} ms/iter); run folder: {s.work_dir}")
    sample = config.sample
    if sample.max_new_tokens > 0:
        model.eval()
        idx = torch.tensor([tokenizers.start_ids(tokenizer, sample.prompt)], dtype=torch.long, device=trainer.device)
        # (under FSDP every rank must take part in generating; one prints)
        out = model.generate(idx, sample.max_new_tokens, temperature=sample.temperature, do_sample=True,
                             top_k=sample.top_k)
        if trainer.is_main:
            print(tokenizer.decode(out[0].tolist()))
    return summary


EVAL_TASKS = ("hellaswag",)  # what trainer.eval_task may name


def eval_task_for(config: CfgNode, tokenizer: tokenizers.Tokenizer, block_size: int
                  ) -> choice.MultipleChoiceTask | None:
    """The task config.trainer.eval_task names, its items encoded once by the run's tokenizer
    (before training, so that a tokenizer that cannot write them is refused at once); None if
    no task is asked for. config.task (when the job has it) says where its items come from."""
    name = config.trainer.eval_task
    if name is None:
        return None
    if name not in EVAL_TASKS:
        raise ValueError(f"trainer.eval_task={name!r} must be one of {', '.join(map(repr, EVAL_TASKS))}, "
                         f"or None (off)")
    task = config.task if "task" in config.to_dict() else train_config().task
    questions = hellaswag.load(task.path or None, task.limit)
    return encoded_task(questions, tokenizer, block_size, task.batch_size, name=name, whose="the run's")


def encoded_task(questions: list[hellaswag.Question], tokenizer: tokenizers.Tokenizer, block_size: int,
                 batch_size: int, name: str = "hellaswag", progress: bool = False, whose: str = "the model's"
                 ) -> choice.MultipleChoiceTask:
    """Multiple-choice questions encoded by the model's tokenizer, which must be able to write
    their text: a character tokenizer that meets a character it never saw is refused in one line."""
    try:
        return choice.MultipleChoiceTask(questions, tokenizer.encode, getattr(tokenizer, "eot_token", None),
                                           block_size, batch_size, progress, name)
    except ValueError as e:
        raise ValueError(f"{whose} tokenizer cannot encode the task's text ({e}); {name} needs a model "
                         f"whose tokenizer covers any text, such as GPT-2's BPE or a learnt BPE "
                         f"(mingpt prepare --tokenizer.kind=gpt2 or bpe)") from None
