"""DDP under torchrun releases its gloo process group at shutdown: no gloo thread outlives
`shutdown`, so a rank that finishes after its peer exits has nothing left to abort on."""

import subprocess
import sys
import textwrap

WORKER = textwrap.dedent("""
    import glob
    import torch
    from torch.nn.parallel import DistributedDataParallel
    from xlm.recipes.distributed import init_distributed, shutdown

    env = init_distributed("cpu")
    model = DistributedDataParallel(torch.nn.Linear(4, 4))
    model(torch.randn(2, 4)).sum().backward()
    del model
    shutdown(env)
    threads = sorted(open(f).read().strip() for f in glob.glob("/proc/self/task/*/comm"))
    print(f"rank {env.rank} threads after shutdown: {threads}", flush=True)
    assert not [t for t in threads if "gloo" in t], threads
""")


def test_ddp_leaves_no_gloo_thread_after_shutdown(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
                           "--nproc_per_node=2", str(script)], capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("threads after shutdown") == 2
