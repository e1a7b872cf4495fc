"""Evaluating representations: kNN and linear evaluation on frozen features."""

from simclrv2.core.knn import knn_predict  # re-exported: the kNN probe is part of evaluation
from simclrv2.eval.linear import linear_eval

__all__ = ["knn_predict", "linear_eval"]
