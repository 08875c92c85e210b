"""`shootout` / `python -m harness`: compose the config from conf/ with Hydra and run the selected job.

    shootout experiment=default
    shootout attention=dilated_gather benchmark=quick benchmark.seq_lens=[1024,4096]
    shootout -m attention=dense_sdpa,sliding_window_flex,dilated_gather benchmark.seq_lens=[1024,4096,16384]

Every job's config is composed and checked before the first one starts; bad input prints one line and exits
with code 2. SIGTERM, SIGHUP and Ctrl-C stop the run the same way: the point in flight is abandoned, its worker
killed, every row already written kept; one line says what was saved, and the exit code is 128 + the signal.
"""

from __future__ import annotations

import errno
import signal
import sys

import hydra
from omegaconf import DictConfig

from .config import CONF_DIR, ConfigError, compose, expand_overrides, normalize_overrides, register_configs
from .run import check, run
from .store import ResultsWriteError

USAGE_EXIT_CODE = 2
# What a full disk, a quota or a read-only mount raises when a run writes its plots, report or W&B files.
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _describe(error: OSError) -> str:
    return f"cannot write {error.filename}: {error.strerror}" if error.filename else str(error)


class Stopped(BaseException):
    """A stop signal, raised where the run is so it unwinds as Ctrl-C does (not an Exception: nothing swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop(signum: int, frame: object) -> None:
    raise Stopped(signum)


def _fail(error: ConfigError) -> None:
    print(f"shootout: error: {error}", file=sys.stderr)
    sys.exit(USAGE_EXIT_CODE)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        jobs = check(cfg)
    except ConfigError as error:
        _fail(error)
    try:
        run(cfg, jobs)
    except OSError as error:
        if not isinstance(error, ResultsWriteError) and error.errno not in DISK_ERRORS:
            raise
        from .run import saved_rows

        print(f"shootout: error: {error if isinstance(error, ResultsWriteError) else _describe(error)}; "
              f"{saved_rows()}", file=sys.stderr)
        sys.exit(1)


def _precheck(argv: list[str]) -> None:
    """Compose and check every job of this command line before Hydra runs the first one."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(argv)
    if args.help or args.hydra_help or args.info or args.cfg or args.shell_completion or args.config_name \
            or args.config_path or args.config_dir or args.experimental_rerun:
        return  # Hydra's own modes (and a different primary config) are Hydra's to check
    for overrides in expand_overrides(args.overrides, multirun=args.multirun):
        check(compose(overrides))


def main() -> None:
    register_configs()
    sys.argv = sys.argv[:1] + normalize_overrides(sys.argv[1:])
    try:
        _precheck(sys.argv[1:])
    except ConfigError as error:
        _fail(error)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is not signal.SIG_IGN:  # under nohup, SIGHUP stays ignored
            signal.signal(signum, _stop)
    try:
        _hydra_main()
    except (Stopped, KeyboardInterrupt) as stop:
        for again in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):  # a second signal must not cut the line short
            signal.signal(again, signal.SIG_IGN)
        from .run import saved_rows

        signum = stop.signum if isinstance(stop, Stopped) else signal.SIGINT
        print(f"shootout: stopped by {signal.Signals(signum).name}: {saved_rows()}; run the same command again to "
              f"resume", file=sys.stderr)
        sys.exit(128 + signum)


if __name__ == "__main__":
    main()
