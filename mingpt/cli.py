"""The `mingpt` command: `mingpt <job> [--recipe=NAME] [--section.key=value ...]`. It only parses
and dispatches.

Each job is a module of mingpt/jobs/ with get_config() -> CfgNode and main(config), imported
only when it runs; `mingpt <job> --help` lists every key with its default, and the recipes
(jobs/recipes.py) for a job whose config has a `recipe` key (the training jobs). A recipe is
applied to the job's defaults before the command line's own overrides, which win, and then every
value is checked. A user's mistake ends in one line on stderr and exit status 2 for the
configuration, 1 for anything else (`--debug` shows the traceback instead).
"""
from __future__ import annotations

import importlib
import os
import sys

from mingpt.jobs import recipes
from mingpt.utils import CfgNode, ConfigError, env_rank

JOBS = {
    "adder": ("mingpt.jobs.adder", "a GPT learns n-digit addition"),
    "chargpt": ("mingpt.jobs.chargpt", "a character-level language model on any text"),
    "prepare": ("mingpt.jobs.prepare", "text files -> train.bin / val.bin token files"),
    "train": ("mingpt.jobs.train", "train or fine-tune a GPT on prepared token files"),
    "words": ("mingpt.jobs.words", "a BPE-level GPT on any text (prepare + train)"),
    "sample": ("mingpt.jobs.sample", "sample text from a trained run or a pretrained model"),
    "eval": ("mingpt.jobs.eval", "score a model: HellaSwag as lm-evaluation-harness does, or val loss"),
    "bench": ("mingpt.jobs.bench", "speed benchmarks: mingpt against Hugging Face and a reference loop"),
    "diloco": ("mingpt.jobs.diloco", "a DiLoCo group on this machine: a lighthouse and N workers of a training job"),
}

# errors a user can cause (a bad value, a missing file, no network): shown as one line
USER_ERRORS = (ValueError, OSError, FloatingPointError)


def usage() -> str:
    lines = ["usage: mingpt <job> [--recipe=NAME] [--section.key=value ...] [--help] [--debug]", "", "jobs:"]
    lines += [f"  {name:10s} {about}" for name, (_, about) in JOBS.items()]
    return "\n".join(lines)


def config_help(job: str, config: CfgNode) -> str:
    takes_recipe = recipes.KEY in config.keys_flat()
    lines = [f"usage: mingpt {job} {'[--recipe=NAME] ' if takes_recipe else ''}[--section.key=value ...]", "",
             "keys and their defaults:"]
    for key in config.keys_flat():
        value = config
        for part in key.split("."):
            value = getattr(value, part)
        lines.append(f"  --{key}={value!r}")
    if takes_recipe:
        lines += ["", recipes.describe()]
    return "\n".join(lines)


def take_recipe(job: str, config: CfgNode, args: list[str]) -> list[str]:
    """Apply the recipe that args name (--recipe=NAME) to config, the job's defaults; returns the
    other args, the overrides that go on top of it. Without --recipe, config is left as it is."""
    names = [arg.split("=", 1)[1] for arg in args if arg.startswith("--recipe=")]
    if len(names) > 1:
        raise ConfigError(f"--recipe is given {len(names)} times ({', '.join(names)}); give one")
    if names:
        recipes.apply(config, names[0], job)
    return [arg for arg in args if not arg.startswith("--recipe=")]


def say(line: str) -> None:
    """One line to stderr in one write, so that the lines of several processes do not interleave."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def prefix(job: str) -> str:
    """'mingpt chargpt', and the rank under torchrun, where every process reports its own error."""
    return f"mingpt {job}" + (f" (rank {env_rank()})" if "RANK" in os.environ else "")


def run_job(job: str, args: list[str]) -> int:
    """Run one job with command-line overrides; returns the exit status."""
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    module = importlib.import_module(JOBS[job][0])
    config = module.get_config()
    try:
        if hasattr(module, "main_args"):  # a job that runs other jobs reads its command line itself
            return module.main_args(args)
        args = take_recipe(job, config, args)  # (first: the command line's overrides win)
        if "--help" in args or "-h" in args:  # the defaults, with the recipe's if one is named
            notes = getattr(module, "help_notes", None)  # a job may explain its keys' values further
            print(config_help(job, config) + (f"\n\n{notes()}" if notes else ""))
            return 0
        config.merge_from_args(args)
        config.check()  # every value against what its key declares, before any work is done
        module.main(config)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM: the Trainer saved a checkpoint first
        say(f"{prefix(job)}: interrupted{': ' + str(e) if str(e) else ''}")
        return 130
    except USER_ERRORS as e:
        if debug:
            raise
        kind = "config error" if isinstance(e, ConfigError) else "error"
        say(f"{prefix(job)}: {kind}: {e}")
        return 2 if isinstance(e, ConfigError) else 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    job, args = argv[0], argv[1:]
    if job not in JOBS:
        print(f"mingpt: unknown job {job!r}; choose one of: {', '.join(JOBS)}", file=sys.stderr)
        return 2
    return run_job(job, args)


if __name__ == "__main__":
    sys.exit(main())
