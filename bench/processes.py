"""The two machines of the bench, emulated: a cloud process and an edge process, each pinned.

Both are started through bench.pin so they begin life on their own CPUs; their stderr goes
to log files in the output directory, and both are stopped (SIGTERM, then SIGKILL) on exit.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

READY_LINE = re.compile(r"tandem cloud ready: .* listening on (?P<host>[^\s:]+):(?P<port>\d+)")
# cloud/model.py logs "loaded target NAME (DEVICE, torch.DTYPE, N torch threads) in S s".
LOADED = re.compile(r"loaded target .*\((?P<device>[^(),]+), (torch\.)?(?P<dtype>\w+), "
                    r"(?P<threads>\d+) torch threads\)")


class ProcessError(RuntimeError):
    """A bench process failed to start or to answer."""


class _Process:
    """A pinned child whose stdout is read line by line on a thread (so reads can time out)."""

    def __init__(self, name: str, cpus: str, command: list[str], log_path: Path, stdin: bool = False):
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "bench.pin", cpus, "--", *command],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log,
            text=True, bufsize=1, env=os.environ.copy(),
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, name=f"{name}-stdout", daemon=True).start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def readline(self, timeout_s: float) -> str:
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            raise ProcessError(f"{self.name} did not answer within {timeout_s:.0f}s (log: {self.log_path})") from None
        if line is None:
            self._log.flush()
            last = self.log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["(empty log)"]
            raise ProcessError(f"{self.name} exited with code {self.popen.wait()}: {last[0]} (log: {self.log_path})")
        return line

    @property
    def cpus(self) -> list[int]:
        return sorted(os.sched_getaffinity(self.popen.pid))

    def stop(self, grace_s: float = 10.0) -> None:
        if self.popen.poll() is None:
            if self.popen.stdin:
                self.popen.stdin.close()
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()


class CloudProcess(_Process):
    """`tandem cloud` on a free loopback port."""

    def __init__(self, cpus: str, model: str | None, log_path: Path, start_timeout_s: float = 300.0,
                 extra_args: list[str] = ()):
        # No prefix cache: every mode runs the same prompts, and a prompt cached by one mode's
        # run would give the next mode a free prefill (and a flattering time to first token).
        command = [sys.executable, "-m", "tandem", "cloud", "--host", "127.0.0.1", "--port", "0",
                   "--prefix-cache-mb", "0", *extra_args]
        if model:
            command += ["--model", model]
        super().__init__("cloud", cpus, command, log_path)
        while not (match := READY_LINE.search(self.readline(start_timeout_s))):
            pass
        self.address = (match["host"], int(match["port"]))

    @property
    def torch_threads(self) -> int | None:
        """The thread count the cloud gave torch, from its log (None if it did not say)."""
        match = LOADED.search(self.log_path.read_text(errors="replace"))
        return int(match["threads"]) if match else None

    @property
    def dtype(self) -> str | None:
        """The dtype the cloud loaded its weights in (e.g. float32), from its log."""
        match = LOADED.search(self.log_path.read_text(errors="replace"))
        return match["dtype"] if match else None

    def cpu_seconds(self) -> float:
        """CPU time the cloud process has used so far (user + system)."""
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class EdgeWorker(_Process):
    """bench/worker.py: runs one generation per command, through `cloud_address`."""

    def __init__(self, cpus: str, cloud_address: str, edge_args: list[str], log_path: Path,
                 start_timeout_s: float = 120.0):
        command = [sys.executable, "-m", "bench.worker", "--cloud", cloud_address, *edge_args]
        super().__init__("edge", cpus, command, log_path, stdin=True)
        self.info = json.loads(self.readline(start_timeout_s))
        if not self.info.get("ready"):
            raise ProcessError(f"edge worker failed to start: {self.info.get('error')} (log: {log_path})")

    def generate(self, mode: str, prompt: str | None, max_tokens: int, speculation: dict | None = None,
                 timeout_s: float = 600.0, break_after: int | None = None, prompt_tokens: int | None = None,
                 variant: int = 0, json_schema: dict | None = None) -> dict:
        """One generation; `speculation` overrides SpeculationConfig fields for it.

        With break_after (0 included) it runs over the worker's breakable connection, reset once
        that many tokens arrived (0: never), so broken and unbroken runs take the same path.
        prompt_tokens (with prompt None) asks for a raw filler prompt of exactly that many tokens.
        json_schema constrains the answer to that schema (the worker then also answers its "text").
        """
        command = {"mode": mode, "max_tokens": max_tokens, "speculation": speculation or {}}
        command.update({"prompt_tokens": prompt_tokens, "variant": variant} if prompt is None else {"prompt": prompt})
        if json_schema is not None:
            command["json_schema"] = json_schema
        if break_after is not None:
            command |= {"breakable": True, "break_after": break_after}
        self.popen.stdin.write(json.dumps(command) + "\n")
        self.popen.stdin.flush()
        result = json.loads(self.readline(timeout_s))
        if "error" in result:
            raise ProcessError(f"edge worker, {mode} mode: {result['error']}")
        return result
