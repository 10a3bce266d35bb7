"""Raw Speculate calls, for tests that send exact (often malformed) message sequences."""

from __future__ import annotations

import grpc

from common.pb.tandem.v1 import tandem_pb2 as pb
from common.pb.tandem.v1 import tandem_pb2_grpc as pb_grpc

OK = grpc.StatusCode.OK


def speculate(address, requests, timeout=20):
    """(responses, status code, details) of one Speculate call that sends `requests` then half-closes."""
    responses = []
    with grpc.insecure_channel(address) as channel:
        try:
            for response in pb_grpc.TandemStub(channel).Speculate(iter(requests), timeout=timeout):
                responses.append(response)
        except grpc.RpcError as exc:
            return responses, exc.code(), exc.details()
    return responses, OK, ""


def open_request(target, prompt=None, **fields):
    fields.setdefault("max_new_tokens", 8)
    fields.setdefault("tokenizer_fingerprint", target.fingerprint)
    prompt = target.tokenize("Hello there, limits") if prompt is None else prompt
    return pb.SpeculateRequest(open=pb.SessionOpen(prompt_token_ids=prompt, **fields))


def draft(start, ids):
    return pb.SpeculateRequest(draft=pb.DraftBlock(start_position=start, token_ids=ids))
