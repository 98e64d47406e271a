"""Small numerical measures used to judge models: ROC AUC and a cross-validated ridge probe."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def roc_auc(is_positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn's, ties counted half); NaN if one side is empty."""
    is_positive = np.asarray(is_positive, bool)
    if is_positive.all() or not is_positive.any():
        return float("nan")
    return float(roc_auc_score(is_positive, score))


def ridge_cv_predictions(x: np.ndarray, y: np.ndarray, alpha: float = 1.0, folds: int = 5,
                         seed: int = 0) -> np.ndarray:
    """Out-of-fold predictions of a ridge regression of ``y`` (N,) on standardised ``x`` (N, D), random folds."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    order = np.random.default_rng(seed).permutation(len(y))
    predicted = np.empty_like(y)
    for test in np.array_split(order, folds):
        train = np.setdiff1d(order, test)
        mean, std = x[train].mean(0), x[train].std(0) + 1e-8
        xt = (x[train] - mean) / std
        y_mean = y[train].mean()
        coef = np.linalg.solve(xt.T @ xt + alpha * np.eye(x.shape[1]), xt.T @ (y[train] - y_mean))
        predicted[test] = ((x[test] - mean) / std) @ coef + y_mean
    return predicted


def ridge_cv_r2(x: np.ndarray, y: np.ndarray, alpha: float = 1.0, folds: int = 5, seed: int = 0) -> float:
    """Out-of-fold R^2 of ``ridge_cv_predictions``: 0 means "no better than the mean"."""
    y = np.asarray(y, np.float64)
    predicted = ridge_cv_predictions(x, y, alpha, folds, seed)
    return float(1 - ((y - predicted) ** 2).sum() / ((y - y.mean()) ** 2).sum())
