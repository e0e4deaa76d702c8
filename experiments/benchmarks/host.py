"""The host side alone: how many examples/s the CPUs can feed a device, per core count.

Each measurement runs in a child process pinned to the first N cores (``taskset``), so
numba's, JAX's and the pipeline's threads all share exactly those cores:

- ``null``: the pipeline (batching and dedup, pulls, pushes, metrics) with a device step
  that returns zero gradients at once: the host's ceiling.
- ``lr``: ``train_and_evaluate`` with the LR model (its device step is negligible), no
  checkpoints: what training reaches when the host is the limit.
- ``lr_pass``: the same in pass mode (``pass_batches``): rows lent to the device for a pass
  of batches, the sparse optimizer inside the jitted step, no pull or push per batch.

Hours after the first are timed (the first compiles the kernels).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys

import numpy as np

log = logging.getLogger(__name__)
_STAGES = ("batch_seconds", "host_seconds", "push_seconds")
_RATES = ("examples_per_sec", "median_hour", "eval_and_train_per_sec")


@dataclasses.dataclass(frozen=True)
class HostBenchConfig:
    hours: int = 8
    rows_per_hour: int = 50_000
    batch_size: int = 4096
    admission: str = "count_filter:2"
    staleness: int = 1
    cores: tuple[int, ...] = (1, 2)
    modes: tuple[str, ...] = ("null", "lr", "lr_pass")
    pass_batches: int = 8
    rounds: int = 3  # each mode at each core count, alternating; medians reported
    # Also N independent 1-core processes side by side for each N > 1: what the cores
    # themselves allow, against which the pipeline's own ratio is read.
    independent: bool = True
    zipf: float = 1.1  # the generator's defaults; lower and wider: a heavier tail
    max_vocab: int = 200_000


def _train_config(cfg: HostBenchConfig, root: str):
    from jaxstream import config
    from jaxstream.data.synthetic import StreamConfig

    stream = StreamConfig(hours=cfg.hours, rows_per_hour=cfg.rows_per_hour, zipf=cfg.zipf,
                          max_vocab=cfg.max_vocab)  # fmt: skip
    return dataclasses.replace(config.get_config(), data_root=root, synthetic=stream,
                               model="lr", batch_size=cfg.batch_size, admission=cfg.admission,
                               eviction="", staleness=cfg.staleness, checkpoint=False,
                               progress=False)  # fmt: skip


def _null_step(spec):
    from jaxstream.step import StepOutput

    def step(params, opt_state, db):
        grads = {t: np.zeros((r.shape[0], r.shape[1] - spec.count_columns), np.float32)
                 for t, r in db.rows.items()}  # fmt: skip
        return StepOutput(params, opt_state, grads, np.zeros(db.labels.shape, np.float32), 0.0)

    return step


def measure(cfg: HostBenchConfig, root: str, mode: str) -> dict[str, float]:
    """One measurement in this process (the child side): examples/s over hours 2+ and the
    seconds each host stage was busy per 1,000 examples."""
    import hoststore as hs
    from jaxstream import train
    from jaxstream.batching import batch_threads, batches
    from jaxstream.pipeline import run_pass
    from jaxstream.stream import PartitionSource, SourceConfig

    tc = _train_config(cfg, root)
    if mode == "lr_pass":
        tc = dataclasses.replace(tc, pass_batches=cfg.pass_batches)
    if mode in ("lr", "lr_pass"):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="bench_host_") as work:
            train.train_and_evaluate(tc, work)
            lines = [json.loads(x) for x in open(os.path.join(work, "metrics.jsonl"))][1:]
        examples = sum(x["examples"] for x in lines)
        seconds = sum(x["train_seconds"] for x in lines)
        # Both passes of each partition: since training reuses the batches evaluation
        # built, its own rate leaves out their building, which this one counts.
        both = sum(x["train_seconds"] + x["examples"] / x["eval_examples_per_sec"]
                   for x in lines)  # fmt: skip
        stages = {k: sum(x[k] for x in lines) for k in _STAGES}
        hourly = [x["examples"] / x["train_seconds"] for x in lines]
    else:
        spec = train.feature_spec(tc)
        store, step = hs.LocalStore(spec.tables), _null_step(spec)
        examples, seconds, stages = 0, 0.0, dict.fromkeys(_STAGES, 0.0)
        hourly, both = [], float("nan")  # (no evaluation pass)
        for i, part in enumerate(PartitionSource(SourceConfig(root))):
            ex, _ = train.read_partition(tc, part)
            made = batches(ex, spec, tc.batch_size, threads=batch_threads(tc.batch_threads))
            r = run_pass(store, spec, made, train=True,
                         train_fn=step, params={}, opt_state={},
                         staleness=tc.staleness)  # fmt: skip
            store.advance_clock(1)
            if i:
                examples += len(ex)
                seconds += r.seconds
                hourly.append(len(ex) / r.seconds)
                for k, v in zip(_STAGES, (r.batch_seconds, r.host_seconds, r.push_seconds),
                                strict=True):  # fmt: skip
                    stages[k] += v
    # The median hour: an hour in which the step compiles for new shapes (the table grows
    # into a larger row bucket) is a one-off that a stream running for months amortizes.
    out = {
        "examples_per_sec": examples / seconds,
        "median_hour": float(np.median(hourly)),
        "eval_and_train_per_sec": examples / both,
    }
    out.update({f"{k.removesuffix('_seconds')}_ms_per_1k": 1e6 * v / examples
                for k, v in stages.items()})  # fmt: skip
    return out


Setup = tuple[int, bool]  # (cores, independent): one process on N cores, or N on one each


def run(cfg: HostBenchConfig, root: str, script: str) -> dict[str, dict[Setup, list[dict]]]:
    """Every mode at every core count ``cfg.rounds`` times, each a child process of
    ``script`` pinned to the first N cores; with ``cfg.independent``, also N children side
    by side, each pinned to one of those cores (their rates summed). The stream is
    generated first (unpinned).

    The setups alternate within a mode, in the opposite order every other round: this
    VM's speed drifts by 10-40% within minutes, so a ratio taken between two runs minutes
    apart measures the drift as much as the cores; a ratio within one round, and the median
    of several rounds, much less."""
    from jaxstream.data.synthetic import generate

    if not os.path.isdir(root):
        generate(root, _train_config(cfg, root).synthetic)
    setups = [(n, False) for n in cfg.cores]
    if cfg.independent:
        setups += [(n, True) for n in cfg.cores if n > 1]
    out: dict[str, dict[Setup, list[dict]]] = {}
    for mode in cfg.modes:
        for r in range(cfg.rounds):
            for n, independent in setups if r % 2 == 0 else setups[::-1]:
                if independent:
                    m = _summed([_child(cfg, root, script, mode, str(c), shared=True)
                                 for c in range(n)])  # fmt: skip
                else:
                    m = _child(cfg, root, script, mode, ",".join(str(c) for c in range(n)))()
                out.setdefault(mode, {}).setdefault((n, independent), []).append(m)
                log.info("%s, %d %s, round %d of %d: %.0f train examples/s", mode, n,
                         "independent 1-core processes" if independent else "core(s)",
                         r + 1, cfg.rounds, m["examples_per_sec"])  # fmt: skip
    return out


def _child(cfg: HostBenchConfig, root: str, script: str, mode: str, cpus: str,
           shared: bool = False):  # fmt: skip
    """Starts one measuring child pinned to ``cpus``; returns a function that waits for its
    result. ``shared``: children side by side, which must not each take most of an
    accelerator's memory, as JAX does by default."""
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"} if shared else None
    proc = subprocess.Popen(
        ["taskset", "-c", cpus, sys.executable, script, "--child", f"--mode={mode}",
         f"--root={root}", f"--config={json.dumps(dataclasses.asdict(cfg))}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip

    def result() -> dict[str, float]:
        stdout, stderr = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"bench_host child on cpus {cpus} failed:\n{stderr[-2000:]}")
        return json.loads(stdout.strip().splitlines()[-1])

    return result


def _summed(children) -> dict[str, float]:
    """Side-by-side children's rates added up (their stage timings are not a pipeline's)."""
    runs = [wait() for wait in children]
    return {k: sum(m[k] for m in runs) if k in _RATES else float("nan") for k in runs[0]}


def markdown(cfg: HostBenchConfig, r: dict[str, dict[Setup, list[dict]]]) -> str:
    lines = [
        f"{cfg.hours} h x {cfg.rows_per_hour:,} rows (Criteo format, generated; Zipf "
        f"{cfg.zipf}, vocabulary up to {cfg.max_vocab:,} per slot), batch "
        f"{cfg.batch_size}, admission {cfg.admission}, AdaGrad, staleness {cfg.staleness}; "
        "hours 2+ timed (median hour: the median of their rates, which leaves out the hours "
        "in which the step compiled for a larger table); each run pinned to the first N "
        "cores with `taskset`. Stage columns: "
        "milliseconds each host stage was busy per 1,000 examples (they overlap each other "
        "and the device step); in pass mode: building batches, beginning passes (statistics "
        "in batch order, rows lent), ending them (rows written back). A partition's "
        "training reuses the batches its evaluation built (`keep_batches_mb`), so the "
        "training rate leaves their building out; the last column counts both passes "
        "(each partition's examples over its evaluation and training time). "
        f"Each mode ran {cfg.rounds} round(s), its setups alternating within a round; "
        'every column is the median over the rounds, and "vs 1 core" the median of the '
        "rounds' ratios (each round's ratio in brackets). \"N independent\": N processes "
        "side by side, each pinned to its own core, their rates added: what the cores "
        "themselves give, against which a pipeline's ratio is read.",
        "",
        "| device step | cores | train examples/s | median hour | vs 1 core | batch+dedup "
        "| pull+transfer | push+metrics | evaluated and trained examples/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    names = {
        "null": "none (zero gradients)",
        "lr": "LR model (`train_and_evaluate`)",
        "lr_pass": f"LR model, pass mode ({cfg.pass_batches} batches a pass)",
    }

    def shown(x: float, fmt: str) -> str:  # NaN: not measured (e.g. no evaluation pass)
        return "-" if np.isnan(x) else format(x, fmt)

    for mode, per in r.items():
        ones = [m["examples_per_sec"] for m in per[min(per)]]
        for (n, independent), runs in sorted(per.items()):
            m = {k: float(np.median([x[k] for x in runs])) for k in runs[0]}
            ratios = [x["examples_per_sec"] / one for x, one in zip(runs, ones, strict=True)]
            each = " / ".join(f"{x:.2f}" for x in ratios)
            stages = " | ".join(shown(m[f"{k.removesuffix('_seconds')}_ms_per_1k"], ".2f")
                                for k in _STAGES)  # fmt: skip
            lines.append(f"| {names[mode]} | {n}{' independent' * independent} | "
                         f"{m['examples_per_sec']:,.0f} | {m['median_hour']:,.0f} | "
                         f"{np.median(ratios):.2f}x ({each}) | {stages} | "
                         f"{shown(m['eval_and_train_per_sec'], ',.0f')} |")  # fmt: skip
    return "\n".join(lines)
