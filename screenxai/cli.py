"""The ``screenxai`` command line: simulate, convert, inspect and run screens."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from screenxai import __version__
from screenxai.errors import ScreenxaiError


class _Group(click.Group):
    """Turn bad-input errors into one clear line on stderr and exit status 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ScreenxaiError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="screenxai")
def main() -> None:
    """Explain what treatments do to cells in high-content screens."""


@main.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--rows", default=4, show_default=True, help="Plate rows (A, B, ...).")
@click.option("--columns", default=6, show_default=True,
              help="Plate columns: first negative controls, last positive controls, a dose series between.")
@click.option("--fields", default=2, show_default=True, help="Fields of view per well.")
@click.option("--size", default=512, show_default=True, help="Field width and height in pixels.")
@click.option("--seed", default=0, show_default=True, help="Random seed; the same seed gives the same plate.")
@click.option("--ngff-version", type=click.Choice(["0.4", "0.5"]), default="0.5", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing plate at OUT.")
def simulate(out: Path, rows: int, columns: int, fields: int, size: int, seed: int, ngff_version: str,
             overwrite: bool) -> None:
    """Write a synthetic screen with planted, dose-dependent phenotypes to OUT (an OME-Zarr plate)."""
    from screenxai.plate.simulate import simulate_screen

    screen = simulate_screen(out, rows=rows, columns=columns, fields=fields, size=size, seed=seed,
                             ngff_version=ngff_version, overwrite=overwrite)
    click.echo(f"wrote {screen.plate_path} ({rows * columns} wells x {fields} fields, "
               f"{len(screen.truth)} cells); ground truth in {screen.truth_path}")


@main.command()
@click.argument("tiff_dir", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Plate to write (.zarr).")
@click.option("--pattern", required=True,
              help="File-name pattern with {row}, {column}, {channel}, optional {field} and ignored "
                   "placeholders, e.g. 'Channel{channel}-{index}-{row}-{column}.tif'.")
@click.option("--layout", type=click.Path(path_type=Path), help="Layout CSV with a 'well' column (stored in the plate).")
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


if __name__ == "__main__":
    main()
