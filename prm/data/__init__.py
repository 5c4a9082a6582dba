"""Data formats and sources: PRM800K, stepwise JSONL and the arithmetic world."""
