"""Bad input on every command: one line that says what is wrong (and what to do), exit code 2,
no traceback, and nothing loaded first."""

from __future__ import annotations

import socket
import subprocess

import pytest
from cloud_process import ROOT, cli, cli_env


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-input")
    garbage = root / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    empty_tokens = root / "tokens.txt"
    empty_tokens.write_text("# no tokens here\n\n")
    not_a_model_dir = root / "empty-dir"
    not_a_model_dir.mkdir()
    fake_gguf = root / "model.gguf"
    fake_gguf.write_bytes(b"PK\x03\x04 a zip file, not a GGUF")
    return {"garbage": str(garbage), "empty_tokens": str(empty_tokens), "dir": str(not_a_model_dir),
            "fake_gguf": str(fake_gguf)}


@pytest.fixture(scope="module")
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield str(s.getsockname()[1])


# (command line, a phrase the error must contain); {name} takes a path from `files`, {busy} a port in use.
CASES = [
    ("generate hi --model /nonexistent.gguf", "no such file or directory"),
    ("generate hi --draft-model /nonexistent.gguf", "no such file or directory"),
    ("generate hi --draft-model /etc/passwd", "not a GGUF file"),
    ("generate hi --draft-model {fake_gguf}", "not a GGUF file"),
    ("generate hi --draft-model {dir}", "without config.json"),
    ("generate hi --cloud nonsense", "not HOST:PORT"),
    ("generate hi --cloud 127.0.0.1:99999", "not HOST:PORT"),
    ("generate hi --cloud 127.0.0.1:", "not HOST:PORT"),
    ("generate hi --max-tokens 0", "--max-tokens must be >= 1"),
    ("generate hi --max-tokens lots", "invalid int value"),
    ("generate hi --temperature -1", "--temperature must be >= 0"),
    ("generate hi --temperature nan", "--temperature must be >= 0"),
    ("generate hi --top-p 2", "--top-p must be > 0 and <= 1"),
    ("generate hi --top-k -3", "--top-k must be >= 0"),
    ("generate hi --n 0", "--n must be >= 1"),
    ("generate hi --seed -1", "--seed must be >= 0"),
    ("generate hi --n-ctx 0", "--n-ctx must be >= 16"),
    ("generate hi --threads -2", "--threads must be >= 0"),
    ("generate hi --fallback-timeout 0", "--fallback-timeout must be > 0"),
    ("generate hi --draft-tokens 0", "--draft-tokens must be >= 1"),
    ("generate hi --max-in-flight 0", "--max-in-flight must be >= 1"),
    ("generate hi --min-confidence 1.5", "--min-confidence must be >= 0 and <= 1"),
    ("generate hi --mode fast", "invalid choice"),
    ("generate hi --token-file /nonexistent", "no such file"),
    ("generate hi --cloud 127.0.0.1:1 --cloud-ca {garbage}", "holds no PEM certificate"),
    ("generate hi --cloud 127.0.0.1:1 --client-cert {garbage}", "go together"),
    ("generate hi --cloud 127.0.0.1:1 --client-cert {garbage} --client-key {garbage}", "not a PEM certificate"),
    ("cloud --port 99999", "is not a port"),
    ("cloud --port {busy}", "cannot listen on 127.0.0.1:{busy}"),
    ("cloud --model /nonexistent", "no such file or directory"),
    ("cloud --model {dir}", "without config.json"),
    ("cloud --tls-cert /nonexistent.pem --tls-key /nonexistent.key", "no such file"),
    ("cloud --tls-cert {garbage} --tls-key {garbage}", "not a PEM certificate"),
    ("cloud --tls-cert {garbage}", "go together"),
    ("cloud --auth-tokens-file /nonexistent", "no such file"),
    ("cloud --auth-tokens-file {empty_tokens}", "holds no token"),
    ("cloud --max-sessions 0", "--max-sessions must be >= 1"),
    ("cloud --max-prompt-tokens 0", "--max-prompt-tokens must be >= 1"),
    ("serve --port {busy}", "cannot listen on 127.0.0.1:{busy}"),
    ("serve --port -1", "is not a port"),
    ("serve --default-max-tokens 0", "--default-max-tokens must be >= 1"),
    ("serve --draft-model /etc/passwd", "not a GGUF file"),
    ("chat --max-tokens 0", "--max-tokens must be >= 1"),
    ("chat --cloud localhost", "not HOST:PORT"),
    ("health --cloud x", "not HOST:PORT"),
    ("health --timeout 0", "--timeout must be > 0"),
    ("bench --rtt-ms fast", "--rtt-ms expects numbers"),
    ("bench --prompts 0", "--prompts must be in"),
    ("bench --model /nonexistent", "no such file or directory"),
    ("bench --cloud-cpus 0 --edge-cpus 0", "overlap"),
    ("frobnicate", "invalid choice"),
]


def assert_one_line_error(code: int, stdout: str, stderr: str, phrase: str) -> None:
    lines = stderr.strip().splitlines()
    assert code == 2, (code, stderr)
    assert "Traceback" not in stderr
    assert len(lines) == 1, lines
    assert lines[0].startswith("tandem") and "error:" in lines[0]
    assert phrase in lines[0], lines[0]
    assert stdout == ""


@pytest.mark.parametrize("command, phrase", CASES, ids=[c for c, _ in CASES])
def test_bad_input_gets_one_line_and_exit_code_2(files, busy_port, command, phrase, capsys):
    """In process, through the CLI's own entry point (tandem.cli.main), for speed."""
    from tandem.cli import main

    args = [a.format(busy=busy_port, **files) for a in command.split()]
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    out = capsys.readouterr()
    assert_one_line_error(code, out.out, out.err, phrase.format(busy=busy_port))


@pytest.mark.parametrize("command, phrase", [CASES[0], CASES[2], ("generate hi --max-tokens lots", "invalid int")])
def test_bad_input_in_a_real_process(files, command, phrase):
    """The same through `python -m tandem`, as a user runs it (slower: a few cases only)."""
    result = subprocess.run(cli(*command.split()), cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                            timeout=120)
    assert_one_line_error(result.returncode, result.stdout, result.stderr, phrase)
