"""Plot a training run's curves from OUTPUT_DIR/metrics.json into OUTPUT_DIR/plots/*.png:
losses, pixel accuracy (sem_seg/pACC), mIoU (sem_seg/mIoU), AP (bbox/AP, segm/AP).

  python tools/plot_metrics.py output/quickstart_semseg
  python tools/plot_metrics.py output/quickstart --plot-dir curves/
"""
import argparse
import sys

from d2ext.utils.metrics_plots import plot_metrics

from . import run_tool


def _main(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="a training run's OUTPUT_DIR")
    parser.add_argument("--plot-dir",
                        help="where to write the PNGs (default OUTPUT_DIR/plots); an existing "
                             "file there is replaced only if it is a plot of this tool")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of a mistake instead of its one-line message")
    args = parser.parse_args(argv)
    try:
        written = plot_metrics(args.output_dir, args.plot_dir)
    except (FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0 if written else 1


def main(argv=None):
    """plot_metrics: a user mistake ends in one line (``d2ext.cli.run_tool``)."""
    return run_tool("plot_metrics", _main, argv)
