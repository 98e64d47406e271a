"""What a new user hits: mistyped options refused up front, starting over, Ctrl-C, and the exit statuses."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from distributed import Client

from conftest import REPO_ROOT
from screenxai.cells import CellConfig
from screenxai.cli import EXIT_FAILED_FIELDS, EXIT_INTERRUPTED, LogProgress, main
from screenxai.errors import ScreenxaiError
from screenxai.models.presets import registered_preset
from screenxai.pipeline.cluster import quiet_interrupted_sync
from screenxai.pipeline.run import RUN_RECORD, open_plates, run_cells
from screenxai.plate.simulate import simulate_screen, truth_path
from test_models_training import MINI


@pytest.fixture(scope="module")
def plate_path(tmp_path_factory) -> Path:
    """A 2x3-well, one-field simulated plate (negative, dose and positive columns)."""
    path = tmp_path_factory.mktemp("bad-input") / "plate.zarr"
    simulate_screen(path, rows=2, columns=3, fields=1, size=128, seed=0)
    return path


def _cli(*args: str | Path):
    """``screenxai ARGS`` through click's test runner."""
    return CliRunner().invoke(main, [str(a) for a in args])


def _run(plate: Path, out: Path, client, *options: str):
    """``screenxai run`` of the cell stage on the test cluster."""
    return _cli("run", plate, "-o", out, "--cells-only", "--scheduler", client.scheduler.address, *options)


def test_an_unknown_preset_is_refused_before_anything_is_written(plate_path, tmp_path):
    result = _cli("run", "-o", tmp_path / "out", "--preset", "bogus")
    assert result.exit_code == 2
    assert result.output == "error: --preset 'bogus' is not a model preset; known presets: base, small, tiny\n"
    assert not (tmp_path / "out").exists()  # not even the demo plate
    result = _cli("train", plate_path, "-o", tmp_path / "bundle", "--preset", "bogus")
    assert result.exit_code == 2 and "--preset 'bogus'" in result.output and "known presets" in result.output
    assert not (tmp_path / "bundle").exists() and not (tmp_path / "bundle.work").exists()


def test_a_nuclear_channel_no_plate_has_is_refused_up_front_and_a_corrected_rerun_succeeds(
        plate_path, client, tmp_path):
    out = tmp_path / "out"
    refused = _run(plate_path, out, client, "--nuclear-channel", "Hoechst")
    assert refused.exit_code == 2
    assert refused.output.count("\n") == 1 and "Dask dashboard" not in refused.output
    assert "nuclear channel 'Hoechst' is not among the channels ['DNA', 'reporter']" in refused.output
    assert "--nuclear-channel" in refused.output and f"plate {plate_path.stem}" in refused.output
    rerun = _run(plate_path, out, client)
    assert rerun.exit_code == 0, rerun.output
    assert len(pd.read_parquet(out / "wells.parquet")) == 6
    trained = _cli("train", plate_path, "-o", tmp_path / "bundle", "--nuclear-channel", "Hoechst")
    assert trained.exit_code == 2 and "'Hoechst' is not among the channels" in trained.output
    assert not (tmp_path / "bundle.work").exists()


def test_train_classes_absent_from_the_layout_are_refused_up_front_naming_the_classes_present(plate_path, tmp_path):
    result = _cli("train", plate_path, "-o", tmp_path / "bundle", "--classes", "negative,wortmannin")
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "no well has control = ['wortmannin']" in result.output
    assert "['dose', 'negative', 'positive'] (--classes)" in result.output
    assert "Dask dashboard" not in result.output and not (tmp_path / "bundle.work").exists()
    result = _cli("run", plate_path, "-o", tmp_path / "out", "--class-column", "treatment")
    assert result.exit_code == 2 and "has no column 'treatment'" in result.output and "'compound'" in result.output
    assert not (tmp_path / "out").exists()


def test_a_run_that_wrote_no_field_leaves_nothing_that_blocks_a_plain_rerun(plate_path, client, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ScreenxaiError, match="every field failed"):  # the Python API has no up-front check
        run_cells(open_plates([plate_path]), out, client, CellConfig(nuclear_channel="Hoechst"))
    assert not (out / RUN_RECORD).exists()
    rerun = _run(plate_path, out, client)
    assert rerun.exit_code == 0, rerun.output


def test_overwrite_replaces_the_run_but_keeps_the_plate_it_reads(plate_path, client, tmp_path):
    out = tmp_path / "out"
    plate = out / "plate.zarr"  # the demo's place, given here as the plate to read
    shutil.copytree(plate_path, plate)
    shutil.copy(truth_path(plate_path), truth_path(plate))
    first = _run(plate, out, client, "--wells", "A01")
    assert first.exit_code == 0, first.output
    again = _run(plate, out, client)
    assert again.exit_code == 2 and "already holds a run" in again.output and "--overwrite" in again.output
    other = _run(plate, out, client, "--wells", "A01", "--crop-size", "48", "--resume")
    assert other.exit_code == 2 and "cells differ" in other.output and "--overwrite" in other.output
    both = _run(plate, out, client, "--overwrite", "--resume")
    assert both.exit_code == 2 and "--overwrite replaces the run in OUT and --resume continues it" in both.output
    replaced = _run(plate, out, client, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert sorted(pd.read_parquet(out / "wells.parquet")["well"]) == ["A01", "A02", "A03", "B01", "B02", "B03"]
    assert sorted(pd.read_parquet(out / "cells")["well"].astype(str).unique()) == ["A01", "A02", "A03", "B01",
                                                                                    "B02", "B03"]
    assert truth_path(plate).exists() and len(open_plates([plate])[0].wells) == 6


def test_overwrite_refuses_a_folder_that_holds_no_run(plate_path, client, tmp_path):
    (tmp_path / "notes.txt").write_text("not a run")
    result = _run(plate_path, tmp_path, client, "--overwrite")
    assert result.exit_code == 2 and "holds no screenxai run to overwrite" in result.output
    assert (tmp_path / "notes.txt").exists()


def _interrupt_after_first_field(monkeypatch) -> None:
    """Ctrl-C while the fields run: the progress callback raises KeyboardInterrupt after the first field."""
    count = LogProgress.__call__

    def interrupt(self, row):
        count(self, row)
        raise KeyboardInterrupt

    monkeypatch.setattr(LogProgress, "__call__", interrupt)


def test_ctrl_c_during_a_run_says_what_was_kept_and_how_to_resume(plate_path, client, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _interrupt_after_first_field(monkeypatch)
    result = _run(plate_path, out, client, "--overwrite")
    assert result.exit_code == EXIT_INTERRUPTED == 130
    line = result.stderr.splitlines()[-1]
    assert line.startswith("interrupted: kept ") and f"of 6 fields written in {out}" in line
    command = f"screenxai run {plate_path} -o {out} --cells-only --scheduler {client.scheduler.address} --resume"
    assert line.endswith(f"; to resume, run: {command}")
    assert "Traceback" not in result.output and len(result.stderr.splitlines()) == 2  # the dashboard, the line
    monkeypatch.undo()
    resumed = CliRunner().invoke(main, shlex.split(command)[1:])
    assert resumed.exit_code == 0, resumed.output
    assert len(pd.read_parquet(out / "fields.parquet")) == 6


def test_ctrl_c_during_training_names_the_kept_crop_cache_and_the_same_command(plate_path, client, tmp_path,
                                                                              monkeypatch):
    import screenxai.pipeline.train_job as train_job

    build = train_job.build_crop_cache

    def cut_then_interrupt(*args, **kwargs):
        build(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_job, "build_crop_cache", cut_then_interrupt)
    out = tmp_path / "bundle"
    args = ["train", str(plate_path), "-o", str(out), "--scheduler", client.scheduler.address,
            "--max-cells-per-well", "5"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 130
    assert result.stderr.splitlines()[-1] == (f"interrupted: kept the crop cache in {out}.work; to resume, run: "
                                              f"screenxai {shlex.join(args)}")
    assert "Traceback" not in result.output
    assert (out.parent / "bundle.work" / "cache").is_dir()
    refused = _cli("run", plate_path, "-o", out.parent, "--preset", "tiny")
    assert refused.exit_code == 2 and "trained with the 'small' preset, not 'tiny'" in refused.output


def test_a_real_ctrl_c_to_the_whole_command_stops_workers_and_client_with_one_line(tmp_path):
    """SIGINT to the process group, as a terminal sends it: the local cluster's workers print no tracebacks."""
    # Fields of 512 px: the run outlasts the poll for its first file even on a loaded machine.
    simulate_screen(tmp_path / "plate.zarr", rows=2, columns=4, fields=2, size=512, seed=1)
    command = [sys.executable, "-m", "screenxai.cli", "run", "plate.zarr", "-o", "out", "--cells-only",
               "--workers", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    run = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, start_new_session=True)
    deadline = time.monotonic() + 50
    while not list((tmp_path / "out").glob("cells/*/*/*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGINT)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 130, stderr
    assert len(stderr.splitlines()) == 2, stderr
    dashboard, line = stderr.splitlines()
    assert dashboard.startswith("Dask dashboard: ")
    kept = re.fullmatch(r"interrupted: kept (\d+) of 16 fields written in out; to resume, run: "
                        r"screenxai run plate.zarr -o out --cells-only --workers 1 --resume", line)
    assert kept and 1 <= int(kept.group(1)) < 16, line


def _interrupt_a_sync_call_before_its_future_exists(client: Client) -> None:
    """Ctrl-C while the client's loop is busy, so that distributed's ``sync`` cancels a future it never made.

    Python's own Ctrl-C handler is used meanwhile: a module imported earlier
    in this process (dask-jobqueue's) may have replaced it.
    """
    client.loop.add_callback(time.sleep, 1.0)
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
        with pytest.raises(KeyboardInterrupt):
            client.sync(asyncio.sleep, 5)
    finally:
        signal.signal(signal.SIGINT, handler)
    time.sleep(1.5)  # the loop runs the cancel callback, which logs


@pytest.mark.parametrize("quiet", [False, True], ids=["distributed alone", "under connect's filter"])
def test_ctrl_c_before_a_sync_call_starts_logs_no_traceback_under_connect(quiet, caplog):
    """The negative control shows distributed's own ``NameError`` traceback; ``connect``'s filter removes just it."""
    with Client(processes=False, n_workers=1, dashboard_address="127.0.0.1:0") as client:
        with quiet_interrupted_sync() if quiet else nullcontext():
            _interrupt_a_sync_call_before_its_future_exists(client)
            logging.getLogger("tornado.application").error("another loop error", exc_info=ValueError("kept"))
    logged = [record.exc_info[1] for record in caplog.records if record.exc_info]
    assert [type(error) for error in logged] == ([ValueError] if quiet else [NameError, ValueError])


@pytest.fixture(scope="module")
def mini_bundle(tmp_path_factory) -> Path:
    """A bundle of the 16 px ``mini`` preset trained in seconds on toy cells; its provenance records the preset."""
    from toy_cells import toy_cells
    from screenxai.models.training import save_trained, train_models

    crops, table = toy_cells(wells_per_class=2, cells_per_well=20, size=16, doses=1, seed=0)
    path = tmp_path_factory.mktemp("mini-bundle") / "bundle"
    return save_trained(path, train_models(crops, table, MINI, seed=0), table, ["DNA", "reporter"],
                        {"channel_names": ["DNA", "reporter"], "low": [0, 0], "high": [1, 1]})


def test_a_run_bundle_of_another_preset_is_refused_saying_how_to_proceed_and_one_of_the_same_is_reused(
        plate_path, mini_bundle, client, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(mini_bundle, out / "bundle")
    args = ["run", plate_path, "-o", out, "--scheduler", client.scheduler.address]
    refused = _cli(*args, "--preset", "tiny")
    assert refused.exit_code == 2 and refused.output.count("\n") == 1 and "Dask dashboard" not in refused.output
    assert f"{out / 'bundle'} was trained with the 'mini' preset, not 'tiny'" in refused.output
    assert all(way in refused.output for way in ("--preset mini", "(-o)", "--overwrite", "(--bundle)"))
    with registered_preset(MINI):
        reused = _cli(*args, "--preset", "mini")
    assert reused.exit_code == 0, reused.output
    unwrapped = "".join(reused.output.split())  # rich wraps long lines, inside a path too
    assert f"usingthebundletrainedearlierat{out / 'bundle'}" in unwrapped
    assert "mean_p_positive" in pd.read_parquet(out / "wells.parquet")


def _with_a_broken_field(plate_path: Path, tmp_path: Path) -> Path:
    """A copy of the plate whose well A02 (a dose well, trained on by no model) has a garbage chunk."""
    plate = tmp_path / "plate.zarr"
    shutil.copytree(plate_path, plate)
    chunk = next(p for p in (plate / "A" / "02" / "0" / "s0").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(b"\x00garbage")
    return plate


def test_a_run_with_failed_fields_writes_everything_and_exits_with_its_own_status(plate_path, client, tmp_path):
    plate = _with_a_broken_field(plate_path, tmp_path)
    result = _run(plate, tmp_path / "out", client)
    assert result.exit_code == EXIT_FAILED_FIELDS == 3, result.output
    assert "1 field(s) failed" in result.stderr
    assert pd.read_parquet(tmp_path / "out" / "failures.parquet")["well"].tolist() == ["A02"]
    assert (tmp_path / "out" / "report.html").exists() and (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.parametrize("group", ["", "A/02"])
def test_a_plate_or_well_zarr_json_that_is_not_json_is_one_error_naming_the_file(plate_path, group, tmp_path):
    plate = tmp_path / "plate.zarr"
    shutil.copytree(plate_path, plate)
    broken = plate / group / "zarr.json"
    broken.write_text("{garbage")
    for command in (["info", plate], ["run", plate, "-o", tmp_path / "out", "--cells-only"]):
        result = _cli(*command)
        assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
        assert result.output.startswith("error: ") and f"{broken} is not valid JSON" in result.output
    assert not (tmp_path / "out").exists()


def test_a_field_zarr_json_that_is_not_json_fails_that_field_naming_the_file(plate_path, client, tmp_path):
    plate = tmp_path / "plate.zarr"
    shutil.copytree(plate_path, plate)
    (plate / "B" / "03" / "0" / "zarr.json").write_text("{garbage")
    result = _run(plate, tmp_path / "out", client)
    assert result.exit_code == EXIT_FAILED_FIELDS, result.output
    failures = pd.read_parquet(tmp_path / "out" / "failures.parquet")
    assert failures["well"].tolist() == ["B03"]
    assert f"{plate / 'B' / '03' / '0' / 'zarr.json'} is not valid JSON" in failures["error"].iloc[0]


@pytest.fixture(scope="module")
def plate_bundle(plate_path, client, tmp_path_factory) -> Path:
    """A ``mini`` bundle (classifier and autoencoder, no attributes yet) trained on ``plate_path`` by the CLI."""
    path = tmp_path_factory.mktemp("plate-bundle") / "bundle"
    with registered_preset(MINI):
        result = _cli("train", plate_path, "-o", path, "--preset", "mini", "--stages", "classifier,autoencoder",
                      "--scheduler", client.scheduler.address)
    assert result.exit_code == 0, result.output
    return path


def test_explain_with_failed_fields_writes_everything_and_exits_with_the_status_of_run(
        plate_path, plate_bundle, client, tmp_path):
    plate, bundle, out = _with_a_broken_field(plate_path, tmp_path), tmp_path / "bundle", tmp_path / "out"
    shutil.copytree(plate_bundle, bundle)
    with registered_preset(MINI):
        result = _cli("explain", bundle, plate, "-o", out, "--scheduler", client.scheduler.address)
    assert result.exit_code == EXIT_FAILED_FIELDS, result.output
    assert f"1 field(s) failed; see {out / 'failures.parquet'}" in result.stderr
    assert pd.read_parquet(out / "failures.parquet")["well"].tolist() == ["A02"]
    assert (out / "attributes.parquet").exists() and (out / "counterfactuals.zarr").exists()


@pytest.mark.parametrize("wells", [("--wells", "B02"), ()], ids=["selected", "all"])
def test_a_layout_without_a_row_for_a_processed_well_is_refused_before_anything_is_written(
        plate_path, plate_bundle, client, tmp_path, wells):
    layout = open_plates([plate_path])[0].layout
    csv = tmp_path / "layout.csv"
    layout[layout["well"] != "B02"].to_csv(csv, index=False)
    bundle, out = tmp_path / "bundle", tmp_path / "out"
    shutil.copytree(plate_bundle, bundle)
    scheduler = ("--scheduler", client.scheduler.address)
    for command in (["run", plate_path, "-o", out, "--layout", csv, *scheduler, *wells],
                    ["explain", bundle, plate_path, "-o", out, "--layout", csv, *scheduler, *wells]):
        result = _cli(*command)
        assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
        assert result.output.startswith(f"error: layout file {csv} has no row for well(s) B02 of plate plate,")
        assert ("leave them out of --wells" if wells else "select the wells it lists with --wells") in result.output
        assert not out.exists()
    assert sorted(p.name for p in bundle.iterdir()) == sorted(p.name for p in plate_bundle.iterdir())


def test_a_run_of_wells_holding_none_of_the_classes_writes_its_tables_and_renders_no_exemplar(
        plate_path, plate_bundle, client, tmp_path):
    """A dose well alone: no cell of the classifier's classes to render, so no counterfactuals.zarr, and exit 0."""
    bundle = tmp_path / "bundle"
    shutil.copytree(plate_bundle, bundle)
    scheduler = ("--scheduler", client.scheduler.address)
    with registered_preset(MINI):
        explained = _cli("explain", bundle, plate_path, "-o", tmp_path / "explained", *scheduler)
        assert explained.exit_code == 0, explained.output
        result = _cli("run", plate_path, "-o", tmp_path / "out", "--bundle", bundle, "--wells", "A02", *scheduler)
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    assert pd.read_parquet(out / "wells.parquet")["well"].tolist() == ["A02"]
    assert (out / "attributes.parquet").exists() and not (out / "counterfactuals.zarr").exists()
    assert (explained_zarr := tmp_path / "explained" / "counterfactuals.zarr").exists(), explained_zarr
