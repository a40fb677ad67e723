"""Learners' tasks: a dataset, its split pair, its classes and its preprocessing.

Interleaving learning gives each of its K learners its own task. A `Task` turns a source
(tfds dataset or image folder) into the streams the search and the training read:

    task = get_task("cifar10")
    task.dataset("search_train", 64, training=True)   # endless, shuffled, augmented
    task.dataset("test", 256, training=False)         # one pass, in order, last batch kept

Roles and their default split strings (declared once, here, in `DEFAULT_SPLITS`):
`search_train` / `search_val` are the two halves of tfds's `train` split (DARTS: the first
half trains the weights, the second the architecture); `train` / `test` are for retraining
and the final evaluation. Search never reads `test`.

Tasks are chosen by name (`get_task`, `register_task`) or from gin through the configurable
constructors (`cifar10_task`, `cifar100_task`, `imagenet_task`, `digits_task`, `tfds_task`,
`folder_task`, and `task(name)`), e.g.

    search.tasks = [@cifar10_task(), @cifar100_task()]
    search.tasks = [@low/task(), @high/task()]
    low/task.name = "digits_low"
    high/task.name = "digits_high"
"""
import dataclasses
import functools
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import gin
import numpy as np
import tensorflow as tf

from il_tf.data import digits
from il_tf.data import preprocessing as prep
from il_tf.data import sources

ROLES = ("search_train", "search_val", "train", "test")
DEFAULT_SPLITS = {
    "search_train": "train[:50%]",
    "search_val": "train[50%:]",
    "train": "train",
    "test": "test",
}
# A folder with only class sub-folders has one split: hold out 20% for `test` and search on
# the rest, so search still never sees the test images.
HOLDOUT_SPLITS = {
    "search_train": "train[:40%]",
    "search_val": "train[40%:80%]",
    "train": "train[:80%]",
    "test": "train[80%:]",
}
AUTOTUNE = tf.data.AUTOTUNE
_STATS_EXAMPLES = 5000  # Images used to estimate mean/std for datasets without known ones.

Preprocessing = Union[prep.CropFlip, prep.InceptionCrop]
ClassSpec = Sequence[Union[int, str]]


class Task:
    """One learner's data: a source, its split pair, classes and preprocessing.

    Args:
      name: name of the task (for logs and run directories).
      source: a `sources.TfdsSource` or `sources.FolderSource`.
      preprocessing: a `preprocessing.CropFlip` or `preprocessing.InceptionCrop`; its mean/std
        may be None, then they are estimated once from the `train` role's images.
      splits: role -> tfds split string, for the roles in `ROLES`.
      classes: optional subset of the source's classes (ids or names); labels are remapped to
        0..len(classes)-1 in the given order and other images dropped.
      shuffle_buffer: examples in the shuffle buffer (capped at the split size).
      cache: keep prepared (decoded, resized) examples in memory after the first pass.
    """

    def __init__(
        self,
        name: str,
        source: sources.Source,
        preprocessing: Preprocessing,
        *,
        splits: Optional[Mapping[str, str]] = None,
        classes: Optional[ClassSpec] = None,
        shuffle_buffer: int = 50_000,
        cache: bool = True,
    ):
        self.name = name
        self.source = source
        self.splits: Dict[str, str] = dict(DEFAULT_SPLITS if splits is None else splits)
        missing = set(ROLES) - set(self.splits)
        if missing:
            raise ValueError(f"{name}: splits lack roles {sorted(missing)}")
        self.classes = None if classes is None else self._class_ids(classes)
        self._preprocessing = preprocessing
        self.shuffle_buffer = shuffle_buffer
        self.cache = cache
        self._counts: Dict[str, int] = {}
        self._memory: Dict[str, tf.data.Dataset] = {}  # split -> prepared, cached (_one_order)

    def __repr__(self) -> str:
        return (f"Task({self.name!r}, source={self.source.name!r}, "
                f"num_classes={self.num_classes}, image_shape={self.image_shape})")

    def _class_ids(self, classes: ClassSpec) -> Tuple[int, ...]:
        names = self.source.class_names or ()
        ids = tuple(names.index(c) if isinstance(c, str) else int(c) for c in classes)
        if len(set(ids)) != len(ids) or not all(0 <= i < self.source.num_classes for i in ids):
            raise ValueError(f"{self.name}: bad class subset {list(classes)}")
        return ids

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes is not None else self.source.num_classes

    @property
    def class_names(self) -> Optional[Tuple[str, ...]]:
        names = self.source.class_names
        if names is None or self.classes is None:
            return names
        return tuple(names[i] for i in self.classes)

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        return self._preprocessing.image_shape

    @functools.cached_property
    def preprocessing(self) -> Preprocessing:
        """The preprocessing with mean/std resolved (estimated from data if not given)."""
        pre = self._preprocessing
        if pre.mean is not None and pre.std is not None:
            return pre
        mean, std = self._estimate_stats(pre)
        return dataclasses.replace(pre, mean=mean, std=std)

    @property
    def normalization(self) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
        """(mean, std) per RGB channel of images in [0, 1]: `(x / 255 - mean) / std`."""
        return tuple(self.preprocessing.mean), tuple(self.preprocessing.std)

    def _estimate_stats(self, pre: Preprocessing):
        images = self._examples(self.splits["train"], pre, shuffle_files=False, seed=0)
        total = np.zeros(3)
        total_sq = np.zeros(3)
        pixels = 0
        for batch, _ in images.take(_STATS_EXAMPLES).batch(500):
            x = batch.numpy().astype(np.float64).reshape(-1, 3) / 255.0
            total += x.sum(0)
            total_sq += (x * x).sum(0)
            pixels += len(x)
        mean = total / pixels
        std = np.sqrt(np.maximum(total_sq / pixels - mean * mean, 1e-12))
        return tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def prepare(self) -> None:
        """Makes the data readable now (building or downloading it) or raises one line."""
        self.source.prepare()

    def num_examples(self, role: str) -> int:
        """Examples in a role's split (after the class subset, if any)."""
        split = self._split(role)
        if split not in self._counts:
            if self.classes is None:
                self._counts[split] = self.source.num_examples(split)
            else:
                counts = self.source.label_counts(split)
                self._counts[split] = int(counts[list(self.classes)].sum())
        return self._counts[split]

    def _split(self, role: str) -> str:
        if role not in self.splits:
            raise ValueError(f"unknown role {role!r}; roles are {ROLES}")
        return self.splits[role]

    def _examples(self, split, pre, *, shuffle_files, seed, input_context=None):
        """Prepared `(image, int32 label)` pairs of one split, subset applied, sharded."""
        dataset = self.source.read(
            split, shuffle_files=shuffle_files, seed=seed, decode=not pre.encoded_input
        )
        if self.classes is not None:
            remap = np.full(self.source.num_classes, -1, np.int32)
            remap[list(self.classes)] = np.arange(len(self.classes), dtype=np.int32)
            remap = tf.constant(remap)
            dataset = dataset.map(lambda x, y: (x, tf.gather(remap, y)))
            dataset = dataset.filter(lambda x, y: y >= 0)
        else:
            dataset = dataset.map(lambda x, y: (x, tf.cast(y, tf.int32)))
        if input_context is not None and input_context.num_input_pipelines > 1:
            # Example-level sharding: every pipeline gets a disjoint 1/N, whatever the
            # number of files (CIFAR's train split is a handful of files).
            dataset = dataset.shard(
                input_context.num_input_pipelines, input_context.input_pipeline_id
            )
        return dataset.map(lambda x, y: (pre.prepare(x), y), num_parallel_calls=AUTOTUNE)

    def _one_order(self, role: str) -> bool:
        """Whether every training stream of `role` may read one memory-cached dataset.

        A stream is rebuilt every epoch (and per learner and role); reading and preparing
        the split again each time costs a tiny search about a quarter of a second per stream.
        One cached dataset for the process gives the same examples in the same order when
        the seed does not change the read order (one file, or a source without file
        shuffling), and when the shuffle buffer holds the whole split, so that a stream's
        first batch completes the cache before any later stream reads it.
        """
        return (self.cache and tf.executing_eagerly()
                and not self.source.seed_orders_files(self._split(role))
                and self.shuffle_buffer >= self.num_examples(role))

    def _cached_examples(self, role: str, pre: Preprocessing) -> tf.data.Dataset:
        split = self._split(role)
        if split not in self._memory:
            self._memory[split] = self._examples(split, pre, shuffle_files=False,
                                                 seed=0).cache()
        return self._memory[split]

    def dataset(
        self,
        role: str,
        batch_size: int,
        *,
        training: bool,
        seed: int = 0,
        input_context: Optional[tf.distribute.InputContext] = None,
        cutout: int = 0,
        skip_batches: int = 0,
    ) -> tf.data.Dataset:
        """Batches of (float32 NHWC normalised images, int32 labels).

        Args:
          role: one of `ROLES`.
          batch_size: examples per batch (per replica when `input_context` is given).
          training: True -> augmented, shuffled (reshuffled every pass) and repeated forever,
            full batches only; False -> one pass in split order, no augmentation, the last
            partial batch kept.
          seed: seeds the file order, the shuffle and every augmentation; equal seeds give
            equal streams.
          input_context: from `distribute_datasets_from_function`: `batch_size` is per
            replica; a training stream is split by replica (below), an evaluation pass is
            sharded by example over the input pipelines.
          cutout: DARTS cutout length in pixels (training only; 16 for CIFAR retraining).
          skip_batches: training only: start after this many global batches (steps) of the
            stream, which are left unaugmented (a resumed run continues its stream exactly).

        A training stream is one sequence of augmented examples, a function of `seed` alone,
        whatever the layout: every input pipeline reads and shuffles the whole split alike and
        keeps (and augments) only its replicas' slices of each global batch, in replica order.
        So the replicas of a step together see exactly the global batch that one replica
        would see, and a run on N GPUs, N workers or one device differs only in how the
        gradients are summed (BatchNorm's statistics are per replica, as in DARTS).
        """
        pre = self.preprocessing
        if training and self._one_order(role):
            dataset = self._cached_examples(role, pre)
        else:
            dataset = self._examples(self._split(role), pre, shuffle_files=training, seed=seed,
                                     input_context=None if training else input_context)
            if self.cache:
                dataset = dataset.cache()
        if not training:
            dataset = dataset.map(lambda x, y: (pre.evaluate(x), y), num_parallel_calls=AUTOTUNE)
            return dataset.batch(batch_size, drop_remainder=False).prefetch(AUTOTUNE).with_options(
                _STREAM_OPTIONS)

        buffer = max(1, min(self.shuffle_buffer, self.num_examples(role)))
        dataset = dataset.shuffle(
            buffer, seed=seed * 1_000_003, reshuffle_each_iteration=True).repeat()

        def augment(index, example):
            image, label = example
            # A distinct stateless seed per example of the stream.
            key = tf.stack([tf.constant(seed, tf.int64), index])
            keys = tf.random.experimental.stateless_split(key, 2)
            image = pre.train(image, keys[0])
            if cutout:
                image = prep.cutout(image, cutout, keys[1])
            return image, label

        replicas = input_context.num_replicas_in_sync if input_context else 1
        dataset = dataset.enumerate().skip(skip_batches * batch_size * replicas)
        if input_context is not None and input_context.num_input_pipelines > 1:
            # Replica r of a step takes the step's r-th slice of `batch_size` examples; the
            # pipelines serve consecutive replicas (as MultiWorkerMirroredStrategy numbers
            # them), so this pipeline keeps the slices of its own replicas.
            per_pipeline = replicas // input_context.num_input_pipelines
            pipeline = tf.constant(input_context.input_pipeline_id, tf.int64)
            dataset = dataset.filter(
                lambda index, _: (index // batch_size) % replicas // per_pipeline == pipeline)
        dataset = dataset.map(augment, num_parallel_calls=AUTOTUNE)
        return dataset.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE).with_options(
            _STREAM_OPTIONS)


def distribute_dataset(
    strategy: tf.distribute.Strategy,
    task: Task,
    role: str,
    global_batch_size: int,
    *,
    training: bool,
    seed: int = 0,
    cutout: int = 0,
    skip_batches: int = 0,
) -> tf.distribute.DistributedDataset:
    """A task's stream split over a strategy's replicas, one input pipeline per worker.

    Each replica gets `global_batch_size / num_replicas_in_sync` examples a step: for training
    its slice of the global batch that one device would read (`Task.dataset`), for evaluation
    a disjoint shard of the examples per pipeline.
    """

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        batch = input_context.get_per_replica_batch_size(global_batch_size)
        return task.dataset(
            role, batch, training=training, seed=seed, input_context=input_context, cutout=cutout,
            skip_batches=skip_batches,
        )

    return strategy.distribute_datasets_from_function(dataset_fn)


def _stream_options() -> tf.data.Options:
    """Options of every stream `Task.dataset` returns: tf.data's autotuning model off.

    Its background thread re-optimises the pipeline at periods that double up to a minute,
    and destroying an iterator (every epoch ends its streams) waits for that thread's current
    period to run out: 2-44 s per epoch on 2 cores (tools/search.py's tiny runs spent most
    of their time there). Without it, `AUTOTUNE` parallelism is the machine's cores and the
    prefetch buffers still grow on demand (tf.data's prefetch autotuner needs no model); the
    CIFAR input pipeline's throughput is unchanged (`benchmarks/input_pipeline.py`,
    docs/benchmarks.md). The per-device stage a distributed iterator adds after these
    pipelines gets the same option from `il_tf.runtime.device_streams`."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


_STREAM_OPTIONS = _stream_options()


# ----------------------------------------------------------------------------------------
# Constructors (gin-configurable) and the registry of named tasks.


@gin.configurable(module="il_tf.data")
def cifar10_task(
    classes: Optional[ClassSpec] = None, data_dir: Optional[str] = None, name: str = "cifar10"
) -> Task:
    """CIFAR-10 with DARTS's preprocessing (crop 32 pad 4, flip, DARTS mean/std)."""
    return Task(
        name,
        sources.TfdsSource("cifar10", data_dir=data_dir),
        prep.CropFlip(32, prep.CIFAR10_MEAN, prep.CIFAR10_STD),
        classes=classes,
    )


@gin.configurable(module="il_tf.data")
def cifar100_task(
    classes: Optional[ClassSpec] = None, data_dir: Optional[str] = None, name: str = "cifar100"
) -> Task:
    """CIFAR-100 (fine labels) with DARTS's preprocessing."""
    return Task(
        name,
        sources.TfdsSource("cifar100", data_dir=data_dir),
        prep.CropFlip(32, prep.CIFAR100_MEAN, prep.CIFAR100_STD),
        classes=classes,
    )


@gin.configurable(module="il_tf.data")
def imagenet_task(
    classes: Optional[ClassSpec] = None,
    data_dir: Optional[str] = None,
    manual_dir: Optional[str] = None,
    image_size: int = 224,
    resize_size: int = 256,
    shuffle_buffer: int = 10_000,
    name: str = "imagenet2012",
) -> Task:
    """ImageNet (tfds `imagenet2012`, built from the manually downloaded ILSVRC2012 tars).

    Tests on `validation` (ImageNet has no labelled test split); search halves `train`.
    """
    return Task(
        name,
        sources.TfdsSource("imagenet2012", data_dir=data_dir, manual_dir=manual_dir),
        prep.InceptionCrop(image_size, resize_size),
        splits={**DEFAULT_SPLITS, "test": "validation"},
        classes=classes,
        shuffle_buffer=shuffle_buffer,
        cache=False,
    )


@gin.configurable(module="il_tf.data")
def digits_task(
    classes: Optional[ClassSpec] = None,
    image_size: int = 8,
    data_dir: Optional[str] = None,
    name: str = "digits",
) -> Task:
    """The UCI 8x8 handwritten digits (shipped with the install; builds offline).

    Args:
      classes: digit subset, e.g. (0, 1, 2, 3, 4); None is all ten.
      image_size: 8 (native, cheapest: a DARTS supernet's two reductions give 4 and 2) or
        larger to upsample (16 doubles every feature map side, about 4x the compute).
      data_dir: tfds data directory; None uses `tfds_config`.
      name: task name.

    Augmentation is a 1-pixel (1/8 of the side, as CIFAR's 4 of 32) pad-and-crop without
    flips: a mirrored digit is not the same digit. Normalised with the train split's own
    mean/std, the same for the three (replicated) channels.
    """
    return Task(
        name,
        sources.TfdsSource("sklearn_digits", data_dir=data_dir),
        prep.CropFlip(
            image_size, digits.MEAN, digits.STD, padding=prep.default_padding(image_size),
            flip=False,
        ),
        classes=classes,
    )


@gin.configurable(module="il_tf.data")
def tfds_task(
    dataset: str = gin.REQUIRED,
    classes: Optional[ClassSpec] = None,
    image_size: int = 32,
    padding: Optional[int] = None,
    flip: bool = True,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    splits: Optional[Mapping[str, str]] = None,
    data_dir: Optional[str] = None,
    shuffle_buffer: int = 10_000,
    cache: bool = True,
    name: Optional[str] = None,
) -> Task:
    """Any tfds image-classification dataset, by tfds name (e.g. "mnist", "oxford_flowers102").

    Classes come from its `DatasetInfo`; images are converted to RGB and resized to
    `image_size` x `image_size` before caching, then CIFAR-style augmented.

    Args:
      dataset: tfds name, optionally with config and version ("name/config:1.0.0").
      classes: optional class subset (ids or names), remapped to 0..n-1.
      image_size: the search/training resolution.
      padding: pad-and-crop pixels; None is image_size / 8 (CIFAR's 4 at 32).
      flip: random horizontal flips.
      mean, std: per-channel statistics in [0, 1]; None estimates them from up to 5,000
        images of the `train` role (once, on first use).
      splits: role -> split string; None is `DEFAULT_SPLITS` (the dataset needs `train` and
        `test` splits, else pass e.g. {..., "test": "validation"}).
      data_dir: tfds data directory; None uses `tfds_config`.
      shuffle_buffer: shuffle buffer size in examples.
      cache: cache prepared examples in memory (turn off for large datasets).
      name: task name; None is the dataset name.
    """
    return Task(
        name or dataset,
        sources.TfdsSource(dataset, data_dir=data_dir),
        prep.CropFlip(
            image_size,
            None if mean is None else _rgb(mean),
            None if std is None else _rgb(std),
            padding=prep.default_padding(image_size) if padding is None else padding,
            flip=flip,
        ),
        splits=splits,
        classes=classes,
        shuffle_buffer=shuffle_buffer,
        cache=cache,
    )


@gin.configurable(module="il_tf.data")
def folder_task(
    root_dir: str = gin.REQUIRED,
    classes: Optional[ClassSpec] = None,
    image_size: int = 32,
    padding: Optional[int] = None,
    flip: bool = True,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    splits: Optional[Mapping[str, str]] = None,
    shuffle_buffer: int = 10_000,
    cache: bool = True,
    name: Optional[str] = None,
) -> Task:
    """A local folder of images, one sub-folder per class (read by tfds's `ImageFolder`).

    Layouts: `root_dir/train/<class>/*.jpg` (+ `root_dir/test/<class>/...`), or just
    `root_dir/<class>/*.jpg`, whose images are split 80/20 into train/test (`HOLDOUT_SPLITS`).
    Other arguments as in `tfds_task`.
    """
    source = sources.FolderSource(root_dir)
    if splits is None:
        splits = DEFAULT_SPLITS if "test" in source.split_names else HOLDOUT_SPLITS
    return Task(
        name or source.name,
        source,
        prep.CropFlip(
            image_size,
            None if mean is None else _rgb(mean),
            None if std is None else _rgb(std),
            padding=prep.default_padding(image_size) if padding is None else padding,
            flip=flip,
        ),
        splits=splits,
        classes=classes,
        shuffle_buffer=shuffle_buffer,
        cache=cache,
    )


def _rgb(values: Sequence[float]) -> Tuple[float, float, float]:
    values = tuple(float(v) for v in values)
    return values * 3 if len(values) == 1 else values


_REGISTRY: Dict[str, Callable[..., Task]] = {}


def register_task(name: str, constructor: Callable[..., Task]) -> None:
    """Registers `constructor` (keyword arguments -> Task) under `name` for `get_task`."""
    if name in _REGISTRY:
        raise ValueError(f"task {name!r} is already registered")
    _REGISTRY[name] = constructor


def registered_tasks() -> Tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


@gin.configurable("task", module="il_tf.data")
def get_task(name: str = gin.REQUIRED, **kwargs) -> Task:
    """The task registered as `name`, else the tfds dataset of that name (`tfds_task`).

    Keyword arguments go to the constructor (e.g. `classes`, `data_dir`).
    """
    if name in _REGISTRY:
        return _REGISTRY[name](**kwargs)
    return tfds_task(name, **kwargs)


# The two learners of the default offline search mirror CIFAR-10 / CIFAR-100: the same kind
# of images (same writers, scanner and size), but disjoint images and disjoint label sets.
# Splitting the ten digits by class gives exactly that, so the shared encoder must serve two
# different classification problems, as in the paper; each learner has ~750 training images.
DIGITS_LOW = (0, 1, 2, 3, 4)
DIGITS_HIGH = (5, 6, 7, 8, 9)

register_task("cifar10", cifar10_task)
register_task("cifar100", cifar100_task)
register_task("imagenet2012", imagenet_task)
register_task("imagenet", imagenet_task)
register_task("digits", digits_task)
register_task(
    "digits_low", functools.partial(digits_task, classes=DIGITS_LOW, name="digits_low")
)
register_task(
    "digits_high", functools.partial(digits_task, classes=DIGITS_HIGH, name="digits_high")
)
