"""Data: CIFAR-10 (read straight from its python pickles), any ImageFolder data set, and synthetic data.

Two ways to feed small image sets such as CIFAR-10:

- ``loader="tensor"`` (fast path): the whole set lives as one uint8 tensor on the training device;
  random crop (padding 4) and horizontal flip are done for a whole batch at once on that device, then
  the batch is normalised. No worker processes, no per-image Python.
- ``loader="torchvision"``: a ``Dataset`` with torchvision transforms and a ``DataLoader`` with workers,
  as the original reproduction did. ImageFolder data sets always use this path.

Both give the same augmentation distribution. Shuffling and augmentation draw from a generator seeded
with ``seed + epoch`` (call ``set_epoch``), so a resumed run sees the same batches as an uninterrupted one.

Under data-parallel training (``rank``, ``world_size``: :mod:`general_functions.distributed`)
``batch_size`` is the global batch: every process draws the same global order and keeps its own
contiguous share of each global batch, so the shares of step i together are step i of one process.
On the tensor path the augmentation is drawn for the global batch too, so the images are the same.
"""

from __future__ import annotations

import functools
import logging
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "EXACT_MASK_FILE",
    "ORIGINAL_CIFAR10_STD",
    "DataError",
    "EpochLoader",
    "ImageSet",
    "TensorImages",
    "load_cifar10",
    "load_dataset",
    "make_fake_data",
    "make_loader",
    "split_train",
]

logger = logging.getLogger(__name__)
# Optional in a CIFAR-10 folder: a mask over the 10,000 test images, 1 where the pixels are exact (a copy
# rebuilt from public sources, as on this project's machine, has the others through JPEG); each training
# epoch then also reports the accuracy on the exact ones ("exact-pixel").
EXACT_MASK_FILE = "test_pixel_exact_mask.npy"

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# The std the original reproduction (and many CIFAR-10 repositories) normalise with; it is not the
# data set's per-channel std, so inputs come out about 1.2x wider than unit variance.
ORIGINAL_CIFAR10_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
_CIFAR_CLASSES = 10


class DataError(RuntimeError):
    """A data folder that is missing or does not hold what it should."""


@dataclass
class TensorImages:
    """Images as one uint8 tensor ``[N, 3, H, W]`` with int64 labels ``[N]``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> TensorImages:
        return TensorImages(self.images[indices], self.labels[indices])


@dataclass
class ImageSet:
    """What :func:`load_dataset` returns: train and test parts and what describes them."""

    train: TensorImages | Dataset
    test: TensorImages | Dataset
    num_classes: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    test_exact: TensorImages | None = None  # the test images whose pixels are exact (local copy)


# ----------------------------------------------------------------------------------- loading
class _BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR-10 batch: dicts, lists, strings, numbers and numpy arrays, nothing else.

    A pickle names every class or function it needs (``find_class``); here only what numpy needs to
    rebuild an array is allowed, so a file that names anything else (``os.system`` in a
    ``__reduce__``) is refused before any of it runs.
    """

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),  # written by numpy 1.x (the official files)
        ("numpy._core.multiarray", "_reconstruct"),  # written by numpy 2.x
        ("numpy.core.numeric", "_frombuffer"),  # pickle protocol 5
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # bytes in a protocol-2 pickle written by Python 3
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"it names {module}.{name}, which a data file has no use for; "
                "refusing to load it (nothing in it was run)"
            )
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = module.replace("numpy.core.", "numpy._core.")  # numpy 2: the old name warns
        return super().find_class(module, name)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="latin1").load()
        if not isinstance(batch, dict):
            raise ValueError(f"it holds a {type(batch).__name__}, not a dict")
        data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except (
        OSError,
        pickle.UnpicklingError,
        KeyError,
        ValueError,
        TypeError,
        EOFError,
        OverflowError,  # a label beyond int64
    ) as err:
        raise DataError(f"CIFAR-10 file {path} is unreadable or malformed: {err}") from None
    if len(data) != len(labels):
        raise DataError(f"CIFAR-10 file {path}: {len(data)} images but {len(labels)} labels")
    outside = np.flatnonzero((labels < 0) | (labels >= _CIFAR_CLASSES))
    if len(outside):  # caught here, not as a crash mid-epoch (or -100 silently ignored by the loss)
        i = int(outside[0])
        raise DataError(
            f"CIFAR-10 file {path}: label {labels[i]} (image {i}) is outside 0-{_CIFAR_CLASSES - 1}"
            f" ({len(outside)} such labels)"
        )
    return data, labels


def load_cifar10(data_dir: str | Path, download: bool = False) -> ImageSet:
    """Read CIFAR-10 from ``data_dir/cifar-10-batches-py``.

    A local copy is read as it is (no network, no checksum). When the folder is absent and ``download``
    is set, torchvision downloads it and verifies its checksums first.
    """
    root = Path(data_dir)
    folder = root / _CIFAR_FOLDER
    if not folder.is_dir():
        if not download:
            raise DataError(
                f"no CIFAR-10 at {folder}: point --data_dir at the folder that holds "
                f"{_CIFAR_FOLDER}/, or allow the download (--download True)"
            )
        import torchvision

        logger.info("downloading CIFAR-10 into %s (checksums are verified)", root)
        try:
            torchvision.datasets.CIFAR10(str(root), train=True, download=True)
        except (OSError, RuntimeError) as err:  # no network, a refused URL, a checksum mismatch
            raise DataError(
                f"could not download CIFAR-10 into {root}: {err}; point --data_dir at a local copy"
            ) from None
    missing = [name for name in _CIFAR_FILES if not (folder / name).is_file()]
    if missing:
        raise DataError(f"CIFAR-10 folder {folder} is missing {', '.join(missing)}")
    parts = [_read_batch(folder / name) for name in _CIFAR_FILES]
    train_x = np.concatenate([p[0] for p in parts[:5]])
    train_y = np.concatenate([p[1] for p in parts[:5]])
    test_x, test_y = parts[5]
    train = TensorImages(torch.from_numpy(train_x), torch.from_numpy(train_y))
    test = TensorImages(torch.from_numpy(test_x), torch.from_numpy(test_y))
    exact = None
    mask_path = root / EXACT_MASK_FILE
    if mask_path.is_file():
        mask = torch.from_numpy(np.load(mask_path).astype(bool))
        if mask.shape != (len(test),):
            raise DataError(f"{mask_path} has shape {tuple(mask.shape)}, expected ({len(test)},)")
        exact = test.subset(mask.nonzero().squeeze(1))
    return ImageSet(train, test, _CIFAR_CLASSES, 32, CIFAR10_MEAN, CIFAR10_STD, exact)


def make_fake_data(
    n_train: int = 512, n_test: int = 256, num_classes: int = 10, size: int = 32, seed: int = 0
) -> ImageSet:
    """A small learnable synthetic set: each class is a fixed random colour pattern plus noise."""
    gen = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(num_classes, 3, size, size, generator=gen) * 255

    def draw(n: int) -> TensorImages:
        labels = torch.randint(num_classes, (n,), generator=gen)
        noise = torch.randn(n, 3, size, size, generator=gen) * 40
        images = (prototypes[labels] + noise).clamp(0, 255).to(torch.uint8)
        return TensorImages(images, labels)

    return ImageSet(draw(n_train), draw(n_test), num_classes, size, CIFAR10_MEAN, CIFAR10_STD)


def load_imagefolder(data_dir: str | Path, input_size: int = 224) -> ImageSet:
    """An ImageFolder data set with ``train/`` and ``val/`` (or ``test/``) class sub-folders."""
    import torchvision
    from torchvision.transforms import v2

    root = Path(data_dir)
    train_dir = root / "train"
    test_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DataError(
            f"ImageFolder data set {root} must hold train/ and val/ (or test/) folders with one "
            "sub-folder per class"
        )
    norm = v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    to_tensor = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    train_tf = v2.Compose(
        [v2.RandomResizedCrop(input_size), v2.RandomHorizontalFlip(), *to_tensor, norm]
    )
    test_tf = v2.Compose(
        [v2.Resize(int(input_size * 256 / 224)), v2.CenterCrop(input_size), *to_tensor, norm]
    )
    try:
        train = torchvision.datasets.ImageFolder(str(train_dir), transform=train_tf)
        test = torchvision.datasets.ImageFolder(str(test_dir), transform=test_tf)
    except (FileNotFoundError, RuntimeError) as err:
        raise DataError(f"ImageFolder data set {root}: {err}") from None
    if train.classes != test.classes:
        raise DataError(f"{train_dir} and {test_dir} hold different class folders")
    return ImageSet(train, test, len(train.classes), input_size, IMAGENET_MEAN, IMAGENET_STD)


def load_dataset(
    dataset: str,
    data_dir: str | Path = "./cifar10_data",
    download: bool = False,
    input_size: int = 224,
    fake_sizes: tuple[int, int] = (512, 256),
    seed: int = 0,
) -> ImageSet:
    """``dataset`` is ``cifar10``, ``imagefolder`` or ``fake`` (synthetic, 32x32, for tests)."""
    if dataset == "cifar10":
        return load_cifar10(data_dir, download)
    if dataset == "imagefolder":
        return load_imagefolder(data_dir, input_size)
    if dataset == "fake":
        return make_fake_data(*fake_sizes, seed=seed)
    raise ValueError(f"unknown dataset {dataset!r}; use cifar10, imagefolder or fake")


def split_train(
    data: TensorImages | Dataset, fraction: float = 0.8, seed: int = 0, limit: int = 0
) -> tuple:
    """Split a training set into a weights part (``fraction``) and a thetas part (the rest).

    ``limit`` > 0 first keeps a random subset of that many images (for reduced-budget runs).
    """
    n = len(data)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    if limit:
        perm = perm[: min(limit, n)]
    cut = int(round(len(perm) * fraction))
    parts = perm[:cut], perm[cut:]
    if isinstance(data, TensorImages):
        return tuple(data.subset(p) for p in parts)
    return tuple(torch.utils.data.Subset(data, p.tolist()) for p in parts)


# ----------------------------------------------------------------------------------- loaders
class EpochLoader:
    """An iterable of ``(images, labels)`` batches whose randomness depends on ``seed + epoch`` only."""

    def __init__(self, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.seed = seed
        self.epoch = 0
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _generator(self, device: torch.device | str = "cpu") -> torch.Generator:
        return torch.Generator(device=device).manual_seed(self.seed * 100003 + self.epoch)


def _check_shard(batch_size: int, train: bool, rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    if train and world_size > 1 and batch_size % world_size:
        raise ValueError(
            f"the global batch size {batch_size} must be divisible by the number of processes "
            f"{world_size}, so every process trains on an equal share (DDP averages the shares)"
        )


def _global_batches(n: int, batch_size: int, train: bool, world_size: int, drop_last: bool):
    """``(start, stop)`` of every global batch. Training with several processes trims the last batch
    to a multiple of ``world_size`` (dropping fewer than ``world_size`` images per epoch) so the shares
    stay equal; evaluation keeps every image."""
    bounds = []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        if stop - start < batch_size and drop_last:
            break
        if train and world_size > 1:
            stop = start + (stop - start) // world_size * world_size
        if stop > start:
            bounds.append((start, stop))
    return bounds


def _share(start: int, stop: int, rank: int, world_size: int) -> tuple[int, int]:
    """This rank's contiguous part of the global batch ``[start, stop)``."""
    size = stop - start
    return start + size * rank // world_size, start + size * (rank + 1) // world_size


class _TensorLoader(EpochLoader):
    """The fast path: batched crop, flip and normalisation of uint8 tensors on the device."""

    def __init__(
        self,
        data: TensorImages,
        batch_size: int,
        train: bool,
        device: torch.device,
        mean: tuple,
        std: tuple,
        seed: int,
        channels_last: bool,
        drop_last: bool,
        padding: int = 4,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(seed, rank, world_size)
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.batch_size, self.train, self.device = batch_size, train, device
        self.padding, self.channels_last, self.drop_last = padding, channels_last, drop_last
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255

    def __len__(self) -> int:
        n = len(self.labels)
        if self.world_size > 1:
            return len(self._bounds())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _bounds(self) -> list[tuple[int, int]]:
        n, ws = len(self.labels), self.world_size
        return _global_batches(n, self.batch_size, self.train, ws, self.drop_last)

    def _augment(
        self, x: torch.Tensor, gen: torch.Generator, part: tuple[int, int, int] | None = None
    ) -> torch.Tensor:
        """Crop and flip ``x``. ``part = (global size, lo, hi)``: ``x`` is rows lo:hi of a global
        batch; the random draws are made for the whole global batch and sliced."""
        b, c, h, w = x.shape
        size, lo, hi = part or (b, 0, b)
        p = self.padding
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        off_y = torch.randint(0, 2 * p + 1, (size,), generator=gen, device=x.device)[lo:hi]
        off_x = torch.randint(0, 2 * p + 1, (size,), generator=gen, device=x.device)[lo:hi]
        flip = torch.rand(size, generator=gen, device=x.device)[lo:hi] < 0.5
        # Crop and flip as one gather of flat pixel indices (several times faster than 4-D indexing).
        ar_w = torch.arange(w, device=x.device)
        rows = off_y[:, None] + torch.arange(h, device=x.device)  # [b, h]
        cols = off_x[:, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)  # [b, w]
        idx = (rows[:, :, None] * (w + 2 * p) + cols[:, None, :]).view(b, 1, h * w)
        return padded.flatten(2).gather(2, idx.expand(b, c, h * w)).view(b, c, h, w)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = self._generator(self.device)
        n = len(self.labels)
        order = torch.randperm(n, generator=gen, device=self.device) if self.train else None
        if self.world_size > 1:
            batches = self._bounds()
        else:
            batches = [(i * self.batch_size, (i + 1) * self.batch_size) for i in range(len(self))]
        for start, stop in batches:
            lo, hi = _share(start, stop, self.rank, self.world_size)
            if self.world_size > 1 and hi == lo:  # an evaluation tail smaller than world_size
                continue
            sel = order[lo:hi] if order is not None else slice(lo, hi)
            x, y = self.images[sel], self.labels[sel]
            if self.train:
                size = min(stop, n) - start
                x = self._augment(x, gen, (size, lo - start, hi - start))
            x = x.float().sub_(self.mean).div_(self.std)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y


class _TensorDataset(Dataset):
    """uint8 tensors seen as a torchvision ``Dataset`` (the reference path)."""

    def __init__(self, data: TensorImages, transform) -> None:
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.transform(self.data.images[i]), int(self.data.labels[i])


class _ShardedBatchSampler:
    """This rank's share of the global batches ``BatchSampler(RandomSampler(...))`` would give.

    The permutation is drawn from the loader's generator as ``RandomSampler`` draws it, so every rank
    sees the global order of a one-process run and keeps its contiguous share of each batch.
    """

    def __init__(self, n, batch_size, shuffle, generator, rank, world_size, drop_last, train):
        self.n, self.shuffle, self.generator = n, shuffle, generator
        self.rank, self.world_size = rank, world_size
        self.bounds = _global_batches(n, batch_size, train, world_size, drop_last)

    def __len__(self) -> int:
        return len(self.bounds)

    def __iter__(self):
        order = (
            torch.randperm(self.n, generator=self.generator).tolist()
            if self.shuffle
            else list(range(self.n))
        )
        for start, stop in self.bounds:
            lo, hi = _share(start, stop, self.rank, self.world_size)
            if hi > lo:
                yield order[lo:hi]


def _offset_worker_seed(rank: int, worker_id: int) -> None:
    """Give each rank's workers their own augmentation stream (the base seed is shared by ranks)."""
    import random

    seed = (torch.initial_seed() + 1_000_003 * rank) % 2**63
    torch.manual_seed(seed)
    random.seed(seed)


class _DataLoaderLoader(EpochLoader):
    """torchvision transforms in a ``DataLoader``; batches are moved to the device."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size,
        train,
        device,
        seed,
        channels_last,
        workers,
        drop_last,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(seed, rank, world_size)
        self.device, self.channels_last = device, channels_last
        self.gen = torch.Generator()
        common = {
            "num_workers": workers,
            "generator": self.gen,
            "pin_memory": device.type == "cuda",
            "persistent_workers": False,
        }
        if world_size > 1:
            sampler = _ShardedBatchSampler(
                len(dataset), batch_size, train, self.gen, rank, world_size, drop_last, train
            )
            worker_init = functools.partial(_offset_worker_seed, rank)
            self.loader = DataLoader(
                dataset, batch_sampler=sampler, worker_init_fn=worker_init, **common
            )
        else:
            self.loader = DataLoader(
                dataset, batch_size=batch_size, shuffle=train, drop_last=drop_last, **common
            )

    def __len__(self) -> int:
        return len(self.loader)

    def _batches(self):
        """Workers draw their seeds from ``self.gen``; without workers, seed each batch ourselves."""
        if self.loader.num_workers > 0:
            yield from self.loader
            return
        it = iter(self.loader)
        for i in range(len(self.loader)):
            with torch.random.fork_rng(devices=[]):
                base = (self.seed * 100003 + self.epoch) * 65537 + i
                # the CPU generator only (the transforms run on the CPU): torch.manual_seed would
                # also reseed the GPU's, which fork_rng(devices=[]) does not restore, and so
                # overwrite the stream the model draws its (Gumbel) noise from on CUDA
                torch.default_generator.manual_seed(base * self.world_size + self.rank)
                batch = next(it)
            yield batch

    def __iter__(self):
        self.gen.manual_seed(self.seed * 100003 + self.epoch)
        for x, y in self._batches():
            x = x.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(self.device, non_blocking=True)


def make_loader(
    data: TensorImages | Dataset,
    batch_size: int,
    train: bool,
    device: torch.device | str = "cpu",
    loader: str = "tensor",
    mean: tuple = CIFAR10_MEAN,
    std: tuple = CIFAR10_STD,
    seed: int = 0,
    channels_last: bool = False,
    workers: int = 2,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> EpochLoader:
    """A loader over ``data``; ``train`` turns on shuffling and augmentation (crop+flip).

    ``rank``/``world_size``: this process's share of every global batch of ``batch_size`` images
    (data-parallel training; a training batch must divide evenly among the processes).
    """
    device = torch.device(device)
    _check_shard(batch_size, train, rank, world_size)
    if isinstance(data, TensorImages):
        if loader == "tensor":
            return _TensorLoader(
                data,
                batch_size,
                train,
                device,
                mean,
                std,
                seed,
                channels_last,
                drop_last,
                rank=rank,
                world_size=world_size,
            )
        if loader != "torchvision":
            raise ValueError(f"unknown loader {loader!r}; use tensor or torchvision")
        from torchvision.transforms import v2

        size = data.images.shape[-1]
        steps = [v2.RandomCrop(size, padding=4), v2.RandomHorizontalFlip()] if train else []
        transform = v2.Compose(
            [*steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
        )
        data = _TensorDataset(data, transform)
    return _DataLoaderLoader(
        data, batch_size, train, device, seed, channels_last, workers, drop_last, rank, world_size
    )
