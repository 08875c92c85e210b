"""Tables, plots and a report per experiment, from the stored rows alone (nothing is re-run)."""

from .palette import Palette, variant_label
from .plots import Plot, make_plots
from .report import write_report
from .tables import (distributed_summary, passkey_summary, perf_target_summary, print_summary, probe_summary,
                     retrieval_summary, retrieval_training, speed_summary)

__all__ = ["Palette", "Plot", "distributed_summary", "make_plots", "passkey_summary", "perf_target_summary",
           "print_summary", "probe_summary", "retrieval_summary", "retrieval_training", "speed_summary",
           "variant_label", "write_report"]
