"""Dataset importers: each yields ``Sample(name, image, mask)`` and lists classes.

``activeseg.datasets.importer`` builds a project from one (through core's services); it is not
imported here, so reading a dataset needs no database.
"""

from activeseg.datasets.base import ClassDef, Dataset, Sample, to_uint8
from activeseg.datasets.digits import digits
from activeseg.datasets.folder import FolderDatasetError, folder
from activeseg.datasets.nuclei import DatasetUnavailableError, nuclei
from activeseg.datasets.registry import load_dataset

__all__ = [
    "ClassDef",
    "Dataset",
    "DatasetUnavailableError",
    "FolderDatasetError",
    "Sample",
    "digits",
    "folder",
    "load_dataset",
    "nuclei",
    "to_uint8",
]
