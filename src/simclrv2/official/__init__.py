"""Reading the official SimCLRv2 TensorFlow checkpoints and converting them to ours."""
