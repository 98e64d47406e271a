"""The command line: each command works, and bad input gives one clear line and exit status 2."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from screenxai.cli import LogProgress, StagePlace, StepProgress, main, training_stages
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


@pytest.fixture(scope="module")
def simulated_run(tmp_path_factory):
    """The main job's two steps on a small screen: simulate a plate, then run it (cells only) on a local cluster."""
    folder = tmp_path_factory.mktemp("cli-run")
    plate = folder / "sim.zarr"
    runner = CliRunner()
    simulated = runner.invoke(main, ["simulate", str(plate), "--rows", "2", "--columns", "3", "--fields", "1",
                                     "--size", "256", "--seed", "3"])
    assert simulated.exit_code == 0, simulated.output
    result = runner.invoke(main, ["run", str(plate), "-o", str(folder / "out"), "--workers", "1", "--cells-only"])
    assert result.exit_code == 0, result.output
    return folder, result


def test_simulate_then_run_end_to_end(simulated_run):
    import pandas as pd

    folder, result = simulated_run
    assert (folder / "sim.truth.parquet").exists()
    assert "6 wells" in result.output and "median_reporter_ratio" in result.output
    wells = pd.read_parquet(folder / "out" / "wells.parquet")
    truth = pd.read_parquet(folder / "sim.truth.parquet")
    assert wells["n_cells"].sum() == len(truth)
    ratio = wells.groupby("control")["median_reporter_ratio"].mean()
    assert ratio["positive"] > ratio["negative"]


def test_run_prints_the_dashboard_and_counts_the_fields_in_a_log(simulated_run):
    """Not on a terminal (CliRunner, a log file): plain progress lines instead of a bar redrawn in place."""
    _, result = simulated_run
    assert re.search(r"^Dask dashboard: http://\S+:\d+/status$", result.stderr, re.MULTILINE), result.stderr
    assert re.search(r"^fields 6/6 \(0 failed\) in \d:\d\d:\d\d$", result.stderr, re.MULTILINE), result.stderr
    assert "\x1b[" not in result.stderr and "━" not in result.stderr  # no terminal codes, no bar


def test_log_progress_prints_a_line_with_eta_at_most_every_interval():
    lines: list[str] = []
    now = [0.0]
    progress = LogProgress(lines.append, total=10, every_s=30, clock=lambda: now[0])
    for step in range(10):
        now[0] = 10.0 * (step + 1)  # a field every 10 s
        progress({"status": "failed" if step == 4 else "done"})
    progress.finish()
    assert lines == ["fields 3/10 (0 failed), 0:01:10 left", "fields 6/10 (1 failed), 0:00:40 left",
                     "fields 9/10 (1 failed), 0:00:10 left", "fields 10/10 (1 failed) in 0:01:40"]


def test_stage_steps_are_printed_at_most_every_interval_with_the_time_left_and_once_at_the_end():
    lines, now = [], [100.0]  # made long before the stage starts: the clock starts at step 0
    progress = StepProgress(lines.append, "counterfactuals", every_s=10, clock=lambda: now[0])
    for step in range(0, 9):
        now[0] = 200.0 + 4.0 * step  # a step every 4 s
        progress(step, 8)
    assert lines == ["counterfactuals: step 3/8, 0:00:20 left", "counterfactuals: step 6/8, 0:00:08 left",
                     "counterfactuals: 8 steps in 0:00:32"]


def test_progress_lines_are_led_by_their_stage_s_place_in_the_command():
    lines: list[str] = []
    place = StagePlace(["classifier", "semantic", "autoencoder", "explain", "fields", "counterfactuals"])
    echo = place.echo(lines.append)
    for line in ("classifier epoch 1/8: loss 0.6", "semantic epoch 2/2: loss 0.1", "explain: ranking 3/10",
                 "fields 3/24 (0 failed), 0:01:00 left", "counterfactuals: step 2/8, 0:00:10 left", "report: r.html"):
        echo(line)
    assert lines == ["stage 1/6, classifier epoch 1/8: loss 0.6", "stage 2/6, semantic epoch 2/2: loss 0.1",
                     "stage 4/6, explain: ranking 3/10", "stage 5/6, fields 3/24 (0 failed), 0:01:00 left",
                     "stage 6/6, counterfactuals: step 2/8, 0:00:10 left", "report: r.html"]
    assert StagePlace(["fields"])("fields 3/24 (0 failed)") == ""


def test_training_stages_put_the_autoencoder_s_pretraining_before_it_when_the_preset_has_one():
    from screenxai.models.presets import get_preset
    from screenxai.pipeline.train_job import TrainSettings

    assert get_preset("tiny").autoencoder_training.pretrain_epochs > 0
    assert training_stages(TrainSettings(preset="tiny")) == ["classifier", "semantic", "autoencoder", "explain",
                                                             "interpretable"]
    assert training_stages(TrainSettings(preset="tiny", stages=("explain",))) == ["explain"]


def test_the_treatment_lines_say_what_a_treatment_without_a_named_attribute_does(tmp_path, capsys):
    """No kept attribute: the line names the treatment's own readout; a top attribute without a name says so."""
    import pandas as pd

    from screenxai.cli import _print_treatments

    table = pd.DataFrame({
        "treatment": ["granulator", "weak"], "active": [True, True], "group": ["G1", "G2"],
        "activity_z": [85.7, 4.0], "top_attribute": [None, "d2p"], "top_attribute_name": [None, None],
        "robust_z_top_dose": [float("nan"), 1.5], "ec50": [float("nan"), 1.0], "fit_r2": [float("nan"), 0.9],
        "auc_vs_negative": [1.0, 0.8], "readout_name": ["reporter texture up", None],
        "readout_robust_z_top_dose": [85.7, 4.0]})
    table.to_parquet(tmp_path / "treatments.parquet")
    _print_treatments(tmp_path / "treatments.parquet")
    lines = capsys.readouterr().out.splitlines()
    assert "its own readout: reporter texture up, robust z +85.7 at the top dose" in lines[1]
    assert lines[2].startswith("  weak: group G2; unnamed (still at the top dose) [d2p], robust z +1.5")
