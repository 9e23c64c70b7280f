"""nucleate: point-supervised active learning for nuclei segmentation (pure core).

The core imports numpy, torch, scikit-learn, scikit-image, scipy and pyarrow only. It never imports
prefect, dvc or label_studio_sdk, never reads environment variables and never touches a global RNG.
"""

__version__ = "0.1.0"
