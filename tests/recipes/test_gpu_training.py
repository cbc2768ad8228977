"""The GPU path of training: bf16 autocast, SDPA's flash kernel, a compiled train step, and nccl
DDP and FSDP2 in one process. Skipped without a CUDA GPU; benchmarks/gpu_check.sh runs them on one."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import xlm
from xlm.data.tasks import build_task
from xlm.data.tokenizers import WordTokenizer
from xlm.recipes import train
from xlm.recipes.distributed import DistEnv, apply_fsdp, init_distributed
from xlm.recipes.trainer import Trainer

NO_GPU = "needs a CUDA GPU (benchmarks/gpu_check.sh runs these on one)"
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)]

TOKENIZER = WordTokenizer([str(i) for i in range(121)])  # 128 ids, as the star tasks
DEBUG = ["--arch", "arlm_star", "--task", "star_easy", "--experiment", "debug", "trainer.progress_bar=false",
         "trainer.tensorboard=false", "trainer.device=cuda"]


def _trainer(out, *overrides) -> Trainer:
    composed = train.resolve_config(train.parse_args([*DEBUG, "--output-dir", str(out), *overrides]))
    task = build_task(composed.config.task)
    return Trainer(train.fit_model_to_task(composed, task), xlm.get_family("arlm"), task, init_distributed("cuda"))


def _train_losses(run) -> list[float]:
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return [r["loss"] for r in records if r["split"] == "train"]


def test_bf16_autocast_runs_the_matmuls_in_bf16_and_keeps_fp32_weights(tmp_path):
    trainer = _trainer(tmp_path / "bf16", "trainer.autocast_dtype=bf16")
    seen: set[torch.dtype] = set()
    linear = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda _m, _args, out: seen.add(out.dtype))
    trainer.run()
    assert torch.bfloat16 in seen
    losses = _train_losses(tmp_path / "bf16")
    assert losses and all(math.isfinite(x) for x in losses)
    assert all(v.dtype == torch.float32 for v in load_file(tmp_path / "bf16" / "model.safetensors").values())
    assert train.main([*DEBUG, "--output-dir", str(tmp_path / "fp32")]) == 0
    assert losses[0] == pytest.approx(_train_losses(tmp_path / "fp32")[0], rel=2e-2)  # same init, same batch


@pytest.mark.parametrize("arch", ["arlm_star", "mdlm_star"])
def test_training_attention_runs_sdpas_flash_kernel(arch):
    """With only the flash backend allowed, SDPA raises where a call cannot use it (a mask, a dtype)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    family = xlm.get_family(xlm.list_archs()[arch])
    torch.manual_seed(0)
    model = xlm.create_model(arch, vocab_size=128).cuda()
    unit = family.unit_factory(model, TOKENIZER, family.sampler_config_class())
    ids = torch.randint(7, 128, (4, 64))
    batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v
             for k, v in unit.collate_train([{"input_ids": row} for row in ids.tolist()]).items()}
    grads = {}
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same noise for MDLM's loss
        with sdpa_kernel([backend]), torch.autocast("cuda", dtype=torch.bfloat16):
            loss = unit.loss(model, batch)["loss"]
        loss.backward()
        grads[backend] = (loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None])
    (flash_loss, flash), (math_loss, reference) = grads[SDPBackend.FLASH_ATTENTION], grads[SDPBackend.MATH]
    torch.testing.assert_close(flash_loss, math_loss, rtol=2e-2, atol=2e-2)
    for a, b in zip(flash, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=5e-2, atol=5e-3)


def test_compiled_train_step_matches_eager_on_the_gpu(tmp_path):
    assert train.main([*DEBUG, "--output-dir", str(tmp_path / "eager")]) == 0
    assert train.main([*DEBUG, "--output-dir", str(tmp_path / "compiled"), "trainer.compile=true"]) == 0
    a, b = load_file(tmp_path / "eager" / "model.safetensors"), load_file(tmp_path / "compiled" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-4, msg=key)


def test_nccl_ddp_and_fsdp2_on_one_gpu_step_like_the_plain_model(tmp_path):
    """One rank of nccl: DDP's and FSDP2's (bf16 compute) wrappers around the model train as it does."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cuda:0"))
    torch.cuda.set_device(env.device)
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        ids = torch.randint(0, 128, (4, 32), device=env.device)
        models = {}
        for kind in ("plain", "ddp", "fsdp"):
            torch.manual_seed(0)
            model = xlm.create_model("arlm_star", vocab_size=128).to(env.device)
            wrapped = model
            if kind == "ddp":
                wrapped = DistributedDataParallel(model, device_ids=[0])
            elif kind == "fsdp":
                assert apply_fsdp(model, env, param_dtype="bf16") == 4
            optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
            for _ in range(2):
                wrapped(ids).float().logsumexp(-1).mean().backward()
                optim.step()
                optim.zero_grad(set_to_none=True)
            models[kind] = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach()
                            for n, p in model.named_parameters()}
        for name, value in models["plain"].items():
            torch.testing.assert_close(models["ddp"][name], value, rtol=1e-5, atol=1e-6, msg=name)
            torch.testing.assert_close(models["fsdp"][name], value, rtol=5e-2, atol=5e-3, msg=name)  # bf16 compute
    finally:
        dist.destroy_process_group()
