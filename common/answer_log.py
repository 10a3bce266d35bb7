"""Answers kept on the device (`--keep-answers DIR`, opt-in), for `tandem distill --data DIR`.

Speculative decoding already sends the device every token the target commits, so each answer a
user receives is the target's own text: training data for that user's draft. When (and only
when) the edge is given --keep-answers DIR, it appends each finished answer to JSONL files in
DIR. Nothing here sends anything anywhere; the files stay on the device until deleted.

Format: DIR/answers-NNNNNN.jsonl, one JSON object per line (UTF-8), version 1:

    {"v": 1, "time": "2026-12-05T02:10:00Z", "model": "<target name>",
     "tokenizer": "<target tokenizer fingerprint>", "mode": "hybrid" | "cloud",
     "prompt": "<prompt text>", "prompt_ids": [target ids],
     "answer": "<answer text>", "answer_ids": [target ids], "finish": "stop" | "length" | ...}

"prompt" and "answer" are the text of the ids (special tokens such as BOS or chat markers render
as nothing); the ids are the target's own, so a student with the target's tokenizer trains on
them exactly. Only tokens the cloud committed are kept: answers the edge wrote alone (edge mode,
offline fallback) are not the target's and are never written.

Size cap: the files together never exceed max_bytes. A file is closed at a quarter of the cap and
a new one opened; the oldest files are deleted when the total would pass the cap, so the newest
answers are kept. An answer larger than the cap is not kept. Files are readable by their owner
only (0600, the directory 0700). Deleting DIR deletes everything kept.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from common.errors import InvalidArgument

VERSION = 1
PATTERN = "answers-*.jsonl"
FILES_PER_CAP = 4
REQUIRED = {"v": int, "prompt": str, "answer": str}


@dataclass(frozen=True)
class KeptAnswer:
    prompt: str
    answer: str
    prompt_ids: list[int] | None = None
    answer_ids: list[int] | None = None
    tokenizer: str = ""  # the target tokenizer's fingerprint the ids belong to
    model: str = ""


class AnswerLog:
    """Appends finished answers to DIR under a size cap (thread-safe; see the module's docstring)."""

    def __init__(self, directory: str | Path, max_bytes: int):
        if max_bytes <= 0:
            raise InvalidArgument(f"the --keep-answers cap must be positive, got {max_bytes} bytes")
        self.directory = Path(directory)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise InvalidArgument(f"--keep-answers {directory}: cannot create it: {exc.strerror or exc}") from None
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise InvalidArgument(f"--keep-answers {directory} cannot be written")

    def record(self, *, model: str, tokenizer: str, mode: str, prompt: str, prompt_ids: list[int], answer: str,
               answer_ids: list[int], finish: str) -> bool:
        """Appends one answer; False when it alone is larger than the cap (it is then not kept)."""
        line = json.dumps({"v": VERSION, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "model": model, "tokenizer": tokenizer, "mode": mode, "prompt": prompt,
                           "prompt_ids": list(prompt_ids), "answer": answer, "answer_ids": list(answer_ids),
                           "finish": finish}, ensure_ascii=False).encode() + b"\n"
        if len(line) > self.max_bytes:
            return False
        with self._lock:
            files = self._files()
            current = files[-1] if files else None
            if current is None or current.stat().st_size + len(line) > max(self.max_bytes // FILES_PER_CAP, 1):
                number = int(current.stem.split("-")[1]) + 1 if current else 1
                current = self.directory / f"answers-{number:06d}.jsonl"
                files.append(current)
            total = sum(f.stat().st_size for f in files if f.exists())
            while total + len(line) > self.max_bytes and files and files[0] != current:
                total -= files[0].stat().st_size
                files.pop(0).unlink(missing_ok=True)
            fd = os.open(current, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        return True

    def size(self) -> int:
        return sum(f.stat().st_size for f in self._files())

    def _files(self) -> list[Path]:
        return sorted(self.directory.glob(PATTERN))


def read_answers(directory: str | Path) -> list[KeptAnswer]:
    """Every answer kept in DIR, oldest first; InvalidArgument (naming the file and line) for a
    directory that is missing or holds none, or a line that is not a kept answer."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InvalidArgument(f"--data {directory}: not a directory of kept answers (tandem serve --keep-answers DIR "
                              "writes one)")
    files = sorted(directory.glob(PATTERN))
    answers = []
    for path in files:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidArgument(f"--data: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
        for number, line in enumerate(lines, 1):
            if line.strip():
                answers.append(_parse(line, path, number))
    if not answers:
        raise InvalidArgument(f"--data {directory} holds no kept answers (no non-empty {PATTERN} file): keep some "
                              "with tandem serve/chat --keep-answers DIR")
    return answers


def _parse(line: str, path: Path, number: int) -> KeptAnswer:
    def bad(why: str) -> InvalidArgument:
        return InvalidArgument(f"--data: {path}, line {number} is not a kept answer ({why}); the format is "
                               "described in common/answer_log.py")

    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise bad(f"not JSON: {exc.msg}") from None
    if not isinstance(record, dict):
        raise bad("not a JSON object")
    for key, kind in REQUIRED.items():
        if not isinstance(record.get(key), kind):
            raise bad(f"no {kind.__name__} field {key!r}")
    if record["v"] != VERSION:
        raise bad(f"version {record['v']}, this tandem reads version {VERSION}")
    ids = {}
    for key in ("prompt_ids", "answer_ids"):
        value = record.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(t, int) for t in value)):
            raise bad(f"{key!r} is not a list of token ids")
        ids[key] = value
    return KeptAnswer(record["prompt"], record["answer"], ids["prompt_ids"], ids["answer_ids"],
                      str(record.get("tokenizer", "")), str(record.get("model", "")))
