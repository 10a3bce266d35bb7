"""The bench's prompts: user messages that the default 135M model answers at length, so most
generations reach --max-tokens and every mode is timed over the same number of tokens."""

PROMPTS = [
    "Explain how a transformer language model works.",
    "Write a short story about a lighthouse keeper.",
    "What are the main causes of climate change?",
    "Describe the water cycle in detail.",
    "Give me a recipe for pancakes.",
    "Write a Python function that checks whether a number is prime, and explain it.",
    "What should I consider when buying a used car?",
    "Explain the difference between a virus and a bacterium.",
]

RAW_PROMPTS = [
    "The history of the printing press begins",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "The water cycle describes how water",
    "Once upon a time, in a small village by the sea,",
    "The main causes of climate change are",
    "To make pancakes, you will need",
    "A transformer language model works by",
    "When buying a used car, the first thing to check is",
]
"""Raw continuations (`tandem bench --raw-prompts`): for a pretrained target without a chat
template of its own, such as the Gemma 3 270M of `make gemma`."""
