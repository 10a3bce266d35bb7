"""`tandem cloud` as a real subprocess, for tests that kill, restart or probe it from outside."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"tandem cloud ready: .* listening on (\S+):(\d+)")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tandem", *args]


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


class CloudProcess:
    """Starts `tandem cloud --model DIR ARGS...`; .address once it logged its ready line."""

    def __init__(self, model_dir: Path, *args: str, port: int = 0, start_timeout_s: float = 120.0):
        self.model_dir = model_dir
        self.args = list(args)
        self.port = port
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen | None = None
        self.log: list[str] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> CloudProcess:
        command = cli("cloud", "--model", str(self.model_dir), "--port", str(self.port), "--threads", "1",
                      *self.args)
        self.process = subprocess.Popen(command, cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        lines: queue.Queue[str | None] = queue.Queue()

        def pump(stream):
            for line in stream:
                self.log.append(line)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, args=(self.process.stdout,), daemon=True).start()
        while True:
            try:
                line = lines.get(timeout=self.start_timeout_s)
            except queue.Empty:
                self.kill()
                raise TimeoutError("tandem cloud did not get ready:\n" + "".join(self.log)) from None
            if line is None:
                raise RuntimeError("tandem cloud exited before it was ready:\n" + "".join(self.log))
            if match := READY.search(line):
                self.port = int(match.group(2))
                return self

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, sockets closed by the kernel."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def stop(self) -> int | None:
        """SIGTERM, then wait for the graceful drain."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def __enter__(self) -> CloudProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
