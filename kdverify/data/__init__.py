"""Datasets as whole uint8 tensors on the device; batches are normalised and augmented there.

Why: per-sample Python (a PIL image per `__getitem__`, a DataLoader worker per core) costs more
than the MLP itself on CPU. A split is one resident uint8 tensor, a batch is one index, and
augmentation is one gather over the batch (the airbench pattern).

Layouts read (the same ones torchvision downloads, so a torchvision folder works unchanged):
  <root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
  <root>/cifar-10-batches-py/{data_batch_1..5,test_batch}         (original CIFAR-10, preferred)
  <root>/cifar10-jpeg/cifar10-jpeg-q75.tar.gz                     (lossy JPEG stand-in)

Other datasets plug in by name: `register_dataset("name", loader)` with `loader(root) -> Dataset`
(`Dataset.from_tensors` builds one from plain tensors). Failures are one line: `DataMissing` when
files are not there (claims skip), `DataCorrupt` when they are there but truncated, modified or
undecodable (always an error). The decoded JPEG cache is a copy: if it does not read back whole,
it is rebuilt, never trusted and never fatal.
"""

from kdverify.data.augment import (
                                   AUGMENTATIONS,
                                   Augmentation,
                                   augment,
                                   get_augmentation,
                                   iterate_batches,
                                   normalize,
                                   random_raw_inputs,
                                   translate,
)
from kdverify.data.catalog import DATASET_SHAPES, LOADERS, Loader, load_dataset, register_dataset
from kdverify.data.cifar import CIFAR_CLASSES, CIFAR_IMAGE_SHAPE, CIFAR_NORM, load_cifar10
from kdverify.data.mnist import MNIST_CLASSES, MNIST_IMAGE_SHAPE, MNIST_NORM, load_mnist
from kdverify.data.splits import Dataset, Split, is_tabular
from kdverify.data.subsets import balanced_subset, filter_classes, split_holdout

__all__ = ["AUGMENTATIONS", "Augmentation", "augment", "get_augmentation", "iterate_batches", "normalize",
           "random_raw_inputs", "translate", "DATASET_SHAPES", "LOADERS", "Loader", "load_dataset", "register_dataset",
           "CIFAR_CLASSES", "CIFAR_IMAGE_SHAPE", "CIFAR_NORM", "load_cifar10", "MNIST_CLASSES", "MNIST_IMAGE_SHAPE",
           "MNIST_NORM", "load_mnist", "Dataset", "Split", "is_tabular", "balanced_subset", "filter_classes",
           "split_holdout"]
