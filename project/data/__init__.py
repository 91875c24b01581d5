"""Data: one small source per data set behind one interface, and one data module that splits, batches and seeds."""

from project.data.datamodule import ImageDataModule
from project.data.digits import DigitsData, digits_tensors
from project.data.fake import FakeData
from project.data.files import IMAGE_EXTENSIONS, class_folders, image_files, load_rgb, read_rgb, uniform_size
from project.data.image_folders import ImageFolderData, image_folder, imagefolder_stats
from project.data.new_images import FileListDataset, new_images
from project.data.registry import SOURCES, DatasetName, build_source
from project.data.scan import BadFile, FolderScan, OnBadFile, check_image, scan_class_folders, scan_files
from project.data.source import DataSource, SourceOptions
from project.data.split import seeded_split
from project.data.torchvision_sets import (
    CIFAR10Data,
    CIFAR100Data,
    FashionMNISTData,
    MNISTData,
    TorchvisionData,
    download_torchvision,
)
from project.data.transforms import Stats, image_transform
from project.errors import ConfigError, DataUnavailableError, UserPathError

__all__ = [
    "IMAGE_EXTENSIONS",
    "SOURCES",
    "CIFAR10Data",
    "CIFAR100Data",
    "ConfigError",
    "DataSource",
    "DataUnavailableError",
    "BadFile",
    "DatasetName",
    "DigitsData",
    "FakeData",
    "FashionMNISTData",
    "FileListDataset",
    "FolderScan",
    "ImageDataModule",
    "ImageFolderData",
    "MNISTData",
    "OnBadFile",
    "SourceOptions",
    "Stats",
    "TorchvisionData",
    "UserPathError",
    "build_source",
    "check_image",
    "class_folders",
    "digits_tensors",
    "download_torchvision",
    "image_files",
    "image_folder",
    "image_transform",
    "imagefolder_stats",
    "load_rgb",
    "read_rgb",
    "scan_class_folders",
    "scan_files",
    "new_images",
    "seeded_split",
    "uniform_size",
]
