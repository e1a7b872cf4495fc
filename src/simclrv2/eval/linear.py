"""Linear evaluation: multinomial logistic regression on frozen, standardised features."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor


def linear_eval(train_features: Tensor, train_labels: Tensor, val_features: Tensor, max_iter: int = 1000,
                C: float = 1.0) -> Tensor:
    """Fit scikit-learn's L-BFGS logistic regression on ``train_features``; class scores for ``val_features``."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_features.numpy())
    clf = LogisticRegression(max_iter=max_iter, C=C)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(scaler.transform(train_features.numpy()), train_labels.numpy())
    probs = clf.predict_proba(scaler.transform(val_features.numpy()))
    num_classes = int(train_labels.max()) + 1
    full = np.zeros((probs.shape[0], num_classes), dtype=np.float32)
    full[:, clf.classes_] = probs
    return torch.from_numpy(full)
