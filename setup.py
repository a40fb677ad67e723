"""il_tf: differentiable architecture search with interleaving learning, in Keras/TensorFlow."""
import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent
_VERSION = {}
exec((_HERE / "il_tf" / "version.py").read_text(), _VERSION)

setuptools.setup(
    name="il_tf",
    version=_VERSION["__version__"],
    description=(
        "Differentiable neural architecture search with interleaving learning "
        "(Ban & Xie, arXiv:2103.07018) in Keras 3 / TensorFlow 2."
    ),
    long_description=(_HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=setuptools.find_packages(include=["il_tf", "il_tf.*"]),
    # The offline dataset's images (il_tf/data/digits.py).
    package_data={"il_tf.data": ["digits.npz"]},
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.21,<2.24",
        # ml_dtypes 0.7.0's extension module takes about a second to load (0.6.0: 10 ms), in
        # every process that imports TensorFlow; TensorFlow itself accepts >=0.5.1,<1.
        "ml_dtypes>=0.5.1,<0.7",
        "keras>=3.10,<4",
        "tensorflow-datasets>=4.9.9,<5",
        "absl-py>=2.1",
        "tensorboard>=2.20",
        # tfds imports it for downloads without declaring it.
        "importlib_resources",
        "gin-config>=0.5",
        # Cell diagrams, softmax(alpha) images and comparison plots.
        "matplotlib>=3.8",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-timeout>=2.3", "pytest-xdist>=3.5"],
        "cuda": ["tensorflow[and-cuda]>=2.21,<2.24"],
    },
)
