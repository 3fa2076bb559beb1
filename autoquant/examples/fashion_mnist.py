"""A small residual CNN on the real Fashion-MNIST (70,000 28x28 clothing images, 10 classes).

``python -m autoquant.examples.fashion_mnist`` trains it (or reloads it from the local
cache), quantizes it with static int8 on the x86 backend, and prints accuracy on the 10,000
test images, latency at batch 64 and 1, and size, for fp32 and int8 side by side.

The data is the original Zalando Research release (Xiao, Rasul & Vollgraf 2017,
arXiv:1708.07747) as Debian's ``dataset-fashion-mnist`` package installs it: four IDX files
under ``/usr/share/datasets/fashion-mnist/``, gzipped::

    train-images-idx3-ubyte.gz   60000 x 28 x 28 uint8
    train-labels-idx1-ubyte.gz   60000 uint8 in 0..9
    t10k-images-idx3-ubyte.gz    10000 x 28 x 28 uint8
    t10k-labels-idx1-ubyte.gz    10000 uint8 in 0..9

Install it with ``bash scripts/setup_fashion_mnist.sh`` (or point ``AUTOQUANT_FASHION_MNIST``
at any directory with these files, gzipped or not). Nothing is downloaded, and no
torchvision is needed: the IDX format is parsed with numpy.

Labels: 0 T-shirt/top, 1 Trouser, 2 Pullover, 3 Dress, 4 Coat, 5 Sandal, 6 Shirt,
7 Sneaker, 8 Bag, 9 Ankle boot (:data:`CLASSES`).
"""

from __future__ import annotations

import argparse
import gzip
import os
import time
import warnings
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autoquant.examples._cache import cache_dir, cached_training

__all__ = [
    "CLASSES",
    "FashionMNISTNotFoundError",
    "FashionCNN",
    "data_dir",
    "read_idx",
    "load_data",
    "trained_model",
    "accuracy",
    "calibration_batches",
    "eval_fn",
    "example_inputs",
    "train_batches",
    "train_fn",
]

_SEED = 0

#: The class names, indexed by label (the dataset's README).
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

#: Mean and standard deviation of the 60,000 training images' pixels in [0, 1].
MEAN, STD = 0.2860, 0.3530

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_SETUP_HINT = (
    "run `bash scripts/setup_fashion_mnist.sh` (installs Debian's dataset-fashion-mnist), "
    "or set AUTOQUANT_FASHION_MNIST to a directory that holds the four IDX files"
)


class FashionMNISTNotFoundError(FileNotFoundError):
    """The Fashion-MNIST IDX files are not installed where the example looks for them."""


# --------------------------------------------------------------------------- data


def _find(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def data_dir() -> Path:
    """The directory of the IDX files: ``$AUTOQUANT_FASHION_MNIST`` if set, else
    ``/usr/share/datasets/fashion-mnist``. Raises :class:`FashionMNISTNotFoundError`
    (naming the setup script) when any of the four files is missing there."""
    env = os.environ.get("AUTOQUANT_FASHION_MNIST")
    path = Path(env) if env else DEFAULT_DIR
    missing = [name for name in _FILES.values() if _find(path, name) is None]
    if missing:
        source = "AUTOQUANT_FASHION_MNIST" if env else "the default directory"
        raise FashionMNISTNotFoundError(
            f"Fashion-MNIST is not installed: {path} ({source}) lacks "
            f"{', '.join(f'{m}[.gz]' for m in missing)}; {_SETUP_HINT}."
        )
    return path


# IDX type codes (third magic byte) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse one IDX file (gzipped if its name ends in ``.gz``) into a numpy array.

    IDX (LeCun's MNIST format): two zero bytes, a type code, the number of dimensions
    ``d``, then ``d`` big-endian uint32 sizes, then the data in C order.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (magic bytes {raw[:4].hex()}).")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    offset = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise ValueError(
            f"{path}: header says {shape} x {dtype} ({expected} bytes) but the file holds "
            f"{len(raw) - offset} bytes of data."
        )
    return (
        np.frombuffer(raw, dtype=dtype, offset=offset)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


@cache
def _arrays(directory: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for key, name in _FILES.items():
        path = _find(directory, name)
        assert path is not None  # data_dir() checked
        arrays[key] = read_idx(path)
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != (len(x),):
            raise ValueError(f"unexpected Fashion-MNIST {split} shapes {x.shape}, {y.shape}.")
    return arrays


def load_data(n_train: int | None = None, *, normalize: bool = False) -> dict[str, torch.Tensor]:
    """The official split: ``x_train`` [N, 1, 28, 28] float32, ``y_train`` [N] int64 (the
    first ``n_train`` of the 60,000 training images, all by default), ``x_test``
    [10000, 1, 28, 28] and ``y_test`` [10000].

    Pixels are scaled to [0, 1]; with ``normalize=True`` they are standardised with the
    training set's :data:`MEAN` and :data:`STD` instead (the models here are trained on
    the [0, 1] pixels). The training file is in no particular class order, so a prefix is
    close to class-balanced (the first 20,000 hold 1,935-2,068 images per class).
    """
    arrays = _arrays(data_dir())
    n = len(arrays["y_train"]) if n_train is None else n_train
    if not 0 < n <= len(arrays["y_train"]):
        raise ValueError(f"n_train must be in 1..{len(arrays['y_train'])}, but got {n_train!r}.")
    return {
        "x_train": _images(arrays["x_train"][:n], normalize),
        "y_train": _labels(arrays["y_train"][:n]),
        **_test_set(normalize),
    }


def _images(a: np.ndarray, normalize: bool) -> torch.Tensor:
    x = torch.from_numpy(a.astype(np.float32) / 255.0).unsqueeze(1)
    return (x - MEAN) / STD if normalize else x


def _labels(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.astype(np.int64))


def _test_set(normalize: bool = False) -> dict[str, torch.Tensor]:
    arrays = _arrays(data_dir())
    return {"x_test": _images(arrays["x_test"], normalize), "y_test": _labels(arrays["y_test"])}


# --------------------------------------------------------------------------- model


class FashionCNN(nn.Module):
    """Four conv blocks (conv-BN-ReLU), one with a residual add, three max-pools
    (28 -> 14 -> 7 -> 3), and a two-layer Linear head: 107,978 parameters with the
    default widths, about 3.7 M multiply-adds per image.
    """

    def __init__(
        self, widths: tuple[int, int, int] = (16, 32, 64), hidden: int = 128, n_classes: int = 10
    ) -> None:
        super().__init__()
        c1, c2, c3 = widths
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c2)
        self.conv3 = nn.Conv2d(c2, c2, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(c2)
        self.conv4 = nn.Conv2d(c2, c3, 3, padding=1)
        self.bn4 = nn.BatchNorm2d(c3)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(c3 * 3 * 3, hidden)
        self.fc2 = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))  # 14 x 14
        x = torch.relu(self.bn2(self.conv2(x)))
        x = self.pool(x + torch.relu(self.bn3(self.conv3(x))))  # 7 x 7
        x = self.pool(torch.relu(self.bn4(self.conv4(x))))  # 3 x 3
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


def _cache_path(epochs: int, n_train: int | None) -> Path:
    n_name = "all" if n_train is None else str(n_train)
    return cache_dir() / f"fashion_cnn_e{epochs}_n{n_name}_s{_SEED}.safetensors"


def trained_model(
    *, epochs: int = 3, n_train: int | None = None, cache: bool = True, threads: int | None = None
) -> FashionCNN:
    """The trained float model, cached as safetensors under ``$AUTOQUANT_CACHE`` (default
    ``~/.cache/autoquant``).

    The default recipe trains on all 60,000 training images for 3 epochs (Adam, one-cycle
    learning rate peaking at 3e-3, batch 128, seed 0, channels-last activations): about
    37 s on 2 idle CPU cores (2-3x that on a busy one), 0.9191 accuracy on the 10,000 test
    images (torch 2.13 CPU). ``n_train`` trains on the first ``n_train`` images instead
    (the tests use 20,000 for 1 epoch: ~4.5 s on 2 threads, ~7 s on 1; ~0.865 on the test set).

    ``threads`` sets torch's intra-op threads for the training (restored afterwards;
    default: leave them as they are). On a CPU shared with other busy processes, 2 threads
    can be 5-20x slower than idle (the OpenMP team waits for a descheduled thread), while
    1 thread only slows down in proportion; the tests train with ``threads=1``.
    """
    return cached_training(
        _cache_path(epochs, n_train),
        FashionCNN,
        lambda: _train(load_data(n_train), epochs),
        cache=cache,
        threads=threads,
    )


def _train(data: dict[str, torch.Tensor], epochs: int) -> FashionCNN:
    torch.manual_seed(_SEED)
    model = FashionCNN()
    # channels-last trains these convolutions 1.5-3x faster on CPU (oneDNN); the weights
    # are returned (and cached) in the default layout.
    model = model.to(memory_format=torch.channels_last)
    x = data["x_train"].contiguous(memory_format=torch.channels_last)
    y = data["y_train"]
    batch_size, lr = 128, 3e-3
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-len(y) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(_SEED)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(batch_size):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
    return model.to(memory_format=torch.contiguous_format).eval()


# --------------------------------------------------------------------------- evaluation


@torch.inference_mode()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    batches = zip(x.split(batch_size), y.split(batch_size), strict=True)
    correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in batches)
    return correct / len(y)


def calibration_batches(n: int = 100, batch_size: int = 25) -> list[torch.Tensor]:
    """The first ``n`` training images in batches: the calibration set (never test images)."""
    return list(load_data(n)["x_train"].split(batch_size))


def eval_fn(n: int | None = None):
    """A closure ``eval_fn(model) -> float``: top-1 accuracy on the test set.

    All 10,000 test images by default; ``n`` uses the first ``n`` instead (a fixed subset,
    the same on every call: the tests use 2,000, which hold 188-219 images per class).
    The images are loaded once, when this is called.
    """
    data = _test_set()
    x, y = data["x_test"], data["y_test"]
    if n is not None:
        x, y = x[:n], y[:n]

    def evaluate(model: nn.Module) -> float:
        was_training = model.training
        model.eval()
        try:
            return accuracy(model, x, y)
        finally:
            model.train(was_training)

    return evaluate


def example_inputs(batch_size: int = 64) -> torch.Tensor:
    """A batch of ``batch_size`` test images for latency, [batch_size, 1, 28, 28]."""
    return _test_set()["x_test"][:batch_size]


def train_batches(
    batch_size: int = 128, n_train: int | None = 10000
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled ``(images, labels)`` batches of the first ``n_train`` training images
    (fixed seed): QAT fine-tuning data (``train=sgd``'s data factory). 10,000 images by
    default: an epoch of fine-tuning is ~80 steps at batch 128."""
    data = load_data(n_train)
    x, y = data["x_train"], data["y_train"]
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(_SEED + 1))
    return [(x[idx], y[idx]) for idx in order.split(batch_size)]


def train_fn(
    lr: float = 1e-3, epochs: float = 1.0, batch_size: int = 128, n_train: int | None = 10000
):
    """A real QAT fine-tuning function for :class:`FashionCNN`: SGD with momentum on
    training images (:class:`autoquant.qat.train.TrainLoop`)."""
    from functools import partial

    from autoquant.qat.train import TrainLoop

    return TrainLoop(
        data=partial(train_batches, n_train=n_train), lr=lr, epochs=epochs, batch_size=batch_size
    )


# --------------------------------------------------------------------------- demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="threads for latency")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved latency rounds (median of medians)"
    )
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per round")
    args = parser.parse_args(argv)

    import autoquant
    from autoquant.measure import compare_latency, size_bytes

    torch.manual_seed(_SEED)
    evaluate = eval_fn()
    n_test = len(_test_set()["y_test"])
    cached = _cache_path(3, None)
    how = f"loaded from {cached}" if cached.exists() else None
    t0 = time.perf_counter()
    model = trained_model()
    how = how or f"trained in {time.perf_counter() - t0:.1f} s, cached at {cached}"
    with warnings.catch_warnings():
        # torch 2.13 deprecates quantized tensors (and torch.ao.quantization); both still run.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*quantize_per_(tensor|channel).*")
        int8 = autoquant.quantize(
            model, {"default": autoquant.static_int8()}, calibration_batches()
        )
    candidates: dict[str, nn.Module] = {"fp32": model, "static int8 (all ops)": int8}
    inputs = {b: example_inputs(b) for b in (64, 1)}
    acc = {name: evaluate(m) for name, m in candidates.items()}
    median = compare_latency(
        candidates, inputs, threads=args.threads, rounds=args.rounds, repeats=args.repeats
    )
    sizes = {name: size_bytes(m) for name, m in candidates.items()}

    print(
        f"Fashion-MNIST CNN ({sum(p.numel() for p in model.parameters()):,} parameters; "
        f"{how}); accuracy on all {n_test:,} test images; "
        f"calibration: the first 100 training images\nlatency: {args.threads} thread(s), "
        f"median of {args.rounds} interleaved rounds x {args.repeats} calls"
    )
    print(
        f"{'model':<24}{'accuracy':>10}{'b64 ms':>9}{'x':>7}{'b1 ms':>8}{'x':>7}"
        f"{'size KiB':>10}{'smaller':>9}"
    )
    base = "fp32"
    for name in candidates:
        b64, b1 = median[(name, 64)], median[(name, 1)]
        print(
            f"{name:<24}{acc[name]:>10.4f}"
            f"{b64:>9.3f}{median[(base, 64)] / b64:>6.2f}x{b1:>8.3f}{median[(base, 1)] / b1:>6.2f}x"
            f"{sizes[name] / 1024:>10.1f}{sizes[base] / sizes[name]:>8.2f}x"
        )
    info = autoquant.quant_info(candidates["static int8 (all ops)"])
    print(f"\nstatic int8 build: mode={info.mode}, simulated={list(info.simulated)}; kernels:")
    for fqn, kernel in info.kernels.items():
        print(f"  {fqn:<8} {kernel}")


if __name__ == "__main__":
    main()
