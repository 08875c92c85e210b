"""`shootout` / `python -m harness`: compose the config from conf/ with Hydra and run the selected job.

    shootout experiment=default
    shootout attention=dilated_gather benchmark=quick benchmark.seq_lens=[1024,4096]
    shootout -m attention=dense_sdpa,sliding_window_flex,dilated_gather benchmark.seq_lens=[1024,4096,16384]

Every job's config is composed and checked before the first one starts; bad input prints one line and exits
with code 2.
"""

from __future__ import annotations

import sys
import hydra
from omegaconf import DictConfig

from .config import CONF_DIR, ConfigError, compose, expand_overrides, normalize_overrides, register_configs
from .run import check, run

USAGE_EXIT_CODE = 2


def _fail(error: ConfigError) -> None:
    print(f"shootout: error: {error}", file=sys.stderr)
    sys.exit(USAGE_EXIT_CODE)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        jobs = check(cfg)
    except ConfigError as error:
        _fail(error)
    run(cfg, jobs)


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
    _hydra_main()


if __name__ == "__main__":
    main()
