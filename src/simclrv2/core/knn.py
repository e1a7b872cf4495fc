"""Weighted kNN classification on cosine similarity (Wu et al., 2018), the usual SSL monitor."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def knn_predict(train_features: Tensor, train_labels: Tensor, query_features: Tensor, num_classes: int,
                k: int = 200, temperature: float = 0.1, chunk: int = 1024) -> Tensor:
    """Class scores ``[Q, C]``: the k nearest training features (cosine) vote with weight exp(sim / t)."""
    bank = F.normalize(train_features.float(), dim=1)
    k = min(k, bank.shape[0])
    if k == 0 or query_features.shape[0] == 0:  # no bank to vote, or nothing to classify
        return torch.zeros(query_features.shape[0], num_classes, device=query_features.device)
    scores = []
    for start in range(0, query_features.shape[0], chunk):
        q = F.normalize(query_features[start:start + chunk].float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)
        weights = (sim / temperature).exp()
        votes = torch.zeros(q.shape[0], num_classes, dtype=weights.dtype, device=q.device)
        votes.scatter_add_(1, train_labels[idx], weights)
        scores.append(votes)
    return torch.cat(scores)
