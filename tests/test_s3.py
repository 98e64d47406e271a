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
