"""Draw LEARN.md's figures from the project's own code (needs matplotlib: the plot extra).

    python docs/make_figures.py                      # docs/*.png but the loss curve
    python docs/make_figures.py --metrics m.jsonl    # also docs/loss_auc.png from a run

Every figure is computed, not drawn by hand: the batch from ``batch_from_lists``, the pair
order from ``config.pair_indices``, the row owners from the fused update's own hash
(``kernels/embedding/bags._owner``), the tile from ``kernels/gemm/tile``'s MR and NR, the
placement and sample slices from ``parallel/partition``, the curve by ``numbadlrm plot``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from numbadlrm.batch import batch_from_lists
from numbadlrm.config import pair_indices
from numbadlrm.kernels.embedding.bags import _owner
from numbadlrm.kernels.gemm.tile import MR, NR
from numbadlrm.parallel.partition import plan_placement, sample_ranges

DOCS = Path(__file__).resolve().parent
COLORS = plt.get_cmap("tab10").colors
# the example batch of LEARN.md: T = 2 tables, B = 3 samples, bags[t][b]
BAGS = [[[4, 1], [], [0, 4, 2]], [[3], [1, 1], [0]]]


def _cell(ax, x, y, text, color="white", w=1.0, h=1.0):
    ax.add_patch(plt.Rectangle((x, y), w, h, facecolor=color, edgecolor="black"))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=9)


def batch_layout(path: Path) -> None:
    """offsets (T, B+1) chained into one indices array; each bag a coloured run."""
    batch = batch_from_lists(np.zeros((3, 13)), BAGS, np.zeros(3))
    T, B1 = batch.offsets.shape
    fig, ax = plt.subplots(figsize=(9, 3.4))
    for j, row in enumerate(batch.indices):
        t = int(np.searchsorted(batch.offsets[:, -1], j, side="right"))
        b = int(np.searchsorted(batch.offsets[t], j, side="right")) - 1
        _cell(ax, j, 0, str(row), COLORS[t * 3 + b])
        ax.text(j + 0.5, -0.35, str(j), ha="center", fontsize=7, color="gray")
    for t in range(T):
        y = 2.2 + (T - 1 - t) * 1.6
        ax.text(-0.3, y + 0.5, f"offsets[{t}]", ha="right", va="center", fontsize=9)
        for b in range(B1):
            o = int(batch.offsets[t, b])
            _cell(ax, b * 1.2, y, str(o), COLORS[t * 3 + b] if b < B1 - 1 else "white")
            ax.annotate("", (o + 0.05, 1.0), (b * 1.2 + 0.5, y), arrowprops={"arrowstyle": "->",
                        "color": "gray", "lw": 0.6})  # fmt: skip
    ax.text(-0.3, 0.5, "indices", ha="right", va="center", fontsize=9)
    ax.set_title("bag (t, b) is indices[offsets[t, b] : offsets[t, b+1]]; the tables chain")
    ax.set_xlim(-2.2, len(batch.indices) + 0.5)
    ax.set_ylim(-0.7, 2.4 + 1.6 * T)
    ax.axis("off")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def pair_order(path: Path, num_features: int = 5) -> None:
    """Z's lower triangle, each pair (i, j), i > j, numbered by its place p in r."""
    li, lj = pair_indices(num_features, False)
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    for i in range(num_features):
        for j in range(num_features):
            kept = np.flatnonzero((li == i) & (lj == j))
            text = f"p={kept[0]}" if kept.size else ""
            _cell(ax, j, num_features - 1 - i, text, "#cfe3ff" if kept.size else "#f2f2f2")
    names = ["x"] + [f"e{t + 1}" for t in range(num_features - 1)]
    for k, name in enumerate(names):
        ax.text(k + 0.5, num_features + 0.15, name, ha="center")
        ax.text(-0.15, num_features - 0.5 - k, name, ha="right", va="center")
    ax.set_title(f"F = {num_features}: r = [x, Z[li[p], lj[p]] for p < P = {len(li)}]", fontsize=9)
    ax.set_xlim(-0.8, num_features)
    ax.set_ylim(0, num_features + 0.6)
    ax.set_aspect("equal")
    ax.axis("off")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def row_ownership(path: Path, rows: int = 12, owners: int = 3) -> None:
    """The fused update: every thread scans all lookups, writes only the rows it owns."""
    owner = [int(_owner(np.uint64(r), owners)) for r in range(rows)]
    batch = batch_from_lists(np.zeros((3, 13)), [[[4, 1], [], [0, 4, 2]]], np.zeros(3))
    fig, ax = plt.subplots(figsize=(9, 3.2))
    for r in range(rows):
        _cell(ax, r, 0, str(r), COLORS[owner[r]])
    ax.text(-0.3, 0.5, "table rows", ha="right", va="center", fontsize=9)
    for j, r in enumerate(batch.indices):
        b = int(np.searchsorted(batch.offsets[0], j, side="right")) - 1
        _cell(ax, j * 1.6 + 0.5, 2.2, f"bag {b}\nrow {r}", "white", w=1.4)
        arrow = {"arrowstyle": "->", "color": COLORS[owner[r]], "lw": 1.5}
        ax.annotate("", (r + 0.5, 1.0), (j * 1.6 + 1.2, 2.2), arrowprops=arrow)
    ax.text(-0.3, 2.7, "lookups", ha="right", va="center", fontsize=9)
    for c in range(owners):
        ax.text(rows + 0.4, 0.9 - c * 0.4, f"thread {c}", color=COLORS[c], fontsize=9)
    ax.set_title("row r belongs to thread _owner(r): each row is written by one thread only, "
                 "in lookup order (row 4 twice)", fontsize=9)  # fmt: skip
    ax.set_xlim(-1.8, rows + 2)
    ax.set_ylim(-0.3, 3.6)
    ax.axis("off")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def gemm_tile(path: Path) -> None:
    """C's MR x NR tile: MR broadcasts of A times NR/16 vectors of B, MR*NR/16 FMAs."""
    lanes = 16
    q = NR // lanes
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for r in range(MR):
        _cell(ax, 0, MR - 1 - r, f"A[{r},k]", "#ffe0b3", w=1.2)
        for v in range(q):
            _cell(ax, 2 + v * 1.6, MR - 1 - r, f"acc{r}{v}", "#d9f2d9", w=1.5)
    for v in range(q):
        _cell(ax, 2 + v * 1.6, MR + 0.4, f"B[k,{16 * v}:{16 * v + 16}]", "#cfe3ff", w=1.5)
    ax.set_title(f"one k step of the {MR} x {NR} register tile: {q} vector loads of B, "
                 f"{MR} broadcasts of A, {MR * q} FMAs into {MR * q} zmm accumulators",
                 fontsize=9)  # fmt: skip
    ax.set_xlim(-0.2, 2 + q * 1.6)
    ax.set_ylim(-0.2, MR + 1.6)
    ax.axis("off")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def alltoall(path: Path, ranks: int = 2, batch: int = 6) -> None:
    """Tables on ranks (model parallel), samples on ranks (data parallel), and the
    alltoall that brings each rank its samples' pooled vectors from every table."""
    sizes = (1000, 400, 300, 200)
    placement = plan_placement(sizes, 16, ranks)
    slices = sample_ranges(batch, ranks)
    fig, ax = plt.subplots(figsize=(9, 3.8))
    for rank in range(ranks):
        x0 = rank * 5
        ax.text(x0 + 2, 4.3, f"rank {rank}", ha="center", fontsize=10, weight="bold")
        for k, shard in enumerate(placement.shards_on(rank)):
            _cell(ax, x0 + k * 1.3, 3, f"table {shard.table}\nrows\n{shard.row_begin}:"
                  f"{shard.row_end}", COLORS[shard.table], w=1.2)  # fmt: skip
        lo, hi = slices[rank]
        _cell(ax, x0, 0, f"samples {lo}:{hi}: bottom MLP, interaction, top MLP", "#eeeeee", w=4.4)
        for other in range(ranks):
            ax.annotate("", (other * 5 + 2.2 + 0.3 * rank, 1.0), (x0 + 0.6 + 0.3 * other, 3.0),
                        arrowprops={"arrowstyle": "->", "color": "gray", "lw": 1})  # fmt: skip
    ax.text(4.7, 1.9, "alltoall: pooled e_t of each rank's samples\n(backward: their gradients "
            "back)", ha="center", fontsize=8)  # fmt: skip
    ax.set_title(f"hybrid parallel on {ranks} ranks, global batch {batch}: tables model-parallel,"
                 " MLPs data-parallel (gradients allreduced)", fontsize=9)  # fmt: skip
    ax.set_xlim(-0.3, ranks * 5)
    ax.set_ylim(-0.3, 4.6)
    ax.axis("off")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


FIGURES = {
    "batch_layout.png": batch_layout,
    "pair_order.png": pair_order,
    "row_ownership.png": row_ownership,
    "gemm_tile.png": gemm_tile,
    "alltoall.png": alltoall,
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=str(DOCS), help="where to write (default: docs/)")
    parser.add_argument("--metrics", help="a metrics file: also draw loss_auc.png from it")
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    for name, draw in FIGURES.items():
        draw(out / name)
        print(f"wrote {out / name}")
    if args.metrics:
        from numbadlrm.cli.tools import plot_metrics

        plot_metrics(args.metrics, str(out / "loss_auc.png"))
        print(f"wrote {out / 'loss_auc.png'}")


if __name__ == "__main__":
    main()
