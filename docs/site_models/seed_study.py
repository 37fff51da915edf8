"""Acceptance checks of issue 7 over several synthetic cohorts (700 patients each).

    .venv/bin/python docs/site_models/seed_study.py 0 10

Prints, per seed: abdominal 3-class BDT test AUC (macro one-vs-rest) with its CI low bound, and the paired
calibrated-minus-chest test AUC difference of the 3-class BDT models with its 95 % CI.
"""

from __future__ import annotations

import sys

from service.offline.cohort.evaluate import acceptance, evaluate_model
from service.offline.cohort.synthetic import synthetic_rows
from service.site_models.cohort import Cohort
from service.site_models.feature_models import fit_feature_spec, train_feature_model


def main(first: int, last: int) -> None:
    for seed in range(first, last):
        cohort = Cohort(None, tuple(synthetic_rows(700, seed)))
        train, test = cohort.split("train"), {"test": cohort.split("test")}
        evals = []
        for region in ("abdomen", "chest", "chest_calibrated"):
            spec = fit_feature_spec(region, train)
            for target, algorithm in (("3class", "bdt"), ("binary", "bdt"), ("3class", "lr"), ("bmd", "sgd")):
                model = train_feature_model(region, target, algorithm, train, seed=0, spec=spec)
                evals += evaluate_model(model, test, version="study", kind="feature")
        checks = acceptance(evals)["checks"]
        auc, cal = checks[0], checks[2]
        print(f"seed {seed}: abdomen-3class-bdt AUC {auc['value']:.3f} (CI low {auc['ci_low']:.3f}); "
              f"calibrated - chest 3-class BDT {cal['difference']:+.4f} "
              f"({cal['difference_ci_low']:+.4f} to {cal['difference_ci_high']:+.4f}), "
              f"not worse: {cal['passed']}, point estimate at least as good: {cal['strict']}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0, int(sys.argv[2]) if len(sys.argv) > 2 else 10)
