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


def test_every_flag_of_every_command_exists():
    """Each command's script is asked for its flags once (``--helpfull``, argparse's
    ``--help``): a README that names a renamed or removed flag fails here."""
    commands = [c for block in _blocks("bash") for c in block.replace("\\\n", " ").splitlines()]
    used: dict[tuple[str, ...], set[str]] = {}
    for c in commands:
        words = c.split()
        if "experiments/" not in c and "hoststore.server" not in c:
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
    assert ("experiments/train_stream.py",) in used and ("-m", "hoststore.server") in used

    def ask(script):  # all at once: each spends seconds importing
        flag = "--help" if script[0] == "-m" else "--helpfull"
        return subprocess.Popen([sys.executable, *script, flag], cwd=REPO, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip

    helps = {script: ask(script) for script in used}
    for script, flags in used.items():
        text = helps[script].communicate(timeout=120)[0]
        # absl lists a boolean as --[no]name.
        missing = sorted(f for f in flags
                         if not re.search(rf"--(\[no\])?{re.escape(f[2:])}\b", text))  # fmt: skip
        assert not missing, f"{' '.join(script)} has no {missing}"


def test_it_never_points_outside_the_project():
    assert "../shared" not in README
