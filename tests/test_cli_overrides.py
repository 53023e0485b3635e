"""check_overrides/quote_for_hydra: command-line values Hydra's override grammar cannot read as written."""

from __future__ import annotations

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException

from mobilevit_torch.cli import check_overrides, quote_for_hydra

KEYS = ["checkpoint", "output", "data.root", "data.multiscale_sizes", "epochs"]


def _parsed(arg: str) -> object:
    return OverridesParser.create().parse_overrides([arg])[0].value()


@pytest.mark.parametrize(
    "value",
    [
        "runs/été (1)/best.pt",
        "~/runs/best.pt",
        "花/写真 🌸",
        "a=b#c",
        "it's",
        'say "hi"',
        'it\'s "both"',
        "C:\\runs (1)\\",
    ],
)
def test_unreadable_values_are_quoted_and_reach_hydra_as_typed(value: str) -> None:
    with pytest.raises(OverrideParseException):  # the premise: Hydra cannot read it unquoted
        _parsed(f"checkpoint={value}")
    quoted = quote_for_hydra(f"checkpoint={value}")
    assert _parsed(quoted) == value


@pytest.mark.parametrize("arg", ["epochs=3", "checkpoint=runs/a b/best.pt", "model=xxs,xs", "--cfg", "-m", "epochs="])
def test_readable_arguments_are_left_as_they_are(arg: str) -> None:
    assert quote_for_hydra(arg) == arg


def test_check_overrides_returns_the_arguments_hydra_can_read() -> None:
    argv = ["epochs=3", "checkpoint=runs/été (1)/best.pt", "hydra.run.dir=runs/été"]
    expected = ["epochs=3", "checkpoint='runs/été (1)/best.pt'", "hydra.run.dir='runs/été'"]
    assert check_overrides(argv, KEYS, {}) == expected


@pytest.mark.parametrize(
    ("arg", "hint"),
    [
        ("data.multiscale_sizes=[160,192", "quote it: data.multiscale_sizes='\"[160,192\"'"),
        ("data.root='C:\\dir\\'", "quote it: data.root='\"C:\\dir\\\\\"'"),  # the trailing backslash doubled
    ],
)
def test_a_broken_structure_is_one_line_showing_the_quoted_form(
    arg: str, hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        check_overrides([arg], KEYS, {})
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: Hydra cannot read {arg} (") and err.rstrip().endswith(hint), err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # Hydra answered these with a traceback or a paragraph.
        (["model=null"], "unknown model 'null': choose model=s|xs|xxs"),
        (["checkpoint="], "checkpoint= has no value (an unset shell variable?)"),  # became "." (the working folder)
        (["~format"], "~format deletes the setting 'format': give format=VALUE instead"),  # export: a TypeError
        (["~epochs=300"], "~epochs=300 deletes the setting 'epochs'"),
        (["epochs=3", "model=xxs,xs"], "model=xxs,xs is a sweep, one run per value: add -m to run them"),
        (
            ["checkpoint=a,b.pt"],
            "is a sweep, one run per value: add -m to run them; if the comma is part of the "
            "value, quote it: checkpoint='\"a,b.pt\"'",
        ),
    ],
)
def test_hydra_mistakes_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        check_overrides(argv, KEYS, {"model": ["s", "xs", "xxs"]})
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err


def test_sweeps_pass_with_multirun_and_quoted_commas_pass_without() -> None:
    groups = {"model": ["s", "xs", "xxs"]}
    assert check_overrides(["-m", "model=xxs,xs"], KEYS, groups) == ["-m", "model=xxs,xs"]
    assert check_overrides(["checkpoint='a,b.pt'"], KEYS, groups) == ["checkpoint='a,b.pt'"]
    assert check_overrides(["~hydra.job_logging"], KEYS, groups) == ["~hydra.job_logging"]


def test_exit_codes_of_the_errors_a_command_line_reports() -> None:
    """A diverged run or an unwritable checkpoint is 1, every mistake of the user's 2, a signal 128 + its number,
    anything else (a bug) None: its traceback shows."""
    import signal

    import omegaconf

    from mobilevit_torch.checkpoint import CheckpointError
    from mobilevit_torch.cli import exit_code
    from mobilevit_torch.data.folder import DataError
    from mobilevit_torch.registry import UnknownModelError
    from mobilevit_torch.training.checkpoint import CheckpointWriteError
    from mobilevit_torch.training.config import ConfigError
    from mobilevit_torch.training.stopping import TrainingDiverged, TrainingInterrupted
    from mobilevit_torch.weights import WeightsError

    assert exit_code(TrainingDiverged("loss became nan")) == 1
    assert exit_code(CheckpointWriteError("disk full")) == 1
    assert exit_code(TrainingInterrupted("stopped", signal.SIGTERM)) == 128 + signal.SIGTERM
    for error in (
        CheckpointError("x"), ConfigError("x"), DataError("x"), WeightsError("x"), UnknownModelError("x"),
        FileNotFoundError("x"), omegaconf.errors.ConfigKeyError("x"),
    ):  # fmt: skip
        assert exit_code(error) == 2, type(error).__name__
    assert exit_code(RuntimeError("a bug")) is None and exit_code(ValueError("a bug")) is None
