"""PNG plots of a metrics JSONL: AUC per hour (with the oracle when known), table rows,
admitted and evicted per hour. Needs matplotlib (the [plots] extra)."""

from __future__ import annotations

import json


def load_metrics(path: str) -> list[dict]:
    """The records of a metrics JSONL; a ValueError names the line that is not one, or
    says the file has none."""
    records = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError:
                    raise ValueError(f"{path}:{n}: not a metrics record (JSON)") from None
    if not records:
        raise ValueError(f"{path}: no metrics record")
    return records


def plot_metrics(records: list[dict], out_png: str, title: str = "") -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = list(range(len(records)))
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    ax1.plot(hours, [r["progressive_auc"] for r in records], "o-", label="progressive AUC")
    ax1.plot(hours, [r["train_auc"] for r in records], ".--", label="train AUC")
    ceilings = (("oracle_auc", "oracle"), ("seen_k_auc", "seen-5 ceiling"),
                ("bayes_auc", "Bayes ceiling"))  # fmt: skip
    for key, label in ceilings:
        if all(key in r for r in records):
            ax1.plot(hours, [r[key] for r in records], ":", label=label)
    ax1.set_ylabel("AUC")
    ax1.legend(loc="lower right")
    ax2.plot(hours, [r["table_rows"] for r in records], "o-", label="stored rows")
    if all("pending" in r for r in records):
        ax2.plot(hours, [r["pending"] for r in records], ".--", label="pending counters")
    ax2.set_ylabel("rows")
    ax2.legend(loc="upper left")
    admitted = [r["admitted"] for r in records]
    evicted = [r["evicted"] for r in records]
    ax3.bar(hours, [b - a for a, b in zip([0] + admitted[:-1], admitted, strict=True)],
            label="admitted this hour")  # fmt: skip
    ax3.bar(hours, [-(b - a) for a, b in zip([0] + evicted[:-1], evicted, strict=True)],
            label="evicted this hour")  # fmt: skip
    ax3.set_ylabel("rows per hour")
    ax3.set_xlabel("partition (hour)")
    ax3.set_xticks(hours[:: max(1, len(hours) // 12)])
    ax3.set_xticklabels([records[i]["partition"] for i in hours[:: max(1, len(hours) // 12)]],
                        rotation=30, ha="right")  # fmt: skip
    ax3.legend(loc="lower left")
    fig.suptitle(title or "streaming training")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
