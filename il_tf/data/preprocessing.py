"""Per-example image preprocessing: the DARTS augmentations, stateless and seeded.

Every random op is a `tf.image.stateless_*` op fed a per-example seed by the pipeline, so a
seeded stream is reproducible under a parallel `map`. Each preprocessing has two stages:
`prepare` (deterministic, runs before the cache: colour channels and resizing, output uint8)
and `train` / `evaluate` (after shuffling: augmentation, then float32 normalisation).
"""
import dataclasses
import math
from typing import Optional, Sequence, Tuple

import tensorflow as tf

# DARTS's CIFAR statistics (quark0/darts cnn/utils.py), per RGB channel of images in [0, 1].
CIFAR10_MEAN = (0.49139968, 0.48215827, 0.44653124)
CIFAR10_STD = (0.24703233, 0.24348505, 0.26158768)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
# torchvision's ImageNet statistics, used by DARTS's train_imagenet.py.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Stats = Tuple[float, float, float]


def _to_rgb(image: tf.Tensor) -> tf.Tensor:
    """Grayscale -> 3 identical channels; RGBA -> RGB; RGB unchanged (static channel count)."""
    channels = image.shape[-1]
    if channels == 1:
        return tf.image.grayscale_to_rgb(image)
    if channels == 4:
        return image[..., :3]
    if channels != 3:
        raise ValueError(f"images must have 1, 3 or 4 channels, got shape {image.shape}")
    return image


def normalize(image: tf.Tensor, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
    """uint8 (or [0, 255]) RGB -> float32 (x / 255 - mean) / std, per channel."""
    image = tf.cast(image, tf.float32) / 255.0
    return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def cutout(image: tf.Tensor, length: int, seed: tf.Tensor) -> tf.Tensor:
    """DARTS cutout: zero a `length` square centred uniformly in the image, clipped at borders.

    Applied after normalisation, as in DARTS (its `Cutout` follows `Normalize`).
    """
    if not length:
        return image
    height, width = image.shape[0], image.shape[1]
    # Uniform in [0, 1) scaled per axis (stateless int sampling wants a scalar maxval).
    unit = tf.random.stateless_uniform([2], seed, dtype=tf.float32)
    centre = tf.cast(unit * tf.constant([height, width], tf.float32), tf.int32)
    rows = tf.range(height)[:, None]
    cols = tf.range(width)[None, :]
    half = length // 2
    inside = (
        (rows >= centre[0] - half)
        & (rows < centre[0] + length - half)
        & (cols >= centre[1] - half)
        & (cols < centre[1] + length - half)
    )
    return image * tf.cast(~inside, image.dtype)[..., None]


@dataclasses.dataclass(frozen=True)
class CropFlip:
    """CIFAR-style preprocessing: zero-pad and random crop, optional horizontal flip.

    Attributes:
      image_size: output height and width in pixels.
      mean, std: per-channel statistics of images in [0, 1]; `None` until a task computes them.
      padding: pixels of zero padding before the random crop (DARTS CIFAR: 4 at 32x32).
      flip: random horizontal flips (off for data where mirroring changes the class, digits).
    """

    image_size: int
    mean: Optional[Stats] = None
    std: Optional[Stats] = None
    padding: int = 4
    flip: bool = True

    encoded_input = False  # Works on decoded images.

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        return (self.image_size, self.image_size, 3)

    def prepare(self, image: tf.Tensor) -> tf.Tensor:
        """RGB uint8 at the task resolution; a no-op for data already at that size."""
        image = _to_rgb(image)
        size = self.image_size
        if image.shape[0] != size or image.shape[1] != size:
            image = tf.image.resize(image, (size, size), antialias=True)
            image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
            image = tf.ensure_shape(image, (size, size, 3))
        return image

    def train(self, image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        seeds = tf.random.experimental.stateless_split(seed, 2)
        if self.padding:
            pad = self.padding
            image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
            image = tf.image.stateless_random_crop(image, self.image_shape, seeds[0])
        if self.flip:
            image = tf.image.stateless_random_flip_left_right(image, seeds[1])
        return normalize(image, self.mean, self.std)

    def evaluate(self, image: tf.Tensor) -> tf.Tensor:
        return normalize(image, self.mean, self.std)


@dataclasses.dataclass(frozen=True)
class InceptionCrop:
    """ImageNet preprocessing of DARTS's train_imagenet.py, on JPEG bytes.

    Training: random resized crop (area 8%-100%, aspect 3/4-4/3) decoded straight from the
    JPEG, horizontal flip, colour jitter (brightness, contrast, saturation 0.4, hue 0.2, as
    torchvision's `ColorJitter`). Evaluation: resize the shorter side to `resize_size`, centre
    crop `image_size`. Inputs are encoded so the shuffle buffer holds bytes, not pixels.
    """

    image_size: int = 224
    resize_size: int = 256
    mean: Optional[Stats] = IMAGENET_MEAN
    std: Optional[Stats] = IMAGENET_STD
    jitter: Tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.2)

    encoded_input = True

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        return (self.image_size, self.image_size, 3)

    def prepare(self, image: tf.Tensor) -> tf.Tensor:
        return image

    def train(self, image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        seeds = tf.random.experimental.stateless_split(seed, 6)
        shape = tf.image.extract_jpeg_shape(image)
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape,
            bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
            seed=seeds[0],
            min_object_covered=0.0,
            aspect_ratio_range=(3 / 4, 4 / 3),
            area_range=(0.08, 1.0),
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        window = tf.stack([begin[0], begin[1], size[0], size[1]])
        image = tf.image.decode_and_crop_jpeg(image, window, channels=3)
        image = tf.image.resize(image, (self.image_size, self.image_size)) / 255.0
        image = tf.image.stateless_random_flip_left_right(image, seeds[1])
        brightness, contrast, saturation, hue = self.jitter
        if brightness:
            factor = tf.random.stateless_uniform([], seeds[2], 1 - brightness, 1 + brightness)
            image = image * factor
        if contrast:
            image = tf.image.stateless_random_contrast(
                image, 1 - contrast, 1 + contrast, seeds[3]
            )
        if saturation:
            image = tf.image.stateless_random_saturation(
                image, 1 - saturation, 1 + saturation, seeds[4]
            )
        if hue:
            image = tf.image.stateless_random_hue(image, hue, seeds[5])
        image = tf.clip_by_value(image, 0.0, 1.0) * 255.0
        return normalize(image, self.mean, self.std)

    def evaluate(self, image: tf.Tensor) -> tf.Tensor:
        image = tf.image.decode_jpeg(image, channels=3)
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        scale = self.resize_size / tf.reduce_min(shape)
        new_shape = tf.cast(tf.math.ceil(shape * scale - 1e-3), tf.int32)
        image = tf.image.resize(image, new_shape)
        top = (new_shape[0] - self.image_size) // 2
        left = (new_shape[1] - self.image_size) // 2
        image = tf.image.crop_to_bounding_box(image, top, left, self.image_size, self.image_size)
        return normalize(image, self.mean, self.std)


def default_padding(image_size: int) -> int:
    """CIFAR's 4 pixels at 32 scaled to other resolutions (1/8 of the side, at least 1)."""
    return max(1, int(math.floor(image_size / 8)))
