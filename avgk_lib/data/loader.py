"""Batches for training and evaluation.

In-memory datasets (synthetic, Fashion-MNIST, CIFAR-100) live as one tensor on the training
device; each batch is sliced, augmented (random crop with zero padding, horizontal flip) and
normalised there with a few batched tensor ops, so a GPU epoch is not bound by PIL or worker
processes. The order and the augmentation of epoch ``e`` depend only on ``(seed, e)``, which
makes a resumed run replay exactly the batches an uninterrupted run would have seen. Image
folders (Pl@ntNet-300K) use a standard DataLoader with workers and pinned memory.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from .base import DatasetBundle, TensorSplit, derived_seed


def crop_at(images: torch.Tensor, padding: int, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Crop each zero-padded image of ``images`` (N, C, H, W) at its offsets ``(dy, dx)`` (on the
    images' device): the crop of :func:`random_crop_flip` and of the stacked trainer's batches."""
    n, c, h, w = images.shape
    device = images.device
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :]
    batch = torch.arange(n, device=device)[:, None, None, None]
    channels = torch.arange(c, device=device)[None, :, None, None]
    return padded[batch, channels, rows, cols]


def random_crop_flip(
    images: torch.Tensor, padding: int, crop: bool, flip: bool, generator: torch.Generator
) -> torch.Tensor:
    """Per-image random crop (after zero padding) and horizontal flip of a (B, C, H, W) batch."""
    b = images.shape[0]
    device = images.device
    if crop and padding > 0:
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(device)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(device)
        images = crop_at(images, padding, dy, dx)
    if flip:
        mask = (torch.rand(b, generator=generator) < 0.5).to(device)[:, None, None, None]
        images = torch.where(mask, images.flip(3), images)
    return images


class InMemoryLoader:
    """Iterate ``(inputs, labels, indices)`` batches of a :class:`TensorSplit` held on ``device``.

    Args:
        split: the data. bundle: gives normalisation and augmentation. batch_size: per step.
        shuffle / augment: training mode. seed: base seed; epoch ``e`` uses ``(seed, e)``.
        shard: ``(rank, world_size)`` to iterate one shard (distributed training): each rank
            sees every ``world_size``-th sample of the shuffled order (padded to equal length).
        drop_last: drop a final incomplete batch (training).
    """

    def __init__(
        self,
        split: TensorSplit,
        bundle: DatasetBundle,
        batch_size: int,
        device: torch.device,
        *,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        shard: tuple[int, int] = (0, 1),
        drop_last: bool = False,
        channels_last: bool = False,
    ) -> None:
        self.x = split.x.to(device)
        self.y = split.y.to(device)
        self.device = device
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank, self.world = shard
        self.drop_last = drop_last
        self.channels_last = channels_last
        self.epoch = 0
        self.is_image = self.x.dim() == 4
        mode = bundle.augment if augment and self.is_image else None
        self.crop = mode in ("crop_flip", "crop")
        self.flip = mode in ("crop_flip", "flip")
        self.padding = bundle.crop_padding
        if self.is_image and bundle.mean is not None:
            self.mean = torch.tensor(bundle.mean, device=device).view(1, -1, 1, 1)
            self.std = torch.tensor(bundle.std, device=device).view(1, -1, 1, 1)
        else:
            self.mean = self.std = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        n = self.y.shape[0]
        if self.shuffle:
            g = torch.Generator().manual_seed(derived_seed(self.seed * 100_003 + self.epoch))
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        if self.world > 1:
            per_rank = -(-n // self.world)
            if self.shuffle or self.drop_last:
                order = torch.cat([order, order[: per_rank * self.world - n]])
                order = order[self.rank :: self.world]
            else:  # evaluation: contiguous shards, no duplicates
                order = order[self.rank * per_rank : (self.rank + 1) * per_rank]
        return order

    def __len__(self) -> int:
        n = len(self._order())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order = self._order()
        g = torch.Generator().manual_seed(derived_seed(self.seed * 100_003 + self.epoch + 7_919))
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size].to(self.device)
            x = self.x[idx]
            if self.is_image:
                if self.crop or self.flip:
                    x = random_crop_flip(x, self.padding, self.crop, self.flip, g)
                x = x.float().div_(255.0)
                if self.mean is not None:
                    x = (x - self.mean) / self.std
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.y[idx], idx


class _Indexed(Dataset):
    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        x, y = self.dataset[i]
        return x, y, i


class FolderLoader:
    """DataLoader over an image-folder dataset yielding ``(inputs, labels, indices)`` on ``device``."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        device: torch.device,
        *,
        shuffle: bool,
        seed: int,
        workers: int,
        shard: tuple[int, int] = (0, 1),
        drop_last: bool = False,
        channels_last: bool = False,
    ) -> None:
        from torch.utils.data.distributed import DistributedSampler

        self.device = device
        self.channels_last = channels_last
        self.sampler = None
        generator = torch.Generator().manual_seed(derived_seed(seed))
        if shard[1] > 1:
            self.sampler = DistributedSampler(
                dataset, num_replicas=shard[1], rank=shard[0], shuffle=shuffle, seed=seed, drop_last=drop_last
            )
        self.loader = DataLoader(
            _Indexed(dataset),
            batch_size=batch_size,
            shuffle=shuffle and self.sampler is None,
            sampler=self.sampler,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            drop_last=drop_last,
            generator=generator,
            persistent_workers=workers > 0,
        )
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        elif self.loader.generator is not None:
            self.loader.generator.manual_seed(derived_seed(self.seed * 100_003 + epoch))

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        batches = iter(self.loader)
        while True:
            try:
                x, y, idx = next(batches)
            except StopIteration:
                return
            except Exception as err:
                cause = worker_root_cause(err)
                if cause is err:
                    raise
                raise cause from None
            x = x.to(self.device, non_blocking=True)
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(self.device, non_blocking=True), idx.to(self.device)


def worker_root_cause(err: BaseException) -> BaseException:
    """The error a DataLoader worker raised, as one line: torch re-raises it in the main process with
    the worker's whole traceback in the message (``Caught ValueError in DataLoader worker process 0.
    Original Traceback ...``); this keeps the last line, the worker's own message (e.g. ``cannot read
    image <file> (...)``), in an exception of the same type. Other errors are returned unchanged."""
    text = str(err)
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return err
    last = next((line for line in reversed(text.strip().splitlines()) if line.strip()), text)
    name, colon, message = last.partition(": ")
    message = message.strip() if colon and " " not in name.strip() else last.strip()
    try:
        return type(err)(f"{message} (in a DataLoader worker)")
    except Exception:  # an exception type with another constructor
        return RuntimeError(f"{last.strip()} (in a DataLoader worker)")


def make_loader(
    bundle: DatasetBundle,
    split: str,
    batch_size: int,
    device: torch.device,
    *,
    train: bool,
    seed: int = 0,
    shard: tuple[int, int] = (0, 1),
    workers: int = 4,
    channels_last: bool = False,
):
    """The right loader for ``bundle.<split>``: in memory on ``device``, or a worker DataLoader."""
    data = getattr(bundle, split)
    if isinstance(data, TensorSplit):
        return InMemoryLoader(
            data,
            bundle,
            batch_size,
            device,
            shuffle=train,
            augment=train,
            seed=seed,
            shard=shard,
            drop_last=train,
            channels_last=channels_last,
        )
    return FolderLoader(
        data,
        batch_size,
        device,
        shuffle=train,
        seed=seed,
        workers=workers,
        shard=shard,
        drop_last=train,
        channels_last=channels_last,
    )
