"""nucleate: point-supervised active learning for nuclei segmentation (pure core).

The core imports numpy, torch, scikit-learn, scikit-image, scipy, pyarrow and (lazily, for the k-center kernel)
numba only. It never imports prefect, dvc or label_studio_sdk, never reads environment variables and never touches
a global RNG.
"""

__version__ = "0.1.0"
