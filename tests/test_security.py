"""TLS, mutual TLS and bearer tokens against real servers, with certificates made by the tests."""

from __future__ import annotations

import asyncio
import subprocess

import grpc
import pytest
from bench.pki import make_pki
from cloud_process import CloudProcess, cli, cli_env
from conftest import generate_ids, hf_greedy
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cloud.auth import TokenAuthInterceptor, load_tokens
from cloud.health_probe import check
from common.channel import ChannelSecurity
from common.errors import CloudUnavailable, InvalidArgument, Unauthenticated
from edge.cli import add_parser
from edge.client import CloudClient
from edge.config import EdgeConfig

PROMPT = "The quick brown fox"
NEW_TOKENS = 12
TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tokens_file(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"# edge fleet A\n{TOKEN}\n\nanother-token\n")
    return path


def tls_config(pki, mutual=False):
    return dict(tls_cert=str(pki.server.cert), tls_key=str(pki.server.key),
                tls_client_ca=str(pki.ca) if mutual else None)


def generate(address, drafter, security, mode="hybrid"):
    """(prompt ids, generated ids) of one generation; the aio channel is made inside the loop."""
    prompt = drafter.tokenize(PROMPT)

    async def run():
        client = CloudClient(address, security=security, connect_timeout_s=3.0)
        return await generate_ids(client, drafter, prompt, NEW_TOKENS, mode)

    return prompt, asyncio.run(run()).token_ids


def health_status(address, security=ChannelSecurity()):
    return asyncio.run(check(address, security, timeout_s=3.0))


def test_tls_serves_the_target_output(cloud_factory, tiny_target, tiny_drafter, pki):
    cloud = cloud_factory(**tls_config(pki))
    prompt, ids = generate(cloud.address, tiny_drafter("noisy"), ChannelSecurity(ca_file=str(pki.ca)))
    assert ids == hf_greedy(tiny_target, prompt, NEW_TOKENS)
    assert health_status(cloud.address, ChannelSecurity(ca_file=str(pki.ca))) == "SERVING"


@pytest.mark.parametrize("security,why", [
    (ChannelSecurity(), "--cloud-ca"),  # plaintext to a TLS port: the hint names the flag
    ("rogue-ca", "CERTIFICATE_VERIFY_FAILED"),  # a CA that did not sign the server's certificate
], ids=["plaintext", "untrusted-ca"])
def test_tls_refuses_clients_that_do_not_trust_it(cloud_factory, tiny_drafter, pki, security, why):
    cloud = cloud_factory(**tls_config(pki))
    if security == "rogue-ca":
        security = ChannelSecurity(ca_file=str(pki.rogue_ca))
    with pytest.raises(CloudUnavailable, match=why):
        generate(cloud.address, tiny_drafter("exact"), security)


def test_mutual_tls(cloud_factory, tiny_target, tiny_drafter, pki):
    cloud = cloud_factory(**tls_config(pki, mutual=True))
    trusted = ChannelSecurity(ca_file=str(pki.ca), client_cert=str(pki.client.cert), client_key=str(pki.client.key))
    prompt, ids = generate(cloud.address, tiny_drafter("noisy"), trusted)
    assert ids == hf_greedy(tiny_target, prompt, NEW_TOKENS)
    # Without a client certificate, or with one from another CA, the handshake fails: even the
    # health service is out of reach (probes then need a client certificate too).
    rogue = ChannelSecurity(ca_file=str(pki.ca), client_cert=str(pki.rogue_client.cert),
                            client_key=str(pki.rogue_client.key))
    for security in (ChannelSecurity(ca_file=str(pki.ca)), rogue):
        with pytest.raises(CloudUnavailable):
            generate(cloud.address, tiny_drafter("exact"), security)
        assert health_status(cloud.address, security).startswith("UNREACHABLE")
    assert health_status(cloud.address, trusted) == "SERVING"


@pytest.mark.parametrize("token,expected", [
    (None, "missing credentials"),
    ("wrong-token", "invalid bearer token"),
    (TOKEN + "x", "invalid bearer token"),
    (TOKEN[:-1], "invalid bearer token"),
])
def test_token_auth_refuses_missing_or_wrong_tokens(cloud_factory, tiny_drafter, tokens_file, token, expected):
    cloud = cloud_factory(auth_tokens_file=str(tokens_file))
    with pytest.raises(Unauthenticated, match=expected):
        generate(cloud.address, tiny_drafter("exact"), ChannelSecurity(token=token))
    assert len(cloud.running.registry) == 0


def test_token_auth_covers_every_tandem_method(cloud_factory, tokens_file):
    from common.pb.tandem.v1 import tandem_pb2 as pb
    from common.pb.tandem.v1 import tandem_pb2_grpc as pb_grpc

    cloud = cloud_factory(auth_tokens_file=str(tokens_file))
    bad = (("authorization", "Basic dXNlcjpwYXNz"),)
    # The blocking API: grpc.aio clients may report a server status that races a client write
    # as INTERNAL "Internal error from Core" (grpc/grpc#36066).
    with grpc.insecure_channel(cloud.address) as channel:
        stub = pb_grpc.TandemStub(channel)
        calls = {
            "Info": lambda: stub.Info(pb.InfoRequest(), metadata=bad, timeout=10),
            "Generate": lambda: list(stub.Generate(pb.GenerateRequest(prompt_text="hi", max_new_tokens=2),
                                                   metadata=bad, timeout=10)),
            "Speculate": lambda: list(stub.Speculate(iter([pb.SpeculateRequest()]), metadata=bad, timeout=10)),
            "Reflection": lambda: list(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=bad, timeout=10)),
        }
        found = {}
        for name, call in calls.items():
            try:
                call()
                found[name] = "OK"
            except grpc.RpcError as exc:
                found[name] = (exc.code(), exc.details())
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    refused = (grpc.StatusCode.UNAUTHENTICATED, "malformed authorization metadata: expected 'Bearer <token>'")
    assert found == dict.fromkeys(calls, refused)
    assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes need no token


def test_valid_token_works_and_reload_rotates_tokens(cloud_factory, tiny_target, tiny_drafter, tokens_file):
    cloud = cloud_factory(auth_tokens_file=str(tokens_file))
    drafter = tiny_drafter("noisy")
    prompt, ids = generate(cloud.address, drafter, ChannelSecurity(token=TOKEN))
    assert ids == hf_greedy(tiny_target, prompt, NEW_TOKENS)
    assert generate(cloud.address, drafter, ChannelSecurity(token=TOKEN), mode="cloud")[1] == ids

    tokens_file.write_text("rotated-token\n")
    cloud.running.auth.reload()  # what SIGHUP does in `tandem cloud`
    with pytest.raises(Unauthenticated, match="invalid bearer token"):
        generate(cloud.address, drafter, ChannelSecurity(token=TOKEN))
    assert generate(cloud.address, drafter, ChannelSecurity(token="rotated-token"))[1] == ids

    tokens_file.write_text("# nothing left\n")
    cloud.running.auth.reload()  # an unusable file keeps the tokens in force
    assert generate(cloud.address, drafter, ChannelSecurity(token="rotated-token"))[1] == ids


def test_tokens_file_rules(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("  a-token  \n# comment\n\nb\n")
    assert load_tokens(path) == [b"a-token", b"b"]
    interceptor = TokenAuthInterceptor(load_tokens(path))
    assert interceptor.check([("authorization", "Bearer a-token")]) is None
    assert interceptor.check([("authorization", "bearer b")]) is None  # the scheme is case-insensitive
    assert interceptor.check([("authorization", "Bearer ")]) is not None
    assert interceptor.check([("authorization", "a-token")]) is not None
    for text in ("", "# only comments\n", "two words\n"):
        path.write_text(text)
        with pytest.raises(InvalidArgument):
            load_tokens(path)
    with pytest.raises(InvalidArgument, match="cannot read --auth-tokens-file"):
        load_tokens(tmp_path / "missing")


def test_edge_takes_token_from_file_or_environment(tmp_path, monkeypatch):
    import argparse

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    monkeypatch.setenv("TANDEM_TOKEN", "from-env")

    def security(*flags):
        return EdgeConfig.from_args(parser.parse_args(["generate", "x", "--cloud", "h:1", *flags])).security()

    assert security().token == "from-env"
    assert security("--token-file", str(token_file)).token == "from-file"
    assert security("--cloud-ca", "ca.pem").uses_tls and not security().uses_tls
    assert "from-env" not in repr(security())  # secrets stay out of logs
    monkeypatch.delenv("TANDEM_TOKEN")
    assert security().token is None


def test_bad_security_config_fails_clearly(cloud_factory, pki, tmp_path):
    with pytest.raises(InvalidArgument, match="go together"):
        cloud_factory(tls_cert=str(pki.server.cert))
    with pytest.raises(InvalidArgument, match="needs --tls-cert"):
        cloud_factory(tls_client_ca=str(pki.ca))
    with pytest.raises(InvalidArgument, match="cannot read --tls-key"):
        cloud_factory(tls_cert=str(pki.server.cert), tls_key=str(tmp_path / "nope.key"))


def test_cli_end_to_end_with_tls_and_token(tiny_models, tiny_target, tiny_drafter, pki, tokens_file):
    """`tandem cloud` with TLS + tokens, probed by `tandem health`, used by `tandem generate`."""
    import json

    token_file = tokens_file.parent / "edge-token"
    token_file.write_text(TOKEN + "\n")
    cloud_flags = ["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key),
                   "--auth-tokens-file", str(tokens_file)]
    with CloudProcess(tiny_models.target_dir, *cloud_flags) as cloud:
        probe = subprocess.run(cli("health", "--cloud", cloud.address, "--cloud-ca", str(pki.ca)),
                               env=cli_env(), capture_output=True, text=True, timeout=60)
        assert (probe.returncode, probe.stdout.strip()) == (0, "SERVING")

        def tandem_generate(*flags, **env):
            return subprocess.run(
                cli("generate", PROMPT, "--cloud", cloud.address, "--cloud-ca", str(pki.ca), "--json",
                    "--max-tokens", str(NEW_TOKENS), "--draft-model", str(tiny_models.drafts["noisy"]),
                    "--threads", "1", "--connect-timeout", "5", *flags),
                env=cli_env(**env), capture_output=True, text=True, timeout=120)

        done = tandem_generate("--token-file", str(token_file))
        assert done.returncode == 0, done.stderr
        ids = json.loads(done.stdout)["token_ids"]
        assert ids == hf_greedy(tiny_target, tiny_drafter("noisy").tokenize(PROMPT), NEW_TOKENS)
        assert tandem_generate(TANDEM_TOKEN=TOKEN).returncode == 0
        refused = tandem_generate()
        assert refused.returncode == 2 and "missing credentials" in refused.stderr
    assert cloud.process.returncode == 0  # SIGTERM drained gracefully
