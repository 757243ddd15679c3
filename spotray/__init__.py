"""spotray: elastic, preemption-safe PyTorch training on AWS spot GPUs with Ray."""

__version__ = "0.1.0"
