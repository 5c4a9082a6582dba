"""Training: the one loop (``loop.train``) and batching with little padding (``batching``)."""

from prm.train.batching import pad_collate, padding_fraction, plan_batches
from prm.train.loop import TrainConfig, TrainResult, TrainState, load_metrics, lr_factor, train

__all__ = [
    "TrainConfig", "TrainResult", "TrainState", "load_metrics", "lr_factor", "pad_collate",
    "padding_fraction", "plan_batches", "train",
]
