"""The serving module: a retrained network with its evaluation preprocessing in the graph.

An explicit `tf.Module` with named signatures (tensorflow/models `official/core/export_base.py`
style), so a client sends images as it has them and needs neither il_tf nor the dataset's
statistics:

- `serving_default(images)`: `uint8 [batch, height, width, 3]`, any batch and image size;
- `serving_bytes(image_bytes)`: `string [batch]` of encoded JPEG / PNG / GIF / BMP images
  (TF Serving's REST API takes them as `{"b64": ...}`), decoded to RGB one by one.

Both resize or crop to the network's input size as the task's evaluation does (CIFAR-style
tasks: resize to the task resolution only if the images differ from it, as the input
pipeline's `prepare`; ImageNet: shorter side to `resize_size`, centre crop), normalise with
the task's mean and std, and run the network in inference mode (no drop path, no auxiliary
head). Outputs: `probabilities` `float32 [batch, num_classes]`, the top-k `classes`
(`int32 [batch, k]`), their `scores` (`float32 [batch, k]`) and, when the dataset names its
classes, `class_names` (`string [batch, k]`).
"""
from typing import Dict, Optional, Sequence

import keras
import tensorflow as tf

from il_tf.data import preprocessing as prep

IMAGES_SIGNATURE = "serving_default"
BYTES_SIGNATURE = "serving_bytes"
IMAGES_INPUT = "images"
BYTES_INPUT = "image_bytes"
DEFAULT_TOP_K = 5


def evaluation_transform(preprocessing, images: tf.Tensor) -> tf.Tensor:
    """A task's evaluation transform on a batch of decoded images.

    Args:
      preprocessing: the task's `preprocessing.CropFlip` or `preprocessing.InceptionCrop`
        with its mean and std resolved (`task.preprocessing`).
      images: `uint8 [batch, height, width, 3]` RGB images of any size (one size per batch).

    Returns:
      `float32 [batch, size, size, 3]`: what the network sees in the task's evaluation.
    """
    images = tf.convert_to_tensor(images)
    if isinstance(preprocessing, prep.InceptionCrop):
        return _centre_crop(preprocessing, images)
    if isinstance(preprocessing, prep.CropFlip):
        return preprocessing.evaluate(_resize_like_prepare(images, preprocessing.image_size))
    raise TypeError(f"no serving transform for preprocessing {type(preprocessing).__name__}.")


def _resize_like_prepare(images: tf.Tensor, size: int) -> tf.Tensor:
    """`CropFlip.prepare`'s resize (antialiased, rounded back to uint8), batched; skipped for
    images already at the task resolution, as the input pipeline skips it."""

    def resize():
        resized = tf.image.resize(images, (size, size), antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)

    same = tf.reduce_all(tf.equal(tf.shape(images)[1:3], size))
    images = tf.cond(same, lambda: images, resize)
    return tf.ensure_shape(images, [None, size, size, 3])


def _centre_crop(preprocessing: prep.InceptionCrop, images: tf.Tensor) -> tf.Tensor:
    """`InceptionCrop.evaluate` after its JPEG decode, batched: the shorter side resized to
    `resize_size` (bilinear, in float), the centre `image_size` square, normalised."""
    size = preprocessing.image_size
    shape = tf.cast(tf.shape(images)[1:3], tf.float32)
    scale = preprocessing.resize_size / tf.reduce_min(shape)
    new_shape = tf.cast(tf.math.ceil(shape * scale - 1e-3), tf.int32)
    images = tf.image.resize(images, new_shape)
    top = (new_shape[0] - size) // 2
    left = (new_shape[1] - size) // 2
    images = tf.image.crop_to_bounding_box(images, top, left, size, size)
    images = tf.ensure_shape(images, [None, size, size, 3])
    return prep.normalize(images, preprocessing.mean, preprocessing.std)


class ServingModule(tf.Module):
    """A network and its evaluation preprocessing, with the two serving signatures.

    Args:
      model: a restored `NetworkCIFAR` / `NetworkImageNet` (any Keras model whose
        `call(images, training=False)` returns logits).
      preprocessing: the task's preprocessing with mean/std resolved (`task.preprocessing`).
      class_names: one name per class, or None (then there is no `class_names` output).
      top_k: classes per image in `classes` / `scores` / `class_names`; capped at the number
        of classes.

    Only the variables of the inference path are tracked, so the auxiliary head (a training
    device) is not part of the SavedModel.
    """

    def __init__(self, model: keras.Model, preprocessing, *,
                 class_names: Optional[Sequence[str]] = None, top_k: int = DEFAULT_TOP_K,
                 name: str = "il_tf_serving"):
        super().__init__(name=name)
        num_classes = int(model.num_classes)
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}.")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes.")
        self.top_k = min(int(top_k), num_classes)
        self.num_classes = num_classes
        self.image_shape = tuple(preprocessing.image_shape)
        self._preprocessing = preprocessing
        # Held in a closure, not as an attribute: tracking the Keras model would save every
        # one of its weights, the auxiliary head's included.
        self._logits = lambda x: model(x, training=False)
        auxiliary = getattr(model, "auxiliary_head", None) if getattr(model, "auxiliary",
                                                                      False) else None
        skip = {id(v) for v in auxiliary.variables} if auxiliary is not None else set()
        # Keras 3 variables wrap tf.Variables; the traced functions capture the latter.
        self.model_variables = [getattr(v, "value", v) for v in model.variables
                                if id(v) not in skip]
        self._class_names = None if class_names is None else tf.constant(
            [str(n) for n in class_names], tf.string)

    @property
    def preprocessing(self):
        """The task's preprocessing the serving functions apply to raw images."""
        return self._preprocessing

    @property
    def has_class_names(self) -> bool:
        return self._class_names is not None

    def _outputs(self, inputs: tf.Tensor) -> Dict[str, tf.Tensor]:
        # An empty batch answers with empty outputs (the network's grouped convolutions
        # reject a batch of 0).
        logits = tf.cond(tf.shape(inputs)[0] > 0,
                         lambda: tf.cast(self._logits(inputs), tf.float32),
                         lambda: tf.zeros([0, self.num_classes], tf.float32))
        probabilities = tf.nn.softmax(logits, axis=-1)
        scores, classes = tf.math.top_k(probabilities, k=self.top_k)
        outputs = {"probabilities": probabilities, "classes": classes, "scores": scores}
        if self._class_names is not None:
            outputs["class_names"] = tf.gather(self._class_names, classes)
        return outputs

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8,
                                                name=IMAGES_INPUT)])
    def serve_images(self, images):
        """`uint8 [batch, height, width, 3]` RGB images -> the output dict."""
        return self._outputs(evaluation_transform(self._preprocessing, images))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)])
    def serve_bytes(self, image_bytes):
        """`string [batch]` encoded images (JPEG, PNG, GIF, BMP) -> the output dict."""

        def one(encoded):
            image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
            return evaluation_transform(self._preprocessing, image[None])[0]

        inputs = tf.map_fn(one, image_bytes,
                           fn_output_signature=tf.TensorSpec(self.image_shape, tf.float32))
        return self._outputs(inputs)

    def signatures(self) -> Dict[str, tf.types.experimental.ConcreteFunction]:
        """The signatures to save, by name."""
        return {IMAGES_SIGNATURE: self.serve_images.get_concrete_function(),
                BYTES_SIGNATURE: self.serve_bytes.get_concrete_function()}
