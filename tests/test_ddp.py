"""DistributedDataParallel pretraining on CPU (gloo): 2 processes launched by torchrun.

Each rank trains on a different shard of the pool; if gradients were not all-reduced the two
replicas would drift apart. The worker makes every rank write its own checkpoint (in its own
folder) so that the test can compare the replicas' parameters exactly. The second test runs the
real CLI entry point under torchrun (`-m streamcad.cli train pretrain`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training test: needs the train extra")

from streamcad.preprocess import letterbox  # noqa: E402
from streamcad.train.common import load_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "streamcad" / "data" / "sample" / "images"
S = 64


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pool_npy(tmp_path_factory) -> Path:
    """The 24 real BUS-BRA sample images (in the repository), letterboxed to 64 px, flipped x2."""
    import cv2

    files = sorted(SAMPLE.glob("*.png"))
    if len(files) < 16:
        pytest.skip(f"sample images missing under {SAMPLE}")
    imgs = [letterbox(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE), S) for f in files]
    pool = np.stack(imgs + [im[:, ::-1] for im in imgs])  # (48, 64, 64) uint8
    path = tmp_path_factory.mktemp("ddp") / "pool.npy"
    np.save(path, pool)
    return path


def _torchrun(args: list[str], tmp: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", *args]
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


WORKER = textwrap.dedent(
    """
    import os, sys
    import streamcad.train.ssl as ssl
    from streamcad.cli import main

    ssl.is_main_process = lambda: True  # every rank saves, each in its own folder (below)
    rank = os.environ["RANK"]
    pool, out = sys.argv[1], sys.argv[2]
    sys.exit(main(["train", "pretrain", "--pool-npy", pool, "--size", "64", "--epochs", "2",
                   "--batch-size", "16", "--max-steps", "2", "--device", "cpu", "--threads", "1",
                   "--out", f"{out}/rank{rank}"]))
    """
)


def test_ddp_replicas_stay_identical(pool_npy, tmp_path):
    """torchrun, 2 CPU ranks, gloo, the real `streamcad train pretrain` entry point."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    _torchrun([str(script), str(pool_npy), str(tmp_path)], tmp_path)
    ck = [load_checkpoint(tmp_path / f"rank{r}" / "ssl.pt") for r in (0, 1)]
    assert all(c["kind"] == "ssl" and c["epoch"] == 2 and c["preprocess"]["size"] == S for c in ck)
    assert ck[0]["model_config"]["name"] == "tiny"
    # Parameters must be bit-identical (same init, all-reduced gradients, same optimizer).
    # BatchNorm running stats are buffers: DDP broadcasts rank 0's at every forward, so each
    # rank's differ by its own last local update on its own shard (CPU has no SyncBatchNorm);
    # they are not compared. Only rank 0's are ever saved by the real pretrain().
    def params(sd):
        return {k: v for k, v in sd.items() if "running_" not in k and "num_batches_tracked" not in k}

    for part in ("model", "projector", "dense_projector"):
        p0, p1 = params(ck[0][part]), params(ck[1][part])
        assert p0.keys() == p1.keys() and p0
        for k in p0:
            assert torch.equal(p0[k], p1[k]), f"replicas differ in {part}.{k}"
    # training did move the weights away from the shared initialisation
    from streamcad.train.model import build_model

    torch.manual_seed(0)
    init = build_model("tiny").state_dict()
    sd0 = params(ck[0]["model"])
    changed = [k for k in sd0 if not k.startswith("head.") and not torch.equal(sd0[k], init[k])]
    assert len(changed) > len(sd0) // 2
    # the checksum each rank reports is the same
    checksums = [sum(float(v.double().sum()) for v in params(c["model"]).values()) for c in ck]
    assert checksums[0] == checksums[1]
