"""DiLoCo against DDP between two real "machines": two network namespaces joined by one shaped
link, the wall time and the bytes on the wire measured, and set against the model of
benchmarks/diloco_internet.py.

    sudo python benchmarks/diloco_netns.py                   # ~4 minutes; prints a table, writes benchmarks/diloco_netns.json
    sudo python benchmarks/diloco_netns.py --rates=100 --iters=20

It must run as root (it makes namespaces, a veth pair and qdiscs). For each rate it makes two
network namespaces, A (10.200.0.1/24) and B (10.200.0.2/24), joined by a veth pair whose
addresses exist only inside them, and shapes each direction with an htb qdisc to the rate (the
kernel's netem, for delay, is absent on this machine: the link has a rate, no added latency).
Then, one after the other, on char-level Tiny Shakespeare with gpt-micro (one torch thread per
process, 12 examples per process and iteration):
    DiLoCo  the lighthouse and worker 0 in A, worker 1 in B (`mingpt chargpt --diloco.sync_every=H`)
    DDP     `torchrun --nnodes=2 --nproc_per_node=1`, a c10d rendezvous at A's address, a node in each
Measured: each command's wall time, the training loop's wall_s (summary.json), the bytes each end
of the link sent (its tx_bytes: everything, TCP/IP headers and the control traffic included) and
the comm_bytes the algorithms count. The model's prediction takes the compute time of a step from
the DiLoCo run itself (the median ms of its iterations without an exchange) and the link's rate,
with no latency. The namespaces are always deleted (try/finally, also on Ctrl-C and SIGTERM).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from diloco_internet import exchange_s, step_s  # noqa: E402  (the model checked here)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
SUBNET, LIGHTHOUSE_PORT, RENDEZVOUS_PORT = "10.200.0", 29510, 29400


def sh(*command: str) -> str:
    """Run a setup command; stop with its own error message if it fails."""
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"`{' '.join(command)}` failed: {result.stderr.strip()}")
    return result.stdout


class Link:
    """Two namespaces joined by a veth pair, each end shaped to rate_mbit; deleted by close()."""

    def __init__(self, rate_mbit: float) -> None:
        tag = f"mgdl{os.getpid()}"
        self.names, self.devices = (f"{tag}a", f"{tag}b"), (f"{tag}a", f"{tag}b")
        self.addresses = (f"{SUBNET}.1", f"{SUBNET}.2")
        self.made: list[str] = []
        for ns in self.names:
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
        sh("ip", "link", "add", self.devices[0], "type", "veth", "peer", "name", self.devices[1])
        for ns, dev, address in zip(self.names, self.devices, self.addresses):
            sh("ip", "link", "set", dev, "netns", ns)
            sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            # what leaves this end (one direction of the link) at the rate
            sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10")
            sh("ip", "netns", "exec", ns, "tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:10",
               "htb", "rate", f"{rate_mbit}mbit", "ceil", f"{rate_mbit}mbit")

    def tx_bytes(self) -> tuple[int, int]:
        """What each end has sent so far (A to B, B to A)."""
        return tuple(int(sh("ip", "netns", "exec", ns, "cat", f"/sys/class/net/{dev}/statistics/tx_bytes"))
                     for ns, dev in zip(self.names, self.devices))

    def close(self) -> None:
        for ns in self.made:  # (deleting a namespace deletes the veth end inside it)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for dev in self.devices:  # (in case one was left outside)
            subprocess.run(["ip", "link", "del", dev], capture_output=True)
        self.made = []


def job_args(iters: int, eval_iters: int, work_dir: Path) -> list[str]:
    return ["chargpt", f"--data.input={DATA}", f"--system.work_dir={work_dir}", "--trainer.device=cpu",
            "--model.model_type=gpt-micro", f"--trainer.max_iters={iters}", f"--trainer.eval_interval={iters}",
            f"--trainer.eval_iters={eval_iters}", "--trainer.batch_size=12", "--trainer.log_interval=1",
            "--sample.max_new_tokens=0", "--trainer.progress_bar=False"]


class Processes:
    """Commands started inside the namespaces, each in its own session (killed by close())."""

    def __init__(self, logs: Path) -> None:
        self.logs, self.running = logs, []

    def start(self, name: str, ns: str, env: dict[str, str], command: list[str]) -> subprocess.Popen:
        full = ["ip", "netns", "exec", ns, "env", *[f"{k}={v}" for k, v in env.items()], *command]
        process = subprocess.Popen(full, stdout=open(self.logs / f"{name}.log", "w"), stderr=subprocess.STDOUT,
                                   start_new_session=True, cwd=ROOT)
        self.running.append(process)
        return process

    def wait(self, name: str, process: subprocess.Popen, timeout: float) -> None:
        try:
            status = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            status = "still running after the timeout"
        if status != 0:
            tail = (self.logs / f"{name}.log").read_text()[-2000:]
            raise SystemExit(f"{name} failed ({status}); the end of its log:\n{tail}")

    def close(self) -> None:
        for process in self.running:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait()
        self.running = []


def base_env(device: str) -> dict[str, str]:
    return {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RUST_LOG": "warn", "PATH": os.environ["PATH"],
            "GLOO_SOCKET_IFNAME": device}  # (gloo binds the link's address, not the hostname's)


def run_diloco(link: Link, procs: Processes, iters: int, h: int, eval_iters: int, work_dir: Path,
               timeout: float) -> dict:
    lighthouse_bin = str(Path(sys.executable).parent / "torchft_lighthouse")
    procs.start("lighthouse", link.names[0], base_env(link.devices[0]),
                [lighthouse_bin, "--min_replicas", "2", "--bind", f"[::]:{LIGHTHOUSE_PORT}",
                 "--join_timeout_ms", "10000", "--heartbeat_timeout_ms", "20000"])
    time.sleep(1.0)
    before, start = link.tx_bytes(), time.perf_counter()
    workers = []
    for i in range(2):
        env = {**base_env(link.devices[i]), "TORCHFT_LIGHTHOUSE": f"http://{link.addresses[0]}:{LIGHTHOUSE_PORT}",
               "REPLICA_GROUP_ID": str(i)}
        command = [sys.executable, "-m", "mingpt", *job_args(iters, eval_iters, work_dir), f"--diloco.sync_every={h}",
                   "--diloco.min_workers=2", f"--diloco.host={link.addresses[i]}", "--diloco.timeout_s=300",
                   "--diloco.quorum_timeout_s=300", "--diloco.connect_timeout_s=60"]
        workers.append(procs.start(f"diloco_worker{i}", link.names[i], env, command))
    for i, w in enumerate(workers):
        procs.wait(f"diloco_worker{i}", w, timeout)
    seconds, after = time.perf_counter() - start, link.tx_bytes()
    procs.close()  # (the lighthouse)
    summary = json.loads((work_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]
    compute_ms = statistics.median(r["ms"] for r in rows if r["iter"] % h and r.get("val_loss") is None)
    return {"scheme": f"DiLoCo H={h} fp32", "H": h, "command_s": seconds, "train_s": summary["wall_s"],
            "comm_bytes": summary["comm_bytes"], "syncs": summary["syncs"], "val_loss": summary["val_loss"],
            "wire_bytes": [a - b for a, b in zip(after, before)], "compute_ms_per_step": compute_ms}


def run_ddp(link: Link, procs: Processes, iters: int, eval_iters: int, work_dir: Path, timeout: float) -> dict:
    before, start = link.tx_bytes(), time.perf_counter()
    nodes = []
    for i in range(2):
        # (node 0 hosts the rendezvous store: torchrun would look for A's address among the
        # hostname's, which here resolves to 127.0.0.1, and no node would host it)
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                   "--rdzv_backend=c10d", f"--rdzv_endpoint={link.addresses[0]}:{RENDEZVOUS_PORT}",
                   "--rdzv_id=mingpt-netns", f"--rdzv_conf=is_host={int(i == 0)}", f"--local_addr={link.addresses[i]}",
                   "-m", "mingpt", *job_args(iters, eval_iters, work_dir / f"node{i}")]
        nodes.append(procs.start(f"ddp_node{i}", link.names[i], base_env(link.devices[i]), command))
    for i, node in enumerate(nodes):
        procs.wait(f"ddp_node{i}", node, timeout)
    seconds, after = time.perf_counter() - start, link.tx_bytes()
    summary = json.loads((work_dir / "node0" / "summary.json").read_text())
    return {"scheme": "DDP fp32", "H": 1, "command_s": seconds, "train_s": summary["wall_s"],
            "comm_bytes": summary["comm_bytes"], "syncs": summary["syncs"], "val_loss": summary["val_loss"],
            "wire_bytes": [a - b for a, b in zip(after, before)]}


def predict(row: dict, params_bytes: int, rate_bps: float, compute_s: float, iters: int) -> float:
    """The training seconds benchmarks/diloco_internet.py's model gives this run: 2 workers, the
    link's rate, no latency, this machine's compute time of a step."""
    sync = exchange_s(params_bytes / 4, 4.0, rate_bps, n=2, latency_s=0.0)
    return iters * step_s(compute_s, row["H"], sync)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="10,100", help="link rates in Mbit/s, comma-separated")
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--sync_every", type=int, default=20)
    parser.add_argument("--eval_iters", type=int, default=5)
    parser.add_argument("--timeout_s", type=float, default=300, help="per command")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "diloco_netns.json"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("benchmarks/diloco_netns.py makes network namespaces and must run as root; run it with sudo",
              file=sys.stderr)
        return 2
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        print(f"benchmarks/diloco_netns.py needs {' and '.join(missing)} (iproute2); install it", file=sys.stderr)
        return 2
    if not DATA.exists():
        print(f"benchmarks/diloco_netns.py reads {DATA}, which is missing", file=sys.stderr)
        return 2
    rates = [float(r) for r in args.rates.split(",")]

    def stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    results = []
    with tempfile.TemporaryDirectory(prefix="diloco_netns_") as scratch:
        for rate in rates:
            link, procs = None, Processes(Path(scratch))
            try:
                link = Link(rate)
                diloco = run_diloco(link, procs, args.iters, args.sync_every, args.eval_iters,
                                    Path(scratch) / f"diloco_{rate:g}", args.timeout_s)
                ddp = run_ddp(link, procs, args.iters, args.eval_iters, Path(scratch) / f"ddp_{rate:g}", args.timeout_s)
            finally:
                procs.close()
                if link is not None:
                    link.close()
            compute_s = diloco["compute_ms_per_step"] / 1000
            # the fp32 weights' bytes: one ring exchange of 2 workers sends them once (DDP: per step)
            params_bytes = ddp["comm_bytes"] // ddp["syncs"]
            for row in (ddp, diloco):
                row.update(rate_mbit=rate, predicted_train_s=predict(row, params_bytes, rate * 1e6, compute_s, args.iters),
                           compute_ms_per_step=diloco["compute_ms_per_step"])
                row["train_vs_predicted"] = row["train_s"] / row["predicted_train_s"] - 1
                results.append(row)
            print(f"done: {rate:g} Mbit/s", file=sys.stderr, flush=True)

    print(f"\n2 namespaces joined by one veth pair (htb both ways), {args.iters} iterations, gpt-micro, "
          f"12 examples per process, char Tiny Shakespeare; compute {results[0]['compute_ms_per_step']:.0f} ms a step\n")
    print(f"{'link':>10s} {'run':18s} {'command s':>10s} {'train s':>8s} {'model s':>8s} {'off':>7s} "
          f"{'comm_bytes':>12s} {'wire A->B':>12s} {'wire B->A':>12s} {'wire/comm':>9s} {'val':>7s}")
    for r in results:
        print(f"{r['rate_mbit']:>5g} Mbit/s {r['scheme']:18s} {r['command_s']:10.1f} {r['train_s']:8.1f} "
              f"{r['predicted_train_s']:8.1f} {r['train_vs_predicted']:+7.1%} {r['comm_bytes']:12,d} "
              f"{r['wire_bytes'][0]:12,d} {r['wire_bytes'][1]:12,d} {r['wire_bytes'][0] / max(r['comm_bytes'], 1):9.3f} "
              f"{r['val_loss']:7.4f}")
    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True, text=True)
                .stdout.splitlines() if line.startswith("Model name")), platform.processor())
    Path(args.out).write_text(json.dumps({"iters": args.iters, "sync_every": args.sync_every, "cpu": cpu,
                                          "cpus": os.cpu_count(), "rows": results}, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
