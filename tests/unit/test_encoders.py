"""The encoder registry (sas-ray, torchvision, timm, open_clip) from local weight files of
randomly initialised models, no download: each kind loads, embeds a tiny shard set on the local
executor like a direct forward pass of the same model with its library's own input size and
mean/std; a wrong file is one error line naming it and what was expected; a missing extra names
its pip command; zero-shot latent classes (argmax logic on hand-built embeddings, a valid
partition from a random CLIP's text tower)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from torch import nn

from sas_ray.config import Config
from sas_ray.core.data.augment import IMAGENET_MEAN, IMAGENET_STD, to_nchw
from sas_ray.core.data.images import decode_images
from sas_ray.core.models.checkpoint import save_encoder
from sas_ray.core.models.encoders import EncoderRef, load_pretrained, parse
from sas_ray.core.models.heads import build_model
from sas_ray.core.selection.zeroshot import DEFAULT_PROMPTS, class_embeddings, zeroshot_classes
from sas_ray.errors import SasRayError
from sas_ray.executors.local import LocalExecutor
from sas_ray.io import shards, storage
from sas_ray.io.artifacts import read_embeddings, read_partition
from sas_ray.stages.embed import embed
from sas_ray.stages.ingest import ingest
from sas_ray.stages.latent import partition

# a tiny open_clip CLIP (the HF layout: open_clip_config.json + open_clip_model.safetensors)
CLIP_CONFIG = {
    "model_cfg": {"embed_dim": 16,
                  "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                 "patch_size": 16},
                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32,
                               "heads": 2, "layers": 1}},
    "preprocess_cfg": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]},
}

Direct = Callable[[torch.Tensor], torch.Tensor]  # normalised images -> features


def _cfg() -> Config:
    cfg = Config()
    cfg.run.executor = "local"
    cfg.data.synthetic_classes, cfg.data.synthetic_train_per_class = 3, 4
    cfg.data.synthetic_test_per_class = 1
    cfg.embed.views, cfg.embed.batch_size = 0, 5
    return cfg


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Synthetic shards: 3 classes, a few train images each, 32 px."""
    out = str(tmp_path_factory.mktemp("shards") / "shards")
    ingest("synthetic", out, _cfg(), executor=LocalExecutor(_cfg()))
    return out


def _clip_dir(root: Path, seed: int = 0) -> tuple[Path, nn.Module]:
    """A random tiny CLIP saved as an open_clip model directory, and the model."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "open_clip_config.json").write_text(json.dumps(CLIP_CONFIG))
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{root}", load_weights=False).eval()
    save_file(model.state_dict(), str(root / "open_clip_model.safetensors"))
    return root, model


def _torchvision(root: Path) -> tuple[str, str, Direct, int, tuple, tuple, str]:
    model = torchvision.models.get_model("mobilenet_v3_small", weights=None).eval()
    torch.save(model.state_dict(), root / "mnv3.pth")
    seen: list[torch.Tensor] = []
    model.classifier[3].register_forward_hook(lambda m, args, out: seen.append(args[0]))

    def direct(x: torch.Tensor) -> torch.Tensor:  # the input of the logits layer
        seen.clear()
        model(x)
        return seen[0]

    t = torchvision.models.MobileNet_V3_Small_Weights.DEFAULT.transforms()
    return ("torchvision:mobilenet_v3_small", str(root / "mnv3.pth"), direct, t.crop_size[0],
            tuple(t.mean), tuple(t.std), "backbone")


def _timm(root: Path) -> tuple[str, str, Direct, int, tuple, tuple, str]:
    model = timm.create_model("test_vit", pretrained=False).eval()  # with its 1000-way head
    save_file(model.state_dict(), str(root / "model.safetensors"))
    cfg = timm.data.resolve_data_config({}, model=model)

    def direct(x: torch.Tensor) -> torch.Tensor:
        return model.forward_head(model.forward_features(x), pre_logits=True)

    return ("timm:test_vit", str(root), direct, cfg["input_size"][-1], cfg["mean"],
            cfg["std"], "projection")


def _open_clip(root: Path) -> tuple[str, str, Direct, int, tuple, tuple, str]:
    folder, model = _clip_dir(root / "clip")
    pp = model.visual.preprocess_cfg
    size = pp["size"] if isinstance(pp["size"], int) else pp["size"][-1]
    return ("open_clip:tiny", str(folder), model.encode_image, size, tuple(pp["mean"]),
            tuple(pp["std"]), "projection")


def _sas_ray(root: Path) -> tuple[str, str, Direct, int, tuple, tuple, str]:
    model = build_model("resnet10", width=0.125, proj_dim=8).eval()
    save_encoder(str(root / "proxy.pt"), model)
    return ("sas-ray", str(root / "proxy.pt"), model, 32, IMAGENET_MEAN, IMAGENET_STD,
            "projection")


KINDS = {"torchvision": _torchvision, "timm": _timm, "open_clip": _open_clip,
         "sas-ray": _sas_ray}


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_embeds_like_a_direct_forward_pass(kind: str, data: str,
                                                     tmp_path: Path) -> None:
    torch.manual_seed(0)
    name, weights, direct, size, mean, std, feature = KINDS[kind](tmp_path)
    cfg = _cfg()
    cfg.embed.feature = feature
    manifest = embed(cfg, data, EncoderRef(name, weights), str(tmp_path / "emb"),
                     executor=LocalExecutor(cfg))
    assert manifest["meta"]["image_size"] == size and manifest["meta"]["encoder"] == name
    emb = read_embeddings(str(tmp_path / "emb"))

    table = shards.read_table(data, split="train", columns=["id", "image"]).sort_by("id")
    images = to_nchw(decode_images(table["image"].to_pylist(), size=size)).float() / 255
    x = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.inference_mode():
        expected = F.normalize(direct(x).float(), dim=1).numpy()
    np.testing.assert_array_equal(emb.ids, table["id"].to_numpy())
    np.testing.assert_allclose(emb.x, expected, rtol=1e-4, atol=1e-5)

    # the weights' hash is the fingerprint: another random model embeds anew
    loaded = load_pretrained(name, weights)
    if kind != "sas-ray":
        sha = EncoderRef(name, weights).weights_file().sha256
        assert loaded.spec["weights_sha256"] == sha
        assert loaded.mean == tuple(float(m) for m in mean)


def test_backbone_and_projection_of_a_clip(tmp_path: Path) -> None:
    folder, model = _clip_dir(tmp_path / "clip")
    encoder = load_pretrained("open_clip:tiny", str(folder))
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        pooled = encoder.embed(x, "backbone")
        torch.testing.assert_close(encoder.embed(x, "projection"), model.encode_image(x))
        torch.testing.assert_close(pooled @ model.visual.proj, model.encode_image(x))
    assert pooled.shape == (3, 32)


# ---------------------------------------------------------------- wrong files, missing extras
def _one_line(err: pytest.ExceptionInfo[SasRayError], *parts: str) -> None:
    text = str(err.value)
    assert "\n" not in text, text
    for part in parts:
        assert part in text, (part, text)


def test_wrong_files_are_one_line_naming_the_file_and_what_was_expected(tmp_path: Path) -> None:
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(SasRayError) as err:
        load_pretrained("timm:test_vit", str(text))
    _one_line(err, str(text), "not a readable PyTorch file", "timm checkpoint of test_vit")

    vit = timm.create_model("test_vit", pretrained=False)
    save_file(vit.state_dict(), str(tmp_path / "vit.safetensors"))
    with pytest.raises(SasRayError) as err:  # another architecture
        load_pretrained("torchvision:mobilenet_v3_small", str(tmp_path / "vit.safetensors"))
    _one_line(err, "vit.safetensors", "do not fit torchvision:mobilenet_v3_small",
              "missing keys", "unexpected keys")

    state = vit.state_dict()
    del state["cls_token"], state["blocks.0.attn.qkv.weight"]
    torch.save({"state_dict": state}, tmp_path / "cut.pth")  # a training checkpoint's layout
    with pytest.raises(SasRayError) as err:
        load_pretrained("timm:test_vit", str(tmp_path / "cut.pth"))
    _one_line(err, "cut.pth", "do not fit timm:test_vit", "2 missing keys (cls_token")

    other = dict(CLIP_CONFIG, model_cfg={**CLIP_CONFIG["model_cfg"], "embed_dim": 8})
    folder, _ = _clip_dir(tmp_path / "clip")
    (tmp_path / "clip8").mkdir()
    (tmp_path / "clip8" / "open_clip_config.json").write_text(json.dumps(other))
    (tmp_path / "clip8" / "open_clip_model.safetensors").write_bytes(
        (folder / "open_clip_model.safetensors").read_bytes())
    with pytest.raises(SasRayError) as err:  # same layout, other shapes
        load_pretrained("open_clip:tiny", str(tmp_path / "clip8"))
    _one_line(err, "open_clip_model.safetensors", "open_clip:tiny", "keys of another shape")

    with pytest.raises(SasRayError) as err:
        load_pretrained("timm:test_vit", str(tmp_path / "missing.safetensors"))
    _one_line(err, "missing.safetensors", "do not exist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SasRayError) as err:
        load_pretrained("timm:test_vit", str(tmp_path / "empty"))
    _one_line(err, "holds no weights file", "model.safetensors")


def test_names_downloads_and_missing_extras(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse("timm:vit_small_patch14_dinov2.lvd142m") == ("timm",
                                                             "vit_small_patch14_dinov2.lvd142m")
    assert parse("sas-ray") == ("sas-ray", "")
    for bad in ("keras:resnet", "timm", "sas-ray:resnet18"):
        with pytest.raises(SasRayError, match="unknown encoder"):
            parse(bad)
    with pytest.raises(SasRayError) as err:
        load_pretrained("torchvision:resnet_18", str(tmp_path / "x.pth"))
    _one_line(err, "did you mean resnet18")

    with pytest.raises(SasRayError) as err:  # nothing is downloaded without the flag
        load_pretrained("timm:test_vit", None)
    _one_line(err, "--proxy.weights PATH", "--proxy.allow_download true")

    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Temporary failure in name resolution")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(SasRayError) as err:  # offline with the flag
        load_pretrained("timm:test_vit", None, allow_download=True)
    _one_line(err, "downloading the pretrained weights of timm:test_vit failed",
              "ConnectionError", "--proxy.weights PATH")

    monkeypatch.setitem(sys.modules, "open_clip", None)  # the extra is not installed
    with pytest.raises(SasRayError) as err:
        load_pretrained("open_clip:ViT-B-32", str(tmp_path))
    _one_line(err, "open_clip is not installed", "pip install sas-ray[clip]")
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(SasRayError) as err:
        load_pretrained("timm:test_vit", str(tmp_path))
    _one_line(err, "pip install sas-ray[timm]")


# ---------------------------------------------------------------- zero-shot latent classes
def test_zeroshot_argmax_on_hand_built_embeddings() -> None:
    # 3 classes along the axes of a 4-d space; the images' norms vary (argmax of the cosine)
    w = np.eye(4, dtype=np.float32)[:3]
    x = np.array([[5.0, 0.1, 0, 0], [0.1, 0.2, 0.3, 0.9], [0, 0.01, 0.02, 0],
                  [-1.0, -2.0, 0.5, 0.0], [1.0, 1.0, 0, 0]], dtype=np.float32)
    np.testing.assert_array_equal(zeroshot_classes(x, w, block_size=2), [0, 2, 2, 2, 0])

    # the prompt ensemble: the mean of unit prompt embeddings, re-normalised
    table = {"a cat.": [1.0, 0, 0], "art of a cat": [0, 3.0, 0], "a dog.": [0, 0, 2.0],
             "art of a dog": [0, 0, 5.0]}
    seen: list[list[str]] = []

    def encode_text(texts: list[str]) -> torch.Tensor:
        seen.append(texts)
        return torch.tensor([table[t] for t in texts])

    got = class_embeddings(encode_text, ["cat", "dog"], ["a {}.", "art of a {}"])
    np.testing.assert_allclose(got, [[2 ** -0.5, 2 ** -0.5, 0], [0, 0, 1]], rtol=1e-6)
    assert seen == [["a cat.", "art of a cat"], ["a dog.", "art of a dog"]]
    images = np.array([[0.1, 0.2, 0], [0.2, 0.1, 0.3], [0, 0, -1.0]], dtype=np.float32)
    np.testing.assert_array_equal(zeroshot_classes(images, got), [0, 1, 0])
    with pytest.raises(SasRayError, match="must hold"):
        class_embeddings(encode_text, ["cat"], ["no placeholder"])
    with pytest.raises(SasRayError, match="not in one space"):
        zeroshot_classes(images, np.eye(4, dtype=np.float32))
    assert all(p.count("{}") == 1 for p in DEFAULT_PROMPTS)


def test_zeroshot_partition_from_a_random_clip(data: str, tmp_path: Path) -> None:
    folder, model = _clip_dir(tmp_path / "clip")
    cfg = _cfg()
    embed(cfg, data, EncoderRef("open_clip:tiny", str(folder)), str(tmp_path / "emb"),
          executor=LocalExecutor(cfg))
    cfg.latent.method, cfg.latent.min_class_size = "clip-zeroshot", 1
    manifest = partition(cfg, str(tmp_path / "emb"), str(tmp_path / "part"))
    emb = read_embeddings(str(tmp_path / "emb"))
    classes, _ = read_partition(str(tmp_path / "part"), emb.ids)  # checks coverage
    names = storage.require_manifest(data, "shards")["meta"]["class_names"]
    assert set(classes.tolist()) <= set(range(len(names)))
    assert manifest["meta"]["method"] == "clip-zeroshot"
    assert manifest["config"]["class_names"] == names

    # the same argmax from open_clip's own text tower and tokenizer
    tokens = open_clip.SimpleTokenizer()
    with torch.inference_mode():
        w = torch.stack([F.normalize(F.normalize(model.encode_text(tokens(
            [p.format(n) for p in DEFAULT_PROMPTS])), dim=1).mean(0), dim=0) for n in names])
    expected = (F.normalize(torch.tensor(emb.x), dim=1) @ w.T).argmax(1).numpy()
    np.testing.assert_array_equal(classes, expected)

    # class names from a file; a non-CLIP proxy's embeddings are one clear error
    (tmp_path / "names.txt").write_text("apple\n\nbanana\n")
    cfg.latent.class_names_file = str(tmp_path / "names.txt")
    manifest = partition(cfg, str(tmp_path / "emb"), str(tmp_path / "part2"))
    assert manifest["config"]["class_names"] == ["apple", "banana"]
    assert set(manifest["meta"]["sizes"]) <= {"0", "1"}
    _sas_ray(tmp_path)
    embed(cfg, data, str(tmp_path / "proxy.pt"), str(tmp_path / "emb-resnet"),
          executor=LocalExecutor(cfg))
    with pytest.raises(SasRayError) as err:
        partition(cfg, str(tmp_path / "emb-resnet"), str(tmp_path / "part3"))
    _one_line(err, "needs embeddings of an open_clip encoder", "--proxy.encoder open_clip:ARCH")


def test_few_labels_on_a_pretrained_encoder(data: str, tmp_path: Path) -> None:
    name, weights, *_ = _timm(tmp_path)
    cfg = _cfg()
    embed(cfg, data, EncoderRef(name, weights), str(tmp_path / "emb"),
          executor=LocalExecutor(cfg))
    cfg.latent.method, cfg.latent.label_fraction = "few-labels", 0.25
    meta = partition(cfg, str(tmp_path / "emb"), str(tmp_path / "part"))["meta"]
    assert meta["method"] == "few-labels"
    assert meta["num_rows"] == read_embeddings(str(tmp_path / "emb")).ids.size > 0


def test_proxy_config_checks(tmp_path: Path) -> None:
    from sas_ray.config import ConfigError, load
    from sas_ray.stages.proxy import encoder_ref
    from sas_ray.validate import validate

    def cfg(**overrides: object) -> Config:
        return load(overrides={f"proxy.{k}": v for k, v in overrides.items()})

    assert encoder_ref(cfg()) is None  # proxy.encoder train
    assert encoder_ref(cfg(checkpoint="p.pt")) == EncoderRef("sas-ray", "p.pt")
    assert encoder_ref(cfg(encoder="timm:x", weights="w", allow_download=True)) == EncoderRef(
        "timm:x", "w", True)
    validate(cfg(encoder="timm:test_vit", weights=str(tmp_path)), ["pipeline", "embed"])
    for overrides, message in [
            ({"encoder": "tim:vit"}, "unknown encoder"),
            ({"encoder": "timm:test_vit"}, r"needs --proxy\.weights PATH"),
            ({"encoder": "timm:test_vit", "weights": str(tmp_path / "no")}, "does not exist"),
            ({"encoder": "sas-ray", "weights": str(tmp_path), "checkpoint": str(tmp_path)},
             "both name a proxy")]:
        with pytest.raises(ConfigError, match=message):
            validate(cfg(**overrides), ["pipeline"])
    with pytest.raises(ConfigError, match=r"--proxy\.encoder NAME --proxy\.weights PATH"):
        validate(cfg(), ["embed"])
