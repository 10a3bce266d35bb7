"""`tandem serve` as a real process for the tests that drive it like a user's app would."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

READY = re.compile(r"tandem serve ready: (http://127\.0\.0\.1:\d+/v1) ")


@contextmanager
def serve_process(cloud_address: str, draft_model, n_ctx: int = 512, *extra: str):
    """Starts `tandem serve --port 0` before `cloud_address`; yields (base_url, ready_line).

    On leaving, SIGTERM must stop it cleanly (exit 0); it is killed if anything failed first.
    """
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(
        [sys.executable, "-m", "tandem", "serve", "--port", "0", "--cloud", cloud_address,
         "--draft-model", str(draft_model), "--threads", "1", "--n-ctx", str(n_ctx), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=root)
    try:
        ready = process.stdout.readline()
        match = READY.match(ready)
        assert match, ready
        yield match.group(1), ready
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
