"""DiLoCo on torchft (mingpt/distributed/diloco/, mingpt/jobs/diloco.py): the outer step's numbers, what is
counted, packing, refusals, and (slow) real worker processes that are killed, rejoin, stop and
resume. Workers of the fast tests are threads of this process around one lighthouse, as torchft's
own integration tests run them; the slow ones are processes, as on many machines."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import torch

from helpers import PACKING_PRECISION, ULPS_OP, latest_iteration, pattern_stream, quick_config, tiny_gpt
from mingpt import cli, distributed
from mingpt.distributed import diloco
from mingpt.trainer import Trainer
from mingpt.training.run_folder import RunFolder
from mingpt.utils import ConfigError

torchft = pytest.importorskip("torchft", reason="DiLoCo needs torchft (pip install \"mingpt[diloco]\")")
from torchft.coordination import LighthouseServer  # noqa: E402

H = 3  # inner steps per round in the fast tests


@pytest.fixture
def lighthouse(monkeypatch):
    """A lighthouse for two or three workers; TORCHFT_LIGHTHOUSE names it."""
    server = LighthouseServer(bind="[::]:0", min_replicas=2, join_timeout_ms=3000, heartbeat_timeout_ms=1000)
    monkeypatch.setenv(diloco.LIGHTHOUSE_ENV, server.address())
    yield server
    server.shutdown()


class Recording:
    """A token stream that remembers the batches it hands out (each worker's own)."""

    def __init__(self, stream):
        self.stream, self.batches = stream, []

    def get_batch(self, batch_size, generator):
        x, y = self.stream.get_batch(batch_size, generator)
        self.batches.append((x.clone(), y.clone()))
        return x, y


class Replay:
    """Hands out recorded batches again, in order: the same inner steps without DiLoCo."""

    def __init__(self, batches):
        self.batches = iter(batches)

    def get_batch(self, batch_size, generator):
        return next(self.batches)


def diloco_config(worker: int, **overrides):
    c = diloco.get_default_config()
    c.sync_every, c.worker_id, c.min_workers, c.timeout_s, c.quorum_timeout_s = H, worker, 2, 10, 60
    c.merge_from_dict(overrides)
    return c


def run_workers(configs: list, max_iters: int = H) -> list[dict]:
    """Train one tiny GPT per config, each in a thread (a worker); every model built first, from
    seed 0, as separate processes with the same seed would build it. Returns, per worker: the
    trainer (or the error it raised), its recorded batches and its final weights."""
    models = []
    for _ in configs:
        torch.manual_seed(0)
        models.append(tiny_gpt())
    results = [{} for _ in configs]
    # every worker's manager up (heartbeating) before any asks for its first quorum: else, on a
    # loaded machine, the lighthouse may form the first quorum without a worker that starts late
    all_started = threading.Barrier(len(configs))

    def work(i: int) -> None:
        data = Recording(pattern_stream())
        trainer = Trainer(quick_config(max_iters=max_iters, eval_interval=100), models[i], data, diloco=configs[i])
        trainer.add_callback("on_batch_end", lambda t: t.iter_num == 0 and all_started.wait(timeout=60))
        try:
            trainer.run()
            results[i].update(trainer=trainer, batches=data.batches,
                              weights={k: v.clone() for k, v in models[i].state_dict().items()})
        except Exception as e:  # (the test looks at it)
            results[i]["error"] = e

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(configs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def inner_steps_alone(batches) -> dict[str, torch.Tensor]:
    """A worker's H inner steps again, without DiLoCo: its local weights before the outer step."""
    torch.manual_seed(0)
    model = tiny_gpt()
    Trainer(quick_config(max_iters=H, eval_interval=100), model, Replay(batches)).run()
    return model.state_dict()


@pytest.mark.parametrize("packing", ["fp32", "bf16", "int8"])
def test_one_round_is_an_outer_nesterov_step_on_the_mean_weight_change(lighthouse, packing):
    """After one round: the outer gradient is the mean over workers of (global - local); Nesterov
    SGD's first step has momentum buffer b = g, so it moves by lr * (g + momentum * b) =
    lr * (1 + momentum) * g. Each worker's local weights come from replaying its batches alone.
    What may differ: the packing's rounding of the outer gradient (at most one step of it, twice:
    packed to be sent, and its sum packed again), and fp32's rounding of the weights."""
    results = run_workers([diloco_config(i, packing=packing) for i in range(2)])
    assert all("error" not in r for r in results), [r.get("error") for r in results]
    torch.manual_seed(0)
    start = tiny_gpt().state_dict()
    local = [inner_steps_alone(r["batches"]) for r in results]
    assert not torch.equal(results[0]["batches"][0][0], results[1]["batches"][0][0])  # each its own data
    lr, momentum = 0.7, 0.9
    largest = max((w0 - w[name]).abs().max() for name, w0 in start.items() for w in local)  # what is packed
    for name, w0 in start.items():
        outer_gradient = sum(w0 - w[name] for w in local) / 2
        expected = w0 - lr * (1 + momentum) * outer_gradient
        allowed = lr * (1 + momentum) * 2 * PACKING_PRECISION[packing] * largest \
            + ULPS_OP * torch.finfo(torch.float32).eps * w0.abs().max()
        for r in results:
            assert (r["weights"][name] - expected).abs().max() <= allowed, name


def test_comm_bytes_count_what_each_packing_sends(lighthouse):
    """Two workers, one round. fp32's ring all-reduce sends 2(n-1)/n x 4 bytes per parameter. The
    packed exchanges cut the outer gradient into n segments, and send n-1 of them in the
    all-to-all and again in the all-gather: 2(n-1) segments of ceil(N / n) parameters, at 2 bytes
    (bf16) or 1 byte and a 4-byte scale (int8)."""
    numel = sum(p.numel() for p in tiny_gpt().parameters())
    segment = -(-numel // 2)
    for packing, expected in [("fp32", 4 * numel), ("bf16", 2 * 2 * segment), ("int8", 2 * (segment + 4))]:
        results = run_workers([diloco_config(i, packing=packing) for i in range(2)])
        for r in results:
            counters = r["trainer"].strategy.counters(H)
            assert counters == {"comm_bytes": expected, "syncs": 1}, packing
            assert r["trainer"].metrics[-1]["comm_bytes"] == expected


def test_ddp_counts_its_gradient_all_reduces_the_same_way():
    """A DDP step all-reduces every gradient once: 2(n-1)/n x their bytes from each rank."""
    assert distributed.ring_allreduce_bytes(1000, 1) == 0
    assert distributed.ring_allreduce_bytes(1000, 2) == 1000
    assert distributed.ring_allreduce_bytes(1200, 3) == 1600


def test_a_worker_with_other_settings_is_refused_before_it_touches_the_weights(lighthouse):
    """Three workers in the first quorum, one with another outer lr: it stops with one line naming
    the settings; the two others go on and agree on their weights."""
    configs = [diloco_config(0), diloco_config(1), diloco_config(2, outer_lr=0.5)]
    results = run_workers(configs, max_iters=2 * H)
    error = results[2].get("error")
    assert isinstance(error, ConfigError) and "differ from the group's" in str(error), error
    assert "\n" not in str(error)
    for r in results[:2]:
        assert "error" not in r, r.get("error")
    assert all(torch.equal(results[0]["weights"][k], results[1]["weights"][k]) for k in results[0]["weights"])


def test_without_torchft_the_diloco_settings_fail_in_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "torchft", None)  # (import torchft now raises ImportError)
    text = tmp_path / "text.txt"
    text.write_text("hello world, " * 500)
    status = cli.main(["chargpt", f"--data.input={text}", f"--system.work_dir={tmp_path / 'run'}",
                       "--diloco.sync_every=5", "--trainer.device=cpu"])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert status == 2 and len(errors) == 1, errors
    assert errors[0].endswith('needs torchft, which is not installed; pip install "mingpt[diloco]"')
    assert not RunFolder(tmp_path / "run").holds_run()


def test_an_unreachable_lighthouse_is_one_line_within_its_timeout(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(diloco.LIGHTHOUSE_ENV, "http://127.0.0.1:9")  # (the discard port: nothing listens)
    monkeypatch.setenv(diloco.WORKER_ENV, "0")
    text = tmp_path / "text.txt"
    text.write_text("hello world, " * 500)
    started = time.time()
    status = cli.main(["chargpt", f"--data.input={text}", f"--system.work_dir={tmp_path / 'run'}",
                       "--diloco.sync_every=5", "--diloco.connect_timeout_s=1", "--trainer.device=cpu",
                       "--model.model_type=gpt-nano", "--model.block_size=16"])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert status == 1 and len(errors) == 1, errors
    assert "cannot reach the DiLoCo lighthouse at http://127.0.0.1:9 within diloco.connect_timeout_s=1" in errors[0]
    assert time.time() - started < 60  # the timeout, not a hang
    assert not RunFolder(tmp_path / "run").holds_run()


def test_diloco_settings_are_checked_before_anything_starts(capsys):
    status = cli.main(["diloco", "--workers=2", "chargpt", "--diloco.sync_every=10", "--diloco.fragments=3"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "multiple of diloco.fragments=3" in err and err.count("\n") == 0
    assert cli.main(["diloco", "chargpt"]) == 2
    assert "needs --diloco.sync_every" in capsys.readouterr().err


# -- real processes (slow) -------------------------------------------------------------------------------
def worker_args(text: Path, work_dir: Path, max_iters: int, *extra: str) -> list[str]:
    return ["chargpt", f"--data.input={text}", f"--system.work_dir={work_dir}", "--model.model_type=gpt-nano",
            "--model.block_size=32", "--trainer.batch_size=8", f"--trainer.max_iters={max_iters}",
            "--trainer.eval_interval=20", "--trainer.eval_iters=5", "--trainer.log_interval=1",
            "--trainer.device=cpu", "--sample.max_new_tokens=0", "--diloco.sync_every=10",
            "--diloco.min_workers=2", "--diloco.timeout_s=5", "--diloco.quorum_timeout_s=120", *extra]


@pytest.fixture
def small_text(tmp_path, shakespeare_path) -> Path:
    path = tmp_path / "shakespeare_100k.txt"
    path.write_text(shakespeare_path.read_text()[:100_000])
    return path


def start_worker(worker: int, args: list[str], lighthouse_address: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, diloco.LIGHTHOUSE_ENV: lighthouse_address, diloco.WORKER_ENV: str(worker),
           "OMP_NUM_THREADS": "1", "RUST_LOG": "warn"}
    return subprocess.Popen([sys.executable, "-m", "mingpt", *args], stdout=open(log, "a"),
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)


@contextmanager
def worker_group(min_replicas: int, join_timeout_ms: int) -> Iterator[tuple[str, list[subprocess.Popen]]]:
    """A lighthouse, and the list of worker jobs the caller starts against its address; on the
    way out every job still running is killed (its whole session: under torchrun, its ranks too)
    and the lighthouse shut down."""
    server = LighthouseServer(bind="[::]:0", min_replicas=min_replicas, join_timeout_ms=join_timeout_ms,
                              heartbeat_timeout_ms=1000)
    workers: list[subprocess.Popen] = []
    try:
        yield server.address(), workers
    finally:
        for w in workers:
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGKILL)
                w.wait()
        server.shutdown()


def last_iter(work_dir: Path) -> int:
    rows = RunFolder(work_dir).read_metrics() if (work_dir / RunFolder.METRICS).exists() else []
    return rows[-1]["iter"] if rows else 0


def final_weights(work_dir: Path) -> dict[str, torch.Tensor]:
    from helpers import final_tensors
    return {k: v for k, v in final_tensors(work_dir).items() if k.startswith("transformer.")}


@pytest.mark.slow
def test_a_killed_worker_does_not_stop_the_others_and_rejoins_when_started_again(tmp_path, small_text):
    """Three worker processes; worker 2 is killed (SIGKILL, by its pid) mid-round and started
    again from nothing: the others go on, it heals from a live peer (weights, optimizers,
    iteration) and all end with the same weights; the result is within 5% of an unbroken run's."""
    max_iters = 300  # (long enough for the killed worker to start again while the others train)
    unbroken = subprocess.run([sys.executable, "-m", "mingpt", "diloco", "--workers=3", "--join_timeout_s=3",
                               "--heartbeat_timeout_s=1", *worker_args(small_text, tmp_path / "unbroken", max_iters)],
                              capture_output=True, text=True, timeout=300)
    assert unbroken.returncode == 0, unbroken.stderr[-3000:]
    work_dir, logs = tmp_path / "broken", tmp_path / "logs"
    logs.mkdir()
    args = worker_args(small_text, work_dir, max_iters)
    with worker_group(min_replicas=2, join_timeout_ms=3000) as (address, workers):
        workers += [start_worker(i, args, address, logs / f"{i}.log") for i in range(3)]
        deadline = time.time() + 120
        while last_iter(work_dir / "workers" / "2") < 13:  # mid-round (rounds end at 10, 20, ...)
            assert workers[2].poll() is None and time.time() < deadline, (logs / "2.log").read_text()[-3000:]
            time.sleep(0.05)
        os.kill(workers[2].pid, signal.SIGKILL)
        workers[2].wait()
        workers[2] = start_worker(2, args + ["--system.overwrite=true"], address, logs / "2.log")
        for i, w in enumerate(workers):
            assert w.wait(timeout=300) == 0, (logs / f"{i}.log").read_text()[-3000:]
    assert "healed from a live peer" in (logs / "2.log").read_text()
    summaries = [json.loads((diloco.worker_folder(work_dir, diloco_config(i, sync_every=10)) / "summary.json")
                            .read_text()) for i in range(3)]
    assert [s["iters"] for s in summaries] == [max_iters] * 3
    weights = [final_weights(diloco.worker_folder(work_dir, diloco_config(i, sync_every=10))) for i in range(3)]
    for w in weights[1:]:
        assert all(torch.equal(w[k], weights[0][k]) for k in w)
    reference = json.loads((tmp_path / "unbroken" / "summary.json").read_text())["val_loss"]
    assert abs(summaries[0]["val_loss"] - reference) / reference < 0.05, (summaries[0]["val_loss"], reference)


@pytest.mark.slow
def test_muon_trains_across_workers_and_syncs_as_adamw_does(tmp_path, small_text):
    """`mingpt diloco --workers=2 chargpt --trainer.optimizer=muon` (Muon + AdamW, one OptimizerSet:
    a torch optimizer whose step hook takes the outer step): H=20, 200 iterations, so 10 syncs
    on each worker, which end with the same weights; the loss falls."""
    work_dir = tmp_path / "run"
    args = [*worker_args(small_text, work_dir, 200, "--trainer.optimizer=muon", "--trainer.learning_rate=3e-3"),
            "--diloco.sync_every=20"]  # (the last --diloco.sync_every wins)
    done = subprocess.run([sys.executable, "-m", "mingpt", "diloco", "--workers=2", "--join_timeout_s=3",
                           "--heartbeat_timeout_s=1", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    folders = [diloco.worker_folder(work_dir, diloco_config(i, sync_every=20)) for i in range(2)]
    summaries = [json.loads((folder / "summary.json").read_text()) for folder in folders]
    assert [(s["iters"], s["syncs"]) for s in summaries] == [(200, 10)] * 2, summaries
    assert json.loads((work_dir / "config.json").read_text())["trainer"]["optimizer"] == "muon"
    weights = [final_weights(folder) for folder in folders]
    assert all(torch.equal(weights[1][k], weights[0][k]) for k in weights[0])
    rows = RunFolder(folders[0]).read_metrics()
    assert rows[-1]["loss"] < 0.75 * rows[0]["loss"], (rows[0]["loss"], rows[-1]["loss"])


@pytest.mark.slow
def test_a_group_stopped_by_sigterm_resumes_from_its_checkpoints(tmp_path, small_text):
    """`mingpt diloco --workers=2`, stopped with SIGTERM once worker 0 has a checkpoint: every
    worker saves and the launcher exits 130; the same command with --system.resume=true goes on
    from the checkpoints (the outer state with them) to max_iters."""
    work_dir = tmp_path / "run"
    command = [sys.executable, "-m", "mingpt", "diloco", "--workers=2", "--join_timeout_s=3",
               "--heartbeat_timeout_s=1", *worker_args(small_text, work_dir, 80)]
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while latest_iteration(work_dir) < 20:
        assert launcher.poll() is None and time.time() < deadline, launcher.stderr.read()[-3000:]
        time.sleep(0.05)
    launcher.send_signal(signal.SIGTERM)
    _, err = launcher.communicate(timeout=180)
    assert launcher.returncode == 130, err[-3000:]
    stopped = json.loads((work_dir / "summary.json").read_text())
    assert stopped["stop_reason"] == "interrupted" and stopped["iters"] < 80
    resumed = subprocess.run(command + ["--system.resume=true"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((work_dir / "summary.json").read_text())
    assert summary["iters"] == 80 and summary["stop_reason"] == "max_iters"
    assert summary["syncs"] >= stopped["syncs"] and summary["comm_bytes"] > stopped["comm_bytes"]
    assert "resuming from" in (work_dir / "workers" / "0" / "worker.log").read_text()
    rows = RunFolder(work_dir).read_metrics()
    assert [r["iter"] for r in rows] == list(range(1, 81))


def ddp_worker_args(text: Path, work_dir: Path, max_iters: int, min_workers: int, eval_interval: int) -> list[str]:
    return ["chargpt", f"--data.input={text}", f"--system.work_dir={work_dir}", "--model.model_type=gpt-nano",
            "--model.block_size=32", "--trainer.batch_size=8", f"--trainer.max_iters={max_iters}",
            "--trainer.learning_rate=3e-3", f"--trainer.eval_interval={eval_interval}", "--trainer.eval_iters=2",
            "--trainer.log_interval=1", "--trainer.device=cpu", "--trainer.progress_bar=False",
            "--sample.max_new_tokens=0", "--diloco.sync_every=5", f"--diloco.min_workers={min_workers}",
            "--diloco.timeout_s=20", "--diloco.quorum_timeout_s=60"]


def start_ddp_worker(worker: int, out: Path, args: list[str], lighthouse_address: str, log: Path) -> subprocess.Popen:
    """One worker of 2 processes: torchrun around tests/diloco_ddp_worker.py, which runs `mingpt
    JOB args` and records each process's weights, counters and writes in out."""
    from helpers import PROJECT_ROOT
    env = {**os.environ, diloco.LIGHTHOUSE_ENV: lighthouse_address, diloco.WORKER_ENV: str(worker),
           "OMP_NUM_THREADS": "1", "RUST_LOG": "warn",
           "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(Path(__file__).parent / "diloco_ddp_worker.py"), str(out), *args]
    return subprocess.Popen(command, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_for_workers(workers: list[subprocess.Popen], logs: list[Path], timeout: float = 150) -> None:
    for i, w in enumerate(workers):
        try:
            status = w.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            status = "hung"
        assert status == 0, f"worker {i}: {status}\n" + logs[i].read_text()[-3000:]


def recorded(out: Path) -> tuple[dict, dict]:
    """Per (worker, rank): the final weights, and the record (counters, writes) of that process."""
    from safetensors.torch import load_file
    processes = [(worker, rank) for worker in range(2) for rank in range(2)]
    return ({p: load_file(str(out / f"{p[0]}-{p[1]}.safetensors")) for p in processes},
            {p: json.loads((out / f"{p[0]}-{p[1]}.json").read_text()) for p in processes})


def bytes_per_exchange(log: Path) -> int:
    """A 2-way ring all-reduce of the model's fp32 weights (what DDP sends per step, and DiLoCo's
    fp32 exchange per sync), from the parameter count the job logs."""
    import re
    n_params = int(re.search(r"model with ([\d,]+) parameters", log.read_text()).group(1).replace(",", ""))
    return distributed.ring_allreduce_bytes(4 * n_params, 2)


@pytest.mark.slow
def test_ddp_inside_each_worker_and_diloco_between_them(tmp_path, small_text):
    """Two workers, each a torchrun job of 2 processes (DDP on gloo inside the worker), around
    one lighthouse: 4 processes, 20 iterations, an outer step every 5. Every process records its
    final weights, counters and the paths it wrote (tests/diloco_ddp_worker.py). All 4 end with
    the same weights although the workers drew different batches; only rank 0 of worker 0 writes
    the shared run folder (rank 0 of worker 1 its own, the ranks 1 nothing); comm_bytes counts
    only the outer exchanges (one ring all-reduce of the weights' bytes per sync), the DDP
    gradient all-reduces inside a worker apart, as inner_comm_bytes; and the losses fall."""
    max_iters, sync_every = 20, 5
    work_dir, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    args = ddp_worker_args(small_text, work_dir, max_iters, min_workers=2, eval_interval=10)
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    with worker_group(min_replicas=2, join_timeout_ms=3000) as (address, workers):
        workers += [start_ddp_worker(i, out, args, address, logs[i]) for i in range(2)]
        wait_for_workers(workers, logs)

    weights, records = recorded(out)
    for p in weights:
        assert weights[p].keys() == weights[0, 0].keys()
        assert all(torch.equal(weights[p][k], weights[0, 0][k]) for k in weights[p]), f"worker, rank {p}"
        assert records[p]["inner"] == "ddp"

    # what crosses between workers: per process, one ring all-reduce of the fp32 weights per sync
    per_exchange = bytes_per_exchange(logs[0])
    for p in records:
        assert records[p]["counters"] == {"comm_bytes": (max_iters // sync_every) * per_exchange,
                                          "syncs": max_iters // sync_every,
                                          "inner_comm_bytes": max_iters * per_exchange}, p
        assert records[p]["manager_comm_bytes"] == records[p]["counters"]["comm_bytes"]

    # who wrote what: rank 0 of worker 0 the shared folder, rank 0 of worker 1 workers/1, ranks 1 nothing
    shared, own = work_dir.resolve(), (work_dir / "workers" / "1").resolve()
    assert records[0, 1]["written"] == [] and records[1, 1]["written"] == []
    written = {worker: [Path(path) for path in records[worker, 0]["written"]] for worker in range(2)}
    assert {shared / RunFolder.SUMMARY, shared / RunFolder.METRICS} <= set(written[0])
    assert not any(path.is_relative_to(shared / "workers") for path in written[0])
    assert own / RunFolder.SUMMARY in written[1]
    assert all(path.is_relative_to(own) or path in own.parents for path in written[1]), written[1]
    summary = json.loads((work_dir / RunFolder.SUMMARY).read_text())
    assert summary["iters"] == max_iters and summary["comm_bytes"] == records[0, 0]["counters"]["comm_bytes"]
    assert summary["inner_comm_bytes"] == max_iters * per_exchange

    # each worker its own batches (different losses from the first step), and the losses fall
    rows = [RunFolder(diloco.worker_folder(work_dir, diloco_config(i, sync_every=sync_every))).read_metrics()
            for i in range(2)]
    assert [r["iter"] for r in rows[0]] == list(range(1, max_iters + 1))
    assert rows[0][0]["loss"] != rows[1][0]["loss"]
    for worker_rows in rows:
        first, last = worker_rows[0]["loss"], sum(r["loss"] for r in worker_rows[-5:]) / 5
        assert last < first - 0.2, (first, last)
        assert worker_rows[-1]["val_loss"] < first - 0.2


@pytest.mark.slow
def test_a_worker_of_several_ranks_joining_late_is_healed_rank_by_rank(tmp_path, small_text):
    """Worker 0 (2 processes, min_workers=1) trains alone; worker 1 (2 processes) starts once
    worker 0 has logged an iteration, and at its first sync each of its ranks is healed from the
    rank of the same number in worker 0 (weights, optimizers, iteration). All 4 end with the
    same weights; worker 1 counts the DDP all-reduces of the steps it took (its metrics rows),
    not of the iterations the heal jumped over, and both count the same outer exchanges."""
    max_iters = 600  # (long enough for worker 1 to start while worker 0 trains)
    work_dir, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    args = ddp_worker_args(small_text, work_dir, max_iters, min_workers=1, eval_interval=300)
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    with worker_group(min_replicas=1, join_timeout_ms=1000) as (address, workers):
        workers.append(start_ddp_worker(0, out, args, address, logs[0]))
        deadline = time.time() + 120
        while last_iter(work_dir) < 1:
            assert workers[0].poll() is None and time.time() < deadline, logs[0].read_text()[-3000:]
            time.sleep(0.05)
        workers.append(start_ddp_worker(1, out, args, address, logs[1]))
        wait_for_workers(workers, logs)
    assert "healed from a live peer" in logs[1].read_text(), "worker 0 ended before worker 1 joined"
    weights, records = recorded(out)
    for p in weights:
        assert all(torch.equal(weights[p][k], weights[0, 0][k]) for k in weights[p]), f"worker, rank {p}"
    per_exchange = bytes_per_exchange(logs[0])
    steps_taken = len(RunFolder(work_dir / "workers" / "1").read_metrics())
    assert steps_taken < max_iters - 5  # (the heal jumped over a round at least)
    for rank in range(2):
        joiner, first = records[1, rank]["counters"], records[0, rank]["counters"]
        assert joiner["inner_comm_bytes"] == steps_taken * per_exchange
        assert first["inner_comm_bytes"] == max_iters * per_exchange
        assert joiner["comm_bytes"] == first["comm_bytes"] == joiner["syncs"] * per_exchange
        assert first["syncs"] == max_iters // 5


def test_the_network_namespace_benchmark_refuses_in_one_line_without_root(monkeypatch, capsys):
    """benchmarks/diloco_netns.py makes namespaces, links and qdiscs: as another user it stops
    at once, in one line that says why, before it makes anything."""
    import importlib.util

    from helpers import PROJECT_ROOT
    monkeypatch.setattr(sys, "path", sys.path[:])  # (the script puts benchmarks/ on it)
    spec = importlib.util.spec_from_file_location("diloco_netns", PROJECT_ROOT / "benchmarks" / "diloco_netns.py")
    netns = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(netns)
    made = []
    monkeypatch.setattr(netns, "sh", lambda *command: made.append(command))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(sys, "argv", ["diloco_netns.py", "--rates=10"])
    assert netns.main() == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "must run as root" in err and not made
