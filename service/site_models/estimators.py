"""The scikit-learn estimators of the feature models: targets, algorithms and their settings, and the seeded,
single-threaded ``Pipeline`` (z-score + estimator) of each."""

from __future__ import annotations

from typing import Any

from service.site_models.cohort import CATEGORY_LABELS

TARGETS: dict[str, str] = {"3class": "classification", "binary": "classification", "bmd": "regression"}
TARGET_LABELS: dict[str, tuple[str, ...]] = {
    "3class": CATEGORY_LABELS,
    "binary": ("not_osteoporosis", "osteoporosis"),
}
CLASSIFIER_ALGORITHMS: tuple[str, ...] = ("bdt", "lr", "rf")
REGRESSOR_ALGORITHMS: tuple[str, ...] = ("sgd", "bdt", "rf")
ALGORITHM_NAMES: dict[str, str] = {
    "bdt": "bagging decision trees", "lr": "logistic regression", "rf": "random forest",
    "sgd": "stochastic gradient descent",
}
N_ESTIMATORS = 200
CLASSIFIER_MIN_SAMPLES_LEAF = 20
"""Leaf size of the classification trees: class probabilities (what the ROC ranks) from populated leaves."""
REGRESSOR_MIN_SAMPLES_LEAF = 5
RF_REGRESSOR_MAX_FEATURES = 0.34


def build_pipeline(target: str, algorithm: str, seed: int) -> Any:
    """z-score + estimator as a scikit-learn Pipeline (single-threaded, seeded)."""
    # scikit-learn is loaded only to build a model for training: the node imports the site models to serve them
    from sklearn import compose, ensemble, linear_model, pipeline, preprocessing, tree  # noqa: PLC0415

    if target not in TARGETS:
        raise ValueError(f"target must be one of {tuple(TARGETS)}, got {target!r}")
    estimator: Any
    if TARGETS[target] == "classification":
        if algorithm == "bdt":
            estimator = ensemble.BaggingClassifier(
                estimator=tree.DecisionTreeClassifier(min_samples_leaf=CLASSIFIER_MIN_SAMPLES_LEAF, random_state=seed),
                n_estimators=N_ESTIMATORS, random_state=seed, n_jobs=1)
        elif algorithm == "lr":
            estimator = linear_model.LogisticRegression(max_iter=5000, C=1.0)
        elif algorithm == "rf":
            estimator = ensemble.RandomForestClassifier(
                n_estimators=N_ESTIMATORS, min_samples_leaf=CLASSIFIER_MIN_SAMPLES_LEAF, random_state=seed, n_jobs=1)
        else:
            raise ValueError(f"classifier algorithm must be one of {CLASSIFIER_ALGORITHMS}, got {algorithm!r}")
    else:
        if algorithm == "sgd":
            # the target is z-scored too, so SGD's step size does not depend on the mg/cm3 scale
            estimator = compose.TransformedTargetRegressor(
                regressor=linear_model.SGDRegressor(loss="squared_error", penalty="l2", alpha=1e-4, max_iter=5000,
                                                    tol=1e-6, random_state=seed),
                transformer=preprocessing.StandardScaler())
        elif algorithm == "bdt":
            estimator = ensemble.BaggingRegressor(
                estimator=tree.DecisionTreeRegressor(min_samples_leaf=REGRESSOR_MIN_SAMPLES_LEAF, random_state=seed),
                n_estimators=N_ESTIMATORS, random_state=seed, n_jobs=1)
        elif algorithm == "rf":
            # a third of the features per split (Breiman's regression default); with all of them a random forest
            # regressor would be the bagged trees again
            estimator = ensemble.RandomForestRegressor(
                n_estimators=N_ESTIMATORS, min_samples_leaf=REGRESSOR_MIN_SAMPLES_LEAF,
                max_features=RF_REGRESSOR_MAX_FEATURES, random_state=seed, n_jobs=1)
        else:
            raise ValueError(f"regressor algorithm must be one of {REGRESSOR_ALGORITHMS}, got {algorithm!r}")
    return pipeline.Pipeline([("zscore", preprocessing.StandardScaler()), ("model", estimator)])


def algorithms_for(target: str) -> tuple[str, ...]:
    return CLASSIFIER_ALGORITHMS if TARGETS[target] == "classification" else REGRESSOR_ALGORITHMS
