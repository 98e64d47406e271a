"""Models on Dask workers: a ``WorkerPlugin`` that carries a bundle's bytes and loads it once per worker.

The plugin holds every file of the bundle folder (weights, ``config.json``,
``explain/``, ``interpretable/`` and the manifest ``files.json``) as bytes
plus the bundle's content hash (SHA-256 of ``files.json``, which records the
SHA-256 of every other file); the client checks the folder against its
manifest before carrying it. When a worker starts, or when the plugin is
registered, ``setup`` writes the files into the worker's local directory,
checks every file against the manifest and the manifest against the hash,
and only then loads the models once onto the worker's device and sets
torch's thread count; a worker whose check fails has no models, so no task
runs on it. Tasks then take
the loaded models with ``worker_models()``; no model is ever pickled into a
task, and workers need no shared file system.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from distributed import WorkerPlugin, get_worker

from screenxai.errors import BundleError, ScreenxaiError
from screenxai.models.bundle import CONFIG_NAME, Bundle, load_bundle
from screenxai.models.manifest import MANIFEST_NAME, bundle_file_names, verify_bundle
from screenxai.pipeline.allocator import relax_malloc_thresholds

PLUGIN_NAME = "screenxai-bundle"
INTERPRETABLE_FOLDER = "interpretable"
EXPLAIN_FOLDER = "explain"


@dataclass
class WorkerModels:
    """What a worker loaded from the bundle: the bundle and, when present, the interpretable model and
    the attribute directions with their table."""

    bundle: Bundle
    interpretable: object | None
    explanations: tuple | None = None


def bundle_files(path: str | Path) -> dict[str, bytes]:
    """Every file of the bundle folder (``files.json`` included), keyed by its POSIX path relative to the folder."""
    root = Path(path)
    if not (root / CONFIG_NAME).is_file():
        raise BundleError(f"{root} is not a model bundle: {CONFIG_NAME} is missing")
    return {name: (root / name).read_bytes() for name in [*bundle_file_names(root), MANIFEST_NAME]
            if (root / name).is_file()}


class BundlePlugin(WorkerPlugin):
    """Loads a model bundle once per worker from the bytes it carries.

    ``torch_threads``: threads torch may use per worker (default: the
    worker's thread count), so that processes sharing a machine do not
    oversubscribe its cores.
    """

    name = PLUGIN_NAME

    def __init__(self, files: dict[str, bytes], content_hash: str, torch_threads: int | None = None) -> None:
        self.files = files
        self.content_hash = content_hash
        self.torch_threads = torch_threads
        self.models: WorkerModels | None = None
        self.folder: Path | None = None

    @classmethod
    def from_path(cls, path: str | Path, torch_threads: int | None = None) -> BundlePlugin:
        """A plugin carrying the bundle at ``path``, refused here when a file differs from its manifest."""
        files = bundle_files(path)
        return cls(files, verify_bundle(path), torch_threads)

    def setup(self, worker) -> None:
        import torch

        self.models = None
        self._write_files(worker)
        found = verify_bundle(self.folder)
        if found != self.content_hash:
            raise BundleError(f"bundle on worker {worker.address}: {MANIFEST_NAME} has hash {found}, "
                              f"expected {self.content_hash}")
        relax_malloc_thresholds()
        torch.set_num_threads(self.torch_threads or max(1, worker.state.nthreads))
        bundle = load_bundle(self.folder, device=worker_device(worker.name))
        interpretable = None
        if (self.folder / INTERPRETABLE_FOLDER).is_dir():
            from screenxai.interpret import load_interpretable

            interpretable = load_interpretable(self.folder / INTERPRETABLE_FOLDER)
        explanations = None
        if (self.folder / EXPLAIN_FOLDER).is_dir():
            from screenxai.explain import load_directions

            directions, attributes = load_directions(self.folder / EXPLAIN_FOLDER)
            explanations = (directions.to(next(bundle["autoencoder"].parameters()).device), attributes)
        self.models = WorkerModels(bundle, interpretable, explanations)

    def _write_files(self, worker) -> None:
        """The carried files into a fresh folder of the worker's local directory."""
        self.folder = Path(worker.local_directory) / f"bundle-{self.content_hash[:16]}"
        if self.folder.exists():
            shutil.rmtree(self.folder)
        for name, data in self.files.items():
            target = self.folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)

    def teardown(self, worker) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def worker_device(name: object) -> str:
    """The device of a worker: CUDA device ``name % GPUs`` for numbered local workers, else CPU.

    A local cluster on a machine with GPUs has one worker per GPU, named
    0, 1, ...; each takes its own device.
    """
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    index = int(name) if str(name).isdigit() else 0
    return f"cuda:{index % torch.cuda.device_count()}"


def worker_models() -> WorkerModels:
    """The models the bundle plugin loaded on the worker running this task."""
    plugin = get_worker().plugins.get(PLUGIN_NAME)
    if plugin is None or plugin.models is None:
        raise ScreenxaiError("no model bundle on this worker: register a BundlePlugin first")
    return plugin.models
