"""Plates on object storage: a real S3-compatible server (moto) on loopback, read through zarr and fsspec."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from screenxai.cli import main
from screenxai.errors import PlateError
from screenxai.plate import open_plate
from screenxai.plate.simulate import simulate_screen
from screenxai.screen import Screen

moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")
SECRET = "s3-secret-that-must-never-be-written-anywhere"
BUCKET = "screens"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3 server on 127.0.0.1 holding a simulated plate at s3://screens/sim.zarr; its credentials in the env."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "screen-reader",
           "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        local = tmp_path_factory.mktemp("s3-plate") / "sim.zarr"
        simulate_screen(local, rows=1, columns=3, fields=1, size=128)
        fs = s3fs.S3FileSystem(endpoint_url=env["AWS_ENDPOINT_URL"])
        fs.mkdir(BUCKET)
        fs.put(str(local), f"{BUCKET}/sim.zarr", recursive=True)
        yield f"s3://{BUCKET}/sim.zarr", local
    server.stop()


def test_a_plate_on_s3_opens_like_the_local_one(s3):
    url, local = s3
    remote, here = open_plate(url), open_plate(local)
    assert remote.url == url and remote.name == here.name
    assert remote.channel_names == here.channel_names and list(remote.wells) == list(here.wells)
    assert (remote.layout.equals(here.layout))
    assert [p.url for p in Screen.open(url).plates] == [url]


def test_run_reads_an_s3_plate_through_the_whole_run_and_writes_no_credential(s3, tmp_path):
    url, local = s3
    result = CliRunner().invoke(main, ["run", url, "--cells-only", "--workers", "1", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    wells = pd.read_parquet(tmp_path / "out" / "wells.parquet")
    assert list(wells["well"]) == ["A01", "A02", "A03"] and (wells["n_cells"] > 0).all()
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["plates"][0]["url"] == url
    assert all(f["status"] == "done" for f in manifest["fields"])
    assert SECRET not in result.output
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_unreachable_store_missing_plate_and_credentials_in_the_url_are_one_clear_error(s3, monkeypatch, tmp_path):
    url, _ = s3
    with pytest.raises(PlateError, match="s3://screens/nothing.zarr: not a Zarr group"):
        open_plate(f"s3://{BUCKET}/nothing.zarr")
    with pytest.raises(PlateError, match="credentials in a plate URL") as err:
        open_plate(f"s3://reader:{SECRET}@{BUCKET}/sim.zarr")
    assert SECRET not in str(err.value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    s3fs.S3FileSystem.clear_instance_cache()  # fsspec keeps file systems, with the endpoint they were made with
    result = CliRunner().invoke(main, ["run", url, "--cells-only", "-o", str(tmp_path / "out")])
    s3fs.S3FileSystem.clear_instance_cache()
    assert result.exit_code == 2 and result.output.startswith(f"error: {url}: the store cannot be read")
    assert "Traceback" not in result.output and SECRET not in result.output


@pytest.fixture(scope="module")
def published(s3, tmp_path_factory):
    """A cells-only run of the S3 plate, published by `run --publish` to s3://screens/runs/first."""
    url, _ = s3
    out = tmp_path_factory.mktemp("published") / "out"
    destination = f"s3://{BUCKET}/runs/first"
    result = CliRunner().invoke(main, ["run", url, "--cells-only", "--workers", "1", "-o", str(out),
                                       "--publish", destination])
    return result, out, destination


def _remote_files(url: str) -> list[str]:
    fs = s3fs.S3FileSystem()
    root = url.removeprefix("s3://")
    return sorted(path.removeprefix(root + "/") for path in fs.find(root))


def test_run_publishes_its_outputs_to_s3_where_pandas_reads_them(published):
    from screenxai.publish import run_files

    result, out, destination = published
    assert result.exit_code == 0, result.output
    assert f"to {destination} in" in result.output
    assert _remote_files(destination) == sorted(p.relative_to(out).as_posix() for p in run_files(out))
    assert "manifest.json" in _remote_files(destination) and "cells" in {p.split("/")[0] for p in
                                                                            _remote_files(destination)}
    pd.testing.assert_frame_equal(pd.read_parquet(f"{destination}/wells.parquet"),
                                  pd.read_parquet(out / "wells.parquet"))
    remote_cells = pd.read_parquet(f"{destination}/cells")
    assert len(remote_cells) == len(pd.read_parquet(out / "cells")) > 0
    assert SECRET not in result.output


def test_a_published_run_is_replaced_only_when_asked_and_nothing_of_it_outlives_the_copy(published):
    _, out, destination = published
    fs = s3fs.S3FileSystem()
    again = CliRunner().invoke(main, ["publish", str(out), destination])
    assert again.exit_code == 2 and "already holds a run" in again.output and "--overwrite" in again.output
    fs.pipe_file(f"{destination.removeprefix('s3://')}/stale.parquet", b"from an earlier run")
    replaced = CliRunner().invoke(main, ["publish", str(out), destination, "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert "stale.parquet" not in _remote_files(destination)


def test_a_stopped_copy_is_replaced_and_foreign_files_are_never_touched(published):
    from screenxai.pipeline.run import RUN_RECORD

    _, out, _ = published
    fs = s3fs.S3FileSystem()
    fs.pipe_file(f"{BUCKET}/runs/stopped/{RUN_RECORD}", b"{}")  # what a copy that stopped after one file leaves
    fs.pipe_file(f"{BUCKET}/runs/stopped/cells/part.parquet", b"half")
    resumed = CliRunner().invoke(main, ["publish", str(out), f"s3://{BUCKET}/runs/stopped"])
    assert resumed.exit_code == 0, resumed.output
    assert "cells/part.parquet" not in _remote_files(f"s3://{BUCKET}/runs/stopped")
    fs.pipe_file(f"{BUCKET}/other/notes.txt", b"a lab's own file")
    refused = CliRunner().invoke(main, ["publish", str(out), f"s3://{BUCKET}/other", "--overwrite"])
    assert refused.exit_code == 2 and "not a screenxai run" in refused.output
    assert fs.cat_file(f"{BUCKET}/other/notes.txt") == b"a lab's own file"


def test_an_unwritable_destination_stops_the_run_before_any_field(s3, tmp_path):
    url, _ = s3
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", url, "--cells-only", "-o", str(out),
                                       "--publish", "s3://no-such-bucket/runs/r1"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: s3://no-such-bucket/runs/r1: the store cannot be written")
    assert not out.exists() and "Traceback" not in result.output and SECRET not in result.output
    with_secret = CliRunner().invoke(main, ["publish", str(tmp_path), f"s3://key:{SECRET}@{BUCKET}/runs/x"])
    assert with_secret.exit_code == 2 and "credentials in a destination URL" in with_secret.output
    assert SECRET not in with_secret.output
