"""The ``screenxai`` command line: simulate, convert, inspect and run screens."""

from __future__ import annotations

import re
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import click

from screenxai import __version__
from screenxai.cluster_options import cluster_options
from screenxai.errors import ScreenxaiError
from screenxai.location import PlateLocation


CLASS_COLUMN_OPTION = click.option(
    "--class-column", help="Layout column holding the classes (default: compound when the layout has several "
                           "treatments, else control).")
TOP_DOSES_OPTION = click.option("--top-doses", default=2, show_default=True,
                                help="Highest dose levels of each treatment the classifier trains on.")
EXIT_BAD_INPUT = 2
EXIT_FAILED_FIELDS = 3
EXIT_INTERRUPTED = 130


def _check_preset(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Refuse an unknown --preset while the options are parsed, before anything is read or written."""
    from screenxai.pipeline.preflight import check_preset

    return check_preset(value)


def preset_option(help: str):
    """The --preset option of the commands that train, checked against the known presets."""
    return click.option("--preset", default="small", show_default=True, callback=_check_preset, help=help)


class Interrupted(Exception):
    """Ctrl-C during a long command: what it kept on disk, and the flag that resumes it (none: the same command)."""

    def __init__(self, kept: str, resume_flag: str | None = None) -> None:
        super().__init__(kept)
        self.kept, self.resume_flag = kept, resume_flag


class _Group(click.Group):
    """Turn bad input into one clear line and exit status 2; Ctrl-C into one line saying how to resume, and 130."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["screenxai.argv"] = list(args)  # the command line as typed, for the resume command
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ScreenxaiError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except Interrupted as stop:
            command = resume_command(ctx.meta.get("screenxai.argv", []), stop.resume_flag)
            click.echo(f"interrupted: kept {stop.kept}; to resume, run: {command}", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)


def resume_command(argv: list[str], flag: str | None) -> str:
    """The command line that continues an interrupted one: the same, with ``flag`` and without --overwrite."""
    args = [a for a in argv if a != "--overwrite"]
    if flag is not None and flag not in args:
        args.append(flag)
    return shlex.join(["screenxai", *args])


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="screenxai")
def main() -> None:
    """Explain what treatments do to cells in high-content screens."""


@main.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--design", type=click.Choice(["controls", "treatments"]), default="controls", show_default=True,
              help="controls: one compound, negative and positive controls; treatments: six compounds with "
                   "distinct mechanisms, DMSO negatives (see docs/simulation.md).")
@click.option("--rows", type=int,
              help="Plate rows (A, B, ...); default 4 (controls), set by --replicates (treatments).")
@click.option("--replicates", default=2, show_default=True, help="Treatments design: plate rows per compound.")
@click.option("--columns", default=6, show_default=True,
              help="Plate columns: first negative controls, then a half-log dose series up to 10 µM.")
@click.option("--fields", default=2, show_default=True, help="Fields of view per well.")
@click.option("--size", default=512, show_default=True, help="Field width and height in pixels.")
@click.option("--seed", default=0, show_default=True, help="Random seed; the same seed gives the same plate.")
@click.option("--ngff-version", type=click.Choice(["0.4", "0.5"]), default="0.5", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing plate at OUT.")
def simulate(out: Path, design: str, rows: int | None, replicates: int, columns: int, fields: int, size: int,
             seed: int, ngff_version: str, overwrite: bool) -> None:
    """Write a synthetic screen with planted, dose-dependent phenotypes to OUT (an OME-Zarr plate)."""
    from screenxai.plate.simulate import simulate_screen

    try:
        screen = simulate_screen(out, rows=rows, columns=columns, fields=fields, size=size, seed=seed,
                                 ngff_version=ngff_version, overwrite=overwrite, design=design,
                                 replicates=replicates)
    except ValueError as err:  # out-of-range or conflicting options
        raise click.UsageError(str(err)) from None
    click.echo(f"wrote {screen.plate_path} ({len(screen.layout)} wells x {fields} fields, "
               f"{len(screen.truth)} cells); ground truth in {screen.truth_path}")


@main.command()
@click.argument("tiff_dir", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Plate to write (.zarr).")
@click.option("--pattern", required=True,
              help="File-name pattern with {row}, {column}, {channel}, optional {field} and ignored "
                   "placeholders, e.g. 'Channel{channel}-{index}-{row}-{column}.tif'.")
@click.option("--layout", type=click.Path(path_type=Path),
              help="Layout CSV with a 'well' column (stored in the plate).")
@click.option("--channel-names", help="Names for the {channel} tokens, e.g. '1=GFP,2=DNA'.")
@click.option("--name", help="Plate name (default: the output's file name).")
@click.option("--pixel-size", type=float, help="Pixel size in micrometres.")
@click.option("--ngff-version", type=click.Choice(["0.4", "0.5"]), default="0.5", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing plate at OUT.")
def convert(tiff_dir: Path, out: Path, pattern: str, layout: Path | None, channel_names: str | None,
            name: str | None, pixel_size: float | None, ngff_version: str, overwrite: bool) -> None:
    """Convert per-well, per-channel (and per-field) TIFFs in TIFF_DIR to an OME-Zarr HCS plate."""
    from screenxai.plate import open_plate
    from screenxai.plate.convert import convert_tiffs

    path = convert_tiffs(tiff_dir, out, pattern, layout=layout, channel_names=channel_names, name=name,
                         pixel_size_um=pixel_size, ngff_version=ngff_version, overwrite=overwrite)
    click.echo(f"wrote {open_plate(path)!r} to {path}")


@main.command()
@click.argument("plate_path", type=click.Path(path_type=Path))
def info(plate_path: Path) -> None:
    """Describe a plate: wells, fields, channels, levels, labels and layout."""
    from screenxai.plate import open_plate

    plate = open_plate(plate_path)
    first = plate.field_keys()[0]
    image = plate.image(first.well, first.field)
    click.echo(f"plate {plate.name} (NGFF {plate.ngff_version}) at {plate.url}")
    click.echo(f"  wells: {len(plate.wells)} in rows {''.join(plate.rows)}, {len(plate.columns)} columns")
    click.echo(f"  fields: {len(plate.field_keys())}; image (c, z, y, x) = {tuple(image.shape)} {image.dtype}")
    click.echo(f"  channels: {', '.join(plate.channel_names)}; levels: {plate.n_levels}; "
               f"pixel size: {plate.pixel_size}")
    click.echo(f"  labels: {', '.join(plate.label_names(first.well, first.field)) or 'none'}")
    if plate.layout is None:
        click.echo("  layout: none stored")
    else:
        columns = [c for c in plate.layout.columns if c != "well"]
        click.echo(f"  layout columns: {', '.join(columns)}")
        if "control" in plate.layout:
            counts = plate.layout["control"].value_counts().to_dict()
            click.echo("  controls: " + ", ".join(f"{k}: {v} wells" for k, v in counts.items()))


@main.command()
@click.argument("plates", nargs=-1, type=PlateLocation())
@click.option("-o", "--out", type=click.Path(path_type=Path), default=Path("screenxai-run"), show_default=True,
              help="Output folder.")
@click.option("--bundle", type=click.Path(path_type=Path),
              help="Model bundle to score the cells with (default: train one into OUT/bundle first).")
@preset_option("Preset of the bundle trained when none is given.")
@click.option("--cells-only", is_flag=True, help="Only the cell stage: no models, no training.")
@click.option("--layout", type=click.Path(path_type=Path), help="Layout CSV (default: the one stored in each plate).")
@click.option("--scheduler", help="Address of a running Dask scheduler (default: a local cluster).")
@click.option("--workers", type=int, help="Workers of the local cluster (default: one per core).")
@click.option("--wells", help="Comma-separated wells to process, e.g. 'A01,B03' (default: all).")
@click.option("--crop-size", default=32, show_default=True,
              help="Side of the single-cell crops, pixels (with a bundle: the bundle's).")
@click.option("--nuclear-channel", help="Channel to segment (default: the one named DNA, DAPI, Hoechst, ...).")
@click.option("--resume", is_flag=True,
              help="Continue the run in OUT: compute only fields without a complete file (same settings only).")
@click.option("--overwrite", is_flag=True,
              help="Replace the run in OUT (its tables, cells and bundle; never the plates it reads).")
@click.option("--strict", is_flag=True,
              help="Stop at the first failed field, or field whose image lacks chunks, instead of recording it.")
@click.option("--exemplars-per-well", default=0, show_default=True,
              help="Typical cells of every well to render along each attribute, besides 4 per condition.")
@click.option("--publish", "publish_to", metavar="URL",
              help="Copy the finished run to object storage, e.g. s3://bucket/runs/plate1 (checked before the run; "
                   "credentials from the environment or a profile; --overwrite also replaces a run there).")
@CLASS_COLUMN_OPTION
@TOP_DOSES_OPTION
@cluster_options
def run(plates: tuple[Path, ...], out: Path, bundle: Path | None, preset: str, cells_only: bool,
        layout: Path | None, scheduler: str | None, workers: int | None, wells: str | None, crop_size: int,
        nuclear_channel: str | None, resume: bool, overwrite: bool, strict: bool, exemplars_per_well: int,
        publish_to: str | None, class_column: str | None, top_doses: int, **cluster) -> None:
    """Find, crop, measure and score the cells of PLATES; write per-cell and per-well tables to OUT.

    Without PLATES, a synthetic screen is simulated into OUT/plate.zarr first.
    Without --bundle, a bundle is trained on the plates' controls into
    OUT/bundle first (as `screenxai train` with --preset). On a terminal a
    bar with ETA follows the fields; in a log, a line every half minute.
    With --publish, the finished run folder is then copied to URL.
    Exit status: 0 done, 2 bad input, 3 done with failed fields (see
    OUT/failures.parquet), 130 interrupted.
    """
    from rich.console import Console

    from screenxai.cells import CellConfig
    from screenxai.pipeline.cluster import connect
    from screenxai.pipeline.preflight import (check_bundle_preset, check_classes, check_layout_wells,
                                              check_nuclear_channel, renders_counterfactuals)
    from screenxai.pipeline.run import clear_run, field_tasks, open_plates, run_cells
    from screenxai.pipeline.train_job import TrainSettings

    if overwrite and resume:
        raise click.UsageError("--overwrite replaces the run in OUT and --resume continues it: pass one of them")
    if publish_to is not None:
        from screenxai.publish import check_destination

        check_destination(publish_to, overwrite)
    console = Console(stderr=True, soft_wrap=True)  # a log keeps each line whole, paths too
    if not plates:
        demo = out / "plate.zarr"
        if not demo.exists():
            from screenxai.plate.simulate import simulate_screen

            console.print(f"no plate given: simulating a 4x6-well screen into {demo}")
            simulate_screen(demo, seed=0)
        plates = (demo,)
    opened = open_plates(plates, layout=layout)
    selected = [w.strip() for w in wells.split(",")] if wells else None
    n_fields = len(field_tasks(opened, out, selected))
    check_nuclear_channel(opened, nuclear_channel)
    renders = renders_counterfactuals(bundle, cells_only)
    if renders:
        check_layout_wells(opened, selected, layout)
    training = TrainSettings(preset=preset, nuclear_channel=nuclear_channel, class_column=class_column,
                             top_dose_levels=top_doses)
    if bundle is None and not cells_only:
        check_classes(opened, training)
    if overwrite:
        clear_run(out, keep=_own_inputs(plates, bundle))
    elif bundle is None and not cells_only:
        check_bundle_preset(out / "bundle", preset, out)
    config = CellConfig(crop_size=crop_size, nuclear_channel=nuclear_channel)
    trains = bundle is None and not cells_only
    place = StagePlace([*(training_stages(training) if trains else []), "fields",
                        *(["counterfactuals"] if renders else [])])
    try:
        with connect(scheduler, workers, **cluster) as client:
            console.print(f"Dask dashboard: {client.dashboard_link}")
            if trains:
                bundle = _train_for_run(opened, out / "bundle", client, console, training, place)
            with _field_progress(console, n_fields, place) as on_field:
                result = run_cells(opened, out, client, config, selected, on_field=on_field,
                                   bundle=None if cells_only else bundle, resume=resume, strict=strict,
                                   exemplars_per_well=exemplars_per_well,
                                   on_counterfactual=StepProgress(place.echo(console.print), "counterfactuals"))
    except KeyboardInterrupt:
        raise Interrupted(_kept_by_run(out, opened, selected), "--resume") from None
    _print_summary(result)
    _write_report(out)
    if publish_to is not None:
        _publish(out, publish_to, overwrite)
    if len(result.failures):
        sys.exit(EXIT_FAILED_FIELDS)


def _own_inputs(plates: tuple[Path | str, ...], bundle: Path | None) -> list[Path]:
    """What --overwrite keeps in OUT: the local plates read (with a simulated plate's truth) and a bundle given."""
    from screenxai.plate.simulate import truth_path

    local = [p for p in plates if isinstance(p, Path)]
    return [*local, *map(truth_path, local), *([bundle] if bundle is not None else [])]


def _kept_by_run(out: Path, plates, wells: list[str] | None) -> str:
    """What an interrupted run leaves to resume from: the fields written, and a training's work folder."""
    from screenxai.pipeline.run import field_tasks
    from screenxai.pipeline.sinks import is_done
    from screenxai.pipeline.train_job import work_folder

    tasks = field_tasks(plates, out, wells)
    kept = f"{sum(is_done(t.cells_path) for t in tasks)} of {len(tasks)} fields written in {out}"
    work = work_folder(out / "bundle")
    return kept + (f" and the training's crop cache and checkpoints in {work}" if work.exists() else "")


def _kept_by_training(out: Path) -> str:
    """What an interrupted training leaves to resume from: its work folder, if it got that far."""
    from screenxai.pipeline.train_job import work_folder

    work = work_folder(out.absolute())
    if not work.exists():
        return "nothing (no crop cache was started)"
    kept = [name for folder, name in (("cache", "the crop cache"), ("checkpoints", "checkpoints"))
            if (work / folder).exists()]
    return f"{' and '.join(kept) or 'the settings'} in {work}"


@main.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.argument("url")
@click.option("--overwrite", is_flag=True, help="Replace a run already at URL.")
def publish(out: Path, url: str, overwrite: bool) -> None:
    """Copy the finished run folder OUT to URL on object storage (s3://, gs://, ...), manifest.json last.

    Credentials come from the environment or a profile (for S3: AWS_* variables or AWS_PROFILE), never from the URL.
    """
    _publish(out, url, overwrite)


def _publish(out: Path, url: str, overwrite: bool) -> None:
    from screenxai.publish import publish_run

    progress = StepProgress(lambda line: click.echo(line, err=True), "publish")
    published = publish_run(out, url, overwrite, on_file=progress)
    click.echo(f"published {published.n_files} files ({published.n_bytes / 1e6:.1f} MB) to {published.url} "
               f"in {published.seconds:.1f} s")


@main.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("-o", "--html", type=click.Path(path_type=Path),
              help="Report to write (default: OUT/report.html); figures go to OUT/report/figures/.")
def report(out: Path, html: Path | None) -> None:
    """Write the HTML report of the run folder OUT: run facts, QC plate maps, attributes, dose-response, screen."""
    _write_report(out, html)


def _write_report(out: Path, html: Path | None = None) -> None:
    from screenxai.report import build_report

    click.echo(f"report: {build_report(out, html)}")


LOG_EVERY_S = 30.0
GUIDED_OPTION = click.option("--guided/--unguided", default=True, show_default=True,
                             help="Learn classifier-guided attribute directions, or plain contrastive ones "
                                  "(see benchmarks/README.md).")
CONTRAST_OPTION = click.option("--contrast/--no-contrast", default=True, show_default=True,
                               help="Add each treatment's contrast direction (its mean change from the negative "
                                    "control, scored by a linear discriminant) to the learned directions.")


class LogProgress:
    """Progress over fields as plain lines, for a log: at most one per ``every_s`` seconds, and a last one.

    A rich bar redraws itself in place, which a file cannot show; an
    overnight run's log gets lines such as
    ``fields 120/960 (1 failed), 0:41:10 left`` instead.
    """

    def __init__(self, echo: Callable[[str], None], total: int, every_s: float = LOG_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.echo, self.total, self.every_s, self.clock = echo, total, every_s, clock
        self.done = self.failed = 0
        self.start = self.last = clock()

    def __call__(self, row: dict) -> None:
        """Count one finished field (its status row); print a line when the interval has passed."""
        self.done += 1
        self.failed += row.get("status") == "failed"
        now = self.clock()
        if now - self.last >= self.every_s and self.done < self.total:
            self.last = now
            left = (now - self.start) / self.done * (self.total - self.done)
            self.echo(f"{self._counts()}, {_clock_time(left)} left")

    def finish(self) -> None:
        """The closing line: fields done of all, and the time they took."""
        self.echo(f"{self._counts()} in {_clock_time(self.clock() - self.start)}")

    def _counts(self) -> str:
        return f"fields {self.done}/{self.total} ({self.failed} failed)"


class StepProgress:
    """Progress of one stage's steps as plain lines: at most one per ``every_s`` seconds, and a last one.

    For stages that run as one task on a worker (rendering counterfactuals):
    ``counterfactuals: step 12/40, 0:00:31 left``. The clock starts at the
    first report (the stage's step 0), not when the callback is made.
    """

    def __init__(self, echo: Callable[[str], None], stage: str, every_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.echo, self.stage, self.every_s, self.clock = echo, stage, every_s, clock
        self.start: float | None = None
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        """Record ``done`` of ``total`` steps; print a line when the interval has passed or the stage ends."""
        now = self.clock()
        if self.start is None:
            self.start = self.last = now
        if done >= total:
            self.echo(f"{self.stage}: {total} steps in {_clock_time(now - self.start)}")
        elif now - self.last >= self.every_s:
            self.last = now
            left = (now - self.start) / max(done, 1) * (total - done)
            self.echo(f"{self.stage}: step {done}/{total}, {_clock_time(left)} left")


class StagePlace:
    """A command's stages in order, so that each progress line says where its stage stands in the whole.

    ``place("autoencoder epoch 2/4 ...")`` of stages ``classifier, semantic,
    autoencoder, fields`` is ``"stage 3/4, "``; a stage not listed, or the
    only stage of a command, gets "".
    """

    def __init__(self, stages: Sequence[str]) -> None:
        self.stages = list(stages)

    def __call__(self, line: str) -> str:
        family = re.split(r"[:\s]", line, maxsplit=1)[0]
        if family not in self.stages or len(self.stages) < 2:
            return ""
        return f"stage {self.stages.index(family) + 1}/{len(self.stages)}, "

    def echo(self, echo: Callable[[str], None]) -> Callable[[str], None]:
        """``echo`` with each line led by its stage's place."""
        return lambda line: echo(self(line) + line)


def training_stages(settings) -> list[str]:
    """The progress stages of a training job: its ``stages``, with the autoencoder's pretraining before it."""
    from screenxai.models.presets import get_preset

    pretrains = get_preset(settings.preset).autoencoder_training.pretrain_epochs > 0
    return [name for stage in settings.stages
            for name in (("semantic", "autoencoder") if stage == "autoencoder" and pretrains else (stage,))]


def _clock_time(seconds: float) -> str:
    """Seconds as H:MM:SS."""
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


@contextmanager
def _field_progress(console, total: int, place: StagePlace) -> Iterator[Callable[[dict], None]]:
    """A callback for ``run_cells``' ``on_field``: a rich bar with ETA on a terminal, ``LogProgress`` otherwise."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if not console.is_terminal:
        progress = LogProgress(place.echo(console.print), total)
        yield progress
        progress.finish()
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(place("fields") + "fields", total=total)
        yield lambda _: bar.advance(task)


def _epoch_printer(echo: Callable[[str], None], place: StagePlace):
    """A progress callback echoing one line per finished training epoch (or step), led by its stage's place."""
    print_line = place.echo(echo)

    def epoch_line(p) -> None:
        if p.stage.startswith(("explain", "interpretable")):  # a step: "<stage>: <step> k/n (<detail>)"
            left = "" if p.eta_s != p.eta_s else f", {p.eta_s:.0f} s left in this step"  # NaN: not yet known
            step, opens, detail = p.stage.partition(" (")
            print_line(f"{step} {p.epoch + 1}/{p.epochs}{opens}{detail}{left}")
            return
        val = "" if p.val_loss is None else f", validation {p.val_loss:.4f}"
        print_line(f"{p.stage} epoch {p.epoch + 1}/{p.epochs}: loss {p.loss:.4f}{val}, "
                   f"{p.eta_s:.0f} s left in this stage")
    return epoch_line


def _train_for_run(plates, out: Path, client, console, settings, place: StagePlace) -> Path:
    """Train a bundle with ``settings`` (``screenxai train``'s defaults otherwise); reused when complete."""
    from screenxai.models.bundle import load_bundle
    from screenxai.pipeline.train_job import train as train_job

    if (out / "config.json").exists() and not out.with_name(out.name + ".work").exists():
        load_bundle(out)
        console.print(f"using the bundle trained earlier at {out}")
        return out
    console.print(f"no bundle given: training one ({settings.preset} preset) on the plates' conditions into {out}")
    result = train_job(plates, out, client, settings, on_progress=_epoch_printer(console.print, place))
    _print_training_summary(result)
    return result.bundle


@main.command()
@click.argument("plates", nargs=-1, required=True, type=PlateLocation())
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Model bundle to write.")
@click.option("--layout", type=click.Path(path_type=Path), help="Layout CSV (default: the one stored in each plate).")
@CLASS_COLUMN_OPTION
@click.option("--classes", help="Comma-separated classes of that column for the classifier to tell apart, the "
                                "negative control first (default: read from the layout).")
@TOP_DOSES_OPTION
@preset_option("Model size: tiny (tests), small (CPU demo), base (GPU).")
@click.option("--stages", default="classifier,autoencoder,explain,interpretable", show_default=True,
              help="Comma-separated training stages to run; later stages reuse the bundle at OUT.")
@click.option("--wells", help="Comma-separated wells to sample (default: the wells of the classes).")
@click.option("--max-cells-per-well", default=500, show_default=True, help="Cells sampled per well at most.")
@click.option("--nuclear-channel", help="Channel to segment (default: the one named DNA, DAPI, Hoechst, ...).")
@click.option("--seed", default=0, show_default=True, help="Seed of sampling and training.")
@click.option("--scheduler", help="Address of a running Dask scheduler (default: a local cluster).")
@click.option("--workers", type=int, help="Workers of the local cluster (default: one per core).")
@click.option("--keep-work", is_flag=True, help="Keep the crop cache and checkpoints (OUT.work) after success.")
@GUIDED_OPTION
@CONTRAST_OPTION
@cluster_options
def train(plates: tuple[Path, ...], out: Path, layout: Path | None, class_column: str | None, classes: str | None,
          top_doses: int, preset: str, stages: str, wells: str | None, max_cells_per_well: int,
          nuclear_channel: str | None, seed: int, scheduler: str | None, workers: int | None, keep_work: bool,
          guided: bool, contrast: bool, **cluster) -> None:
    """Train the classifier and the diffusion autoencoder on cells of PLATES; write a model bundle to OUT.

    Cells are cut by Dask workers into a crop cache, then training runs as
    one task on a worker (a GPU worker when the cluster has one). An
    interrupted run resumes when the same command is run again.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from screenxai.pipeline.cluster import connect
    from screenxai.pipeline.preflight import check_classes, check_nuclear_channel
    from screenxai.pipeline.run import open_plates
    from screenxai.pipeline.train_job import TrainSettings
    from screenxai.pipeline.train_job import train as train_job

    console = Console(stderr=True, soft_wrap=True)  # a log keeps each line whole, paths too
    opened = open_plates(plates, layout=layout)
    selected = [w.strip() for w in wells.split(",")] if wells else None
    settings = TrainSettings(
        preset=preset, stages=tuple(s.strip() for s in stages.split(",") if s.strip()), class_column=class_column,
        class_names=tuple(c.strip() for c in (classes or "").split(",") if c.strip()), top_dose_levels=top_doses,
        seed=seed,
        max_cells_per_well=max_cells_per_well, nuclear_channel=nuclear_channel,
        wells={p.name: selected for p in opened} if selected else None, explain_guided=guided,
        explain_contrast=contrast)
    check_nuclear_channel(opened, nuclear_channel)
    check_classes(opened, settings)
    try:
        with connect(scheduler, workers, **cluster) as client:
            console.print(f"Dask dashboard: {client.dashboard_link}")
            columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
            with Progress(*columns, console=console) as progress:
                bar = progress.add_task("cutting cells", total=None)
                result = train_job(opened, out, client, settings, on_field=lambda _: progress.advance(bar),
                                   on_progress=_epoch_printer(console.print, StagePlace(training_stages(settings))),
                                   keep_work=keep_work)
    except KeyboardInterrupt:
        raise Interrupted(_kept_by_training(out)) from None
    _print_training_summary(result)


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("plates", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--layout", type=click.Path(path_type=Path), help="Layout CSV (default: the one stored in each plate).")
@click.option("--max-cells-per-well", default=500, show_default=True, help="Cells sampled per well at most.")
@click.option("--seed", default=0, show_default=True, help="Seed of sampling and fitting.")
@click.option("--scheduler", help="Address of a running Dask scheduler (default: a local cluster).")
@click.option("--workers", type=int, help="Workers of the local cluster (default: one per core).")
def interpret(bundle: Path, plates: tuple[Path, ...], layout: Path | None, max_cells_per_well: int, seed: int,
              scheduler: str | None, workers: int | None) -> None:
    """Fit a readable formula that mimics BUNDLE's classifier on the training wells of PLATES.

    A beta-TCVAE learns disentangled features of the crops, a sparse network
    keeps at most 5 of them, and symbolic regression turns it into a short
    formula, judged against the classifier on its validation wells. The
    result is stored in BUNDLE/interpretable/.
    """
    from screenxai.pipeline.cluster import connect
    from screenxai.pipeline.run import open_plates
    from screenxai.pipeline.train_job import train as train_job

    opened = open_plates(plates, layout=layout)
    settings = _bundle_stage_settings(bundle, opened, "interpretable", max_cells_per_well, seed)
    with connect(scheduler, workers) as client:
        click.echo(f"Dask dashboard: {client.dashboard_link}", err=True)
        result = train_job(opened, bundle, client, settings,
                           on_progress=_epoch_printer(lambda line: click.echo(line, err=True),
                                                      StagePlace(["interpretable"])))
    _print_interpretable(result.summary["interpretable"])


def _bundle_stage_settings(bundle: Path, opened, stage: str, max_cells_per_well: int, seed: int,
                           guided: bool = True, contrast: bool = True):
    """Settings that run one later stage on the bundle's own training wells, preset and classes."""
    from screenxai.models.bundle import load_bundle
    from screenxai.pipeline.train_job import TrainSettings

    loaded = load_bundle(bundle)
    provenance = loaded.config["provenance"]
    wells: dict[str, list[str]] = {}
    for key in provenance["wells"]:
        plate, well = key.split("/", 1)
        wells.setdefault(plate, []).append(well)
    missing = sorted({p.name for p in opened} - set(wells))
    if missing:
        raise click.UsageError(f"plate(s) {missing} were not used to train {bundle} "
                               f"(its plates: {sorted(wells)}); use the training plates")
    return TrainSettings(preset=provenance["preset"], stages=(stage,), class_column=loaded.config["class_column"],
                         class_names=loaded.class_names, seed=seed, max_cells_per_well=max_cells_per_well,
                         wells={p.name: wells[p.name] for p in opened}, explain_guided=guided,
                         explain_contrast=contrast)


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("plates", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Output folder of the scoring run.")
@click.option("--layout", type=click.Path(path_type=Path), help="Layout CSV (default: the one stored in each plate).")
@click.option("--wells", help="Comma-separated wells to score (default: all).")
@click.option("--exemplars", default=4, show_default=True, help="Exemplar cells per condition to render.")
@click.option("--max-cells-per-well", default=500, show_default=True, help="Cells sampled per training well.")
@click.option("--seed", default=0, show_default=True, help="Seed of sampling and direction learning.")
@click.option("--scheduler", help="Address of a running Dask scheduler (default: a local cluster).")
@click.option("--workers", type=int, help="Workers of the local cluster (default: one per core).")
@GUIDED_OPTION
@CONTRAST_OPTION
def explain(bundle: Path, plates: tuple[Path, ...], out: Path, layout: Path | None, wells: str | None,
            exemplars: int, max_cells_per_well: int, seed: int, scheduler: str | None, workers: int | None,
            guided: bool, contrast: bool) -> None:
    """Find the attributes that change BUNDLE's classifier, name them, and score and render them on PLATES.

    Learns latent directions on the training wells' cells, ranks them by
    how much they move the classifier, names each in morphology terms and
    stores them in BUNDLE/explain/. Then scores every cell of PLATES into
    OUT (as `screenxai run --bundle`), with attributes.parquet (names, flip
    rates, Z', dose-response) and counterfactuals.zarr (exemplar cells of
    each condition along each attribute). Exit status as `screenxai run`:
    0 done, 2 bad input, 3 done with failed fields (see OUT/failures.parquet).
    """
    from screenxai.cells import CellConfig
    from screenxai.pipeline.cluster import connect
    from screenxai.pipeline.preflight import check_layout_wells
    from screenxai.pipeline.run import open_plates, run_cells
    from screenxai.pipeline.train_job import train as train_job

    opened = open_plates(plates, layout=layout)
    selected = [w.strip() for w in wells.split(",")] if wells else None
    if exemplars > 0:
        check_layout_wells(opened, selected, layout)
    settings = _bundle_stage_settings(bundle, opened, "explain", max_cells_per_well, seed, guided, contrast)
    place = StagePlace(["explain", "fields", *(["counterfactuals"] if exemplars > 0 else [])])

    def to_stderr(line: str) -> None:
        click.echo(line, err=True)

    with connect(scheduler, workers) as client:
        click.echo(f"Dask dashboard: {client.dashboard_link}", err=True)
        result = train_job(opened, bundle, client, settings, on_progress=_epoch_printer(to_stderr, place))
        _print_attributes(result.summary["explain"])
        run = run_cells(opened, out, client, CellConfig(), selected, bundle=bundle,
                        exemplars_per_condition=exemplars,
                        on_counterfactual=StepProgress(place.echo(to_stderr), "counterfactuals"))
    _print_summary(run)
    click.echo(f"attributes: {run.out / 'attributes.parquet'}; counterfactuals: {run.out / 'counterfactuals.zarr'}")
    if len(run.failures):
        sys.exit(EXIT_FAILED_FIELDS)


def _print_attributes(explain: dict) -> None:
    kind = "classifier-guided" if explain["guided"] else "unguided"
    cost = explain["unet_evaluations"]
    contrast = explain.get("n_contrast_directions", 0)
    click.echo(f"attributes ({kind}, {explain['n_directions'] - contrast} learned and {contrast} contrast directions; "
               f"{cost['ranking']} UNet evaluations rank "
               f"them for all {cost['treatments']} treatment(s) at once, {cost['naming']} name them; the reference "
               f"procedure would rank with {cost['reference']}):")
    for treatment in dict.fromkeys(row["treatment"] for row in explain["attributes"]):
        click.echo(f"  {treatment}:")
        for row in (r for r in explain["attributes"] if r["treatment"] == treatment):
            click.echo(f"    {row['rank']}. {row['name']} [{row['attribute']}]: mean change of the probability "
                       f"{row['mean_delta_p']:+.3f}, flips {100 * row['flip_rate']:.0f}% of cells; {row['changes']}")


def _print_interpretable(report: dict) -> None:
    if "skipped" in report:
        click.echo(f"interpretable model: not fitted: {report['skipped']}")
        return
    for one in report.get("treatments", [report]):
        _print_formula(one)


def _print_formula(report: dict) -> None:
    held = report["heldout"]
    accuracy = held["accuracy"]
    click.echo(f"formula ({report['complexity']} nodes; > 0 means {report['positive_class']}): {report['formula']}")
    if report.get("latent_features"):
        from screenxai.interpret.latent_names import describe_latents
        import pandas as pd

        click.echo(f"  where {describe_latents(pd.DataFrame(report['latent_features']))}")
    click.echo(f"on {report['cells']['heldout']} cells of {report['wells']['heldout']} held-out wells: accuracy "
               f"black box {accuracy['blackbox']:.3f}, sparse model {accuracy['sparse']:.3f}, "
               f"formula {accuracy['formula']:.3f}; fidelity {held['fidelity']:.3f}, "
               f"agreement with the black box {held['agreement']:.3f}")


def _print_training_summary(result) -> None:
    summary = result.summary
    metrics = summary["classifier"]
    aucs = ", ".join(f"{k} {v:.3f}" for k, v in metrics["auc"].items())
    click.echo(f"bundle {result.bundle} from {summary['n_cells']} cells of {summary['n_wells']} wells "
               f"in {result.seconds:.0f} s")
    click.echo(f"classifier, validation wells {', '.join(summary['validation_wells'])}: accuracy "
               f"{metrics['accuracy']:.3f}, balanced accuracy {metrics['balanced_accuracy']:.3f}, AUC {aucs}")
    autoencoder = summary.get("autoencoder")
    if autoencoder:
        line = f"autoencoder: loss {autoencoder['final_loss']:.4f}"
        if autoencoder.get("final_val_loss") is not None:
            line += f", validation loss {autoencoder['final_val_loss']:.4f}"
        if "latent_use" in autoencoder:
            line += (f"; on {autoencoder['n_check_cells']} held-out cells, own z_sem decodes "
                     f"{100 * autoencoder['latent_use']['improvement']:.0f}% closer than another cell's, "
                     f"reconstruction MAE {autoencoder['reconstruction_mae']:.3f}")
        click.echo(line)
    if "explain" in summary:
        _print_attributes(summary["explain"])
    if "interpretable" in summary:
        _print_interpretable(summary["interpretable"])


def _print_summary(result) -> None:
    from screenxai.pipeline.summary import condition_summary, dose_trend

    wells = result.wells
    ratios = [c for c in wells.columns if c.startswith("median_") and c.endswith("_ratio")]
    ratios += [c for c in wells.columns if c.startswith("mean_p_") or c == "mean_formula_value"]
    click.echo(f"{len(wells)} wells, {int(wells['n_cells'].sum())} cells in {result.seconds:.1f} s -> {result.out}")
    click.echo(condition_summary(wells, ["n_cells", *ratios]).round(3).to_string())
    for column in ratios:
        rho = dose_trend(wells, column)
        if rho is not None:
            click.echo(f"{column} vs dose_index over dose wells: Spearman {rho:+.3f}")
    flagged = wells[wells.filter(like="qc_").any(axis=1)]
    if len(flagged):
        click.echo(f"QC flags on {len(flagged)} well(s): {', '.join(flagged['well'])}")
    _print_treatments(result.out / "treatments.parquet")
    if len(result.failures):
        click.echo(f"{len(result.failures)} field(s) failed; see {result.out / 'failures.parquet'}", err=True)


def _print_treatments(path: Path) -> None:
    """The treatments table, strongest first, with the inactive ones said plainly."""
    import pandas as pd

    if not path.exists():
        return
    table = pd.read_parquet(path)
    click.echo("treatments (strongest first):")
    for row in table.itertuples():
        if not row.active:
            click.echo(f"  {row.treatment}: inactive (strongest attribute at {row.activity_z:.1f} robust z)")
            continue
        if pd.isna(row.top_attribute):
            own = (f"; its own readout: {row.readout_name}, robust z {row.readout_robust_z_top_dose:+.1f} at the top "
                   "dose" if isinstance(row.readout_name, str) else "")
            click.echo(f"  {row.treatment}: group {row.group}; no attribute moves negative cells towards it{own}")
            continue
        name = row.top_attribute_name if isinstance(row.top_attribute_name, str) else "unnamed (still at the top dose)"
        click.echo(f"  {row.treatment}: group {row.group}; {name} [{row.top_attribute}], "
                   f"robust z {row.robust_z_top_dose:+.1f} at the top dose, EC50 {row.ec50:.3g} "
                   f"(fit R^2 {row.fit_r2:.2f}); AUC against the negative control {row.auc_vs_negative:.2f}")


if __name__ == "__main__":
    main()
