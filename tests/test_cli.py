"""The command line: each command works, and bad input gives one clear line and exit status 2."""

from __future__ import annotations

from click.testing import CliRunner

from screenxai.cli import main
from screenxai.plate import open_plate


def test_convert_command_writes_the_bbbc013_plate(bbbc013_dir, tmp_path):
    out = tmp_path / "bbbc013.zarr"
    result = CliRunner().invoke(main, [
        "convert", str(bbbc013_dir), "--pattern", "Channel{channel}-{index}-{row}-{column}.tif",
        "--channel-names", "1=GFP,2=DNA", "--layout", str(bbbc013_dir / "layout.csv"), "-o", str(out),
        "--ngff-version", "0.4", "--pixel-size", "0.65",
    ])
    assert result.exit_code == 0, result.output
    plate = open_plate(out)
    assert plate.ngff_version == "0.4" and len(plate.wells) == 48 and plate.pixel_size["x"] == 0.65


def test_convert_command_reports_bad_input_in_one_line(tmp_path):
    (tmp_path / "tiffs").mkdir()
    (tmp_path / "tiffs" / "random.tif").write_bytes(b"")
    result = CliRunner().invoke(main, ["convert", str(tmp_path / "tiffs"), "--pattern", "{row}{column}_{channel}.tif",
                                       "-o", str(tmp_path / "out.zarr")])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "random.tif" in result.output
    assert not (tmp_path / "out.zarr").exists()


def test_info_command_describes_a_plate(bbbc013_plate):
    result = CliRunner().invoke(main, ["info", str(bbbc013_plate)])
    assert result.exit_code == 0, result.output
    assert "wells: 48 in rows ABCD" in result.output
    assert "channels: GFP, DNA" in result.output
    assert "negative: 8 wells" in result.output


def test_simulate_then_run_end_to_end(tmp_path):
    """The main job's two steps on a small screen: simulate a plate, then run on a local cluster."""
    import pandas as pd

    plate = tmp_path / "sim.zarr"
    runner = CliRunner()
    result = runner.invoke(main, ["simulate", str(plate), "--rows", "2", "--columns", "3", "--fields", "1",
                                  "--size", "256", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sim.truth.parquet").exists()
    result = runner.invoke(main, ["run", str(plate), "-o", str(tmp_path / "out"), "--workers", "1",
                                   "--cells-only"])
    assert result.exit_code == 0, result.output
    assert "6 wells" in result.output and "median_reporter_ratio" in result.output
    wells = pd.read_parquet(tmp_path / "out" / "wells.parquet")
    truth = pd.read_parquet(tmp_path / "sim.truth.parquet")
    assert wells["n_cells"].sum() == len(truth)
    ratio = wells.groupby("control")["median_reporter_ratio"].mean()
    assert ratio["positive"] > ratio["negative"]
