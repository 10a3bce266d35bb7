"""`tandem distill`: distil a fast draft model for a target and export it as a quantized GGUF."""
