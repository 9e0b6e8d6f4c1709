"""Train the small ViT shipped in samples/models/fashion-mnist-vit, on CPU, reproducibly.

    python samples/train_fashion_mnist_vit.py [--epochs 3] [--out samples/models/fashion-mnist-vit]

The model is a timm VisionTransformer shaped like DeiT's token layout (28x28 images in 2x2
patches: 196 patches + a class token = 197 tokens, class-token pooling) but narrow and shallow so
that one CPU thread trains it in well under an hour. It is saved in timm's local-folder format
(config.json + model.safetensors), so ``timm.create_model("local-dir:FOLDER", pretrained=True)``
rebuilds it. Data: Debian's package (``apt-get install -y dataset-fashion-mnist``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from safetensors.torch import save_file
from timm.models._hub import save_config_for_hf  # timm exports no public alias

from trimformer.evaluation.fashion_mnist import DEFAULT_ROOT, read_fashion_mnist

LABELS = [
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
]
# Any registered ViT name works as the architecture: every shape argument below overrides it.
ARCHITECTURE = "vit_tiny_patch16_224"


def build(args: argparse.Namespace) -> torch.nn.Module:
    """The untrained ViT; model_args are recorded by timm and land in config.json."""
    return timm.create_model(
        ARCHITECTURE,
        img_size=28,
        patch_size=2,
        in_chans=1,
        num_classes=len(LABELS),
        embed_dim=args.embed_dim,
        depth=args.depth,
        num_heads=args.heads,
        mlp_ratio=args.mlp_ratio,
        global_pool="token",
    )


def to_tensor(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """uint8 [N, 28, 28] -> normalised float32 [N, 1, 28, 28], the bundle's preprocess."""
    return ((torch.from_numpy(images.copy()).float() / 255.0 - mean) / std).unsqueeze(1)


def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in eval mode, in batches of 500."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(images), 500):
            logits = model(images[start : start + 500])
            correct += int((logits.argmax(1) == labels[start : start + 500]).sum())
    return correct / len(images)


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(args.seed)
    train_images, train_labels = read_fashion_mnist("train", args.data)
    if args.train_subset:
        keep = rng.permutation(len(train_images))[: args.train_subset]
        train_images, train_labels = train_images[keep], train_labels[keep]
    pixels = train_images.astype(np.float64) / 255.0
    mean, std = round(float(pixels.mean()), 4), round(float(pixels.std()), 4)
    x_train = to_tensor(train_images, mean, std)
    y_train = torch.from_numpy(train_labels)
    test_images, test_labels = read_fashion_mnist("test", args.data)
    x_test, y_test = to_tensor(test_images, mean, std), torch.from_numpy(test_labels)

    model = build(args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = len(x_train) // args.batch_size
    total = steps_per_epoch * args.epochs
    warmup = min(args.warmup, total // 2)

    def lr_factor(step: int) -> float:  # linear warmup, then cosine decay to zero
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeRemainingColumn(),
    )
    started = time.perf_counter()
    with Progress(*columns) as progress:
        task = progress.add_task("training", total=total, loss=float("nan"))
        smoothed = None
        for epoch in range(args.epochs):
            model.train()
            progress.update(task, description=f"epoch {epoch + 1}/{args.epochs}")
            order = torch.from_numpy(rng.permutation(len(x_train)))
            for step in range(steps_per_epoch):
                index = order[step * args.batch_size : (step + 1) * args.batch_size]
                images, labels = x_train[index], y_train[index]
                flip = torch.from_numpy(rng.random(len(index)) < 0.5)
                images = torch.where(flip[:, None, None, None], images.flip(-1), images)
                loss = F.cross_entropy(model(images), labels, label_smoothing=0.1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                value = loss.item()
                smoothed = value if smoothed is None else 0.98 * smoothed + 0.02 * value
                progress.update(task, advance=1, loss=smoothed)
                if (step + 1) % 200 == 0:  # a plain line too, for logs that are not terminals
                    seconds = time.perf_counter() - started
                    progress.console.print(
                        f"epoch {epoch + 1} step {step + 1}/{steps_per_epoch} "
                        f"loss {smoothed:.3f} ({seconds / 60:.1f} min)",
                        highlight=False,
                    )
                if args.measure and step + 1 >= args.measure:
                    seconds = (time.perf_counter() - started) / args.measure
                    progress.stop()
                    print(f"{seconds:.3f} s/step; {seconds * total / 60:.1f} min for {total} steps")
                    sys.exit(0)
    train_seconds = time.perf_counter() - started
    top1 = accuracy(model, x_test, y_test)
    return {
        "model": model,
        "mean": mean,
        "std": std,
        "top1": top1,
        "train_seconds": train_seconds,
        "train_images": len(x_train),
    }


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename it into place."""
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(handle)
    try:
        write(Path(temp))
        os.chmod(temp, 0o644)  # mkstemp (and some writers) make it private; these are shared
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def save(result: dict, args: argparse.Namespace, command: str) -> None:
    """config.json + model.safetensors (timm local-dir format) and a README with the numbers."""
    model, out = result["model"], args.out
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    _atomic_write(out / "model.safetensors", lambda p: save_file(state, str(p)))
    data_config = {
        "mean": (result["mean"],),
        "std": (result["std"],),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
    }

    def write_config(path: Path) -> None:
        save_config_for_hf(
            model, str(path), model_config={"label_names": LABELS}, data_config=data_config
        )
        config = json.loads(path.read_text())
        # inherited from the base architecture's ImageNet weights; wrong for these
        for key in ("tag", "license"):
            config["pretrained_cfg"].pop(key, None)
        path.write_text(json.dumps(config, indent=2) + "\n")

    _atomic_write(out / "config.json", write_config)
    params = sum(p.numel() for p in model.parameters())
    readme = f"""# Fashion-MNIST ViT (trimformer sample)

A timm VisionTransformer trained from scratch on Fashion-MNIST by
`samples/train_fashion_mnist_vit.py`: 28x28 grayscale input, 2x2 patches (196 patches + class
token = 197 tokens, as in DeiT), class-token pooling, width {args.embed_dim}, depth {args.depth},
{args.heads} heads, MLP ratio {args.mlp_ratio}, {params:,} parameters.

| what | value |
| --- | --- |
| test top-1 (10,000 images, torch) | {100 * result["top1"]:.2f} % |
| training images | {result["train_images"]:,} x {args.epochs} epochs, batch {args.batch_size} |
| training time | {result["train_seconds"] / 60:.1f} min on 1 CPU thread |
| preprocess | pixels / 255, mean {result["mean"]}, std {result["std"]} |
| versions | torch {torch.__version__}, timm {timm.__version__} |

Rebuild with `timm.create_model("local-dir:samples/models/fashion-mnist-vit", pretrained=True)`.
Data: `apt-get install -y dataset-fashion-mnist` (idx files in /usr/share/datasets/fashion-mnist).

Trained with:

    {command}
"""
    _atomic_write(out / "README.md", lambda p: p.write_text(readme))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--out", type=Path, default=Path("samples/models/fashion-mnist-vit"))
    parser.add_argument("--embed-dim", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--mlp-ratio", type=float, default=2.0)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup", type=int, default=300, help="linear warmup steps")
    parser.add_argument("--train-subset", type=int, default=0, help="train on N images (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--measure", type=int, default=0, help="time N steps, print, exit")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    command = shlex.join(["python", *sys.argv])
    result = train(args)
    save(result, args, command)
    print(f"test top-1 {100 * result['top1']:.2f} %; saved {args.out}")


if __name__ == "__main__":
    main()
