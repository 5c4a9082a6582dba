"""Models built from nothing: a character tokenizer, tiny GPT configs, and loading local HF models."""
