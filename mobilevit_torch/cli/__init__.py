"""What the command-line entry points share, one concern a file: user-facing errors and exit codes
(``errors``), malloc's setting (``memory``), Hydra overrides checked before Hydra starts (``overrides``)
and the argparse scripts' arguments (``arguments``). Imports no torch: a mistake is told in a moment."""

from mobilevit_torch.cli.arguments import check_device_name, non_negative_int, positive_int, start_inference_script
from mobilevit_torch.cli.errors import exit_code, fail, one_line, user_errors
from mobilevit_torch.cli.memory import OPT_OUT, keep_freed_memory
from mobilevit_torch.cli.overrides import check_overrides, drop_unused_run_dir, quote_for_hydra

__all__ = [
    "OPT_OUT",
    "check_device_name",
    "check_overrides",
    "drop_unused_run_dir",
    "exit_code",
    "fail",
    "keep_freed_memory",
    "non_negative_int",
    "one_line",
    "positive_int",
    "quote_for_hydra",
    "start_inference_script",
    "user_errors",
]
