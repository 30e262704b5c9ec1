"""A GPT learns to add 2-digit numbers: a script written the way minGPT's own projects are
(projects/adder/adder.py): minGPT's CfgNode and command-line overrides, setup_logging(config),
a per-example Dataset, Trainer defaults, callbacks, generate, and GPT-2's tokenizer as minGPT's
generate notebook asks for its <|endoftext|>. tests/test_mingpt_compat.py runs it.
"""
import os
import sys

import torch
from torch.utils.data import DataLoader, Dataset

from mingpt.bpe import BPETokenizer
from mingpt.model import GPT
from mingpt.trainer import Trainer
from mingpt.utils import CfgNode as CN
from mingpt.utils import set_seed, setup_logging


def get_config():
    C = CN()
    C.system = CN()
    C.system.seed = 3407
    C.system.work_dir = "./out/adder"
    C.data = AdditionDataset.get_default_config()
    C.model = GPT.get_default_config()
    C.model.model_type = "gpt-nano"
    C.trainer = Trainer.get_default_config()
    C.trainer.learning_rate = 5e-4  # the model is tiny: a higher rate than the default works
    C.trainer.max_iters = 2000
    return C


class AdditionDataset(Dataset):
    """a + b = c as digits: a and b zero-padded, then c reversed; 85 + 50 = 135 -> 8550531.
    The loss covers only c. 20% of the problems (at most 500) are held out for testing."""

    @staticmethod
    def get_default_config():
        C = CN()
        C.ndigit = 2
        return C

    def __init__(self, config, split):
        self.config = config
        n = 10 ** (2 * config.ndigit)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(1337))
        n_test = min(int(n * 0.2), 500)
        self.ixes = order[:n_test] if split == "test" else order[n_test:]

    def get_vocab_size(self):
        return 10

    def get_block_size(self):
        return 3 * self.config.ndigit  # a, b and the ndigit + 1 digits of c, less the last

    def __len__(self):
        return len(self.ixes)

    def __getitem__(self, idx):
        nd = self.config.ndigit
        a, b = divmod(self.ixes[idx].item(), 10 ** nd)
        text = f"{a:0{nd}d}{b:0{nd}d}" + f"{a + b:0{nd + 1}d}"[::-1]
        digits = [int(ch) for ch in text]
        x = torch.tensor(digits[:-1], dtype=torch.long)
        y = torch.tensor(digits[1:], dtype=torch.long)
        y[:2 * nd - 1] = -1  # no loss on predicting a and b
        return x, y


def eval_split(model, dataset, device):
    """Greedy sums of every problem of dataset; prints a few mistakes, returns the accuracy."""
    nd = dataset.config.ndigit
    loader = DataLoader(dataset, batch_size=100, num_workers=0, drop_last=False)
    correct, shown = [], 0
    for x, _ in loader:
        x = x.to(device)
        out = model.generate(x[:, :2 * nd], nd + 1, do_sample=False)
        powers = 10 ** torch.arange(nd + 1, device=device)
        claimed = (out[:, 2 * nd:] * powers).sum(1)
        a = (x[:, :nd] * 10 ** torch.arange(nd - 1, -1, -1, device=device)).sum(1)
        b = (x[:, nd:2 * nd] * 10 ** torch.arange(nd - 1, -1, -1, device=device)).sum(1)
        right = claimed == a + b
        correct += right.tolist()
        for i in (~right).nonzero()[:, 0].tolist():
            if shown < 5:
                print(f"GPT claims that {a[i]} + {b[i]} = {claimed[i]} but gt is {a[i] + b[i]}")
                shown += 1
    return sum(correct) / len(correct)


if __name__ == "__main__":
    config = get_config()
    config.merge_from_args(sys.argv[1:])
    print(config)
    setup_logging(config)
    set_seed(config.system.seed)

    tokenizer = BPETokenizer()  # as minGPT's generate notebook: the id that ends a document
    print("endoftext", tokenizer.encoder.encoder["<|endoftext|>"], tokenizer.decode(tokenizer("Hello world")[0]))

    train_dataset = AdditionDataset(config.data, split="train")
    test_dataset = AdditionDataset(config.data, split="test")
    config.model.vocab_size = train_dataset.get_vocab_size()
    config.model.block_size = train_dataset.get_block_size()
    model = GPT(config.model)
    trainer = Trainer(config.trainer, model, train_dataset)

    def batch_end_callback(trainer):
        if trainer.iter_num % 100 == 0:
            print(f"iter_dt {trainer.iter_dt * 1000:.2f}ms; iter {trainer.iter_num}: train loss {trainer.loss.item():.5f}")
        if (trainer.iter_num + 1) % 500 == 0:
            model.eval()
            with torch.no_grad():
                accuracy = eval_split(model, test_dataset, trainer.device)
            print(f"iter {trainer.iter_num + 1}: test accuracy {accuracy:.4f}")
            torch.save(model.state_dict(), os.path.join(config.system.work_dir, "model.pt"))
            model.train()

    trainer.set_callback("on_batch_end", batch_end_callback)
    trainer.run()
