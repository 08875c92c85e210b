"""Tables, plots and a report per experiment, from the stored rows alone (nothing is re-run)."""

from .palette import Palette, variant_label
from .plots import Plot, make_plots
from .report import write_report
from .tables import print_summary, retrieval_summary, speed_summary

__all__ = ["Palette", "Plot", "make_plots", "print_summary", "retrieval_summary", "speed_summary",
           "variant_label", "write_report"]
