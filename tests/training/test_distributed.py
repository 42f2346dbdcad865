"""Data-parallel plumbing (`leadercli.training.distributed`): the launcher's environment, shards, and two real
gloo processes on CPU — the synchronised gradient of a sharded global batch equals the 1-process gradient of
that batch, steps of Adam stay equal, the main process's decisions reach every process, and a process that dies
makes its peer's last collective fail instead of letting it write a finished run."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from leadercli.errors import SettingsError
from leadercli.training import distributed as D


def test_launch_env_reads_torchrun_accelerate_and_mpi():
    assert D.launch_env({}) == D.Launch(0, 1, 0, "none")
    tr = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    assert D.launch_env(tr) == D.Launch(1, 2, 1, "torchrun")
    assert D.launch_env(tr | {"ACCELERATE_USE_CPU": "True"}).launcher == "accelerate"
    mpi = {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}
    assert D.launch_env(mpi) == D.Launch(3, 4, 1, "mpi")
    for bad in ({"RANK": "2", "WORLD_SIZE": "2"}, {"WORLD_SIZE": "two"}):
        with pytest.raises(SettingsError):
            D.launch_env(bad)


def test_follower_exits_only_off_the_main_process():
    assert not D.follower_exits(D.Launch(0, 1, 0, "none"))
    assert not D.follower_exits(D.Launch(0, 3, 0, "torchrun"))


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [4, 7, 16, 17])
def test_shards_cover_the_global_batch_in_order(world, n):
    idx = np.random.default_rng(n).permutation(100)[:n]
    parts = [D.shard(idx, D.Dist(r, world, "gloo", torch.device("cpu"))) for r in range(world)]
    assert np.array_equal(np.concatenate(parts), idx)  # in rank order the shards are the global batch
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    f = D.manifest_fields(D.Dist(0, world, "gloo", torch.device("cpu")), n)
    assert f["batch_per_process"] == sizes and f["world_size"] == world and f["global_batch"] == n


def test_batch_smaller_than_the_process_count_is_refused():
    D.check_batch(2, D.Dist(0, 2, "gloo", torch.device("cpu")))
    with pytest.raises(SettingsError, match="student.batch_size 1 is smaller than the 2 processes"):
        D.check_batch(1, D.Dist(0, 2, "gloo", torch.device("cpu")))


# -- two gloo processes ----------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _student(artifact_dir: str):
    from leadercli.data.artifact import Artifact
    from leadercli.data.batching import Encoder
    from leadercli.data.samples import load_samples
    from leadercli.models.student import StudentConfig, StudentModel

    art = Artifact(Path(artifact_dir))
    enc = Encoder(art.vocab)
    train = enc.encode_all(load_samples(art, "train", 10, False))
    torch.manual_seed(0)
    cfg = StudentConfig(
        vocab_size=enc.vocab_size,
        n_labels=enc.n_labels,
        med_offset=enc.med_offset,
        profile_sizes=enc.profile_sizes,
        hidden=16,
        heads=2,
        ff=32,
        dropout=0.0,
        attn_dropout=0.0,
        head_hidden=16,
    )
    return StudentModel(cfg), enc, train


def _loss(model, enc, rows):
    from leadercli.models.losses import bce_loss

    b = enc.collate(rows)
    return bce_loss(model(b).logits, b["labels"])


def _worker(rank: int, world: int, port: int, artifact_dir: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist, device = D.start(torch.device("cpu"), D.Launch(rank, world, rank, "test"))
    assert dist.active and dist.backend == "gloo" and D.current().world == world
    model, enc, train = _student(artifact_dir)
    params = list(model.parameters())
    res = {}

    # 1. one global batch of 7 rows (shards of 4 and 3): the synchronised gradient is the 1-process gradient
    idx = np.arange(7)
    full = _loss(model, enc, [train[i] for i in idx])
    full.backward()
    want = [p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)
    mine = D.shard(idx, dist)
    local = _loss(model, enc, [train[i] for i in mine])
    local.backward()
    (term,) = D.sync_grads(params, len(mine) / len(idx), [local], dist)
    res["loss_gap"] = abs(float(term) - float(full))
    res["grad_gap"] = max(
        float((p.grad - w).abs().max() / (w.abs().max() + 1e-12)) for p, w in zip(params, want, strict=True)
    )

    # 2. steps of Adam over global batches of 8: the same losses and weights as one process
    model_1, _, _ = _student(artifact_dir)
    opt_n = torch.optim.Adam(params, lr=1e-2)
    opt_1 = torch.optim.Adam(model_1.parameters(), lr=1e-2)
    order = np.random.default_rng(1).permutation(len(train))
    curve_n, curve_1 = [], []
    for i in range(0, len(order), 8):
        g = order[i : i + 8]
        opt_1.zero_grad(set_to_none=True)
        one = _loss(model_1, enc, [train[j] for j in g])
        one.backward()
        opt_1.step()
        curve_1.append(float(one))
        opt_n.zero_grad(set_to_none=True)
        mine = D.shard(g, dist)
        loc = _loss(model, enc, [train[j] for j in mine])
        loc.backward()
        (t,) = D.sync_grads(params, len(mine) / len(g), [loc], dist)
        opt_n.step()
        curve_n.append(float(t))
    res["curve_gap"] = max(abs(a - b) for a, b in zip(curve_n, curve_1, strict=True))
    res["weight_gap"] = max(
        float((a - b).abs().max()) for a, b in zip(params, model_1.parameters(), strict=True)
    )

    # 3. a parameter no shard used keeps grad None; one used by rank 0 only gets rank 0's weighted gradient
    a, b, c = (torch.nn.Parameter(torch.ones(3)) for _ in range(3))
    loss = (a * 2.0).sum() + ((b * 3.0).sum() if rank == 0 else 0.0)
    loss.backward()
    D.sync_grads([a, b, c], 0.5, [], dist)
    res["a"], res["b"], res["c"] = a.grad.tolist(), b.grad.tolist(), c.grad

    # 4. the main process decides; broadcast weights; per-rank dropout streams
    res["agree"] = D.agree(rank == 0, dist)
    lin = torch.nn.Linear(2, 2)
    if rank:
        torch.nn.init.constant_(lin.weight, float(rank))
    D.broadcast_module(lin, dist)
    sums = torch.tensor([float(lin.weight.sum())])
    torch.distributed.all_reduce(sums)
    res["weights_equal"] = abs(float(sums) - world * float(lin.weight.sum())) < 1e-6
    D.seed_epoch(42, 3, dist)
    draw = torch.rand(1)
    draws = [torch.zeros(1) for _ in range(world)]
    torch.distributed.all_gather(draws, draw)
    res["draws_differ"] = len({float(x) for x in draws}) == world
    D.seed_epoch(42, 3, dist)
    res["draw_repeats"] = float(torch.rand(1)) == float(draw)
    D.all_done(dist)
    Path(out, f"rank{rank}.json").write_text(json.dumps(res))

    # 5. a follower dies during training: the main process's next collective fails (no finished run follows)
    if rank:
        os._exit(7)  # as a crash would: no clean-up, no goodbye
    try:
        D.all_done(dist)
        Path(out, "crash.txt").write_text("finished")
    except Exception as exc:  # noqa: BLE001 - what the main process sees is the assertion
        Path(out, "crash.txt").write_text(f"raised {type(exc).__name__}")
    os._exit(0)


def test_two_gloo_processes_match_one(tiny_artifact, tmp_path):
    import torch.multiprocessing as mp

    port = _free_port()
    ctx = mp.start_processes(
        _worker, args=(2, port, str(tiny_artifact), str(tmp_path)), nprocs=2, join=False, start_method="spawn"
    )
    for p in ctx.processes:
        p.join(300)
    codes = [p.exitcode for p in ctx.processes]
    for p in ctx.processes:
        if p.is_alive():
            p.kill()
    assert codes == [0, 7], codes
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    for r in (r0, r1):
        assert r["loss_gap"] < 1e-6 and r["grad_gap"] < 1e-5, r
        assert r["curve_gap"] < 1e-5 and r["weight_gap"] < 1e-5, r
        assert r["a"] == [2.0] * 3 and r["b"] == [1.5] * 3 and r["c"] is None  # 0.5·2 + 0.5·2; 0.5·3; unused
        assert r["agree"] is True and r["weights_equal"] and r["draws_differ"] and r["draw_repeats"]
    assert (tmp_path / "crash.txt").read_text().startswith("raised"), (tmp_path / "crash.txt").read_text()


# -- the commands under torchrun ---------------------------------------------------------------------------
TOML = (
    "[student]\nepochs = {epochs}\nbatch_size = 8\nhidden = 16\nff = 32\nhead_hidden = 16\n"
    "dropout = 0.0\nattn_dropout = 0.0\n"
)
# a follower that dies in its 3rd epoch (after the 2nd epoch's checkpoint), as a crash would
CRASH = """
import os
from leadercli.training import distributed

real, calls = distributed.sync_grads, [0]


def crashing(*args, **kwargs):
    calls[0] += 1
    if os.environ["RANK"] == "1" and calls[0] == 2 * {steps} + 2:
        os._exit(9)
    return real(*args, **kwargs)


distributed.sync_grads = crashing
from leadercli.cli.main import app

app(prog_name="leader")
"""


def _workdir(tmp_path: Path, tiny_artifact: Path, epochs: int = 3) -> Path:
    import shutil

    shutil.copytree(tiny_artifact, tmp_path / "data" / "mimic3")
    (tmp_path / "leader.toml").write_text(TOML.format(epochs=epochs))
    return tmp_path


def _torchrun(wd: Path, args: list[str], n: int = 2, script: Path | None = None):
    import subprocess
    import sys

    entry = [str(script)] if script else ["-m", "leadercli"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(cmd + entry + args, cwd=wd, env=env, capture_output=True, text=True, timeout=600)


def _n_train(wd: Path) -> int:
    import polars as pl

    return pl.read_parquet(wd / "data/mimic3/patients.parquet").filter(pl.col("split") == "train").height


def test_train_student_two_processes_equals_one(tiny_artifact, tmp_path, monkeypatch):
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from leadercli import runs
    from leadercli.cli.main import app

    wd = _workdir(tmp_path, tiny_artifact)
    monkeypatch.chdir(wd)
    r = _torchrun(wd, ["train", "student", "--out", "runs/dp"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("student: test PRAUC") == 1 and r.stdout.count("saved runs/dp") == 1, r.stdout
    assert r.stderr.count("epoch   1/3") == 1, r.stderr  # the main process alone logs
    one = CliRunner().invoke(app, ["train", "student", "-q", "--out", "runs/one"])
    assert one.exit_code == 0, one.output
    m = json.loads((wd / "runs/dp/manifest.json").read_text())
    assert m["distributed"] == {
        "world_size": 2,
        "backend": "gloo",
        "global_batch": 8,
        "batch_per_process": [4, 4],
    }
    assert json.loads((wd / "runs/one/manifest.json").read_text())["distributed"]["world_size"] == 1
    dp, ref = runs.read_log(wd / "runs/dp"), runs.read_log(wd / "runs/one")
    assert [x["epoch"] for x in dp] == [1, 2, 3]  # one log line per epoch: written once
    for a, b in zip(dp, ref, strict=True):  # the same loss curve to float tolerance
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
        assert a["val_prauc"] == pytest.approx(b["val_prauc"], abs=1e-4)
    wa, wb = (
        load_file(str(wd / "runs/dp/model.safetensors")),
        load_file(str(wd / "runs/one/model.safetensors")),
    )
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-4


@pytest.mark.slow
def test_crash_on_a_follower_fails_the_command_and_resume_finishes_it(tiny_artifact, tmp_path):
    wd = _workdir(tmp_path, tiny_artifact)
    steps = math.ceil(_n_train(wd) / 8)
    script = wd / "crash.py"
    script.write_text(CRASH.format(steps=steps))
    r = _torchrun(wd, ["train", "student", "--out", "runs/dp"], script=script)
    assert r.returncode != 0
    assert not (wd / "runs/dp/manifest.json").exists() and "saved" not in r.stdout
    assert (wd / "runs/dp/checkpoint/last").is_dir()
    r = _torchrun(wd, ["train", "student", "--out", "runs/dp", "--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming after epoch 2/3" in r.stderr
    r = _torchrun(wd, ["train", "student", "--out", "runs/full"])
    assert r.returncode == 0, r.stderr[-3000:]
    from safetensors.torch import load_file

    a, b = (
        load_file(str(wd / "runs/dp/model.safetensors")),
        load_file(str(wd / "runs/full/model.safetensors")),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)  # resumed = uninterrupted, bit for bit


def test_baseline_runs_on_the_main_process_alone(tiny_artifact, tmp_path, monkeypatch):
    """popularity under a 2-process launch, each process in turn (a baseline joins no process group): the
    follower stops at once and writes nothing, the main process runs alone."""
    from typer.testing import CliRunner

    from leadercli import console
    from leadercli.cli.main import app

    wd = _workdir(tmp_path, tiny_artifact)
    monkeypatch.chdir(wd)
    monkeypatch.setattr(console, "_state", dict(console._state))  # set_rank's muting ends with the test
    args = ["train", "student", "--model", "popularity", "--out", "runs/pop"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0 and r.output == "" and not (wd / "runs/pop").exists(), r.output
    monkeypatch.setattr(console, "_state", {**console._state, "rank": 0, "world": 1, "quiet": False})
    monkeypatch.setenv("RANK", "0")
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert r.output.count("popularity: test PRAUC") == 1 and "on the main process alone" in r.output
    assert json.loads((wd / "runs/pop/manifest.json").read_text())["distributed"]["world_size"] == 1
