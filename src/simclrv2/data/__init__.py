"""Datasets (decoded once to uint8 tensors), labeled subsets and augmentations."""
