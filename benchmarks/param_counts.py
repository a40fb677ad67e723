"""Parameter counts (and ImageNet multiply-adds) of the published genotypes at paper size.

    python benchmarks/param_counts.py [--genotypes=DARTS_V1,DARTS_V2,PC_DARTS] [--madds]

Counted as the papers count: trainable parameters, BN moving statistics and the auxiliary
head excluded (the count with the head is printed too). CIFAR-10: C=36, 20 layers, 10
classes; ImageNet mobile: C=48, 14 layers, 1000 classes. The papers report DARTS_V2 at 3.3M
(CIFAR) and 4.7M / 574M mult-adds (ImageNet), PC_DARTS at 3.6M (CIFAR). No image is run: the
networks create their weights from channel counts; `--madds` traces the ImageNet network once
at 224x224 (a second or two each). One JSON line per network.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags

import il_tf  # pylint: disable=unused-import,g-bad-import-order  # quiet TensorFlow import

from il_tf.models import network

_GENOTYPES = flags.DEFINE_list("genotypes", ["DARTS_V1", "DARTS_V2", "PC_DARTS"],
                               "Published genotype names or genotype.json paths.")
_MADDS = flags.DEFINE_boolean("madds", True, "Also count ImageNet multiply-adds at 224x224.")

# (dataset, class, channels, layers, num_classes, image shape)
_SETTINGS = (
    ("cifar10", network.NetworkCIFAR, 36, 20, 10, (32, 32, 3)),
    ("imagenet", network.NetworkImageNet, 48, 14, 1000, (224, 224, 3)),
)


def main(argv):
    del argv
    for name in _GENOTYPES.value:
        for dataset, cls, channels, layers, classes, image_shape in _SETTINGS:
            start = time.perf_counter()
            model = cls(name, channels=channels, layers=layers, num_classes=classes,
                        auxiliary=True)
            row = {
                "genotype": name, "dataset": dataset, "channels": channels, "layers": layers,
                "num_classes": classes,
                "params": network.count_parameters(model),
                "params_with_auxiliary": network.count_parameters(model, exclude_auxiliary=False),
                "build_seconds": round(time.perf_counter() - start, 2),
            }
            row["params_M"] = round(row["params"] / 1e6, 3)
            if _MADDS.value and dataset == "imagenet":
                row["multiply_adds_M"] = round(
                    network.count_multiply_adds(model, image_shape) / 1e6, 1)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    app.run(main)
