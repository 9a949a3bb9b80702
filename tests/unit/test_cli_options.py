"""``sweep-magic agents``'s options → ``launch`` keywords: only those given, and only those the
installed ``launch`` takes (isolate= and the Ray backend land separately)."""

from __future__ import annotations

import pytest

from sweep_magic import api
from sweep_magic.cli import parser
from sweep_magic.cli._common import UsageError
from sweep_magic.cli.agents import launch_options


def _args(*argv):
    return parser().parse_args(["agents", "e/p/abc", *argv])


def test_only_given_options_are_passed():
    assert launch_options(_args()) == {}
    assert launch_options(_args("--gpus", "0,1", "--agents-per-gpu", "2", "--count", "3", "--nice", "5")) == {
        "gpus": "0,1", "agents_per_gpu": 2, "count": 3, "nice": 5}


def test_newer_options_pass_through_when_launch_takes_them(monkeypatch):
    def launch(function, sweep_id, *, cpus=None, isolate=None, backend="local", ray_address=None):
        pass

    monkeypatch.setattr(api, "launch", launch)
    assert launch_options(_args("--cpus", "2", "--isolate", "run")) == {"cpus": 2, "isolate": "run"}
    assert launch_options(_args("--ray")) == {"backend": "ray"}
    assert launch_options(_args("--ray=ray://head:10001")) == {"backend": "ray", "ray_address": "ray://head:10001"}


def test_newer_options_refused_in_one_line_when_launch_lacks_them(monkeypatch):
    def launch(function, sweep_id, *, cpus=None):
        pass

    monkeypatch.setattr(api, "launch", launch)
    for argv, flag in ((["--isolate", "run"], "--isolate"), (["--ray"], "--ray")):
        with pytest.raises(UsageError, match=f"^{flag} needs a newer sweep_magic"):
            launch_options(_args(*argv))


def test_ray_before_the_sweep_is_caught():
    from sweep_magic.cli.agents import run

    args = parser().parse_args(["agents", "--ray", "e/p/abc"])
    with pytest.raises(UsageError, match="--ray took 'e/p/abc' as Ray's address"):
        run(args)
