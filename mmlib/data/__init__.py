"""Reading the data: CIFAR-10/100 or digits, LDAM-DRW's imbalanced subsets, one setting in one file, and the
on-device pipeline that augments a batch at a time. ``load_dataset`` (mmlib.data.sources) is where a run starts."""

from mmlib.data.sources import load_dataset

__all__ = ["load_dataset"]
