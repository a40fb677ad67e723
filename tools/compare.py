"""Compares search runs side by side: a Markdown table and a plot of the validation curves.

    python tools/compare.py --model_dir=runs/abl_interleaved --model_dir=runs/abl_blocked \\
        --model_dir=runs/abl_multitask --model_dir=runs/abl_single --out=compare

Reads each run's metrics.jsonl and genotype.json; writes --out/compare.md (printed too) and
--out/val_curves.png. Columns: epochs run, the last epoch's summed validation loss, each
learner's validation accuracy, search time (the epochs' `seconds` summed), the genotype's
edges that differ from the first run's (an edge = cell, node, input node and op; a node's two
inputs are unordered, their order in genotype.json is by weight), and the genotype's op
histogram (normal + reduce cells).
"""
import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # pylint: disable=g-import-not-at-top,wrong-import-position

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from il_tf.errors import OneLineError  # pylint: disable=g-import-not-at-top,wrong-import-position
from il_tf.runs import metrics as run_metrics  # pylint: disable=g-import-not-at-top,wrong-import-position
from il_tf.search_space import genotypes  # pylint: disable=g-import-not-at-top,wrong-import-position

flags.DEFINE_multi_string("model_dir", None, "A search run directory (repeat; the first is "
                          "the reference for genotype differences).")
flags.DEFINE_string("out", "compare", "Output directory for compare.md and val_curves.png.")
flags.mark_flag_as_required("model_dir")
FLAGS = flags.FLAGS


class RunReadError(OneLineError, ValueError):
    """A run directory whose metrics.jsonl or genotype.json is missing or unreadable."""


def read_run(model_dir):
    """(name, epoch records, Genotype) of one run directory."""
    path = os.path.join(model_dir, "metrics.jsonl")
    records = run_metrics.read_metrics(model_dir, required=True)
    epochs = [r for r in records if r.get("epoch", 0) > 0 and "val_loss" in r]
    if not epochs:
        raise RunReadError(f"{path} has no finished epoch yet; let the search run an epoch.")
    genotype_path = os.path.join(model_dir, "genotype.json")
    if not os.path.isfile(genotype_path):
        raise RunReadError(f"{genotype_path} not found; the search has not finished an epoch.")
    genotype = genotypes.Genotype.load(genotype_path)
    return os.path.basename(os.path.normpath(model_dir)), records, genotype


def edges(genotype):
    """The genotype's edges, {(cell, node, input node, op): count}."""
    return collections.Counter(
        (cell, position // 2 + 2, j, op)
        for cell in ("normal", "reduce")
        for position, (op, j) in enumerate(getattr(genotype, cell)))


def table(runs):
    """The Markdown table of `runs` [(name, records, genotype)]."""
    learners = runs[0][1][-1].get("learners") or []
    lines = ["| run | epochs | final val loss (sum) | val acc (" + ", ".join(learners)
             + ") | search time (s) | edges differing from " + runs[0][0]
             + " | op histogram |",
             "|---|---|---|---|---|---|---|"]
    reference = edges(runs[0][2])
    for index, (name, records, genotype) in enumerate(runs):
        last = [r for r in records if r.get("epoch", 0) > 0][-1]
        summed = last.get("val_loss_sum", sum(last["val_loss"]))
        seconds = sum(r.get("seconds", 0.0) for r in records)
        mine = edges(genotype)
        differ = "-" if index == 0 else str(max(sum((reference - mine).values()),
                                                sum((mine - reference).values())))
        counts = collections.Counter(op for _, _, _, op in mine.elements())
        histogram = ", ".join(f"{op} {n}" for op, n in sorted(counts.items(),
                                                             key=lambda kv: (-kv[1], kv[0])))
        accs = ", ".join(f"{a:.3f}" for a in last["val_acc"])
        lines.append(f"| {name} | {last['epoch']} | {summed:.4f} | {accs} | {seconds:.1f} | "
                     f"{differ} | {histogram} |")
    return "\n".join(lines) + "\n"


def plot(runs, path):
    """Summed validation loss and each learner's validation accuracy per epoch."""
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for name, records, _ in runs:
        epochs = [r["epoch"] for r in records]
        line, = ax_loss.plot(epochs, [sum(r["val_loss"]) for r in records], marker="o",
                             label=name)
        for k, learner in enumerate(records[-1].get("learners") or []):
            ax_acc.plot(epochs, [r["val_acc"][k] for r in records], marker="o",
                        linestyle=("-", "--", ":", "-.")[k % 4], color=line.get_color(),
                        label=f"{name} / {learner}")
    ax_loss.set(xlabel="epoch", ylabel="summed validation loss", title="validation loss")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy", title="per-learner accuracy")
    ax_loss.legend(fontsize=8)
    ax_acc.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv):
    del argv
    runs = [read_run(d) for d in FLAGS.model_dir]
    os.makedirs(FLAGS.out, exist_ok=True)
    text = table(runs)
    with open(os.path.join(FLAGS.out, "compare.md"), "w") as f:
        f.write(text)
    plot(runs, os.path.join(FLAGS.out, "val_curves.png"))
    print(text, end="")
    print(f"wrote {os.path.join(FLAGS.out, 'compare.md')} and "
          f"{os.path.join(FLAGS.out, 'val_curves.png')}")


if __name__ == "__main__":
    _common.run(main)
