"""Quality metrics of the paper (§4.1, Tables 1 and 3): FID, patch-FID, keypoint-FID and improved
precision/recall, computed offline on Inception-v3 features (VGG16 for precision/recall when given),
under the `quick` or the `paper` protocol (protocol.py). `uh-eval` (uh_train/evaluate.py) is
the command line; `runner.evaluate` the whole evaluation; the other modules its parts."""

from .fid import FeatureStats, fid_from_features, frechet_distance
from .inception import InceptionFeatures, MetricsError, default_inception_path
from .precision_recall import precision_recall
from .runner import METRICS, EvalConfig, evaluate

__all__ = [
    "METRICS",
    "EvalConfig",
    "FeatureStats",
    "InceptionFeatures",
    "MetricsError",
    "default_inception_path",
    "evaluate",
    "fid_from_features",
    "frechet_distance",
    "precision_recall",
]
