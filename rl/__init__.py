"""Policy training: SFT/distillation and RL with outcome and process rewards (built on prm and search)."""
