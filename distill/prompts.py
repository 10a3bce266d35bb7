"""Where distillation prompts come from: a file, or a small set shipped here (no download).

Only prompts are needed: the training text is generated from them on the fly (the target's and
the student's own continuations). Some prompts are held out of training for the report.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from common.errors import InvalidArgument

_TASKS = (
    "Explain {} to a curious twelve-year-old.",
    "Write a short paragraph about {}.",
    "Give me five practical tips about {}.",
    "What are the most common misconceptions about {}?",
    "Write a short poem about {}.",
    "Summarize the history of {} in a few sentences.",
    "What are the pros and cons of {}?",
)
_TOPICS = (
    "photosynthesis", "the stock market", "learning a new language", "black holes", "volcanoes",
    "remote work", "sleep", "the Roman Empire", "electric cars", "honeybees", "public speaking",
    "recycling", "the internet", "chess", "healthy breakfasts", "the moon landing", "rainforests",
    "saving money", "vaccines", "jazz music", "3D printing", "city gardens", "the printing press",
    "time management", "earthquakes", "coffee", "solar panels", "friendship", "mountain hiking",
    "machine learning", "ancient Egypt", "the human heart", "bicycles", "ocean tides", "chocolate",
)
_EXTRA = (
    "Write a Python function that reverses a linked list, and explain how it works.",
    "Write a SQL query that finds the ten customers with the highest total order value.",
    "Write a JavaScript function that debounces another function.",
    "Explain what a hash table is and when to use one.",
    "Write a bash one-liner that counts the lines of every .py file in a folder.",
    "How do I make a good cup of tea?",
    "Plan a three-day trip to a city you like.",
    "Write an email asking a colleague to review my report by Friday.",
    "Translate 'Where is the train station?' into French, Spanish and German.",
    "What is the difference between weather and climate?",
    "Write a limerick about a cat who loves boxes.",
    "Describe a sunset over the sea to someone who has never seen one.",
    "List the planets of the solar system with one fact about each.",
    "How does a refrigerator keep food cold?",
    "Write a short dialogue between a robot and a gardener.",
    "What questions should I ask in a job interview?",
)

DEFAULT_PROMPTS: tuple[str, ...] = tuple(t.format(topic) for topic in _TOPICS for t in _TASKS) + _EXTRA
"""A few hundred varied user messages (explanations, lists, poems, code, email), distinct from
`tandem bench`'s prompts so that benchmark measures prompts the draft never trained on."""


# Openings a pretrained (base) target continues as text (`--no-chat`): a base model such as the Gemma
# 3 270M of `make gemma` answers a chat-rendered instruction with junk, which is no text to learn.
_OPENINGS = (
    "Here are a few things everyone should know about {}:",
    "A beginner's guide to {}\n\n",
    "When people talk about {}, they often",
    "The most surprising fact about {} is that",
    "Chapter 1: {}\n\n",
    "Frequently asked questions about {}\n\nQ:",
    "My grandmother once told me about {}.",
    "Five facts about {}\n\n1.",
    "Why {} matters more than you think",
    "An interview with an expert on {}\n\nInterviewer:",
    "I never understood {} until",
    "Lecture notes: {}\n\n",
)
_RAW_EXTRA = (
    "def reverse_list(head):\n",
    "import numpy as np\n\n\ndef moving_average(values, window):\n",
    "SELECT customer_id, SUM(total) AS spent\nFROM orders\n",
    "function debounce(fn, wait) {\n",
    "#!/bin/bash\n# Count the lines of every Python file in a folder\n",
    "Dear colleague,\n\nI hope this message finds you well.",
    "Q: What is the difference between weather and climate?\nA:",
    "Ingredients:\n- 2 cups of flour\n",
    "The planets of the solar system, in order from the Sun, are",
    "Day 1 of our trip to Lisbon:",
    "class Stack:\n    \"\"\"A last-in, first-out collection.\"\"\"\n\n    def __init__(self):\n",
    "Meeting notes, Monday\n\nAttendees:",
    "東京は日本の首都で、",
    "Les trois choses les plus importantes à savoir sur Paris sont",
    "The recipe calls for three eggs, but",
    "Breaking news: scientists have discovered",
)

_MORE_TOPICS = (
    "origami", "the Olympic Games", "glaciers", "bread baking", "video games", "birdwatching",
    "the French Revolution", "submarines", "quantum computers", "yoga", "typography", "wind turbines",
    "the immune system", "board games", "lighthouses",
)
RAW_PROMPTS: tuple[str, ...] = (tuple(t.format(topic) for topic in _TOPICS + _MORE_TOPICS for t in _OPENINGS)
                                + _RAW_EXTRA)
"""Raw text openings for `--no-chat` (a pretrained target), distinct from `tandem bench --raw-prompts`'s."""


def read_prompts(path: str | Path | None, chat: bool = True) -> list[str]:
    """Prompts from a file (one per line, or JSONL objects with a "prompt" or "text" field), or the
    default set (user messages, or raw openings when not chat). Blank lines are skipped; a file
    without any prompt is an error."""
    if path is None:
        return list(DEFAULT_PROMPTS if chat else RAW_PROMPTS)
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"cannot read --prompts {str(path)!r}: {getattr(exc, 'strerror', None) or exc}") from None
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                record = json.loads(line)
                text = record.get("prompt", record.get("text"))
            except (json.JSONDecodeError, AttributeError):
                text = None
            if not isinstance(text, str):
                raise InvalidArgument(f"--prompts {path}, line {number}: a JSON line needs a string "
                                      "\"prompt\" (or \"text\") field")
            prompts.append(text)
        else:
            prompts.append(line)
    if not prompts:
        raise InvalidArgument(f"--prompts {path} holds no prompt (one per line, or JSONL with \"prompt\")")
    return prompts


def split_heldout(prompts: list[str], heldout: int, seed: int) -> tuple[list[str], list[str]]:
    """(training prompts, held-out prompts): a seeded choice, so a resumed run holds out the same ones."""
    if heldout < 1 or heldout >= len(prompts):
        raise InvalidArgument(f"--heldout must leave at least one prompt on each side: {len(prompts)} prompts, "
                              f"--heldout {heldout}")
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    held = set(order[:heldout])
    return ([p for i, p in enumerate(prompts) if i not in held], [prompts[i] for i in sorted(held)])
