"""Which files of a run folder a publication copies, in which order, and what it refuses (no store needed)."""

from __future__ import annotations

import pytest

from screenxai.pipeline.run import RUN_RECORD
from screenxai.publish import PublishError, publish_run, run_files


def _run_folder(root):
    for name in [RUN_RECORD, "manifest.json", "wells.parquet", "cells/plate=p/A01-0.parquet", ".wells.parquet.done",
                 "bundle/config.json", "bundle.work/cache/crops.npy", ".cells.parquet.1f2e.tmp",
                 ".wells.parquet.9a.old"]:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
    return root


def test_run_files_keep_the_outputs_record_first_and_manifest_last(tmp_path):
    files = [p.relative_to(tmp_path).as_posix() for p in run_files(_run_folder(tmp_path))]
    assert files[0] == RUN_RECORD and files[-1] == "manifest.json"
    assert sorted(files[1:-1]) == [".wells.parquet.done", "bundle/config.json", "cells/plate=p/A01-0.parquet",
                                   "wells.parquet"]


def test_a_folder_without_manifest_or_a_local_destination_is_refused(tmp_path):
    (tmp_path / "wells.parquet").write_text("half a run")
    with pytest.raises(PublishError, match="no manifest.json, so not a finished run"):
        run_files(tmp_path)
    with pytest.raises(PublishError, match="not a URL"):
        publish_run(_run_folder(tmp_path / "run"), str(tmp_path / "elsewhere"))
