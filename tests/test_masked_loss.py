"""Face-weighted loss (issue 15): the maths, and that the loop weighs exactly the subject half by its masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from train_helpers import class_images, fresh, subject_images, tiny_config

from trainers.train import loop, train
from trainers.train.objective import diffusion_loss, mask_weights

FLOOR = 0.3


def _square_masks(n: int = 2) -> torch.Tensor:
    masks = torch.zeros(n, 1, 32, 32)
    masks[:, :, 8:24, 8:24] = 1.0  # on the 16x16 latent grid: rows/columns 4..11
    return masks


def test_gradient_outside_the_mask_is_scaled_by_the_floor_and_the_loss_scale_is_kept():
    w = mask_weights(_square_masks(), (16, 16), FLOOR)
    assert w.shape == (2, 1, 16, 16)
    assert torch.allclose(w.mean(dim=(1, 2, 3)), torch.ones(2))  # normalised: mean weight 1 per image
    inside, outside = w[:, :, 4:12, 4:12], w[:, :, :4, :]
    assert torch.allclose(outside / inside.mean(), torch.full_like(outside, FLOOR))

    # loss scale: a uniform error gives the same loss with and without the weights
    target = torch.zeros(2, 4, 16, 16)
    uniform = torch.full((2, 4, 16, 16), 0.5)
    plain = diffusion_loss(uniform, target, n_instance=2).total
    weighted = diffusion_loss(uniform, target, n_instance=2, pixel_weights=w).total
    assert torch.allclose(plain, weighted)

    # gradient: per element d(loss)/d(pred) = 2 * err * weight / N; outside the mask it is floor x the inside one
    pred = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    diffusion_loss(pred, target, n_instance=2, pixel_weights=w).total.backward()
    g = pred.grad / (2 * pred.detach())
    g_plain = torch.autograd.grad(diffusion_loss(pred, target, n_instance=2).total, pred)[0] / (2 * pred.detach())
    assert torch.allclose(g[:, :, :4, :], FLOOR * g[:, :, 6:8, 6:8].mean(), rtol=1e-4)
    assert torch.allclose(g.mean(), g_plain.mean(), rtol=1e-5)  # the same total gradient scale

    # a soft mask: weights between the floor and the face, still mean 1
    soft = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(1, 1, 32, 32)
    ws = mask_weights(soft, (16, 16), FLOOR)
    assert torch.allclose(ws.mean(), torch.tensor(1.0)) and (ws[..., 1:] > ws[..., :-1]).all()
    # floor 1 is no weighting at all
    assert torch.equal(mask_weights(_square_masks(), (16, 16), 1.0), torch.ones(2, 1, 16, 16))


def _with_masks(folder):
    """Soft masks beside the subject images: 1 on the checker square (top-left 16x16 + offset), 0 elsewhere."""
    for p in sorted(folder.glob("subject_*.png")):
        m = np.zeros((32, 32), np.uint8)
        m[2:20, 2:20] = 255
        Image.fromarray(m).save(p.with_name(p.stem + ".mask.png"))
    return folder


@pytest.fixture
def spy(monkeypatch):
    seen = []
    real = loop.diffusion_loss

    def record(pred, target, **kw):
        seen.append(kw.get("pixel_weights"))
        return real(pred, target, **kw)

    monkeypatch.setattr(loop, "diffusion_loss", record)
    return seen


def test_the_loop_weighs_the_subject_half_by_its_masks_and_never_the_class_images(tiny_components, tmp_path, spy):
    _with_masks(subject_images(tmp_path / "inst"))
    class_images(tmp_path / "cls")
    cfg = tiny_config(tmp_path, steps=2, class_data=str(tmp_path / "cls"), prior_preservation=True, mask_floor=FLOOR)
    out = train(cfg, components=fresh(tiny_components))
    assert out.state == "finished" and len(spy) == 2
    for w in spy:
        assert w.shape == (2, 1, 16, 16)
        assert torch.equal(w[1], torch.ones(1, 16, 16))  # the class image: weight 1 everywhere
        subject = w[0]
        assert torch.allclose(subject.mean(), torch.tensor(1.0))
        assert subject.min() / subject.max() == pytest.approx(FLOOR, rel=1e-5)
    # the mask files are part of the dataset's identity
    from trainers.train.dataset import fingerprint

    before = fingerprint(tmp_path / "inst")
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(tmp_path / "inst" / "subject_0.mask.png")
    assert fingerprint(tmp_path / "inst") != before


def test_no_masks_or_masked_loss_off_trains_unweighted(tiny_components, tmp_path, spy):
    subject_images(tmp_path / "plain")
    train(
        tiny_config(tmp_path / "a", steps=1, instance_data=str(tmp_path / "plain")), components=fresh(tiny_components)
    )
    _with_masks(subject_images(tmp_path / "masked"))
    cfg = tiny_config(tmp_path / "b", steps=1, instance_data=str(tmp_path / "masked"), masked_loss=False)
    train(cfg, components=fresh(tiny_components))
    assert spy == [None, None]
