"""Every file of a trained bundle is part of its content hash: an altered, removed or added file of any kind
is refused by ``load_bundle``, by the client and by the worker plugin, naming the file."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest
from distributed import Client, Scheduler, SpecCluster, Worker

from screenxai.errors import BundleError, ScreenxaiError
from screenxai.models.bundle import load_bundle, seal_bundle
from screenxai.models.presets import registered_preset
from screenxai.pipeline.bundle_plugin import BundlePlugin, bundle_files, worker_models
from screenxai.pipeline.train_job import TrainSettings, train
from screenxai.plate.reader import open_plate
from screenxai.plate.simulate import simulate_screen
from conftest import REPO_ROOT
from test_models_training import MINI

# One file of each kind, and a new file of the same kind that a bundle does not hold.
KINDS = {"weights": ("classifier.safetensors", "spare.safetensors"),
         "directions": ("explain/directions.safetensors", "explain/directions-2.safetensors"),
         "interpretable model": ("interpretable/vae.safetensors", "interpretable/vae-2.safetensors"),
         "config": ("config.json", "settings.json")}
ACTIONS = {"altered": "is altered", "removed": "is missing", "added": "is not part of the bundle"}


@pytest.fixture(scope="module")
def client():
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
    with SpecCluster(workers={"w": {"cls": Worker, "options": {"nthreads": 1}}}, scheduler=scheduler) as cluster, \
            Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def bundle(client, tmp_path_factory) -> Path:
    """A bundle trained with every stage (weights, ``explain/``, ``interpretable/``) under umask 022."""
    root = tmp_path_factory.mktemp("manifest")
    simulate_screen(root / "plate.zarr", rows=2, columns=4, fields=2, size=192, seed=7)
    before = os.umask(0o022)
    try:
        settings = TrainSettings(preset="mini", seed=1, max_cells_per_well=30, explain_cells=8, check_cells=8,
                                 check_steps=2, explain_directions=2, explain_attributes=1, explain_guided=False)
        out = root / "bundle"
        with registered_preset(MINI):
            train([open_plate(root / "plate.zarr")], out, client, settings)
        return out
    finally:
        os.umask(before)


def _tamper(files: dict[str, bytes], kind: str, action: str) -> tuple[dict[str, bytes], str]:
    """A copy of ``files`` with one file of ``kind`` altered, removed or added; and that file's name."""
    name, new = KINDS[kind]
    files = dict(files)
    if action == "altered":
        data = bytearray(files[name])
        data[len(data) // 2] ^= 0x01
        files[name] = bytes(data)
    elif action == "removed":
        del files[name]
    else:
        files[new] = files[name]
        name = new
    return files, name


def _write(files: dict[str, bytes], folder: Path) -> Path:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


CASES = [(kind, action) for kind in KINDS for action in ACTIONS]


def test_a_trained_bundle_lists_every_file_it_holds_and_loads(bundle):
    manifest = json.loads((bundle / "files.json").read_text())["files"]
    on_disk = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*")
                     if p.is_file() and not any(part.startswith(".") for part in p.relative_to(bundle).parts))
    assert sorted(manifest) == [n for n in on_disk if n != "files.json"]
    assert {name for name, _ in KINDS.values()} <= set(manifest)
    assert load_bundle(bundle).content_hash == BundlePlugin.from_path(bundle).content_hash


@pytest.mark.parametrize("kind, action", CASES)
def test_load_bundle_and_the_client_refuse_a_changed_file_naming_it(bundle, tmp_path, kind, action):
    files, name = _tamper(bundle_files(bundle), kind, action)
    folder = _write(files, tmp_path / "bundle")
    message = "config.json is missing" if (kind, action) == ("config", "removed") else \
        f"{re.escape(name)} {ACTIONS[action]}"
    with pytest.raises(BundleError, match=message):
        load_bundle(folder)
    with pytest.raises(BundleError, match=message):
        BundlePlugin.from_path(folder)


@pytest.mark.parametrize("kind, action", CASES)
def test_the_worker_refuses_changed_files_before_any_task_gets_models(bundle, client, kind, action):
    files, name = _tamper(bundle_files(bundle), kind, action)
    plugin = BundlePlugin(files, load_bundle(bundle).content_hash, torch_threads=1)
    with pytest.raises(BundleError, match=f"{re.escape(name)} {ACTIONS[action]}"):
        client.register_plugin(plugin)
    with pytest.raises(ScreenxaiError, match="no model bundle on this worker"):
        client.submit(worker_models, pure=False).result()


def test_the_worker_refuses_a_resealed_bundle_whose_hash_is_not_the_expected_one(bundle, client, tmp_path):
    files, _ = _tamper(bundle_files(bundle), "directions", "altered")
    folder = _write({k: v for k, v in files.items() if k != "files.json"}, tmp_path / "bundle")
    resealed = seal_bundle(folder)
    assert load_bundle(folder).content_hash == resealed != load_bundle(bundle).content_hash
    plugin = BundlePlugin(bundle_files(folder), load_bundle(bundle).content_hash, torch_threads=1)
    with pytest.raises(BundleError, match=f"files.json has hash {resealed}, expected"):
        client.register_plugin(plugin)


def test_the_worker_loads_the_intact_bundle_with_its_directions_and_interpretable_model(bundle, client):
    client.register_plugin(BundlePlugin.from_path(bundle, torch_threads=1))

    def loaded() -> tuple[str, bool, bool]:
        models = worker_models()
        return models.bundle.content_hash, models.explanations is not None, models.interpretable is not None

    assert client.submit(loaded, pure=False).result() == (load_bundle(bundle).content_hash, True, True)


def test_a_bundle_is_readable_by_others_under_umask_022(bundle):
    for path in [bundle, *bundle.rglob("*")]:
        if any(part.startswith(".") for part in path.relative_to(bundle).parts):
            continue
        want = 0o755 if path.is_dir() else 0o644
        assert stat.S_IMODE(path.stat().st_mode) == want, path.relative_to(bundle)


def test_docs_list_every_file_of_a_trained_bundle(bundle):
    text = (REPO_ROOT / "docs" / "bundle.md").read_text()
    listing = text.split("```\nbundle/\n", 1)[1].split("```", 1)[0]
    documented, folder = set(), ""
    for line in listing.splitlines():
        entry = line.split()[0] if line.strip() else ""
        if not entry:
            continue
        if line.startswith("  ") and not line.startswith("    "):
            folder = entry if entry.endswith("/") else ""
            documented.add(entry)
        elif line.startswith("    ") and folder and not line.startswith("     "):
            documented.add(folder + entry)
    files = json.loads((bundle / "files.json").read_text())["files"]
    assert set(files) | {"files.json"} <= documented, sorted(set(files) - documented)
