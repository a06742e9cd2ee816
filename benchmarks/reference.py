"""The reference input pipeline the benchmarks compare against: LDAM-DRW's released one."""

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

from mmlib.choices import CIFAR_MEAN, CIFAR_STD


class ReferenceDataset(Dataset):
    """The released code's input: a PIL image per sample through torchvision's transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels
        self.transform = transforms.Compose([
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(CIFAR_MEAN, CIFAR_STD),
        ])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])
