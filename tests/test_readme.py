"""The README works as written: its Python runs, and every flag its commands give exists."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import REPO

README = open(os.path.join(REPO, "README.md")).read()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def test_the_python_examples_run(capsys):
    blocks = _blocks("python")
    assert blocks
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out  # the library example: 3 keys, none seen 3 times yet
    assert "'rows': 0" in out and "'pending': 3" in out


def _commands(text: str) -> list[str]:
    return text.replace("\\\n", " ").splitlines()


def _flags_used(commands: list[str]) -> dict[tuple[str, ...], set[str]]:
    """script -> the flags the commands give it."""
    used: dict[tuple[str, ...], set[str]] = {}
    for c in commands:
        words = c.split()
        if c.lstrip().startswith("#") or ("experiments/" not in c and "hoststore.server" not in c):
            continue
        i = next(i for i, w in enumerate(words) if w.endswith(".py") or w == "hoststore.server")
        script = ("-m", words[i]) if words[i] == "hoststore.server" else (words[i],)
        # Flags after a bare "--" go to the trainer that launch_local.py starts.
        mine = words[i + 1 :] if "--" not in words else words[i + 1 : words.index("--")]
        rest = words[words.index("--") + 1 :] if "--" in words else []
        used.setdefault(script, set()).update(w.split("=")[0] for w in mine if w.startswith("--"))
        if rest:
            trainer = ("experiments/train_stream.py",)
            used.setdefault(trainer, set()).update(
                w.split("=")[0] for w in rest if w.startswith("--")
            )
    return used


def _check_flags(used: dict[tuple[str, ...], set[str]]) -> None:
    """Each script is asked for its flags once (``--helpfull``, argparse's ``--help``)."""

    def ask(script):  # all at once: each spends seconds importing
        flag = "--help" if script[0] == "-m" else "--helpfull"
        return subprocess.Popen([sys.executable, *script, flag], cwd=REPO, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip

    def known(flag: str, text: str) -> bool:  # absl lists a boolean as --[no]name
        name = flag[2:]
        return bool(
            re.search(rf"--(\[no\])?{re.escape(name)}\b", text)
            or (name.startswith("no") and re.search(rf"--\[no\]{re.escape(name[2:])}\b", text))
        )

    helps = {script: ask(script) for script in used}
    for script, flags in used.items():
        text = helps[script].communicate(timeout=120)[0]
        missing = sorted(f for f in flags if not known(f, text))
        assert not missing, f"{' '.join(script)} has no {missing}"


def test_every_flag_of_every_command_exists():
    """A README that names a renamed or removed flag fails here."""
    used = _flags_used([c for block in _blocks("bash") for c in _commands(block)])
    assert ("experiments/train_stream.py",) in used and ("-m", "hoststore.server") in used
    _check_flags(used)


def test_the_device_check_gives_only_flags_that_exist():
    """The GPU check runs only when a session is lent a device, on a budget of minutes: a
    renamed flag there would spend it on an error."""
    script = open(os.path.join(REPO, "experiments", "device_check.sh")).read()
    used = _flags_used(_commands(script))
    assert {("experiments/bench_host.py",), ("experiments/bench_e2e.py",)} <= set(used)
    # The flags it keeps in bash arrays (full and SMOKE=1 sizes), named after the scripts.
    arrays = re.findall(r"\b(e2e|host|store)=\((.*?)\)", script)
    assert {name for name, _ in arrays} == {"e2e", "host", "store"}
    for name, flags in arrays:
        used.setdefault((f"experiments/bench_{name}.py",), set()).update(
            f.split("=")[0] for f in flags.split()
        )
    _check_flags(used)


def test_it_never_points_outside_the_project():
    assert "../shared" not in README
