"""A GPT learns to add n-digit numbers, and is graded on problems it never saw.

A problem a + b = c with ndigit=2 is written as the digits of a and b (zero-padded), then the
ndigit + 1 digits of c reversed, since addition produces the lowest digit first:
85 + 50 = 135 becomes 8 5 5 0 5 3 1. The model reads a and b and is trained (and graded) only on
predicting c. A held-out test set is set aside first and never drawn for training.

    mingpt adder                      # ndigit=2, gpt-nano; stops once the test set is solved
    mingpt adder --data.ndigit=3 --trainer.max_iters=20000

At each grading it shows a few of the sums the model still gets wrong ("GPT claims that
55 + 45 = 90 but gt is 100"), in the log and in metrics.jsonl (`mistakes`).
"""
from __future__ import annotations

import logging
import sys

import torch

from mingpt.jobs.pipeline import system_config
from mingpt.model import GPT
from mingpt.trainer import Trainer
from mingpt.training import runtime
from mingpt.utils import CfgNode, setup_logging

log = logging.getLogger(__name__)

ENUMERATE_LIMIT = 10**6  # problem spaces up to this size are listed, larger ones sampled
MISTAKES_SHOWN = 5  # wrong sums shown at each grading


def get_config() -> CfgNode:
    C = CfgNode()
    C.system = system_config("out/adder")
    C.recipe = None  # set by --recipe=NAME (jobs/recipes.py; --help lists them), recorded in config.json
    C.data = AdditionProblems.get_default_config()
    C.model = GPT.get_default_config()
    C.model.model_type = "gpt-nano"
    C.model.tie_embeddings = True  # as GPT-2 (minGPT's default is untied)
    C.trainer = Trainer.get_default_config()
    C.trainer.learning_rate = 1e-3
    C.trainer.batch_size = 64
    C.trainer.max_iters = 10000
    C.trainer.warmup_iters = 100
    C.trainer.lr_schedule = "cosine"  # (minGPT's default is a constant rate)
    C.trainer.eval_interval = 250  # how often the held-out test set is graded
    return C


def digits_of(numbers: torch.Tensor, ndigit: int) -> torch.Tensor:
    """(N,) integers -> (N, ndigit) decimal digits, most significant first: 85 -> [8, 5]."""
    powers = 10 ** torch.arange(ndigit - 1, -1, -1)
    return numbers[:, None] // powers % 10


class AdditionProblems:
    """n-digit addition problems, split into a fixed held-out test set and training problems.

    A problem is a (N, 2 * ndigit) tensor of the digits of a then b. When there are at most
    ENUMERATE_LIMIT problems they are all listed and shuffled once; otherwise training problems
    are drawn on the fly, and any that land in the test set are drawn again.
    """

    @staticmethod
    def get_default_config() -> CfgNode:
        return CfgNode(ndigit=2, test_size=1000)

    def __init__(self, config: CfgNode, seed: int) -> None:
        n = config.ndigit
        if n < 1:
            raise ValueError(f"data.ndigit={n} must be >= 1")
        total = 10 ** (2 * n)
        if not 1 <= config.test_size <= total // 2:
            raise ValueError(f"data.test_size={config.test_size} must be between 1 and half of "
                             f"the {total} possible problems")
        self.ndigit = n
        self.block_size = 3 * n  # a, b, c (n + 1 digits) minus the last token, which is never input
        self.generator = torch.Generator().manual_seed(seed)
        if total <= ENUMERATE_LIMIT:
            order = torch.randperm(total, generator=self.generator)
            pairs = torch.stack([order // 10**n, order % 10**n], dim=1)
            problems = torch.cat([digits_of(pairs[:, 0], n), digits_of(pairs[:, 1], n)], dim=1)
            self.test, self.train = problems[:config.test_size], problems[config.test_size:]
        else:
            self.test = torch.randint(10, (config.test_size, 2 * n), generator=self.generator)
            self.train = None
            self.test_keys = self._keys(self.test)

    @staticmethod
    def _keys(problems: torch.Tensor) -> torch.Tensor:
        """An int64 key per problem: its last 18 digits as a number. Equal problems have equal
        keys, so a training problem whose key is a test key is never used (at worst, an unseen
        problem sharing the key is skipped too)."""
        tail = problems[:, -18:]
        powers = 10 ** torch.arange(tail.size(1) - 1, -1, -1)
        return (tail * powers).sum(dim=1)

    def sample_train(self, count: int, generator: torch.Generator) -> torch.Tensor:
        if self.train is not None:
            return self.train[torch.randint(len(self.train), (count,), generator=generator)]
        drawn = torch.randint(10, (count, 2 * self.ndigit), generator=generator)
        clash = torch.isin(self._keys(drawn), self.test_keys)
        if clash.any():
            drawn[clash] = self.sample_train(int(clash.sum()), generator)
        return drawn

    def encode(self, problems: torch.Tensor) -> torch.Tensor:
        """Digits of a and b (N, 2n) -> full sequences (N, 3n + 1) with the sum reversed."""
        n = self.ndigit
        a, b = problems[:, :n], problems[:, n:]
        carry = torch.zeros(len(problems), dtype=torch.long)
        sum_reversed = []
        for position in range(n - 1, -1, -1):  # schoolbook addition, lowest digit first
            column = a[:, position] + b[:, position] + carry
            sum_reversed.append(column % 10)
            carry = column // 10
        sum_reversed.append(carry)
        return torch.cat([problems, torch.stack(sum_reversed, dim=1)], dim=1)

    def get_batch(self, batch_size: int, generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y of shape (batch_size, 3n); targets over a and b are -1 (not trained on)."""
        sequences = self.encode(self.sample_train(batch_size, generator or self.generator))
        x, y = sequences[:, :-1], sequences[:, 1:].clone()
        y[:, :2 * self.ndigit - 1] = -1
        return x, y

    @staticmethod
    def decode_sum(sum_reversed: torch.Tensor) -> torch.Tensor:
        """(N, n + 1) reversed digits -> (N,) integers: [5, 3, 1] -> 135."""
        powers = 10 ** torch.arange(sum_reversed.size(1))
        return (sum_reversed * powers).sum(dim=1)


@torch.no_grad()
def grade(model: GPT, data: AdditionProblems, problems: torch.Tensor, batch_size: int = 1000,
          show: int = MISTAKES_SHOWN) -> tuple[float, list[str]]:
    """The fraction of problems whose sum the model writes exactly (greedy decoding), and up to
    `show` of the ones it gets wrong, as minGPT's adder printed them."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n, correct, mistakes = data.ndigit, 0, []
    for i in range(0, len(problems), batch_size):
        sequences = data.encode(problems[i:i + batch_size]).to(device)
        out = model.generate(sequences[:, :2 * n], n + 1)
        right = (out[:, 2 * n:] == sequences[:, 2 * n:]).all(dim=1)
        correct += right.sum().item()
        for j in (~right).nonzero()[:show - len(mistakes), 0].tolist():
            a, b = (int("".join(map(str, sequences[j, k * n:(k + 1) * n].tolist()))) for k in (0, 1))
            claimed = data.decode_sum(out[j:j + 1, 2 * n:].cpu()).item()
            mistakes.append(f"GPT claims that {a} + {b} = {claimed} but gt is {a + b}")
    model.train(was_training)
    return correct / len(problems), mistakes


def main(config: CfgNode) -> dict:
    setup_logging()
    runtime.setup(config.trainer.device, config.trainer.dtype, seed=config.system.seed)
    data = AdditionProblems(config.data, seed=config.system.seed)
    config.model.vocab_size = 10
    config.model.block_size = data.block_size
    model = GPT(config.model)
    log.info(f"adder: {config.data.ndigit}-digit problems, {len(data.test)} held out for testing; "
             f"model with {model.num_params():,} parameters")
    trainer = Trainer(config.trainer, model, data, work_dir=config.system.work_dir,
                      run_config=config.to_dict(),
                      resume=config.system.resume, overwrite=config.system.overwrite,
                      checkpoint=config.system.checkpoint)

    def on_batch_end(trainer: Trainer) -> None:
        done = trainer.iter_num + 1
        if done % config.trainer.eval_interval != 0 and done != config.trainer.max_iters:
            return
        test_accuracy, mistakes = grade(model, data, data.test)
        trainer.log(test_accuracy=test_accuracy, mistakes=mistakes)
        trainer.summary["test_accuracy"] = max(trainer.summary.get("test_accuracy", 0.0), test_accuracy)
        log.info(f"iter {done}: loss {trainer.loss.item():.4f}, test accuracy {test_accuracy:.2%}")
        for mistake in mistakes:
            log.info(f"  {mistake}")
        if test_accuracy == 1.0:
            log.info("the held-out test set is solved; stopping")
            trainer.stop()

    trainer.add_callback("on_batch_end", on_batch_end)
    summary = trainer.run()
    log.info(f"test accuracy {summary['test_accuracy']:.2%} after {summary['iters']} iterations "
             f"in {summary['wall_s']:.1f} s; run folder: {config.system.work_dir}")
    return summary


if __name__ == "__main__":
    from mingpt.cli import run_job
    sys.exit(run_job("adder", sys.argv[1:]))
