"""DDP on GPUs (NCCL), for a machine with at least 2 of them; skipped elsewhere. Not yet run: no
session so far was lent such a machine."""

import json
import sys

import pytest
import torch

from tests.ddp_helpers import DDP, assert_same_tensors, checkpoint, run, twinloop
from tests.helpers import EQUIV, EQUIVALENCE_RESULTS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices"),
]
GPU = ["--trainer.accelerator=gpu", "--trainer.strategy=ddp", "--trainer.deterministic=true"]
SYNCBN_ATOL = 1e-5  # 2 x B against 1 x 2B: the same samples, gradients and statistics summed in another order


@pytest.mark.parametrize("sync_batchnorm", [False, True])
def test_compare_on_two_gpus_is_equivalent(tmp_path, sync_batchnorm):
    """`twinloop-compare --trainer.devices 2` on 2 GPUs with NCCL: both loops within 1e-6."""
    args = [*EQUIV, *GPU, "--trainer.devices=2", f"--trainer.sync_batchnorm={str(sync_batchnorm).lower()}"]
    run([sys.executable, "-m", "project.compare", *args, "--report=report.json"], tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    worst = max(report["max_loss_diff"], report["max_step_tensor_diff"], *report["max_final_diff"].values())
    EQUIVALENCE_RESULTS.append((f"ddp 2 GPUs, nccl, sync_batchnorm={sync_batchnorm}", worst))
    assert report["equivalent"] and worst <= 1e-6


def test_sync_batchnorm_two_by_b_matches_one_by_two_b(tmp_path):
    """SyncBatchNorm over 2 GPUs x batch 32 trains as 1 GPU x batch 64 (Dropout off, whole batches of one
    permutation): final weights and BatchNorm statistics within SYNCBN_ATOL."""
    args = [*DDP, *GPU, "--model.network.dropout=0", "--trainer.limit_train_batches=20"]
    twinloop(["fit", *args, "--trainer.devices=2", "--trainer.sync_batchnorm=true", "--data.batch_size=32"], tmp_path)
    twinloop(["fit", *args, "--trainer.devices=1", "--data.batch_size=64"], tmp_path)
    a, b = (checkpoint(tmp_path / f"lightning_logs/version_{v}/checkpoints/last.ckpt") for v in (0, 1))
    assert a["global_step"] == b["global_step"] == 40
    worst = assert_same_tensors(a["state_dict"], b["state_dict"], atol=SYNCBN_ATOL)
    EQUIVALENCE_RESULTS.append(("sync_batchnorm 2 x 32 vs 1 x 64, 2 GPUs", worst))
