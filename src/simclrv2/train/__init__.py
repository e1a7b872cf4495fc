"""The three stages of SimCLRv2 (pretrain, fine-tune, distill) and the supervised baseline."""
