"""`sklearn_digits`: a tfds dataset that ships with the install, for offline search and tests.

Why this dataset: the UCI "optical recognition of handwritten digits" images (Alpaydin and
Kaynak, CC BY 4.0; 1,797 grayscale 8x8 images, 10 classes, about 180 per class) are small
enough to ship inside il_tf (`digits.npz` beside this file, 46 KB), so the dataset builds with
no network in about a second, and it is real image data on which architectures differ.
Alternatives considered: MNIST and Fashion-MNIST are too large to ship and their loaders
download; scikit-image's sample images are not a classification set.

The file holds exactly the copy in scikit-learn's wheel (`sklearn.datasets.load_digits`), which
il_tf used to read (hence the dataset's name, kept so that existing data directories stay
valid). It is shipped instead because depending on scikit-learn for 46 KB of data slowed every
il_tf process's start: Keras imports scikit-learn (and with it SciPy) whenever it is installed.

Splits: the file has no official split, so the first 1,500 images are `train` and the last 297
are `test` (contiguous blocks keep writers mostly apart; each class has 146-153 training and
27-33 test images). Pixels (0-16 in the source) are stored as uint8 0-255 (`round(v * 255/16)`,
already so in `digits.npz`).
"""
import os

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

NUM_TRAIN = 1500
DATA_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits.npz")

# Per-channel statistics of the train split in [0, 1] (checked by tests/test_data.py).
MEAN = (0.30515739,) * 3
STD = (0.37486354,) * 3


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
    """The 8x8 handwritten digits that ship with il_tf, as a tfds dataset (no download)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: 1,500 train / 297 test, uint8 8x8x1 images."}

    # Read by il_tf.data.sources: building needs no network, so never probe for one.
    OFFLINE = True

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # tfds 4.9.10's default implementation needs `importlib_resources`, which tfds does not
        # declare as a dependency; the file that defines this class is all it needs to know.
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "id": tfds.features.Text(),
                    "image": tfds.features.Image(shape=(8, 8, 1)),
                    "label": tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80",
            citation=(
                "@misc{optdigits, author={Alpaydin, E. and Kaynak, C.}, title={Optical "
                "Recognition of Handwritten Digits}, year={1998}, publisher={UCI Machine "
                "Learning Repository}, doi={10.24432/C50P49}}"
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # Nothing to download.
        return {
            "train": self._generate_examples(0, NUM_TRAIN),
            "test": self._generate_examples(NUM_TRAIN, None),
        }

    def _generate_examples(self, start, stop):
        with np.load(DATA_FILE) as data:
            images, labels = data["images"][..., None], data["labels"]
        for index in range(start, stop if stop is not None else len(images)):
            key = f"digits_{index:04d}"
            yield key, {"id": key, "image": images[index], "label": int(labels[index])}
