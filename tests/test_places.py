"""Places in the projector's tokens: the probe, keep_places in stage 2, and the projector-only imprint."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from safetensors.numpy import load_file  # noqa: E402

from atp_cli.errors import InputError  # noqa: E402
from PIL import Image  # noqa: E402

from atp_cli.train.places import AMPLITUDE, ImprintConfig, PlaceProbe, imprint_places  # noqa: E402
from atp_cli.train.projector import ProjectorConfig, train_projector  # noqa: E402
from tests.tiny_llava import build_tiny_llava, write_colour_records  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("places")
    return build_tiny_llava(root / "ckpt", "clip", text_layers=2), write_colour_records(root, more_turns=True)


def _fit(probe: PlaceProbe, tokens: torch.Tensor, steps: int = 200) -> float:
    opt = torch.optim.Adam(probe.parameters(), 5e-2)
    for _ in range(steps):
        loss = probe.loss(tokens)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(probe.loss(tokens).detach())


def _tokens(grid: int, dim: int, share: float) -> torch.Tensor:
    """Tokens whose first two dimensions hold their row and column coordinate times `share` of an RMS norm of
    1 / AMPLITUDE, the third dimension the constant rest of that norm."""
    place = torch.arange(grid * grid)
    coords = (2 * torch.stack([place // grid, place % grid], -1).float() + 1) / grid - 1
    tokens = torch.zeros(grid * grid, dim)
    tokens[:, :2] = share * coords
    rest = 1 / AMPLITUDE ** 2 - (tokens[:, :2] ** 2).sum(-1).mean()
    tokens[:, 2] = float(rest.sqrt())
    return tokens


def test_a_place_at_full_amplitude_is_read_and_a_trace_of_it_or_none_is_not():
    grid, dim = 6, 16
    unread = (1 - 1 / grid ** 2) / 3  # the error of reading every token as the centre
    torch.manual_seed(0)
    assert _fit(PlaceProbe(dim, grid * grid), _tokens(grid, dim, 1.0)) < 0.01
    assert _fit(PlaceProbe(dim, grid * grid), _tokens(grid, dim, 0.1)) > 0.7 * unread  # the probe cannot amplify it
    assert _fit(PlaceProbe(dim, grid * grid), torch.ones(grid * grid, dim)) >= unread - 1e-4
    probe = PlaceProbe(dim, grid * grid)
    _fit(probe, _tokens(grid, dim, 1.0))
    assert probe.side_accuracy(_tokens(grid, dim, 1.0)) == 1.0


def test_a_grid_that_is_not_square_or_a_wrong_count_is_refused():
    with pytest.raises(InputError, match="square grid"):
        PlaceProbe(8, 12)
    with pytest.raises(InputError, match="reads 16 tokens"):
        PlaceProbe(8, 16).loss(torch.zeros(9, 8))
    with pytest.raises(InputError, match="amplitude"):
        PlaceProbe(8, 16, amplitude=0.0)


def test_the_place_loss_moves_the_projector_and_resumes_exactly(setup, tmp_path):
    ckpt, data = setup
    cfg = ProjectorConfig(steps=4, accumulate=2, lr=1e-2, llm_lr=1e-2, lora_rank=4, save_every=2, warmup=1,
                          keep_places=1.0)
    whole = []
    straight = train_projector(ckpt, data, tmp_path / "straight", cfg, on_step=whole.append)
    plain = train_projector(ckpt, data, tmp_path / "plain", ProjectorConfig(**{**vars(cfg), "keep_places": 0.0}))
    a, b = load_file(str(straight / "projector.safetensors")), load_file(str(plain / "projector.safetensors"))
    assert not np.allclose(a["linear_2.weight"], b["linear_2.weight"])  # the place loss reached the projector
    train_projector(ckpt, data, tmp_path / "split", ProjectorConfig(**{**vars(cfg), "steps": 2}))
    rest = []
    resumed = train_projector(ckpt, data, tmp_path / "split",
                              ProjectorConfig(**{**vars(cfg), "resume_from": tmp_path / "split"}), on_step=rest.append)
    assert [s.loss for s in rest] == pytest.approx([s.loss for s in whole[2:]], rel=1e-5)
    c = load_file(str(resumed / "projector.safetensors"))
    assert all(np.allclose(a[k], c[k], rtol=1e-5, atol=1e-7) for k in a)  # the probe's weights resumed too
    with pytest.raises(InputError, match="same setting"):
        train_projector(ckpt, data, tmp_path / "split", ProjectorConfig(**{**vars(cfg), "steps": 6,
                                                                           "keep_places": 0.0,
                                                                           "resume_from": tmp_path / "split"}))


def _ramps(n: int, seed: int) -> list[Image.Image]:
    """Noisy images that grow brighter to the right (and bluer downwards): the tiny random tower hardly keeps the
    place its position embeddings give, so here the patches show it, as DINOv2's features carry it."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, 16)[None, :, None] + np.linspace(0, 200, 16)[:, None, None] * np.array([0, 0, 1])
    return [Image.fromarray((ramp + rng.integers(0, 56, (16, 16, 3))).astype(np.uint8)) for _ in range(n)]


def test_imprinting_writes_the_side_into_the_tokens_and_without_its_loss_changes_nothing(setup, tmp_path):
    ckpt, _ = setup
    shown, held_out = _ramps(8, 0), _ramps(4, 1)
    cfg = ImprintConfig(steps=150, batch=4, lr=1e-2, probe_lr=5e-2)
    logs = []
    imprint_places(ckpt, shown, tmp_path / "imprinted", cfg, held_out, on_step=logs.append)
    right, asked = logs[-1].validation["left/right"]
    assert right / asked > 0.9  # held-out images: the side is read from the tokens alone
    assert logs[-1].validation["drift"][0] > 0  # it cost some drift
    start = imprint_places(ckpt, shown, tmp_path / "start", ImprintConfig(steps=0))
    held = imprint_places(ckpt, shown, tmp_path / "held", ImprintConfig(**{**vars(cfg), "steps": 20, "weight": 0.0}))
    a, b = load_file(str(start / "projector.safetensors")), load_file(str(held / "projector.safetensors"))
    assert all(np.array_equal(a[k], b[k]) for k in a)  # drift alone is at its minimum from the first step


def test_imprinting_without_images_is_refused(setup, tmp_path):
    with pytest.raises(InputError, match="at least one image"):
        imprint_places(setup[0], [], tmp_path / "none")


def test_fixed_directions_are_read_as_given_and_never_learn():
    grid, dim = 6, 16
    unread = (1 - 1 / grid ** 2) / 3
    axes = torch.eye(dim)
    along = PlaceProbe(dim, grid * grid, directions=axes[:2])  # the dimensions that hold row and column
    assert "directions" not in dict(along.named_parameters())
    assert _fit(along, _tokens(grid, dim, 1.0)) < 0.01
    beside = PlaceProbe(dim, grid * grid, directions=axes[3:5])  # empty dimensions: only the offset can learn
    assert _fit(beside, _tokens(grid, dim, 1.0)) >= unread - 1e-4
    assert torch.equal(beside.directions, axes[3:5])
    with pytest.raises(InputError, match="directions must be"):
        PlaceProbe(dim, grid * grid, directions=axes[:3])


def test_imprinting_in_the_language_models_words(setup, tmp_path):
    logs = []
    imprint_places(setup[0], _ramps(8, 0), tmp_path / "words",
                   ImprintConfig(steps=150, batch=4, lr=1e-2, probe_lr=5e-2, in_words=True), _ramps(4, 1),
                   on_step=logs.append)
    right, asked = logs[-1].validation["left/right"]
    assert right / asked > 0.9


def test_imprint_settings_that_make_no_sense_are_refused_up_front():
    for bad in ({"steps": -1}, {"batch": 0}, {"weight": -1.0}, {"weight": float("nan")}, {"amplitude": 0.0}):
        with pytest.raises(InputError):
            ImprintConfig(**bad)
