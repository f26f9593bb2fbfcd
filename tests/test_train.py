"""ATP training on a tiny LLaVA: the torch scores mirror numpy, the budget loss moves thresholds, outputs convert."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


from atp_cli.pruning.base import ModuleInput  # noqa: E402
from atp_cli.errors import InputError  # noqa: E402
from atp_cli.pruning.atp import AtpStrategy, module_scores, pooled_features  # noqa: E402
from atp_cli.pruning.config import AtpConfig  # noqa: E402
from atp_cli.pruning.store import load_safetensors  # noqa: E402
from atp_cli.train import scoring  # noqa: E402
from atp_cli.train.soft_prune import SoftPruning, make_nets  # noqa: E402
from atp_cli.train.trainer import TrainConfig, train  # noqa: E402
from tests.tiny_llava import build_tiny_llava, write_colour_records  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    ckpt = build_tiny_llava(root / "clip", "clip", text_layers=4)
    data = write_colour_records(root)
    return ckpt, data


def test_torch_scoring_mirrors_numpy():
    rng = np.random.default_rng(1)
    a = np.tril(rng.random((16, 16)))
    a /= a.sum(1, keepdims=True)
    t = rng.random((3, 16))
    cfg = AtpConfig(n_layer=8, boundaries=(2,), grid=(4, 4))
    view = ModuleInput(2, 1, np.arange(16) + 4, np.arange(3) + 20, a, t, 4, 8)
    s = module_scores(view, cfg, 16)
    s_r = scoring.relevance(torch.from_numpy(a), torch.from_numpy(t))
    np.testing.assert_allclose(s_r.numpy(), s.relevance, rtol=1e-12)
    np.testing.assert_allclose(scoring.spatial(cfg, 16).numpy(), s.spatial)
    f = scoring.features(s_r, scoring.spatial(cfg, 16), torch.tensor(1.0, dtype=torch.float64))
    np.testing.assert_allclose(f.numpy(), pooled_features(s), rtol=1e-12)
    net = scoring.ThresholdNet(8)
    theta = net(f)
    np.testing.assert_allclose([float(x.detach()) for x in theta], net.export().thresholds(pooled_features(s)), rtol=1e-5)


def test_threshold_net_can_start_at_given_thresholds():
    """A net started at (theta_r, theta_sp) predicts them for any image, and so does its exported numpy MLP."""
    net = scoring.ThresholdNet(8, start=(0.9, 0.8))
    rng = np.random.default_rng(2)
    for _ in range(3):
        f = rng.normal(size=10) * 5
        theta = [float(x.detach()) for x in net(torch.from_numpy(f))]
        np.testing.assert_allclose(theta, (0.9, 0.8), rtol=1e-6)
        np.testing.assert_allclose(net.export().thresholds(f), (0.9, 0.8), rtol=1e-6)
    assert all(isinstance(n, scoring.ThresholdNet) for n in make_nets(AtpConfig(6, (2, 4)), (0.9, 0.8)))


def _causal_attention(rng, t: int, dropped_keys: np.ndarray) -> np.ndarray:
    """(t, t) attention rows over the keys a query may see, none on `dropped_keys` (as after hard pruning)."""
    a = np.tril(rng.random((t, t)) ** 4)
    a[:, dropped_keys] = 0.0
    np.fill_diagonal(a, np.diag(a) + 1e-3)  # a query always sees itself
    return a / a.sum(1, keepdims=True)


@pytest.mark.parametrize("debias", [False, True])
def test_straight_through_training_decides_as_inference(debias):
    """Hard forward masks: each module keeps exactly the tokens the numpy AtpStrategy keeps from the same attention,
    scoring only the tokens still alive (with the plain or the distance-debiased relevance), and the thresholds still
    get a gradient."""
    rng = np.random.default_rng(4)
    cfg = AtpConfig(n_layer=6, boundaries=(2, 4), grid=(4, 4), hidden=8, debias=debias)
    nets = make_nets(cfg)
    with torch.no_grad():
        for net in nets:
            net.fc2.bias.copy_(torch.tensor([0.3, 0.0], dtype=torch.float64))  # theta_r ~ 0.85, theta_sp = 0.5
    visual, query, t = np.arange(2, 18), np.arange(18, 21), 21
    control = SoftPruning(cfg, nets, torch.from_numpy(visual), torch.from_numpy(query), t, straight_through=True)
    strategy = AtpStrategy(cfg, [n.export() for n in nets], n_visual=16)
    alive = visual
    for boundary in cfg.boundaries:
        attn = _causal_attention(rng, t, np.setdiff1d(visual, alive))
        control.records[boundary - 1] = torch.from_numpy(attn)[None].float()
        control.before_layer(boundary)
        idx = np.searchsorted(np.arange(t), alive)
        view = ModuleInput(boundary, boundary - 1, alive, query, attn[np.ix_(idx, idx)], attn[np.ix_(query, idx)], 2, 6)
        alive = strategy(view)
        mask = control.mask.detach().numpy()
        assert set(np.unique(mask)) <= {0.0, 1.0}
        assert (visual[mask == 1.0] == alive).all(), boundary
        assert 0 < len(alive) < 16
    control.average_tokens(cfg.n_layer).backward()
    grads = [p.grad for p in nets.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_budget_loss_lowers_the_token_count(setup, tmp_path):
    ckpt, data = setup
    logs = []
    cfg = TrainConfig(budget=3.0, boundaries=(1, 3), steps=12, accumulate=1, lr=0.05, lambda_budget=20.0, hidden=8)
    weights = train(ckpt, data, tmp_path / "atp.safetensors", cfg, on_step=logs.append)
    assert logs[0].tokens_avg > 14.0  # starts near keep-all
    assert logs[-1].tokens_avg < logs[0].tokens_avg - 3.0
    assert np.mean([lg.budget_loss for lg in logs[-3:]]) < logs[0].budget_loss
    back = load_safetensors(tmp_path / "atp.safetensors")
    assert back.config.boundaries == (1, 3) and len(back.mlps) == 2 == len(weights.mlps)


def test_lora_training_saves_a_convertible_checkpoint(setup, tmp_path):
    pytest.importorskip("peft")
    from converters.convert import ConvertOptions, convert, find_pair

    ckpt, data = setup
    cfg = TrainConfig(budget=8.0, steps=2, accumulate=1, llm="lora", lora_rank=2, hidden=8, distill=0.5)
    train(ckpt, data, tmp_path / "atp.safetensors", cfg, save_model=tmp_path / "tuned")
    from atp_cli.pruning.store import load_safetensors as load

    convert(tmp_path / "tuned", tmp_path / "out", ConvertOptions(outtype="f16", atp=load(tmp_path / "atp.safetensors")))
    assert len(find_pair(tmp_path / "out")) == 2


@pytest.mark.parametrize("budget", [0.0, 17.0, -1.0])
def test_budget_outside_the_visual_tokens(setup, tmp_path, budget):
    ckpt, data = setup
    with pytest.raises(InputError, match="budget"):
        train(ckpt, data, tmp_path / "x.safetensors", TrainConfig(budget=budget, steps=1))


def test_bad_training_data(setup, tmp_path):
    ckpt, _ = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "x.png"}\n')
    with pytest.raises(InputError, match="LLaVA record"):
        train(ckpt, bad, tmp_path / "x.safetensors", TrainConfig(steps=1))


@pytest.mark.parametrize("flags, straight_through", [([], False), (["--hard-masks"], True)])
def test_cli_train_passes_the_mask_mode(monkeypatch, tmp_path, flags, straight_through):
    from click.testing import CliRunner

    from atp_cli.cli import cli
    from atp_cli.train import trainer

    seen = []
    monkeypatch.setattr(trainer, "train", lambda ckpt, data, out, cfg, **kw: seen.append(cfg))
    res = CliRunner().invoke(cli, ["train", str(tmp_path), str(tmp_path / "d.jsonl"), str(tmp_path / "o.safetensors"),
                                   "--steps", "1", "--boundaries", "2,10", *flags])
    assert res.exit_code == 0, res.output
    assert seen[0].straight_through is straight_through and seen[0].boundaries == (2, 10) and seen[0].steps == 1
