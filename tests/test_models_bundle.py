"""Model bundles: exact round trip, hashes, refusals, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from screenxai.errors import ScreenxaiError
from screenxai.models.autoencoder import AutoencoderConfig, DiffusionAutoencoder
from screenxai.models.bundle import (FORMAT_VERSION, BundleError, Provenance, check_channels, load_bundle,
                                     save_bundle, seal_bundle, sha256_file)
from screenxai.models.classifier import CellClassifier, ClassifierConfig, predict_proba
from screenxai.models.latent_checks import decode_fresh

torch.set_num_threads(1)
CHANNELS = ("DNA", "reporter")
NORMALISATION = {"channel_names": list(CHANNELS), "low": [10.0, 20.0], "high": [900.0, 1200.0]}


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Give every parameter random values, so zero-initialised layers matter in the comparison."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    classifier = CellClassifier(ClassifierConfig(in_channels=2, n_classes=2, width=8, stages=2)).eval()
    config = AutoencoderConfig(in_channels=2, image_size=16, n_classes=2, latent_dim=8, z_dim=8, encoder_width=8,
                               encoder_stages=2, unet_channels=(16, 16), conditioning="scale")
    autoencoder = DiffusionAutoencoder(config, classifier)
    _randomise(autoencoder, 1)
    return classifier, autoencoder.eval()


@pytest.fixture()
def bundle_path(models, tmp_path):
    classifier, autoencoder = models
    return save_bundle(tmp_path / "bundle", {"classifier": classifier, "autoencoder": autoencoder},
                       channel_names=CHANNELS, class_names=("negative", "positive"), crop_size=16,
                       normalisation=NORMALISATION,
                       provenance=Provenance(plates=("p1",), wells=("B02", "B03"), seed=7, preset="tiny"))


def test_round_trip_gives_identical_outputs(models, bundle_path):
    classifier, autoencoder = models
    bundle = load_bundle(bundle_path)
    crops = torch.rand(6, 2, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    np.testing.assert_array_equal(predict_proba(bundle["classifier"], crops), predict_proba(classifier, crops))
    loaded = bundle["autoencoder"]
    assert loaded.classifier is bundle["classifier"]
    z = autoencoder.encode(crops)
    assert torch.equal(loaded.encode(crops), z)
    assert torch.equal(decode_fresh(loaded, z, steps=3, seed=5), decode_fresh(autoencoder, z, steps=3, seed=5))
    assert torch.equal(loaded.invert(crops, z, 3), autoencoder.invert(crops, z, 3))


def test_config_records_settings_provenance_and_hashes(bundle_path):
    bundle = load_bundle(bundle_path)
    config = json.loads((bundle_path / "config.json").read_text())
    assert config["format_version"] == FORMAT_VERSION
    assert bundle.channel_names == CHANNELS and bundle.class_names == ("negative", "positive")
    assert bundle.crop_size == 16 and bundle.normalisation == NORMALISATION
    assert config["provenance"]["wells"] == ["B02", "B03"] and config["provenance"]["seed"] == 7
    assert "screenxai_version" in config["provenance"]
    for role in ("classifier", "autoencoder"):
        entry = config["models"][role]
        assert entry["sha256"] == sha256_file(bundle_path / f"{role}.safetensors")
    assert config["models"]["autoencoder"]["config"]["conditioning"] == "scale"
    manifest = json.loads((bundle_path / "files.json").read_text())
    assert manifest["files"] == {name: sha256_file(bundle_path / name)
                                 for name in ("autoencoder.safetensors", "classifier.safetensors", "config.json")}
    assert bundle.content_hash == sha256_file(bundle_path / "files.json")
    assert sorted(p.name for p in bundle_path.parent.iterdir()) == ["bundle"]


def test_autoencoder_file_does_not_repeat_the_classifier(bundle_path):
    from safetensors import safe_open
    with safe_open(bundle_path / "autoencoder.safetensors", "pt") as handle:
        assert not [k for k in handle.keys() if k.startswith("classifier.")]


def test_refuses_corrupt_weights(bundle_path):
    path = bundle_path / "classifier.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="classifier.safetensors is altered"):
        load_bundle(bundle_path)


def test_refuses_missing_files(bundle_path):
    (bundle_path / "autoencoder.safetensors").unlink()
    with pytest.raises(BundleError, match="autoencoder.safetensors.*missing"):
        load_bundle(bundle_path)
    (bundle_path / "config.json").unlink()
    with pytest.raises(BundleError, match="config.json is missing"):
        load_bundle(bundle_path)


def test_refuses_a_newer_format(bundle_path):
    config_path = bundle_path / "config.json"
    config = json.loads(config_path.read_text())
    config["format_version"] = FORMAT_VERSION + 1
    config_path.write_text(json.dumps(config))
    seal_bundle(bundle_path)
    with pytest.raises(BundleError, match="newer"):
        load_bundle(bundle_path)


def test_refuses_other_channels(bundle_path):
    bundle = load_bundle(bundle_path)
    check_channels(bundle, ["DNA", "reporter"])
    for wrong in (["reporter", "DNA"], ["DNA"], ["DNA", "GFP"]):
        with pytest.raises(BundleError, match="not those the bundle") as info:
            check_channels(bundle, wrong)
        assert isinstance(info.value, ScreenxaiError)


def test_save_refuses_to_overwrite_unless_asked_and_replaces_whole(models, bundle_path):
    classifier, _ = models
    before = sha256_file(bundle_path / "config.json")
    kwargs = dict(channel_names=CHANNELS, class_names=("negative", "positive"), crop_size=16,
                  normalisation=NORMALISATION)
    with pytest.raises(BundleError, match="already exists"):
        save_bundle(bundle_path, {"classifier": classifier}, **kwargs)
    assert sha256_file(bundle_path / "config.json") == before
    save_bundle(bundle_path, {"classifier": classifier}, overwrite=True, **kwargs)
    assert sorted(p.name for p in bundle_path.iterdir()) == ["classifier.safetensors", "config.json", "files.json"]
    assert sorted(p.name for p in bundle_path.parent.iterdir()) == ["bundle"]


def test_the_manifest_covers_files_added_later_once_sealed(bundle_path):
    before = load_bundle(bundle_path).content_hash
    (bundle_path / "explain").mkdir()
    (bundle_path / "explain" / "directions.json").write_text("{}")
    with pytest.raises(BundleError, match="explain/directions.json is not part of the bundle"):
        load_bundle(bundle_path)
    assert seal_bundle(bundle_path) == load_bundle(bundle_path).content_hash != before
    (bundle_path / "explain" / "directions.json").write_text("{ }")
    with pytest.raises(BundleError, match="explain/directions.json is altered"):
        load_bundle(bundle_path)


def test_a_writer_about_to_replace_a_folder_may_load_the_bundle_without_checking_that_folder(bundle_path):
    (bundle_path / "interpretable").mkdir()
    (bundle_path / "interpretable" / "half-written.safetensors").write_bytes(b"\0")
    assert load_bundle(bundle_path, replacing=("interpretable",)).models
    with pytest.raises(BundleError, match="half-written.safetensors is not part of the bundle"):
        load_bundle(bundle_path, replacing=("explain",))
    weights = bundle_path / "classifier.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1])
    with pytest.raises(BundleError, match="classifier.safetensors is altered"):
        load_bundle(bundle_path, replacing=("interpretable",))


def test_hidden_temporaries_are_not_part_of_a_bundle(bundle_path):
    before = load_bundle(bundle_path).content_hash
    (bundle_path / ".config.json.0123.tmp").write_text("left by an interrupted write")
    assert load_bundle(bundle_path).content_hash == before == seal_bundle(bundle_path)


def test_a_bundle_gets_the_umask_not_a_temporary_folder_s_private_mode(models, tmp_path):
    import os
    import stat

    classifier, _ = models
    before = os.umask(0o022)
    try:
        path = save_bundle(tmp_path / "shared", {"classifier": classifier}, channel_names=CHANNELS,
                           class_names=("negative", "positive"), crop_size=16, normalisation=NORMALISATION)
    finally:
        os.umask(before)
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.iterdir()} == {
        "classifier.safetensors": 0o644, "config.json": 0o644, "files.json": 0o644}
