"""Data-parallel training: 2 local ranks through mlx.launch (ring backend over loopback) against one process.

Each rank takes half of every global batch and the gradients are averaged, so per-step losses and the
final adapter match a single process at the same global batch to float tolerance. SFT runs with
lora.dropout = 0 here: dropout masks are drawn per worker, so with dropout the runs agree only in
distribution (KTO trains with dropout off anyway).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import psutil
import pytest

from tests.conftest import kl_atol, run_cli, small_config, wait_for
from tunedeck.core import checkpoint_files, launch, runs
from tunedeck.core import config as C
from tunedeck.core.run_prep import prepare_run
from tunedeck.core.trainer import Trainer

pytestmark = pytest.mark.skipif(not mx.distributed.is_available(), reason="MLX built without distributed support")

SLOW = {"TUNEDECK_FAULT": "step_sleep:0.4"}  # slow steps so a signal lands mid-run


@pytest.fixture(autouse=True)
def no_leftover_ranks(tmp_path: Path):
    """A failed test must not leave ranks (or their launcher) running: kill what this test started."""
    yield
    mine = [p for p in psutil.process_iter(["cmdline"]) if any(str(tmp_path) in a for a in p.info["cmdline"] or [])]
    for p in mine:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(mine, timeout=10)


def config(ws: Path, method: str) -> Path:
    path = small_config(ws, method, n=40, iters=6, save_every=2, eval_every=3)
    cfg, _ = C.load(path)
    cfg.lora.dropout = 0.0
    C.save(cfg, path)
    return path


def single(ws: Path, method: str) -> Path:
    path = config(ws, method)
    cfg, _ = C.load(path)
    run_dir = prepare_run(cfg, path, ws / "runs")
    assert Trainer(run_dir).run() == 0
    return run_dir


def events(run_dir: Path, kind: str) -> list[dict]:
    return [e for e in runs.read_events(run_dir) if e["type"] == kind]


def ranks(run_dir: Path) -> dict[int, psutil.Process]:
    """The live trainer processes (`python -m tunedeck.core.worker RUN_DIR`) of a run, by MLX_RANK."""
    out = {}
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "tunedeck.core.worker" in cmd and str(run_dir.resolve()) in cmd:
            try:
                out[int(p.environ().get("MLX_RANK", "0"))] = p
            except (psutil.Error, ValueError):
                pass
    return out


def wait_gone(procs, timeout: float = 60) -> None:
    _, alive = psutil.wait_procs(list(procs), timeout=timeout)
    assert not alive, f"still running: {alive}"


def assert_same_training(straight: Path, run_dir: Path) -> None:
    a = {e["step"]: e for e in events(straight, "step")}
    b = {e["step"]: e for e in events(run_dir, "step")}
    assert sorted(a) == sorted(b)
    for s in a:
        assert b[s]["loss"] == pytest.approx(a[s]["loss"], rel=1e-4), s
        assert b[s]["lr"] == pytest.approx(a[s]["lr"], rel=1e-6), s
        assert b[s]["tokens"] == a[s]["tokens"], s  # the same global batches
        if "kl" in a[s]:
            assert b[s]["kl"] == pytest.approx(a[s]["kl"], rel=1e-4, abs=kl_atol()), s
    va = [e["val_loss"] for e in events(straight, "eval")]
    vb = [e["val_loss"] for e in events(run_dir, "eval")]
    assert vb[-1] == pytest.approx(va[-1], rel=1e-4)
    wa = mx.load(str(straight / "adapters" / "adapters.safetensors"))
    wb = mx.load(str(run_dir / "adapters" / "adapters.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_allclose(np.array(wb[k]), np.array(wa[k]), atol=1e-5, err_msg=k)


def test_kto_two_workers_stop_resume_match_one_process(tmp_path: Path, demo_model: Path) -> None:
    straight = single(tmp_path / "one", "kto")
    cfg_path = config(tmp_path / "two", "kto")
    r = run_cli("train", str(cfg_path), "--workers", "2", "--detach", env=SLOW)
    assert r.returncode == 0, r.stderr
    run_dir = Path(r.stdout.strip())
    wait_for(run_dir, lambda e: e["type"] == "checkpoint")
    procs = ranks(run_dir)
    assert sorted(procs) == [0, 1] and procs[0].pid == runs.read_pid(run_dir)  # rank 0 holds the lock
    r = run_cli("stop", str(run_dir))  # signals rank 0 only; it passes the stop on
    assert r.returncode == 0, r.stderr
    wait_gone(procs.values())
    stopped = runs.read_events(run_dir)[-1]
    assert stopped["type"] == "stopped" and stopped["signal"] == "SIGTERM"
    k = stopped["step"]
    assert 2 <= k < 6 and checkpoint_files.latest_checkpoint(run_dir).name == f"step-{k:06d}"
    (start,) = events(run_dir, "start")
    assert start["workers"] == 2 and start["reference_cached"] is False
    assert (run_dir / "reference-train.npz").is_file() and not list(run_dir.glob("*.tmp*"))
    step = events(run_dir, "step")[0]
    assert step["tokens_per_sec_per_worker"] == pytest.approx(step["tokens_per_sec"] / 2, rel=0.01)

    r = run_cli("train", "--resume", str(run_dir), "--workers", "2", "--quiet")
    assert r.returncode == 0, r.stderr + "\n".join(runs.tail_log(run_dir, 40))
    resumed = events(run_dir, "start")[-1]
    assert resumed["resumed_from"] == f"step-{k:06d}" and resumed["reference_cached"] is True
    assert runs.read_events(run_dir)[-1]["type"] == "done"
    assert_same_training(straight, run_dir)


def test_sft_signal_to_rank1_stops_all_at_one_step_then_resume(tmp_path: Path, demo_model: Path) -> None:
    straight = single(tmp_path / "one", "sft")
    cfg_path = config(tmp_path / "two", "sft")
    r = run_cli("train", str(cfg_path), "--workers", "2", "--detach", env=SLOW)
    assert r.returncode == 0, r.stderr
    run_dir = Path(r.stdout.strip())
    wait_for(run_dir, lambda e: e["type"] == "step")
    procs = ranks(run_dir)
    assert sorted(procs) == [0, 1]
    procs[1].send_signal(signal.SIGTERM)  # not rank 0: the all-summed flag must stop rank 0 at the same step
    wait_gone(procs.values())
    last = runs.read_events(run_dir)[-1]
    assert last["type"] == "stopped", runs.tail_log(run_dir, 40)
    k = last["step"]
    assert k < 6 and checkpoint_files.latest_checkpoint(run_dir).name == f"step-{k:06d}"
    assert runs.run_info(run_dir).status == "stopped"

    r = run_cli("train", "--resume", str(run_dir), "--workers", "2")
    assert r.returncode == 0, r.stderr + "\n".join(runs.tail_log(run_dir, 40))
    assert "step 6/6" in r.stderr and "2 workers" in r.stderr
    assert_same_training(straight, run_dir)


def test_refuses_a_batch_that_does_not_split(tmp_path: Path) -> None:
    path = small_config(tmp_path, "sft", batch_size=4)
    r = run_cli("train", str(path), "--workers", "3")
    assert r.returncode == 1
    assert "train.batch_size (4) must be a multiple of the number of workers (3)" in r.stderr
    assert not (tmp_path / "runs").exists()  # nothing was started
    bad = tmp_path / "hosts.json"
    bad.write_text('{"hosts": "mac1"}')
    r = run_cli("train", str(path), "--hosts", str(bad))
    assert r.returncode == 1 and "hostfile" in r.stderr and "Traceback" not in r.stderr


def test_launcher_command_and_threads(tmp_path: Path, monkeypatch) -> None:
    prefix = launch.launcher_prefix(2)
    assert "mlx.launch" in " ".join(prefix[:3]) and prefix[-1] == "--"
    assert prefix[prefix.index("--backend") + 1] == "ring" and prefix[prefix.index("-n") + 1] == "2"
    assert 20000 <= int(prefix[prefix.index("--starting-port") + 1]) < 60000
    hosts = tmp_path / "hosts.json"
    hosts.write_text('{"backend": "ring", "hosts": [{"ssh": "a", "ips": ["10.0.0.1"]}, {"ssh": "b", "ips": ["10.0.0.2"]}]}')
    assert launch.hostfile_hosts(hosts) == 2
    assert launch.launcher_prefix(2, hosts)[-3:] == ["--hostfile", str(hosts.resolve()), "--"]
    nccl = launch.launcher_prefix(2, cuda=True)
    assert nccl[nccl.index("--backend") + 1] == "nccl" and nccl[nccl.index("-n") + 1] == "2"
    launch.check_gpu_count(2, 2)
    with pytest.raises(launch.LaunchError, match="--workers 3 but this machine has 2 GPUs"):
        launch.check_gpu_count(3, 2)
    monkeypatch.delenv("NCCL_NVLS_ENABLE", raising=False)
    assert launch.nccl_env() == {"NCCL_NVLS_ENABLE": "0"}
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert launch.rank_env(2)["OPENBLAS_NUM_THREADS"] == "4" and launch.rank_env(16)["OMP_NUM_THREADS"] == "1"
    assert launch.rank_env(2, local=False) == {}


def test_nccl_launch_gives_each_rank_one_gpu(tmp_path: Path) -> None:
    """The NCCL prefix through the real mlx.launch: rank r sees GPU r and the NCCL rendezvous; without CUDA,
    tunedeck's collectives stay on the CPU stream even with those variables set."""
    probe = ("import os, json; from tunedeck.core import collective; print(json.dumps([os.environ['MLX_RANK'], "
             "os.environ['CUDA_VISIBLE_DEVICES'], os.environ['MLX_WORLD_SIZE'], bool(os.environ['NCCL_HOST_IP']), "
             "collective.uses_nccl()]))")
    r = subprocess.run([*launch.launcher_prefix(2, cuda=True), sys.executable, "-c", probe],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    seen = sorted(json.loads(line[line.index("["):]) for line in r.stdout.splitlines() if "[" in line)
    assert seen == [["0", "0", "2", True, False], ["1", "1", "2", True, False]]
