"""Where examples come from: a tfds dataset by name, or a local folder of images.

A source reads one tfds split string as `(image, label)` pairs in a fixed order and knows
its classes and example counts; tasks build the streams on top. Preparing a tfds dataset
happens on first use: the shipped dataset builds offline; others download only when the
network answers, and otherwise raise `DatasetUnavailableError` with one line.
"""
import collections
import os
import socket
import tempfile
import threading
from typing import Dict, Optional, Tuple, Union

import gin
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from il_tf.data import digits  # pylint: disable=unused-import  # registers sklearn_digits
from il_tf.data.errors import DatasetUnavailableError

TfdsConfig = collections.namedtuple("TfdsConfig", ["data_dir", "manual_dir", "download"])

# Hosts tried (TCP 443, a few seconds) before a download: without network tfds's own attempt
# spends minutes in DNS retries before it fails (204 s measured here for cifar10). General
# internet hosts (tfds's own mirror first), not package indexes, which sandboxes often allow.
_PROBE_HOSTS = ("storage.googleapis.com", "www.google.com")
_PROBE_TIMEOUT_S = 4.0

# Examples per class of the tfds split strings read so far in this process, by (dataset
# directory, split string): the tasks of one dataset (learners on class subsets of it, say)
# share one pass over a split's labels. Kept only when they add up to the split's size in
# tfds's metadata, i.e. they were counted on the built data.
_LABEL_COUNTS: Dict[Tuple[str, str], np.ndarray] = {}


@gin.configurable(module="il_tf.data")
def tfds_config(
    data_dir: Optional[str] = None, manual_dir: Optional[str] = None, download: bool = True
) -> TfdsConfig:
    """Where tfds data lives, shared by every task (bind these from gin).

    Args:
      data_dir: tfds data directory; None is tfds's default (`$TFDS_DATA_DIR` or
        `~/tensorflow_datasets`).
      manual_dir: where manually downloaded archives are (ImageNet's ILSVRC2012 tars); None is
        `<data_dir>/downloads/manual`.
      download: whether a dataset that is not prepared may be downloaded.
    """
    return TfdsConfig(data_dir, manual_dir, download)


def _network_available() -> bool:
    """True when one probe host accepts a TCP connection within the timeout."""
    result = []

    def probe():
        for host in _PROBE_HOSTS:
            try:
                socket.create_connection((host, 443), timeout=_PROBE_TIMEOUT_S).close()
                result.append(True)
                return
            except OSError:
                continue

    thread = threading.Thread(target=probe, daemon=True)  # getaddrinfo has no timeout.
    thread.start()
    thread.join(_PROBE_TIMEOUT_S * len(_PROBE_HOSTS) + 1)
    return bool(result)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:200]


class TfdsSource:
    """A tfds image-classification dataset read with `as_supervised=True`."""

    def __init__(
        self,
        name: str,
        data_dir: Optional[str] = None,
        manual_dir: Optional[str] = None,
        download: Optional[bool] = None,
    ):
        config = tfds_config()
        self.name = name
        self._data_dir = data_dir if data_dir is not None else config.data_dir
        self._manual_dir = manual_dir if manual_dir is not None else config.manual_dir
        self._download = config.download if download is None else download
        try:
            self.builder = tfds.builder(name, data_dir=self._data_dir)
        except tfds.core.registered.DatasetNotFoundError as error:
            raise ValueError(f"{name}: not a tfds dataset ({_first_line(error)}); check the name "
                             f"against python -c 'import tensorflow_datasets as tfds; "
                             f"print(tfds.list_builders())'") from None
        info = self.builder.info
        if info.supervised_keys is None or len(info.supervised_keys) != 2:
            raise ValueError(f"{name}: tfds dataset has no (image, label) supervised keys")
        self._image_key, self._label_key = info.supervised_keys
        self._prepared = False

    @property
    def label_feature(self) -> tfds.features.ClassLabel:
        feature = self.builder.info.features[self._label_key]
        if not isinstance(feature, tfds.features.ClassLabel):
            raise ValueError(f"{self.name}: label '{self._label_key}' is not a ClassLabel")
        return feature

    @property
    def num_classes(self) -> int:
        return self.label_feature.num_classes

    @property
    def class_names(self) -> Optional[Tuple[str, ...]]:
        return tuple(self.label_feature.names) or None

    @property
    def image_shape(self) -> Tuple[Optional[int], ...]:
        return tuple(self.builder.info.features[self._image_key].shape)

    def prepare(self) -> None:
        """Makes the data readable or raises `DatasetUnavailableError` (one line)."""
        if self._prepared:
            return
        if not self._is_readable():
            self._download_and_prepare()
        self._prepared = True

    def _is_readable(self) -> bool:
        splits = list(self.builder.info.splits) or ["train"]
        try:  # Under tfds.testing.mock_data this succeeds without files.
            self.builder.as_dataset(split=splits[0])
            return True
        except (AssertionError, FileNotFoundError, ValueError, KeyError):
            return False

    def _download_and_prepare(self) -> None:
        where = os.fspath(self.builder.data_dir)
        copy_hint = (
            f"run `tfds build {self.name} --data_dir=DIR` where there is network and bind "
            "il_tf.data.tfds_config.data_dir='DIR'"
        )
        offline = getattr(type(self.builder), "OFFLINE", False)
        manual_dir = None
        if self.builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
            manual_dir = self._manual_dir or os.path.join(
                os.fspath(self.builder.data_dir_root), "downloads", "manual"
            )
            if not tf.io.gfile.exists(manual_dir) or not tf.io.gfile.listdir(manual_dir):
                raise DatasetUnavailableError(
                    self.name,
                    where,
                    f"put its manually downloaded files ({_manual_files(self.name)}) in "
                    f"{manual_dir} or bind il_tf.data.tfds_config.manual_dir, or {copy_hint}",
                    cause=f"manual files not in {manual_dir}",
                )
        elif not offline:
            if not self._download:
                raise DatasetUnavailableError(
                    self.name, where, f"{copy_hint}, or bind il_tf.data.tfds_config.download=True",
                    cause="downloads disabled",
                )
            if not _network_available():
                raise DatasetUnavailableError(self.name, where, copy_hint, cause="no network")
        try:
            self.builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
            )
        except Exception as error:  # pylint: disable=broad-except  # reported in one line
            raise DatasetUnavailableError(
                self.name, where, copy_hint, cause=f"preparing failed: {_first_line(error)}"
            ) from error
        # A builder made before its data existed keeps empty split metadata: reload it.
        self.builder = tfds.builder(self.name, data_dir=self._data_dir)

    def read(self, split: str, *, shuffle_files: bool = False, seed: int = 0,
             decode: bool = True) -> tf.data.Dataset:
        """`(image, label)` pairs of a split string, in file order unless `shuffle_files`."""
        self.prepare()
        decoders = None if decode else {self._image_key: tfds.decode.SkipDecoding()}
        return self.builder.as_dataset(
            split=split,
            as_supervised=True,
            shuffle_files=shuffle_files,
            decoders=decoders,
            read_config=tfds.ReadConfig(shuffle_seed=seed, try_autocache=False),
        )

    def seed_orders_files(self, split: str) -> bool:
        """Whether `read(split, shuffle_files=True, seed=s)`'s order depends on `s`: when the
        split spans more than one file, or its files are unknown (mock data)."""
        if not self._has_metadata(split):
            return True
        return self.builder.info.splits[split].num_shards != 1

    def label_counts(self, split: str) -> np.ndarray:
        """Examples per class in a split string (one pass over its labels, images not decoded)."""
        key = (os.fspath(self.builder.data_dir), split)
        if key not in _LABEL_COUNTS:
            labels = self.read(split, decode=False).map(lambda image, label: label)
            counts = _bincount(labels, self.num_classes)
            if not self._has_metadata(split) or (
                    counts.sum() != self.builder.info.splits[split].num_examples):
                # Not the built data that tfds describes (tfds.testing.mock_data generates
                # examples in place of a directory's): not for other tasks to reuse.
                return counts
            _LABEL_COUNTS[key] = counts
        return _LABEL_COUNTS[key].copy()

    def num_examples(self, split: str) -> int:
        self.prepare()
        if self._has_metadata(split):
            return int(self.builder.info.splits[split].num_examples)
        return _count(self.read(split, decode=False))

    def _has_metadata(self, split: str) -> bool:
        """Whether tfds knows the split's size (not so under `tfds.testing.mock_data`)."""
        try:
            return bool(self.builder.info.splits[split].num_examples)
        except (KeyError, ValueError):
            return False


def _bincount(labels: tf.data.Dataset, num_classes: int) -> np.ndarray:
    counts = np.zeros(num_classes, np.int64)
    for batch in labels.batch(65_536).as_numpy_iterator():
        batch = batch[batch >= 0]  # -1: unlabelled (e.g. imagenet2012's test split)
        counts += np.bincount(batch, minlength=num_classes)[:num_classes]
    return counts


def _count(dataset: tf.data.Dataset) -> int:
    cardinality = int(dataset.cardinality())
    if cardinality >= 0:
        return cardinality
    return int(dataset.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))


def _manual_files(name: str) -> str:
    if name.startswith("imagenet2012"):
        return "ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar"
    return "see tfds's manual download instructions"


class FolderSource:
    """Images in `root_dir/<split>/<class>/*` (or `root_dir/<class>/*` as one `train` split).

    Read with `tfds.folder_dataset.ImageFolder`, which lists files in a fixed pseudo-random
    order per split; split slices (`train[:50%]`) are taken on that order.
    """

    def __init__(self, root_dir: str):
        root_dir = os.fspath(root_dir)
        if not tf.io.gfile.isdir(root_dir):
            raise DatasetUnavailableError(
                f"folder {root_dir}", root_dir,
                "give a directory with one sub-folder of images per class",
                cause="no such directory",
            )
        self.name = os.path.basename(os.path.normpath(root_dir))
        self.root_dir = root_dir
        builder_root = root_dir
        if _is_flat_layout(root_dir):
            # ImageFolder wants split folders: present the class folders as split `train`.
            self._link_dir = tempfile.TemporaryDirectory(prefix="il_tf_folder_")
            builder_root = self._link_dir.name
            os.symlink(os.path.abspath(root_dir), os.path.join(builder_root, "train"))
        self.builder = tfds.folder_dataset.ImageFolder(builder_root)
        self.split_names = tuple(self.builder.info.splits.keys())
        if not self.split_names or not self.num_examples(self.split_names[0]):
            raise DatasetUnavailableError(
                f"folder {root_dir}", root_dir,
                "give a directory with one sub-folder of images per class", cause="no images",
            )

    @property
    def num_classes(self) -> int:
        return self.builder.info.features["label"].num_classes

    @property
    def class_names(self) -> Tuple[str, ...]:
        return tuple(self.builder.info.features["label"].names)

    @property
    def image_shape(self) -> Tuple[Optional[int], ...]:
        return (None, None, 3)

    def prepare(self) -> None:
        pass

    def _instructions(self, split: str):
        """[(split name, start, stop)] of a split string, on ImageFolder's example order."""
        splits = self.builder.info.splits
        return [
            (i.splitname, i.from_ or 0,
             splits[i.splitname].num_examples if i.to is None else i.to)
            for i in tfds.core.ReadInstruction.from_spec(split).to_absolute(splits)
        ]

    def read(self, split: str, *, shuffle_files: bool = False, seed: int = 0,
             decode: bool = True) -> tf.data.Dataset:
        del shuffle_files, seed  # One file per image: the task's shuffle buffer does it all.
        if not decode:
            raise ValueError("folder sources decode images (PNG/JPEG/...) when read")
        parts = []
        for name, start, stop in self._instructions(split):
            part = self.builder.as_dataset(split=name, as_supervised=True)
            parts.append(part.skip(start).take(stop - start))
        dataset = parts[0]
        for part in parts[1:]:
            dataset = dataset.concatenate(part)
        return dataset

    def seed_orders_files(self, split: str) -> bool:
        del split
        return False  # `read` ignores the seed.

    def label_counts(self, split: str) -> np.ndarray:
        """Examples per class in a split string (one pass, decoding the images)."""
        return _bincount(self.read(split).map(lambda image, label: label), self.num_classes)

    def num_examples(self, split: str) -> int:
        return sum(stop - start for _, start, stop in self._instructions(split))


def _is_flat_layout(root_dir: str) -> bool:
    """True when the sub-folders of `root_dir` hold images directly (they are the classes)."""
    for child in tf.io.gfile.listdir(root_dir):
        path = os.path.join(root_dir, child.rstrip("/"))
        if tf.io.gfile.isdir(path):
            return not any(
                tf.io.gfile.isdir(os.path.join(path, grandchild.rstrip("/")))
                for grandchild in tf.io.gfile.listdir(path)
            )
    return False


Source = Union[TfdsSource, FolderSource]
