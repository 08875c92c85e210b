"""The benchmark runner: speed, memory and FLOP shootouts (jobs speed and distributed).

measure.py runs one point (gate, first call, memory, timing) inside a worker (worker.py); flops.py counts
useful and executed FLOPs; sweep.py validates the config, expands and runs the sweep, and writes the rows.
"""

from .distributed import run_distributed
from .measure import Point, Timing, measure_point, matmul_ceiling, time_call
from .sweep import plan_speed, run_speed

__all__ = ["Point", "Timing", "matmul_ceiling", "measure_point", "plan_speed", "run_distributed", "run_speed", "time_call"]
