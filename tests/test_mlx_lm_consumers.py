"""mlx-lm's own consumers accept a run's adapter directory unchanged: `mlx_lm fuse` and `mlx_lm server`."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from tests.conftest import wait_until
from tests.test_export import make_run
from tunedeck.core.export import TOLERANCE_REL
from tunedeck.core.fsutil import sha256_file

pytestmark = pytest.mark.slow
PROMPT = [{"role": "user", "content": "open my garden note and add a line"}]


@pytest.fixture(scope="module")
def run(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("consumers"))


def _digests(adapters: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(adapters.iterdir())}


def test_mlx_lm_fuse_accepts_the_adapter_dir(run: Path, demo_model: Path, tmp_path: Path) -> None:
    import mlx_lm

    from tunedeck.core.template import encode_prompt

    before = _digests(run / "adapters")
    out = tmp_path / "fused"
    r = subprocess.run([sys.executable, "-m", "mlx_lm", "fuse", "--model", str(demo_model), "--adapter-path",
                        str(run / "adapters"), "--save-path", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert _digests(run / "adapters") == before
    fused, tok = mlx_lm.load(str(out))
    ref, _ = mlx_lm.load(str(demo_model), adapter_path=str(run / "adapters"))
    base, _ = mlx_lm.load(str(demo_model))
    ids = mx.array([encode_prompt(tok, PROMPT)])
    got, want, plain = (np.array(m(ids).astype(mx.float32)) for m in (fused, ref, base))
    # two float32 evaluations of one model, (W + s·AB)x against Wx + s·(xA)B: export --fuse's own bound
    tol = TOLERANCE_REL["float32"] * max(1.0, float(np.abs(want).max()))
    assert np.abs(got - want).max() <= tol
    assert np.abs(plain - want).max() > 100 * tol  # the adapter's effect is far above that


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str) -> int | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return None


def test_mlx_lm_server_serves_the_adapter(run: Path, demo_model: Path, tmp_path: Path) -> None:
    before = _digests(run / "adapters")
    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "mlx_lm", "server", "--model", str(demo_model), "--adapter-path",
                             str(run / "adapters"), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: proc.poll() is not None or _get(port, "/health") == 200, 180, "mlx_lm server to listen")
        assert proc.poll() is None, (tmp_path / "server.log").read_text()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        body = {"messages": PROMPT, "max_tokens": 8, "temperature": 0.0}
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = json.loads(resp.read())
        assert resp.status == 200, data
        assert isinstance(data["choices"][0]["message"]["content"], str)
        assert data["usage"]["completion_tokens"] >= 1
    finally:
        proc.terminate()
        proc.wait(timeout=120)
        log.close()
    assert _digests(run / "adapters") == before
