"""Raw Speculate calls, for tests that send exact (often malformed) message sequences."""

from __future__ import annotations

import grpc

from common.pb.tandem.v1 import tandem_pb2 as pb
from common.pb.tandem.v1 import tandem_pb2_grpc as pb_grpc

OK = grpc.StatusCode.OK


def speculate(address, requests, timeout=20, progress=False):
    """(responses, status code, details) of one Speculate call that sends `requests` then half-closes.

    Progress messages (the acknowledgement of `open`, progress of slow passes) are left out
    unless `progress`.
    """
    responses = []
    with grpc.insecure_channel(address) as channel:
        try:
            for response in pb_grpc.TandemStub(channel).Speculate(iter(requests), timeout=timeout):
                if response.HasField("progress") and not progress:
                    continue
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


def next_answer(responses):
    """The next response of a blocking call's iterator that is not a progress message."""
    while (response := next(responses)).HasField("progress"):
        pass
    return response


async def read_answer(call):
    """The next response of a grpc.aio call that is not a progress message."""
    while (response := await call.read()) is not grpc.aio.EOF and response.HasField("progress"):
        pass
    return response
