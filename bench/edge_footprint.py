"""What the edge costs on the user's machine: memory and start-up, for one or more checkouts side by side.

    python -m bench.edge_footprint [--checkout NAME=PATH ...] [--repeats 5] [--out DIR]

Starts one `tandem cloud` (default target, this checkout, one torch thread) and measures, for each
checkout (default: this one), the four figures of issue 25:

1. edge peak RSS of `tandem generate --cloud ADDR --chat --max-tokens 128 "Explain how a bicycle
   works."` (the kernel's high-water mark for that process: os.wait4's ru_maxrss);
2. `tandem serve` idle RSS (/proc VmRSS) one second after its first answer (128 tokens);
3. process start to exit of a 1-token hybrid answer, warm caches (median of --repeats runs after
   one warm-up run that also fills the tokenizer cache);
4. the same for `--mode cloud` on a thin install (a raw prompt: chat templates need the edge extra):
   a virtualenv with the checkout installed without extras (as tests/test_thin_client.py builds it;
   kept under --out and reused).

To compare with an older commit: `git worktree add /tmp/before COMMIT`, then
`--checkout before=/tmp/before --checkout after=.`. The load average is printed beside every
figure: the machine's other work shows in them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import venv
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Explain how a bicycle works."
READY = re.compile(r"tandem cloud ready: .* listening on (\S+):(\d+)")
TARGETS = {"peak_rss_mb": 300, "serve_idle_rss_mb": 350, "one_token_s": 1.2, "thin_cloud_one_token_s": 0.8}
LABELS = {
    "peak_rss_mb": "edge peak RSS, hybrid 128-token answer (MB)",
    "serve_idle_rss_mb": "`tandem serve` idle RSS after one answer (MB)",
    "one_token_s": "start to exit, 1-token hybrid answer, warm (s)",
    "thin_cloud_one_token_s": "start to exit, 1-token `--mode cloud`, thin install (s)",
}


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


@dataclass
class Figure:
    value: float
    load: str
    detail: str = ""


@dataclass
class Checkout:
    name: str
    path: Path
    figures: dict[str, Figure] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        return {**env, "PYTHONPATH": str(self.path), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}

    def tandem(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "tandem", *args]


def timed_run(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int, str]:
    """(start-to-exit seconds, peak RSS in KB, stderr) of one process."""
    started = time.monotonic()
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}): {stderr[-2000:]}")
    return elapsed, usage.ru_maxrss, stderr


def start_cloud(out: Path) -> tuple[subprocess.Popen, str]:
    log = open(out / "cloud.log", "w")  # noqa: SIM115 - the cloud lives as long as the bench
    env = {**Checkout("this", ROOT).env()}
    cloud = subprocess.Popen([sys.executable, "-m", "tandem", "cloud", "--port", "0", "--threads", "1"],
                             env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
    for line in cloud.stdout:
        if match := READY.search(line):
            return cloud, f"127.0.0.1:{match.group(2)}"
    raise RuntimeError(f"tandem cloud exited before it was ready (log: {out / 'cloud.log'})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure_generate(checkout: Checkout, cloud: str, repeats: int) -> None:
    env, cwd = checkout.env(), checkout.path
    one_token = checkout.tandem("generate", "--cloud", cloud, "--chat", "--max-tokens", "1", PROMPT)
    timed_run(one_token, env, cwd)  # warm-up: page cache, and the tokenizer cache on a first start
    load = load_average()
    times = [timed_run(one_token, env, cwd)[0] for _ in range(repeats)]
    checkout.figures["one_token_s"] = Figure(statistics.median(times), load,
                                             f"runs {', '.join(f'{t:.2f}' for t in times)}")
    load = load_average()
    _, peak_kb, stderr = timed_run(checkout.tandem("generate", "--cloud", cloud, "--chat", "--max-tokens", "128",
                                                   PROMPT), env, cwd)
    summary = next((line for line in stderr.splitlines() if line.startswith("[hybrid]")), "")
    checkout.figures["peak_rss_mb"] = Figure(peak_kb / 1024, load, summary.split(" in ")[0])


def measure_serve(checkout: Checkout, cloud: str) -> None:
    port = free_port()
    server = subprocess.Popen(checkout.tandem("serve", "--cloud", cloud, "--port", str(port)), env=checkout.env(),
                              cwd=checkout.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in server.stdout:
            if "tandem serve ready" in line:
                break
        else:
            raise RuntimeError("tandem serve exited before it was ready")
        body = json.dumps({"model": "tandem", "max_tokens": 128, "messages": [{"role": "user", "content": PROMPT}]})
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body.encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as response:
            tokens = json.load(response)["usage"]["completion_tokens"]
        time.sleep(1.0)
        status = Path(f"/proc/{server.pid}/status").read_text()
        rss_kb = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))
        checkout.figures["serve_idle_rss_mb"] = Figure(rss_kb / 1024, load_average(), f"{tokens} tokens answered")
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=60)


def thin_install(checkout: Checkout, out: Path) -> Path:
    """A virtualenv with the checkout installed without extras (what git tracks, copied first)."""
    root = out / f"thin-{checkout.name}"
    if (root / "bin" / "tandem").is_file():
        return root
    venv.EnvBuilder(with_pip=True).create(root)
    source = out / f"thin-{checkout.name}-src"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=checkout.path, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if (checkout.path / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((checkout.path / name).read_bytes())
    subprocess.run([str(root / "bin" / "python"), "-m", "pip", "install", "-q", str(source)], check=True,
                   capture_output=True, timeout=900)
    return root


def measure_thin(checkout: Checkout, cloud: str, repeats: int, out: Path) -> None:
    root = thin_install(checkout, out)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TANDEM_", "PYTHON"))}
    # A raw prompt: rendering a chat template needs jinja2, which comes with the edge extra.
    command = [str(root / "bin" / "tandem"), "generate", "--mode", "cloud", "--cloud", cloud, "--max-tokens", "1",
               PROMPT]
    timed_run(command, env, root)
    load = load_average()
    times = [timed_run(command, env, root)[0] for _ in range(repeats)]
    checkout.figures["thin_cloud_one_token_s"] = Figure(statistics.median(times), load,
                                                        f"runs {', '.join(f'{t:.2f}' for t in times)}")


def table(checkouts: list[Checkout]) -> str:
    header = "| figure | target | " + " | ".join(c.name for c in checkouts) + " |"
    lines = [header, "| --- | --- | " + " | ".join("---" for _ in checkouts) + " |"]
    for key, label in LABELS.items():
        cells = []
        for checkout in checkouts:
            figure = checkout.figures.get(key)
            cells.append("—" if figure is None else f"{figure.value:.{2 if key.endswith('_s') else 0}f} "
                                                    f"(load {figure.load})")
        unit = "≤ " + (f"{TARGETS[key]} s" if key.endswith("_s") else f"{TARGETS[key]} MB")
        lines.append(f"| {label} | {unit} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", action="append", default=[], metavar="NAME=PATH",
                        help="a source tree to measure (repeatable; default: this one)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per start-up figure (median)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/edge-footprint"),
                        help="logs, the thin virtualenvs and figures.json")
    parser.add_argument("--skip-thin", action="store_true", help="leave out the thin-install figure")
    args = parser.parse_args(argv)
    checkouts = [Checkout(*spec.split("=", 1)) for spec in args.checkout] or [Checkout("this", str(ROOT))]
    for checkout in checkouts:
        checkout.path = Path(checkout.path).resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out.resolve()
    cloud, address = start_cloud(out)
    try:
        for checkout in checkouts:
            print(f"measuring {checkout.name} ({checkout.path})...", file=sys.stderr, flush=True)
            measure_generate(checkout, address, args.repeats)
            measure_serve(checkout, address)
            if not args.skip_thin:
                measure_thin(checkout, address, args.repeats, out)
            print(table(checkouts), file=sys.stderr, flush=True)  # so far, in case a later one fails
    finally:
        cloud.send_signal(signal.SIGTERM)
        cloud.wait(timeout=60)
    print(f"python -m bench.edge_footprint {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"cloud: default target, `tandem cloud --threads 1` in another process; {os.cpu_count()} CPUs\n")
    print(table(checkouts))
    details = {c.name: {k: vars(f) for k, f in c.figures.items()} for c in checkouts}
    (out / "figures.json").write_text(json.dumps(details, indent=1))
    for name, figures in details.items():
        for key, figure in figures.items():
            if figure["detail"]:
                print(f"  {name} {key}: {figure['detail']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
