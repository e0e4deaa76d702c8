"""One checkpoint per partition: Orbax dense state + store snapshots + cursor + metrics.

Layout under ``workdir/checkpoints/``::

    000007/                     step = partitions trained so far
      dense/                    Orbax checkpoint of the flattened (params, opt_state)
      store/<table>/            hoststore snapshot (base or delta) of each table
      meta.json                 cursor, metric state, config, snapshot chains, checksums

``meta.json`` is written last (atomically), so a step without it was interrupted and is
ignored. Restore takes the newest step whose every file verifies (store snapshots carry
sha256s, the dense files' sha256s are in meta.json) and falls back to older steps, saying
so, when one is damaged. A store that fails to answer is not damage: restore stops there
(:class:`StoreUnavailable`), since falling back would retrain hours over checkpoints that
are fine. A damaged step that a later save would write again is moved aside
(``000007.unusable-<time>``), not deleted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from hoststore import Store, StoreError
from hoststore import snapshot as snap
from jaxstream.metrics import BinaryMetrics
from jaxstream.workdir import RunError

log = logging.getLogger(__name__)
META = "meta.json"


class CheckpointError(RuntimeError):
    pass


class StoreUnavailable(RunError):
    """The store failed while loading a checkpoint (a shard down or timing out), as
    opposed to refusing its files: nothing says the checkpoint is damaged."""


def _file_fault(e: StoreError) -> bool:
    """Whether a store's load failure blames the files (a shard server answers
    INVALID_ARGUMENT for a damaged or missing snapshot; in process, loads raise
    SnapshotError or OSError instead) rather than the store itself."""
    return getattr(e.code, "name", "INVALID_ARGUMENT") == "INVALID_ARGUMENT"


def _checkpointer() -> ocp.StandardCheckpointer:
    # Each process checkpoints on its own (with several trainers only worker 0 saves, and
    # the dense state is the same everywhere), so Orbax must not wait for the others.
    me = jax.process_index()
    return ocp.StandardCheckpointer(
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"worker{me}"
        )
    )


@dataclasses.dataclass
class Restored:
    step: int
    params: Any
    opt_state: Any
    cursor: str
    cumulative: BinaryMetrics
    store: Store  # the store the checkpoint's snapshots were loaded into
    meta: dict


def _sha_tree(root: str) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in sorted(files):
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _body_sha256(obj: dict) -> str:
    body = {k: v for k, v in obj.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _write_json_atomic(path: str, obj: dict) -> None:
    """Writes ``obj`` with the sha256 of its own body (so an edit of any value, the cursor
    included, is detected), fsynced, under a temporary name, then renamed."""
    obj = {**obj, "sha256": _body_sha256(obj)}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_checked_json(path: str) -> dict:
    """A JSON file written by :func:`_write_json_atomic`; CheckpointError if it was altered
    (files written before the checksum existed are read as they are)."""
    with open(path) as f:
        obj = json.load(f)
    if "sha256" in obj and obj["sha256"] != _body_sha256(obj):
        raise CheckpointError(f"{path}: sha256 mismatch (the file was altered)")
    return obj


class CheckpointManager:
    """Saves and restores steps; keeps the ``keep_bases`` newest bases and their deltas."""

    def __init__(self, workdir: str, keep_bases: int = 2):
        self.root = os.path.join(workdir, "checkpoints")
        os.makedirs(self.root, exist_ok=True)
        self.keep_bases = keep_bases
        self._orbax = _checkpointer()
        self._last_meta: dict | None = None
        self.unusable: list[tuple[int, str]] = []  # set by restore

    @staticmethod
    def newest_config(workdir: str) -> dict | None:
        """The config the newest readable checkpoint under ``workdir`` recorded (None: no
        checkpoint). Reads only: creates nothing."""
        root = os.path.join(workdir, "checkpoints")
        if not os.path.isdir(root):
            return None
        for name in sorted((d for d in os.listdir(root) if d.isdigit()), reverse=True):
            try:
                return _read_checked_json(os.path.join(root, name, META))["config"]
            except (OSError, ValueError, KeyError, CheckpointError):
                continue
        return None

    @property
    def committed(self) -> dict | None:
        """The meta of the newest checkpoint this manager committed or restored (None:
        none yet)."""
        return self._last_meta

    def steps(self) -> list[int]:
        """Committed steps, oldest first."""
        names = [d for d in os.listdir(self.root) if d.isdigit()]
        return sorted(int(d) for d in names if os.path.exists(os.path.join(self.root, d, META)))

    def _dir(self, step: int) -> str:
        return os.path.join(self.root, f"{step:06d}")

    # ------------------------------------------------------------------ save

    def save(self, step: int, params, opt_state, store: Store, cursor: str,
             cumulative: BinaryMetrics, config: dict, base: bool,
             skipped: list[str] = (), run_id: str = "") -> dict:  # fmt: skip
        """Writes step ``step``; ``base`` forces full store snapshots (else deltas on the
        previous step's, when there is one)."""
        path = self._dir(step)
        if os.path.exists(os.path.join(path, META)):  # committed, but restore refused it
            aside = f"{path}.unusable-{time.strftime('%Y%m%dT%H%M%S')}"
            os.replace(path, aside)
            log.warning("checkpoint %d did not restore: moved aside to %s", step, aside)
        elif os.path.exists(path):  # an interrupted earlier attempt at this step
            shutil.rmtree(path)
        prev = self._last_meta
        # A delta continues each part's chain: a store restored into another part count
        # (shard servers) starts new chains with a base.
        base = base or prev is None or any(len(c) != store.parts
                                           for c in prev["store_chains"].values())  # fmt: skip
        leaves = jax.tree_util.tree_leaves((params, opt_state))
        try:
            self._orbax.save(os.path.join(path, "dense"),
                             {str(i): np.asarray(x) for i, x in enumerate(leaves)})  # fmt: skip
            self._orbax.wait_until_finished()
        except BaseException:
            # Its background writers stop here, not at interpreter exit (where they would
            # print tracebacks after the caller has reported the error); a new one saves next.
            with contextlib.suppress(BaseException):
                self._orbax.close()
            self._orbax = _checkpointer()
            raise
        chains, manifests = {}, {}
        for name in store.tables():
            # One chain per part the store writes (a shard server each, or one in process);
            # a remote store's servers must share this filesystem.
            rel = os.path.join(f"{step:06d}", "store", name)
            parent = None if base else prev["store_manifests"][name]
            saved = store.save(name, os.path.join(self.root, rel), "base" if base else "delta",
                               parent)  # fmt: skip
            old = [[] for _ in saved.paths] if base else prev["store_chains"][name]
            chains[name] = [c + [os.path.relpath(p, self.root)]
                            for c, p in zip(old, saved.paths, strict=True)]  # fmt: skip
            # What the next delta needs of its parent: the id and each shard's cut.
            manifests[name] = [{**{k: m[k] for k in ("id", "kind", "rows", "deleted")},
                                "shards": [{"generation": s.get("generation")}
                                           for s in m["shards"]]}
                               for m in saved.manifests]  # fmt: skip
        meta = {
            "step": step,
            "cursor": cursor,
            "run_id": run_id,
            "skipped": list(skipped),  # partitions missing when later ones were trained
            "base_step": step if base else prev["base_step"],
            "store_chains": chains,
            "store_manifests": manifests,
            "metrics": cumulative.state_dict(),
            "dense_sha256": _sha_tree(os.path.join(path, "dense")),
            "num_leaves": len(leaves),
            "config": config,
        }
        _write_json_atomic(os.path.join(path, META), meta)
        self._last_meta = meta
        if base:
            self._prune()
        return meta

    def _prune(self) -> None:
        metas = {s: self.read_meta(s) for s in self.steps()}
        bases = sorted({m["base_step"] for m in metas.values() if m})
        keep = set(bases[-self.keep_bases :])
        for s, m in metas.items():
            if m and m["base_step"] not in keep:
                shutil.rmtree(self._dir(s), ignore_errors=True)

    def commit_mark(self, step: int) -> tuple[int, int, int]:
        """Which commit of step ``step`` is there: a step found damaged is moved aside and
        committed anew by a later save, with a new meta.json (OSError: none now)."""
        st = os.stat(os.path.join(self._dir(step), META))
        return step, st.st_ino, st.st_mtime_ns

    def read_meta(self, step: int) -> dict | None:
        """A step's meta.json, verified; None when it is missing, unreadable or altered."""
        try:
            return _upgrade(_read_checked_json(os.path.join(self._dir(step), META)))
        except (OSError, ValueError, KeyError, TypeError, IndexError, CheckpointError):
            return None

    # ------------------------------------------------------------------ restore

    def restore(self, params, opt_state, store: Store, load_store: bool = True,
                store_tags: dict[str, str] | None = None) -> Restored | None:  # fmt: skip
        """The newest step that verifies, or None (``unusable`` then says why each
        committed step failed). ``params``/``opt_state`` give the tree structure to fill;
        the store snapshots are loaded into ``store`` (a remote store's shards read the
        files and verify them) unless another worker loads the shared store
        (``load_store=False``)."""
        self.unusable = []  # (step, why), newest first
        for step in reversed(self.steps()):
            try:
                r = self._restore_step(step, params, opt_state, store, load_store,
                                       store_tags or {})  # fmt: skip
            except StoreError as e:
                if not _file_fault(e):
                    raise StoreUnavailable(
                        f"checkpoint {step} could not be loaded into the store: "
                        f"{' '.join(str(e).split())}; nothing was changed: rerun when the store "
                        "can load it"
                    ) from e
                self._refused(step, e)
            except (CheckpointError, snap.SnapshotError, OSError, ValueError) as e:
                self._refused(step, e)
            else:
                self._last_meta = r.meta
                log.info("restored checkpoint %d (cursor %s)", step, r.cursor)
                return r
        return None

    def _refused(self, step: int, e: Exception) -> None:
        log.warning("checkpoint %d is unusable (%s); falling back to the previous one", step, e)
        self.unusable.append((step, " ".join(str(e).split())))

    def verified(self, step: int) -> dict:
        """Step ``step``'s meta.json after checking what it commits: its own checksum, the
        dense files' sha256s and each store chain's newest manifest (the snapshots it
        committed, not others at the same paths; the snapshots' own files are verified as
        they are read). Raises CheckpointError, SnapshotError or OSError."""
        path = self._dir(step)
        meta = self.read_meta(step)
        if meta is None:
            raise CheckpointError(f"{path}/{META} unreadable or altered")
        dense = os.path.join(path, "dense")
        if _sha_tree(dense) != meta["dense_sha256"]:
            raise CheckpointError(f"{dense}: files do not match their sha256 in {META}")
        for name, chains in meta["store_chains"].items():
            for chain, m in zip(chains, meta["store_manifests"][name], strict=True):
                found = snap.read_manifest(os.path.join(self.root, chain[-1]))["id"]
                if found != m["id"]:
                    raise CheckpointError(f"{chain[-1]}: manifest {found}, but {META} "
                                          f"committed {m['id']}")  # fmt: skip
        return meta

    def read_dense(self, step: int, meta: dict, template, params_only: bool = False):
        """The dense state of step ``step`` (verified: :meth:`verified`) in the structure
        and dtypes of ``template``: (params, opt_state), or the params alone (the first
        leaves saved) with ``params_only``."""
        dense = os.path.join(self._dir(step), "dense")
        leaves, treedef = jax.tree_util.tree_flatten(template)
        if len(leaves) > meta["num_leaves"] or (len(leaves) < meta["num_leaves"]
                                                and not params_only):  # fmt: skip
            raise CheckpointError(f"{dense}: {meta['num_leaves']} arrays, model has {len(leaves)}")
        saved = self._orbax.restore(dense)
        return jax.tree_util.tree_unflatten(
            treedef, [jax.numpy.asarray(saved[str(i)], x.dtype) for i, x in enumerate(leaves)]
        )

    def _restore_step(self, step, params, opt_state, store: Store, load_store, tags) -> Restored:
        meta = self.verified(step)
        p, o = self.read_dense(step, meta, (params, opt_state))
        unknown = set(meta["store_chains"]) - set(store.tables())
        if unknown:
            raise CheckpointError(f"checkpoint has tables {sorted(unknown)} the config lacks")
        at_step = f"{meta.get('run_id')}/{step}"
        if load_store:
            for name, chains in meta["store_chains"].items():
                if meta.get("run_id") and tags.get(name) == at_step:
                    log.info("store table %s is at checkpoint %d already: not reloaded", name, step)
                    continue
                store.load(name, [[os.path.join(self.root, c) for c in chain]
                                  for chain in chains])  # fmt: skip
        return Restored(step, p, o, meta["cursor"], BinaryMetrics.from_state(meta["metrics"]),
                        store, meta)  # fmt: skip


def _upgrade(meta: dict) -> dict:
    """Checkpoints written before stores had parts hold one bare chain and one manifest
    per table: the same as one part."""
    meta = dict(meta)
    meta["store_chains"] = {n: [c] if c and isinstance(c[0], str) else c
                            for n, c in meta["store_chains"].items()}  # fmt: skip
    meta["store_manifests"] = {n: [m] if isinstance(m, dict) else m
                               for n, m in meta["store_manifests"].items()}  # fmt: skip
    return meta
