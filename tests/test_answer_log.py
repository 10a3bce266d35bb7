"""--keep-answers: off by default, a size cap that holds, and the cloud's committed answers kept as they were."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.answer_log import AnswerLog, read_answers
from common.errors import InvalidArgument


def _record(log: AnswerLog, n: int, size: int = 100) -> bool:
    return log.record(model="m", tokenizer="fp", mode="hybrid", prompt=f"prompt {n}", prompt_ids=[1, 2, n],
                      answer="x" * size, answer_ids=list(range(size // 10)), finish="length")


def test_the_size_cap_holds_and_the_newest_answers_stay(tmp_path):
    cap = 3000
    log = AnswerLog(tmp_path / "kept", cap)
    for n in range(200):
        assert _record(log, n)
        assert log.size() <= cap, n
    kept = read_answers(tmp_path / "kept")
    numbers = [a.prompt_ids[-1] for a in kept]
    assert numbers == sorted(numbers) and numbers[-1] == 199 and len(numbers) < 200
    assert log.size() > cap // 2  # the cap is used, not just respected: old answers go a file at a time
    assert not _record(log, 999, size=cap)  # one answer over the cap is not kept at all
    assert log.size() <= cap and read_answers(tmp_path / "kept")[-1].prompt_ids[-1] == 199
    mode = os.stat(tmp_path / "kept").st_mode & 0o777
    assert mode == 0o700 and all(f.stat().st_mode & 0o777 == 0o600 for f in (tmp_path / "kept").iterdir())


@pytest.mark.parametrize("content, message", [
    (None, "holds no kept answers"),
    ("", "holds no kept answers"),
    ("not json\n", "line 1 is not a kept answer (not JSON"),
    ('{"v": 1, "prompt": "p"}\n', "no str field 'answer'"),
    ('{"v": 2, "prompt": "p", "answer": "a"}\n', "version 2"),
    ('{"v": 1, "prompt": "p", "answer": "a", "answer_ids": ["x"]}\n', "not a list of token ids"),
])
def test_logs_in_the_wrong_format_are_refused_by_name(tmp_path, content, message):
    directory = tmp_path / "logs"
    directory.mkdir()
    if content is not None:
        (directory / "answers-000001.jsonl").write_text(content)
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_answers(directory)


def _generate(tmp_path: Path, models, *extra: str) -> dict:
    # HOME, TMPDIR and the working directory inside tmp_path: anything written anywhere would show there.
    env = {**os.environ, "TANDEM_THREADS": "1", "HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path / "tmp"),
           "TANDEM_CACHE_DIR": os.environ.get("TANDEM_CACHE_DIR", str(Path.home() / ".cache" / "tandem"))}
    for name in ("home", "tmp", "work"):
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
    result = subprocess.run([sys.executable, "-m", "tandem", "generate", "def add(a, b):", "--json", "--max-tokens",
                             "12", "--model", str(models.target_dir), "--draft-model", str(models.drafts["noisy"]),
                             *extra], capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path / "work")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_nothing_is_kept_without_the_flag_and_the_committed_answer_with_it(tiny_models, tmp_path):
    without = tmp_path / "without"
    _generate(without, tiny_models)
    assert not [p for p in without.rglob("*") if p.name.startswith("answers-")]

    kept_dir = tmp_path / "with" / "kept"
    out = _generate(tmp_path / "with", tiny_models, "--keep-answers", str(kept_dir), "--keep-answers-max-mb", "1")
    [kept] = read_answers(kept_dir)
    assert kept.answer_ids == out["token_ids"] and kept.answer == out["text"]
    assert kept.prompt == "def add(a, b):" and kept.prompt_ids and kept.tokenizer

    _generate(tmp_path / "with", tiny_models, "--keep-answers", str(kept_dir), "--mode", "edge")
    assert len(read_answers(kept_dir)) == 1  # the edge's own answer is not the target's: not kept
