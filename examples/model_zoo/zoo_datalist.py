"""Write a datalist for a Model Zoo BraTS bundle's own ``train.json`` from a robustseg datalist.

The Model Zoo's ``brats_mri_segmentation`` reads ``training``, ``validation`` and ``testing`` lists whose images are in
its channel order (T1c, T1, T2, FLAIR); robustseg's datalists list ``t1, t1ce, t2, flair`` and have no validation
list. ``robustseg attack`` reorders the channels itself, so this is only needed to *train* such a bundle here, with
``train_float_labels.json`` beside it as an overlay: MONAI 1.6's ``DiceLoss(squared_pred=True)`` fails on the boolean
labels that ``ConvertToMultiChannelBasedOnBratsClassesd`` gives, so the overlay casts them to float32.

Usage::

    python examples/model_zoo/zoo_datalist.py runs/demo/data/synthetic-64/datalist.json zoo_datalist.json \
        [--order t1ce,t1,t2,flair] [--validation 4]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MODALITIES = ("t1", "t1ce", "t2", "flair")


def zoo_datalist(source: Path, out: Path, order: list[str], validation: int) -> dict:
    """The zoo-form datalist: absolute paths, images in ``order``, the last ``validation`` training subjects moved
    to a ``validation`` list."""
    if sorted(order) != sorted(MODALITIES):
        raise SystemExit(f"--order {order}: expected each of {list(MODALITIES)} once")
    data = json.loads(source.read_text())
    index = [MODALITIES.index(m) for m in order]

    def entry(e: dict) -> dict:
        images = [str((source.parent / p).resolve()) for p in e["image"]]
        return {"image": [images[i] for i in index], "label": str((source.parent / e["label"]).resolve())}

    training = [entry(e) for e in data["training"]]
    if not 0 < validation < len(training):
        raise SystemExit(f"--validation {validation}: expected 1 .. {len(training) - 1}")
    result = {"training": training[:-validation], "validation": training[-validation:],
              "testing": [entry(e) for e in data["testing"]]}  # fmt: skip
    out.write_text(json.dumps(result, indent=1) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a robustseg datalist.json")
    parser.add_argument("out", type=Path, help="the datalist to write")
    parser.add_argument("--order", default="t1ce,t1,t2,flair", help="the bundle's input channel order")
    parser.add_argument("--validation", type=int, default=4, help="training subjects moved to 'validation'")
    args = parser.parse_args()
    result = zoo_datalist(args.source, args.out, args.order.split(","), args.validation)
    print(f"wrote {args.out}: " + ", ".join(f"{len(v)} {k}" for k, v in result.items()))


if __name__ == "__main__":
    main()
