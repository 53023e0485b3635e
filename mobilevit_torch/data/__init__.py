"""Data: image folders, splits, the tf_flowers download, decoded-image caches, transforms."""

from mobilevit_torch.data.images import IMAGE_EXTENSIONS, BadImageError, load_rgb  # noqa: I001
from mobilevit_torch.data.folder import DataError, DatasetSplit, Sample, make_split, scan_image_folder
from mobilevit_torch.data.download import FLOWERS_SHA256, FLOWERS_URL, download_file, prepare_flowers, safe_extract_tar
from mobilevit_torch.data.cache import DecodedImages, decode_images
from mobilevit_torch.data.datasets import ImageListDataset, find_unreadable
from mobilevit_torch.data.sampler import MultiScaleBatchSampler

__all__ = [
    "FLOWERS_SHA256",
    "FLOWERS_URL",
    "IMAGE_EXTENSIONS",
    "BadImageError",
    "DataError",
    "DatasetSplit",
    "DecodedImages",
    "ImageListDataset",
    "MultiScaleBatchSampler",
    "Sample",
    "decode_images",
    "download_file",
    "find_unreadable",
    "load_rgb",
    "make_split",
    "prepare_flowers",
    "safe_extract_tar",
    "scan_image_folder",
]
