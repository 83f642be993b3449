"""Data-parallel training through `mlx.launch`, MLX's launcher: several local processes or several Macs.

`tunedeck train CONFIG --workers N` starts N local ranks: one per GPU with NCCL on an NVIDIA machine,
else with the ring backend over loopback;
`--hosts FILE` hands mlx.launch a hostfile (ring over Ethernet/Thunderbolt, or JACCL when the file
says `"backend": "jaccl"`). Every rank runs `python -m tunedeck.core.worker RUN_DIR`; the trainer
shards each global batch across them (core.trainer). Rank 0 takes the run's lock and writes the
events, checkpoints and adapters, so `tunedeck stop` signals rank 0 (the PID in the lock), which
passes the stop on to the other ranks through the all_sum at the end of each step.

By hand, the same thing is:
    mlx.launch --hostfile hosts.json -- /path/to/python -m tunedeck.core.worker RUN_DIR [--resume]
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from . import runs
from .backend import detect, subprocess_env
from .rundir import trainer_command


class LaunchError(Exception):
    """The launch cannot be set up as asked (bad hostfile, worker count); the message says why."""


def launcher_argv() -> list[str]:
    """mlx.launch beside this interpreter, else the same launcher through `python -c`."""
    script = Path(sys.executable).parent / "mlx.launch"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from mlx._distributed_utils.launch import main; sys.exit(main())"]


def hostfile_hosts(path: Path) -> int:
    """How many ranks an mlx.launch hostfile starts (one per host entry)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise LaunchError(f"--hosts {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise LaunchError(f"--hosts {path}: not JSON ({e})") from None
    hosts = data.get("hosts") if isinstance(data, dict) else data
    if not isinstance(hosts, list) or not hosts or not all(isinstance(h, dict) and "ssh" in h for h in hosts):
        raise LaunchError(f'--hosts {path}: expected mlx.launch\'s hostfile, e.g. {{"backend": "ring", "hosts": '
                          '[{"ssh": "mac1.local", "ips": ["10.0.0.1"]}, {"ssh": "mac2.local", "ips": ["10.0.0.2"]}]}')
    return len(hosts)


def first_host_is_here(path: Path) -> bool:
    """Whether the hostfile's first host (rank 0, which writes the run directory) is this machine."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    hosts = data.get("hosts") if isinstance(data, dict) else data
    first = str(hosts[0].get("ssh", "")).lower()
    name = socket.gethostname().lower()
    return first in {"localhost", "127.0.0.1", name, name.split(".")[0], f"{name.split('.')[0]}.local",
                     socket.getfqdn().lower()}


def free_port_base(n: int, host: str = "127.0.0.1", tries: int = 200) -> int:
    """A port p such that p .. p+n-1 are free here (the ring backend listens on one port per local rank)."""
    rng = random.Random()
    for _ in range(tries):
        base = rng.randrange(20000, 60000 - n)
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise LaunchError(f"no {n} consecutive free ports on {host}")


def launcher_prefix(workers: int, hostfile: Path | None = None, cuda: bool = False) -> list[str]:
    """`mlx.launch ... --`: N local ranks (NCCL, one GPU each, where `cuda`; else the ring backend), or
    the ranks of a hostfile."""
    argv = launcher_argv()
    if hostfile is not None:  # the backend comes from the file (default ring); ports from mlx.launch's default
        return [*argv, "--hostfile", str(Path(hostfile).resolve()), "--"]
    if cuda:  # mlx.launch gives rank r CUDA_VISIBLE_DEVICES=r
        return [*argv, "--backend", "nccl", "-n", str(workers), "--nccl-port", str(free_port_base(1)), "--"]
    return [*argv, "--backend", "ring", "-n", str(workers), "--starting-port", str(free_port_base(workers)), "--"]


def check_gpu_count(workers: int, gpus: int) -> None:
    """One rank per GPU: refuse more local workers than this NVIDIA machine has GPUs."""
    if workers > gpus:
        raise LaunchError(f"--workers {workers} but this machine has {gpus} GPU{'s' if gpus != 1 else ''}: "
                          f"each worker trains on its own GPU; use --workers {gpus} or fewer")


def nccl_env() -> dict[str, str]:
    """NVLink multicast (NVLS) stays off: on shared hosts a job that uses it can take every GPU down."""
    return {"NCCL_NVLS_ENABLE": os.environ.get("NCCL_NVLS_ENABLE", "0")}


def rank_env(workers: int, local: bool = True) -> dict[str, str]:
    """Threads per rank, so that N ranks on one machine share its cores instead of oversubscribing them."""
    if not local:
        return {}
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    return {k: threads for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS") if k not in os.environ}


def spawn(run_dir: Path, resume: bool, workers: int, hostfile: Path | None = None, detach: bool = True) -> Any:
    """Start the launcher: detached (its own session, output to train.log; returns its PID) or attached
    (returns the Popen; Ctrl-C reaches every local rank, which checkpoint and stop)."""
    run_dir = Path(run_dir).resolve()
    cuda = hostfile is None and detect().kind == "cuda"
    prefix = launcher_prefix(workers, hostfile, cuda)
    env = nccl_env() if cuda else rank_env(workers, local=hostfile is None)
    if detach:
        return runs.spawn_detached(run_dir, resume=resume, extra_env=env, launcher=prefix)
    cmd = [*prefix, *trainer_command(run_dir, resume)]
    log = runs.open_log(run_dir)
    try:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=subprocess_env(env), cwd=run_dir)
    finally:
        os.close(log)


def follow(run_dir: Path, proc: subprocess.Popen, progress: Callable[[dict[str, Any]], None] | None,
           on_interrupt: Callable[[], None] | None = None) -> int:
    """Feed the run's new events to `progress` until the launcher exits; the exit status comes from the
    run's last event (mlx.launch itself exits 0 even when a rank failed)."""
    shown = len(runs.read_events(run_dir))  # a resumed run's earlier events are not shown again
    while True:
        try:
            for i, event in enumerate(runs.iter_events(run_dir, follow=True, stop=lambda: proc.poll() is not None)):
                if i >= shown:
                    shown = i + 1
                    if progress:
                        progress(event)
            break
        except KeyboardInterrupt:  # the ranks got the Ctrl-C too: they checkpoint, then exit
            if on_interrupt:
                on_interrupt()
    proc.wait()
    return 0 if runs.run_info(run_dir).status in ("finished", "stopped") else 1
