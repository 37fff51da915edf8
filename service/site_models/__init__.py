"""Site-trained BMD models (issue 7): cohort manifest, feature and deep models, evaluation report, registry.

Heavy dependencies (scikit-learn, torch/MONAI, matplotlib) are imported by the modules that need them, so
``import service.site_models`` stays cheap.
"""
