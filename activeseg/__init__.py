"""activeseg: an active-learning annotation service for image segmentation."""

__version__ = "0.1.0"
