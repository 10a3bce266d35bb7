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
