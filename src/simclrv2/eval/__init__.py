"""Evaluating representations: kNN and linear evaluation on frozen features."""

from simclrv2.eval.knn import knn_predict
from simclrv2.eval.linear import linear_eval

__all__ = ["knn_predict", "linear_eval"]
