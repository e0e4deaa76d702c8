"""Every TrainConfig field is a command-line flag of the same name, default shown."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from absl import flags

from experiments.config_flags import apply_flags, define_flags
from jaxstream import config
from tests.conftest import REPO


def _names(cfg, prefix=""):
    out = []
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out += (
            _names(v, prefix + f.name + ".") if dataclasses.is_dataclass(v) else [prefix + f.name]
        )
    return out


@pytest.fixture
def values():
    fv = flags.FlagValues()
    define_flags(config.get_config(), values=fv)
    return fv


def test_one_flag_per_field_with_the_embedded_default(values):
    base = config.get_config()
    assert sorted(values) == sorted(_names(base))
    for name in _names(base):
        want = base
        for part in name.split("."):
            want = getattr(want, part)
        got = values[name].default
        assert (tuple(type(x)(g) for x, g in zip(want, got, strict=True))
                if isinstance(want, tuple) else got) == want, name  # fmt: skip


@pytest.mark.parametrize(
    "argv, want",
    [
        ([], {}),
        (["--hidden=32,16", "--seed=3"], {"hidden": (32, 16), "seed": 3}),
        (["--synthetic.hours=2", "--nocheckpoint"], {"synthetic.hours": 2, "checkpoint": False}),
        (["--poll_seconds=0.5", "--slot_names=1,2"],
         {"poll_seconds": 0.5, "slot_names": ("1", "2")}),
        (["--max_partitions=4", "--admission=count_filter:3"],
         {"max_partitions": 4, "admission": "count_filter:3"}),
    ],
)  # fmt: skip
def test_given_flags_replace_only_their_fields(values, argv, want):
    values(["prog", *argv])
    base = config.smoke_config()  # another base keeps its own values for the rest
    got = apply_flags(base, values=values)
    expect = base
    for name, v in want.items():
        if "." in name:
            outer, inner = name.split(".")
            expect = dataclasses.replace(
                expect, **{outer: dataclasses.replace(getattr(expect, outer), **{inner: v})}
            )
        else:
            expect = dataclasses.replace(expect, **{name: v})
    assert got == expect


def test_bad_list_item_names_the_flag(values):
    values(["prog", "--hidden=32,wide"])
    with pytest.raises(flags.ValidationError, match="--hidden=32,wide"):
        apply_flags(config.get_config(), values=values)


def test_help_shows_the_policies_on_by_default():
    out = subprocess.run([sys.executable, "experiments/train_stream.py", "--helpshort"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)  # fmt: skip
    text = out.stdout + out.stderr
    for name in (
        "--hidden",
        "--seed",
        "--poll_seconds",
        "--idle_timeout_seconds",
        "--keep_bases",
        "--synthetic.hours",
    ):
        assert name in text, name
    assert "count_filter:2" in text and "unseen:24" in text
    headings = [line for line in text.splitlines() if line.endswith(":") and " " not in line[:1]]
    groups = [h.removesuffix(":") for h in headings if h.removesuffix(":") in config.FIELD_GROUPS]
    assert groups == list(config.FIELD_GROUPS)  # grouped, in order
    grouped = {f for fs in config.FIELD_GROUPS.values() for f in fs}
    assert grouped == {f.name for f in dataclasses.fields(config.TrainConfig)}


@pytest.mark.parametrize(
    "flag, expect",
    [
        ("--admission=bogus", "--admission=bogus: unknown admission"),
        ("--model=nope", "--model=nope: choose from"),
        ("--dense_optimizer=adamm", "--dense_optimizer=adamm: not an optax optimizer"),
        ("--eviction=foo:3", "--eviction=foo:3: bad eviction part"),
        ("--store_shards=0", "--store_shards=0: must be >= 1"),
        ("--hidden=32,wide", "--hidden=32,wide: each item must be int"),
        (
            "--store_memory_mb=64",
            "--store_disk_dir=: --store_memory_mb and --store_disk_dir go together",
        ),
        ("--store_memory_mb=-1", "--store_memory_mb=-1.0: must be >= 0"),
        ("--max_partitions=0", "--max_partitions=0: must be >= 1 (unset: no limit)"),
        ("--num_workers=2", "--num_workers=2 needs --store_addresses"),
        (
            "--num_workers=2 --store_addresses=127.0.0.1:1 --pass_batches=4",
            "--pass_batches=4: pass mode trains in one process",
        ),
        ("--worker_index=1", "--worker_index=1 --num_workers=1: the index must be in"),
    ],
)
def test_a_bad_value_is_one_line_exit_2_before_any_work(tmp_path, flag, expect):
    out = subprocess.run([sys.executable, "experiments/train_stream.py", *flag.split(),
                          f"--workdir={tmp_path / 'w'}"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)  # fmt: skip
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: " + expect), out.stderr
    assert not (tmp_path / "w" / "data").exists()  # nothing generated
