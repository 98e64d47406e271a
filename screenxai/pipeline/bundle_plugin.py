"""Models on Dask workers: a ``WorkerPlugin`` that carries a bundle's bytes and loads it once per worker.

The plugin holds every file of the bundle folder (weights, ``config.json``,
the interpretable model) as bytes plus the bundle's content hash (SHA-256 of
``config.json``, which itself records the SHA-256 of every weights file).
When a worker starts, or when the plugin is registered, ``setup`` writes the
files into the worker's local directory, checks the hash, loads the models
once onto the worker's device and sets torch's thread count. Tasks then take
the loaded models with ``worker_models()``; no model is ever pickled into a
task, and workers need no shared file system.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from distributed import WorkerPlugin, get_worker

from screenxai.errors import ScreenxaiError
from screenxai.models.bundle import CONFIG_NAME, Bundle, load_bundle
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
    """Every regular file under the bundle folder, keyed by its path relative to the folder."""
    root = Path(path)
    if not (root / CONFIG_NAME).is_file():
        raise ScreenxaiError(f"{root} is not a model bundle: {CONFIG_NAME} is missing")
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)}


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
        """A plugin carrying the bundle at ``path``."""
        files = bundle_files(path)
        return cls(files, hashlib.sha256(files[CONFIG_NAME]).hexdigest(), torch_threads)

    def setup(self, worker) -> None:
        import torch

        relax_malloc_thresholds()
        torch.set_num_threads(self.torch_threads or max(1, worker.state.nthreads))
        self.folder = Path(worker.local_directory) / f"bundle-{self.content_hash[:16]}"
        if self.folder.exists():
            shutil.rmtree(self.folder)
        for name, data in self.files.items():
            target = self.folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        bundle = load_bundle(self.folder, device=worker_device(worker.name))
        if bundle.content_hash != self.content_hash:
            raise ScreenxaiError(f"bundle on worker {worker.address} has hash {bundle.content_hash}, "
                                 f"expected {self.content_hash}")
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
