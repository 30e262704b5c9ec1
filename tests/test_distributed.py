"""Several processes train as one (torchrun, gloo on the CPU): the same weights as one process on
the same data, one writer, exact resume, and FSDP2 checkpoints that load on any number of ranks."""
import json
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import (BATCH, MODEL_OPTIONS, STEPS, ULPS_TRAINING, assert_close_to, final_tensors, latest_iteration,
                     rows_without_timing, start_and_kill, states_ulps_apart, tiny_run)
from mingpt.distributed import Place
from mingpt.model import GPT
from mingpt.trainer import draw_batches

TESTS = Path(__file__).resolve().parent


def torchrun(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    """Two CPU processes on this machine (a free port is picked by --standalone)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach() for name, t in model.state_dict().items()}


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> Path:
    """One torchrun job of 2 processes running every scenario of dist_worker.py; its outputs."""
    out = tmp_path_factory.mktemp("job")
    result = torchrun(str(TESTS / "dist_worker.py"), str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def one_process() -> dict[str, torch.Tensor]:
    """The weights of 1 process with batch 2b after the same k steps on the same data."""
    trainer = tiny_run(batch_size=2 * BATCH)
    trainer.run()
    return weights(trainer.model)


def test_two_ranks_of_batch_b_match_one_rank_of_batch_2b(job, one_process):
    """k=6 steps, b=4, lr 3e-4: DDP averages the 2 ranks' gradients of their halves of each
    global batch. Within ULPS_TRAINING: see test_gradient_accumulation_matches_one_big_batch for why
    the order of float sums leaves a little."""
    apart = states_ulps_apart(one_process, load_file(str(job / "ddp.safetensors")))
    print(f"DDP 2 x b={BATCH} vs 1 x {2 * BATCH}, k={STEPS}: weights {apart:.1f} ulps apart")
    assert apart <= ULPS_TRAINING


def test_two_ranks_accumulating_match_one_rank_of_batch_2b(job, one_process):
    """2 ranks x 2 micro-batches of b/2: the all-reduce is skipped (no_sync) on the first micro-batch."""
    apart = states_ulps_apart(one_process, load_file(str(job / "ddp_accum.safetensors")))
    print(f"DDP 2 x accumulation 2 x b={BATCH // 2} vs 1 x {2 * BATCH}, k={STEPS}: weights {apart:.1f} ulps apart")
    assert apart <= ULPS_TRAINING


def test_fsdp_matches_one_rank_and_writes_the_checkpoint_one_process_writes(job, one_process, tmp_path):
    apart = states_ulps_apart(one_process, weights(GPT.from_pretrained(job / "fsdp")))
    print(f"FSDP2 2 x b={BATCH} vs 1 x {2 * BATCH}, k={STEPS}: weights {apart:.1f} ulps apart")
    assert apart <= ULPS_TRAINING
    tiny_run(tmp_path, batch_size=2 * BATCH).run()
    sharded, plain = final_tensors(job / "fsdp"), final_tensors(tmp_path)
    # one tied head/embedding, the optimizer numbered alike; and rank 1's RNG too
    assert sharded.keys() == plain.keys() | {"rank1.rng.torch"}
    assert all(sharded[k].shape == plain[k].shape and sharded[k].dtype == plain[k].dtype for k in plain)


def test_every_model_option_trains_the_same_under_ddp_and_fsdp_as_in_one_process(job):
    """RoPE, RMSNorm, QK-norm, ReLU^2, no biases, soft-capped logits, one kv head, zero-initialised
    projections and a local layer, all at once: 2 ranks x b as 1 rank x 2b."""
    one = tiny_run(batch_size=2 * BATCH, model_options=MODEL_OPTIONS)
    one.run()
    for name, trained in (("DDP", load_file(str(job / "ddp_options.safetensors"))),
                          ("FSDP2", weights(GPT.from_pretrained(job / "fsdp_options")))):
        apart = states_ulps_apart(weights(one.model), trained)
        print(f"{name} with every model option: weights {apart:.1f} ulps apart")
        assert apart <= ULPS_TRAINING


def test_a_resumed_fsdp_run_is_bitwise_identical_to_a_straight_one(job):
    """Stopped after 3 of 6 steps and resumed on 2 ranks: each shards the whole optimizer state again."""
    straight, resumed = final_tensors(job / "fsdp"), final_tensors(job / "fsdp_resumed")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    assert rows_without_timing(job / "fsdp") == rows_without_timing(job / "fsdp_resumed")


def test_one_process_continues_a_two_process_fsdp_run(job, tmp_path, caplog):
    """Checkpoints are whole: 2 FSDP ranks for 6 steps, then 1 process with the same global batch
    for 3 more, matches 1 process for all 9 (the data order goes on from the saved generator)."""
    shutil.copytree(job / "fsdp", tmp_path / "run")
    tiny_run(tmp_path / "run", resume=True, batch_size=2 * BATCH, max_iters=STEPS + 3).run()
    assert "changed settings (resolved.world_size, trainer.batch_size, trainer.fsdp)" in caplog.text
    straight = tiny_run(batch_size=2 * BATCH, max_iters=STEPS + 3)
    straight.run()
    assert states_ulps_apart(weights(straight.model), weights(GPT.from_pretrained(tmp_path / "run"))) <= ULPS_TRAINING


def test_fsdp_in_bf16_keeps_fp32_shards_and_checkpoints(job):
    config = json.loads((job / "fsdp_bf16" / "config.json").read_text())
    assert config["resolved"] == {"world_size": 2, "grad_accum_steps": 1, "global_batch_size": 8, "dtype": "bf16"}
    saved = final_tensors(job / "fsdp_bf16")
    assert all(t.dtype == torch.float32 for name, t in saved.items()
               if not name.startswith(("rng", "rank", "data")))  # (RNG states are bytes)
    bf16 = [row["loss"] for row in rows_without_timing(job / "fsdp_bf16")]
    fp32 = [row["loss"] for row in rows_without_timing(job / "fsdp")]
    assert_close_to(fp32, bf16, 1, dtype=torch.bfloat16)  # within one bf16 ulp of the loss


def test_fsdp_in_fp16_skips_an_overflowing_step_on_every_rank_together(job):
    """An inf in one rank's gradient shard only: the other rank must skip too, and both halve
    the loss scale (DTensor takes the overflow flag's maximum over the ranks)."""
    assert json.loads((job / "fp16_overflow.json").read_text()) == [[True, 32768.0], [True, 32768.0]]


def test_each_rank_takes_its_own_rows_of_one_global_batch():
    """Without processes: a rank's rows are its slice of the batch one process of 2b would draw,
    for a token stream (cut per rank), any get_batch dataset, and a per-example Dataset."""
    stream = tiny_run().train_dataset

    class OnlyGetBatch:  # no rows= argument: the Trainer cuts the rows itself
        def get_batch(self, batch_size, generator):
            return stream.get_batch(batch_size, generator)

    class Examples(torch.utils.data.Dataset):
        def __len__(self):
            return len(stream)

        def __getitem__(self, i):
            return stream[i]

    def first_batch(dataset, place: Place, rows_per_rank: int):
        generator = torch.Generator().manual_seed(0)  # the same draws on every rank
        return next(draw_batches(dataset, generator, place, rows_per_rank, torch.device("cpu")))

    for dataset in (stream, OnlyGetBatch(), Examples()):
        whole = first_batch(dataset, Place(), 2 * BATCH)
        for rank in (0, 1):  # batch BATCH // 2 x 2 micro-batches on each of 2 ranks
            x, y = first_batch(dataset, Place(rank=rank, world_size=2), BATCH // 2 * 2)
            rows = slice(rank * BATCH, (rank + 1) * BATCH)
            assert torch.equal(x, whole[0][rows]) and torch.equal(y, whole[1][rows])


def test_every_rank_stops_after_the_same_iteration_when_one_runs_out_of_time(tmp_path):
    """max_seconds is agreed over the ranks every iteration: rank 1's tiny budget stops both after
    their first iteration, evaluated together (a rank left training alone would hang the job)."""
    result = torchrun(str(TESTS / "dist_worker.py"), str(tmp_path), "stopping", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "stopping.json").read_text()) == [[1, "max_seconds"], [1, "max_seconds"]]


# -- chargpt through torchrun: one writer, exact resume, errors on every rank ---------------------
RUN = ["--model.model_type=None", "--model.n_layer=2", "--model.n_head=2", "--model.n_embd=32",
       "--model.block_size=32", "--model.embd_pdrop=0.1", "--model.resid_pdrop=0.1",
       "--model.attn_pdrop=0.1", "--trainer.batch_size=4", "--trainer.eval_iters=2",
       "--trainer.log_interval=5", "--trainer.eval_interval=5", "--trainer.lr_schedule=constant",
       "--trainer.progress_bar=False", "--sample.max_new_tokens=5"]


@pytest.fixture
def corpus(tmp_path) -> Path:
    rng = random.Random(0)
    words = ["the", "king", "queen", "shall", "speak", "of", "love", "and", "war", "to", "me"]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(1000)))
    return path


@pytest.mark.slow
def test_chargpt_on_two_processes_writes_once_and_resumes_exactly(tmp_path, corpus):
    """With dropout on, so each rank's RNG must be saved and restored. 20 iterations straight
    (python -m mingpt), against 10 (the mingpt command) then resumed to 20."""
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    args = [f"--data.input={corpus}", *RUN]
    first = torchrun("-m", "mingpt", "chargpt", f"--system.work_dir={straight}", *args, "--trainer.max_iters=20")
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stderr.count("chargpt: ") == 1 and first.stderr.count("best val loss") == 1  # rank 0 logs
    assert len(first.stdout) == 1 + 5 + 1  # one sample: the newline prompt, 5 characters, print's newline
    rows = rows_without_timing(straight)
    assert [row["iter"] for row in rows] == [5, 10, 15, 20]
    assert sorted(p.name for p in (straight / "checkpoints").iterdir()) == ["iter_0000015", "iter_0000020"]
    assert json.loads((straight / "config.json").read_text())["resolved"]["global_batch_size"] == 8

    mingpt_command = str(Path(sys.executable).with_name("mingpt"))
    half = torchrun(mingpt_command, "chargpt", f"--system.work_dir={interrupted}", *args, "--trainer.max_iters=10")
    assert half.returncode == 0, half.stderr[-3000:]
    resumed = torchrun("-m", "mingpt", "chargpt", f"--system.work_dir={interrupted}", *args,
                       "--trainer.max_iters=20", "--system.resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stderr.count("resuming from") == 1 and "changed settings" not in resumed.stderr
    a, b = final_tensors(straight), final_tensors(interrupted)
    assert a.keys() == b.keys() and "rank1.rng.torch" in a
    for name in a:  # weights, optimizer, data generator, and both ranks' RNG states
        assert torch.equal(a[name], b[name]), name
    assert rows_without_timing(interrupted) == rows


@pytest.mark.slow
def test_an_error_is_one_line_on_every_rank_and_nothing_hangs(tmp_path, corpus):
    """A folder that holds a run: every rank checks before rank 0 writes, so all refuse alike."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("")  # a run started here
    result = torchrun("-m", "mingpt", "chargpt", f"--system.work_dir={tmp_path / 'run'}",
                      f"--data.input={corpus}", *RUN, timeout=120)
    assert result.returncode != 0
    for rank in (0, 1):
        start = f"mingpt chargpt (rank {rank}): error:"
        lines = [line for line in result.stderr.splitlines() if line.startswith(start)]
        assert len(lines) == 1 and "already holds a run" in lines[0]


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_every_rank_after_the_same_iteration_with_a_checkpoint(tmp_path, corpus):
    """torchrun passes the signal on; the ranks agree every iteration whether to stop, so they
    stop together and save one checkpoint of the last iteration run."""
    work_dir = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "mingpt", "chargpt", f"--system.work_dir={work_dir}", f"--data.input={corpus}", *RUN,
               "--trainer.max_iters=100000"]
    result = start_and_kill(command, work_dir, after_iteration=5, extra_delay=0.5, sig=signal.SIGTERM)
    stopped = [line for line in result.stderr.splitlines() if ": interrupted: stopped by signal 15" in line]
    assert len(stopped) == 2, result.stderr[-3000:]
    last = latest_iteration(work_dir)
    assert all(line.endswith(f"after iteration {last}; checkpoint saved, continue with --system.resume=true")
               for line in stopped)
    assert rows_without_timing(work_dir)[-1]["iter"] == last
