"""Launching bounded torchrun jobs from the tests: 127.0.0.1 only, own process group, killed on overrun."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, args: list, *, timeout: float, cwd: Optional[Path] = None, extra: tuple = (),
             wait: bool = True):
    """torchrun of ``nproc`` processes with the c10d store on 127.0.0.1 and gloo's sockets on the loopback
    interface, in its own process group; returns ``(returncode, output)``, or the running Popen with ``wait=False``
    (then :func:`finish` it)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--monitor-interval", "0.2",
           *map(str, extra), *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd,
                            start_new_session=True)
    return finish(proc, timeout) if wait else proc


def finish(proc: subprocess.Popen, timeout: float):
    """Wait at most ``timeout`` seconds for a torchrun job; kill its whole process group on overrun (the test
    fails with its output) or if the test itself fails while waiting."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish within {timeout} s; its output:\n{out[-4000:]}")
    finally:
        if proc.poll() is None:  # pragma: no cover - only when the test itself fails mid-wait
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, out
