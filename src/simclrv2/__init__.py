"""simclrv2: SimCLRv2 in PyTorch — contrastive pretraining, few-label fine-tuning, distillation."""

__version__ = "0.1.0"
