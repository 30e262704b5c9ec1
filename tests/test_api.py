"""The minGPT-style public API of DESIGN.md, used exactly as written there."""
import torch
from torch.utils.data import Dataset


class SortDataset(Dataset):
    """minGPT's demo: sort 6 digits in [0, 3); loss only on the sorted half."""

    def __len__(self):
        return 10_000

    def __getitem__(self, idx):
        inp = torch.randint(3, size=(6,), dtype=torch.long)
        cat = torch.cat((inp, torch.sort(inp)[0]), dim=0)
        x, y = cat[:-1].clone(), cat[1:].clone()
        y[:5] = -1
        return x, y


def test_the_design_api_as_written():
    from mingpt.model import GPT
    cfg = GPT.get_default_config()
    cfg.model_type = 'gpt-nano'
    cfg.vocab_size, cfg.block_size = 3, 11
    model = GPT(cfg)
    idx = torch.randint(3, (4, 11))
    targets = idx.clone()
    targets[:, :5] = -1
    logits, loss = model(idx, targets)
    assert logits.shape == (4, 11, 3) and loss.dim() == 0

    from mingpt.trainer import Trainer
    tc = Trainer.get_default_config()
    tc.max_iters = 100
    tc.batch_size = 32
    tc.learning_rate = 5e-4
    tc.num_workers = 0
    tc.progress_bar = False
    optimizer = model.configure_optimizers(tc)
    assert isinstance(optimizer, torch.optim.AdamW)
    trainer = Trainer(tc, model, SortDataset())
    seen = []
    trainer.set_callback('on_batch_end', lambda t: seen.append((t.iter_num, t.iter_dt, t.loss.item())))
    trainer.add_callback('on_batch_end', lambda t: None)
    trainer.run()
    assert trainer.iter_num == 100 and str(trainer.device) == 'cpu'
    assert seen[-1][2] < seen[0][2]

    model.eval()
    out = model.generate(torch.tensor([[2, 0, 1, 0, 2, 1]]), 5, temperature=1.0, do_sample=False, top_k=None)
    assert out.shape == (1, 11)

    from mingpt.bpe import BPETokenizer
    tok = BPETokenizer()
    idx = tok("Hello world")
    text = tok.decode(idx[0])
    assert idx.shape == (1, 2) and text == "Hello world"

    from mingpt.utils import CfgNode, set_seed, setup_logging
    set_seed(3407)
    setup_logging()
    cfg = CfgNode(trainer=Trainer.get_default_config(), model=GPT.get_default_config())
    cfg.merge_from_args(['--trainer.max_iters=2000', '--model.n_layer=4'])
    assert cfg.trainer.max_iters == 2000 and cfg.model.n_layer == 4
    assert isinstance(CfgNode(a=1), CfgNode)
