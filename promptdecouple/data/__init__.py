"""Data: the three TIReID benchmarks as downloaded, their synthetic twin, and the DataModule."""

from promptdecouple.data.annotations import (
    DATASETS,
    AnnotationError,
    AnnotationProblem,
    DatasetLayout,
    SkippedEntriesWarning,
    dataset_layout,
    load_annotations,
    read_annotations,
)
from promptdecouple.data.datamodule import ImageFilesError, TIReIDDataModule
from promptdecouple.data.datasets import (
    GalleryImages,
    PrecollatedItems,
    QueryCaptions,
    TrainingPairs,
    collate_items,
    tokenize_captions,
)
from promptdecouple.data.images import ImageFileReport, check_image_files, inspect_image_file
from promptdecouple.data.samplers import EpochOrder, IdentityOrder, RandomOrder
from promptdecouple.data.synthetic import write_synthetic
from promptdecouple.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    ImageDecodeError,
    ImageTransform,
    load_image,
    normalize_pixels,
)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DATASETS",
    "AnnotationError",
    "AnnotationProblem",
    "DatasetLayout",
    "GalleryImages",
    "EpochOrder",
    "IdentityOrder",
    "ImageDecodeError",
    "ImageFileReport",
    "ImageFilesError",
    "ImageTransform",
    "PrecollatedItems",
    "QueryCaptions",
    "RandomOrder",
    "SkippedEntriesWarning",
    "TIReIDDataModule",
    "TrainingPairs",
    "check_image_files",
    "collate_items",
    "dataset_layout",
    "inspect_image_file",
    "load_annotations",
    "load_image",
    "normalize_pixels",
    "read_annotations",
    "tokenize_captions",
    "write_synthetic",
]
