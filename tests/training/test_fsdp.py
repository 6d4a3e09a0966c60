"""FSDP2 (through accelerate) as the alternative to ZeRO, on CPU with gloo at world size 2 (training/fsdp.py):
training, the export with its managers, per-module learning rates on the sharded parameters, exact resume from FULL
and SHARDED checkpoints, both launchers (torchrun + --fsdp_config recipes/fsdp2.json, accelerate launch
--config_file recipes/fsdp2.yaml), another family in Stage-1; the configs, the wrap classes of the four families, the
refusal of FSDP's own activation checkpointing and its reason, the optimizer-state completion; Liger (training/liger.py)
a no-op without a GPU or the package."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
from support.helpers import ROOT, logged_losses, make_batch, subprocess_env, tiny_model
from transformers import AutoModelForImageTextToText, TrainingArguments

import llava_manager
from llava_manager import apply_manager, get_managers
from llava_manager.families import FAMILIES, LLAVA_FAMILIES
from llava_manager.runtime.cpu_distributed import free_port
from llava_manager.synthetic.data import tiny_model_config, tiny_processor
from llava_manager.training import fsdp, liger
from llava_manager.training.train_args import _CHECKPOINTING

pytestmark = pytest.mark.slow  # launches processes or trains; outside the fast tier

ARGS = (
    "--max_steps",
    "6",
    "--save_steps",
    "3",
    "--logging_steps",
    "1",
    "--synthetic_samples",
    "48",
    "--per_device_train_batch_size",
    "4",
    "--dataloader_num_workers",
    "0",
    "--data_seed",
    "42",
    f"--{_CHECKPOINTING}",
    "true",
    "--vision_tower_lr",
    "3e-4",
    "--manager_lr",
    "2e-3",
)
LRS = {"llm": 7e-4, "projector": 7e-4, "vision_tower": 3e-4, "managers": 2e-3}  # the embedded default's 7e-4
# Runs stage2 like recipes/stage2.py and writes what the trainer holds afterwards: the optimizer's groups (by module)
# and how the parameters are sharded.
PROBE = textwrap.dedent("""
    import json, sys
    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor
    from llava_manager.runtime import processes
    from llava_manager.training.train import run
    from llava_manager.training.parts import module_parameters

    trainer = run("stage2", sys.argv[2:])
    model = trainer.model
    owner = {id(p): part for part, ps in module_parameters(model).items() for p in ps}
    groups = [{"lr": g.get("initial_lr", g["lr"]), "parts": sorted({owner[id(p)] for p in g["params"]}),
               "ids": sorted(id(p) for p in g["params"])} for g in trainer.optimizer.param_groups]
    trainable = {part: sorted(id(p) for p in ps if p.requires_grad) for part, ps in module_parameters(model).items()}
    if trainer.is_world_process_zero():
        open(sys.argv[1], "w").write(json.dumps({
            "distributed_type": str(trainer.accelerator.distributed_type), "groups": groups, "trainable": trainable,
            "all_dtensors": all(isinstance(p, DTensor) for p in model.parameters()),
            "units": sorted({type(m).__name__ for m in model.modules() if isinstance(m, FSDPModule)}),
            "managers_in_root": not any(isinstance(m, FSDPModule) for m in model.model.managers.modules()),
        }))
    rank = trainer.args.process_index
    processes.close(trainer)  # as the recipes' main
    print(f"rank {rank}: process group closed {not dist.is_initialized()}", flush=True)
""")


def launch(
    script: Path, *args: str, launcher: str = "torchrun", launcher_args: tuple[str, ...] = (), timeout: int = 300
) -> str:
    """`script args` in 2 CPU processes, through torchrun or `accelerate launch --config_file recipes/fsdp2.yaml`
    (then `launcher_args` go to accelerate); returns the output, or fails the test with its tail."""
    port = str(free_port())
    if launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    else:
        command = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(ROOT / "recipes" / "fsdp2.yaml"),
            "--num_processes",
            "2",
            "--main_process_port",
            port,
        ]
    result = subprocess.run(
        [*command, *launcher_args, str(script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=subprocess_env(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1"),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout + result.stderr


def recipe(stage: str) -> Path:
    return ROOT / "recipes" / f"{stage}.py"


def export_weights(directory) -> dict[str, torch.Tensor]:
    return llava_manager.from_pretrained(directory).state_dict()


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """Stage-2 of the embedded default, 6 steps, torchrun + recipes/fsdp2.json (FULL_STATE_DICT), through the probe."""
    root = tmp_path_factory.mktemp("fsdp-full")
    probe = root / "probe.py"
    probe.write_text(PROBE)
    out = root / "out"
    log = launch(
        probe,
        str(root / "probe.json"),
        "--output_dir",
        str(out),
        "--fsdp",
        "--fsdp_config",
        str(ROOT / "recipes" / "fsdp2.json"),
        *ARGS,
    )
    return out, json.loads((root / "probe.json").read_text()), log


def test_world_size_2_runs_fsdp2_on_cpu_with_sharded_parameters(full_run):
    out, probe, log = full_run
    assert "FSDP2 on CPU with the gloo backend (2 processes)" in log
    assert probe["distributed_type"] == "DistributedType.FSDP" and probe["all_dtensors"]
    # one FSDP unit per decoder layer and vision encoder layer (and the root); the managers are in the root's
    assert {"FSDPQwen2DecoderLayer", "FSDPSiglipEncoderLayer", "FSDPLlavaOnevisionForConditionalGeneration"} <= set(
        probe["units"]
    ), probe["units"]
    assert probe["managers_in_root"]
    # every process closes the process group at the end (runtime/processes.py): none aborts in its destructor
    assert all(f"rank {r}: process group closed True" in log for r in (0, 1)), log[-2000:]
    checkpoint = out / "checkpoint-3"
    assert (checkpoint / "pytorch_model_fsdp.bin").is_file() and (checkpoint / "optimizer.bin").is_file()
    state = json.loads((out / "trainer_state.json").read_text())
    assert sorted(logged_losses(out)) == [1, 2, 3, 4, 5, 6] and state["train_batch_size"] == 4


def test_per_module_learning_rates_survive_the_sharding(full_run):
    _, probe, _ = full_run
    by_part = {}
    for group in probe["groups"]:
        assert len(group["parts"]) == 1, group["parts"]  # a group holds one module's parameters
        by_part.setdefault(group["parts"][0], []).append(group)
    assert set(by_part) == set(LRS)
    for part, groups in by_part.items():
        assert all(g["lr"] == pytest.approx(LRS[part]) for g in groups), (part, [g["lr"] for g in groups])
        # every trainable parameter of the module is in its groups, as the sharded parameter the model holds
        assert sorted(i for g in groups for i in g["ids"]) == probe["trainable"][part]


def test_the_export_loads_with_the_trained_managers(full_run):
    out, _, _ = full_run
    exported = llava_manager.from_pretrained(out)
    weights = [m.weight for m in get_managers(exported)]
    assert len(weights) == 2 and all(w.abs().sum() > 0 for w in weights)
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    logged = [e for e in history if "manager_norm/layer_0" in e][-1]["manager_norm/layer_0"]
    # the logged norm is the whole manager's, not the shard of rank 0 (FSDP2 shards it across the 2 ranks)
    assert torch.isclose(weights[0].float().norm(), torch.tensor(logged), rtol=1e-4)


def test_resume_from_the_fsdp_checkpoint_continues_exactly(full_run, tmp_path):
    full, _, _ = full_run
    resumed = tmp_path / "resumed"
    shutil.copytree(full / "checkpoint-3", resumed / "checkpoint-3")
    # another --seed builds another initial model: only the checkpoint can give the same losses
    launch(
        recipe("stage2"),
        "--output_dir",
        str(resumed),
        "--fsdp",
        "--fsdp_config",
        str(ROOT / "recipes" / "fsdp2.json"),
        *ARGS,
        "--resume_from_checkpoint",
        str(resumed / "checkpoint-3"),
        "--seed",
        "7",
    )
    assert logged_losses(resumed) == logged_losses(full)
    a, b = export_weights(resumed), export_weights(full)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_accelerate_launch_with_sharded_checkpoints_resumes_exactly(full_run, tmp_path):
    """recipes/fsdp2.yaml through `accelerate launch`, SHARDED_STATE_DICT from its command line: the first 3 steps,
    then a resumed run to step 6; the same losses and export as the torchrun run with FULL checkpoints."""
    full, _, _ = full_run
    out = tmp_path / "sharded"
    sharded = ("--fsdp_state_dict_type", "SHARDED_STATE_DICT")
    first = [*ARGS, "--max_steps", "3"]  # the later --max_steps wins
    launch(recipe("stage2"), "--output_dir", str(out), *first, launcher="accelerate", launcher_args=sharded)
    checkpoint = out / "checkpoint-3"
    assert (checkpoint / "pytorch_model_fsdp_0").is_dir() and (checkpoint / "optimizer_0").is_dir()
    assert not (checkpoint / "model.safetensors").exists()
    assert (out / "model.safetensors").is_file()  # the export at the end is full with sharded checkpoints too
    launch(
        recipe("stage2"),
        "--output_dir",
        str(out),
        *ARGS,
        "--resume_from_checkpoint",
        str(checkpoint),
        "--seed",
        "7",
        launcher="accelerate",
        launcher_args=sharded,
    )
    assert logged_losses(out) == logged_losses(full)
    a, b = export_weights(out), export_weights(full)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stage1_of_another_family_wraps_its_own_layers(tmp_path):
    """LLaVA-1.5 (Llama + CLIP), Stage-1: only the projector and the managers train, the rest is frozen."""
    log = launch(
        recipe("stage1"),
        "--output_dir",
        str(tmp_path),
        "--family",
        "llava",
        "--fsdp",
        "--fsdp_config",
        str(ROOT / "recipes" / "fsdp2.json"),
        "--max_steps",
        "2",
        "--save_steps",
        "100",
        "--logging_steps",
        "1",
        "--synthetic_samples",
        "32",
        "--per_device_train_batch_size",
        "4",
        "--dataloader_num_workers",
        "0",
    )
    assert "units ['CLIPEncoderLayer', 'LlamaDecoderLayer']" in log
    exported = llava_manager.from_pretrained(tmp_path)
    assert exported.config.model_type == "llava"
    assert all(m.weight.abs().sum() > 0 for m in get_managers(exported))


# ---- without processes -----------------------------------------------------------------------------------------


def test_the_configs_parse_and_agree(tmp_path, monkeypatch):
    from accelerate.commands.config.config_args import load_config_from_file

    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")  # TrainingArguments sets it
    args = TrainingArguments(
        output_dir=str(tmp_path), fsdp=True, fsdp_config=str(ROOT / "recipes" / "fsdp2.json"), report_to=[]
    )
    plugin = args.fsdp_plugin_args
    assert plugin["fsdp_version"] == 2 and plugin["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert plugin["state_dict_type"] == "FULL_STATE_DICT" and plugin["reshard_after_forward"] is True
    assert "transformer_cls_names_to_wrap" not in plugin  # chosen per model by fsdp.setup

    yaml = load_config_from_file(str(ROOT / "recipes" / "fsdp2.yaml"))
    assert yaml.distributed_type == "FSDP"  # a DistributedType (a str enum)
    cfg = yaml.fsdp_config
    assert cfg["fsdp_version"] == 2 and cfg["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert cfg["fsdp_state_dict_type"] == plugin["state_dict_type"] and not cfg["fsdp_activation_checkpointing"]
    assert "fsdp_transformer_layer_cls_to_wrap" not in cfg


@pytest.mark.parametrize("family", LLAVA_FAMILIES)
def test_wrap_classes_exist_in_every_family_where_accelerates_default_does_not(family):
    from accelerate.utils.dataclasses import get_module_class_from_name

    processor = tiny_processor(family=family)
    model = apply_manager(AutoModelForImageTextToText.from_config(tiny_model_config(processor, family)))
    classes = fsdp.wrap_classes(model)
    text = {"llava_onevision": "Qwen2DecoderLayer", "llava_next": "MistralDecoderLayer"}.get(
        family, "LlamaDecoderLayer"
    )
    vision = "SiglipEncoderLayer" if family == "llava_onevision" else "CLIPEncoderLayer"
    assert classes == sorted([text, vision])
    assert all(get_module_class_from_name(model, name) is not None for name in classes)
    # accelerate's default, the model's _no_split_modules, names a class the model does not build: it would stop
    missing = [n for n in model._no_split_modules if get_module_class_from_name(model, n) is None]
    assert any("TextEmbeddings" in n for n in missing), missing


# The other families' decoder and vision layer classes, as transformers names them.
WRAP_CLASSES = {
    "qwen2_vl": ["Qwen2VLDecoderLayer", "Qwen2VLVisionBlock"],
    "qwen2_5_vl": ["Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock"],
    "qwen3_vl": ["Qwen3VLTextDecoderLayer", "Qwen3VLVisionBlock"],
    "qwen3_vl_moe": ["Qwen3VLMoeTextDecoderLayer", "Qwen3VLMoeVisionBlock"],
    "qwen3_5": ["Qwen3_5DecoderLayer", "Qwen3_5VisionBlock"],
    "qwen3_5_moe": ["Qwen3_5MoeDecoderLayer", "Qwen3_5MoeVisionBlock"],
    "internvl": ["InternVLVisionLayer", "Qwen2DecoderLayer"],
    "gemma3": ["Gemma3DecoderLayer", "SiglipEncoderLayer"],
    "mistral3": ["MistralDecoderLayer", "PixtralAttentionLayer"],
}


@pytest.mark.parametrize("family", sorted(WRAP_CLASSES))
def test_wrap_classes_of_the_other_families(family):
    from accelerate.utils.dataclasses import get_module_class_from_name

    assert set(WRAP_CLASSES) == set(FAMILIES) - set(LLAVA_FAMILIES)
    adapter = FAMILIES[family]
    model = apply_manager(adapter.model_class(adapter.tiny_config()))
    classes = fsdp.wrap_classes(model)
    assert classes == WRAP_CLASSES[family]
    assert all(get_module_class_from_name(model, name) is not None for name in classes)


def test_fsdps_own_activation_checkpointing_breaks_the_managers_and_is_refused():
    """The reason: torch's CheckpointWrapper runs the decoder layers' pre-hooks (where the managers add their term)
    inside the checkpoint, and the recomputation in the backward has no image positions any more."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        apply_activation_checkpointing,
        checkpoint_wrapper,
    )
    from torch.utils.checkpoint import CheckpointError

    model = apply_manager(tiny_model()).train()
    model.config.use_cache = False
    batch = make_batch(model, [(20, 30), (30, 20)])
    with torch.no_grad():
        for m in get_managers(model):
            m.weight.normal_()
    layer_class = type(model.model.language_model.layers[0])
    apply_activation_checkpointing(
        model,
        check_fn=lambda m: isinstance(m, layer_class),
        checkpoint_wrapper_fn=lambda m: checkpoint_wrapper(m, checkpoint_impl=CheckpointImpl.NO_REENTRANT),
    )
    loss = model(**batch, labels=batch["input_ids"], use_cache=False).loss
    with pytest.raises(CheckpointError, match="different number of tensors was saved"):
        loss.backward()

    from accelerate.utils import DistributedType

    plugin = types.SimpleNamespace(activation_checkpointing=True)
    state = types.SimpleNamespace(distributed_type=DistributedType.FSDP, fsdp_plugin=plugin)
    trainer = types.SimpleNamespace(
        accelerator=types.SimpleNamespace(state=state),
        is_fsdp_enabled=True,
        args=types.SimpleNamespace(fsdp_plugin_args={}),
    )
    with pytest.raises(ValueError, match="--activation_checkpointing true"):
        fsdp.setup(trainer)


def test_optimizer_state_completion_is_what_a_fresh_optimizer_would_hold():
    """Parameters that never had a gradient get Adam's initial state; nothing else changes, and a later first
    gradient updates them exactly as it would without the completion."""
    torch.manual_seed(0)
    used, unused = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    optim = torch.optim.AdamW([*used.parameters(), *unused.parameters()], lr=0.1, weight_decay=0.1)
    assert fsdp.complete_optimizer_state(optim) == []  # before the first step: nothing to do
    used(torch.randn(2, 3)).sum().backward()
    optim.step()
    optim.zero_grad()
    before = {
        k: v.clone()
        for k, v in {**dict(used.named_parameters()), **{f"u{k}": v for k, v in unused.named_parameters()}}.items()
    }
    used_state = {k: v.clone() for k, v in optim.state[used.weight].items()}
    completed = fsdp.complete_optimizer_state(optim)
    assert {id(p) for p in completed} == {id(p) for p in unused.parameters()}
    after = {**dict(used.named_parameters()), **{f"u{k}": v for k, v in unused.named_parameters()}}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(used_state[k], optim.state[used.weight][k]) for k in used_state)
    state = optim.state[unused.weight]
    assert float(state["step"]) == 0 and not state["exp_avg"].any() and not state["exp_avg_sq"].any()

    reference = torch.nn.Linear(3, 3)
    reference.load_state_dict(unused.state_dict())
    fresh = torch.optim.AdamW(reference.parameters(), lr=0.1, weight_decay=0.1)
    x = torch.randn(2, 3)
    for module, opt in ((unused, optim), (reference, fresh)):
        module(x).pow(2).sum().backward()
        opt.step()
    assert torch.equal(unused.weight, reference.weight) and torch.equal(unused.bias, reference.bias)


def test_prepare_changes_nothing_without_fsdp(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert fsdp.prepare(["--deepspeed", "x.json"]) == {} and "LOCAL_RANK" not in os.environ
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    defaults = fsdp.prepare(["--fsdp", "--fsdp_config", "recipes/fsdp2.json"])
    assert os.environ["WORLD_SIZE"] == "1" and os.environ["LOCAL_RANK"] == "0"  # no launcher: a world of one
    assert defaults == ({} if torch.cuda.is_available() else {"use_cpu": True})
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)


# ---- Liger -----------------------------------------------------------------------------------------------------


def test_liger_is_a_noop_without_gpu_or_package(caplog, monkeypatch):
    model = apply_manager(tiny_model())
    forwards = [m.forward for m in model.modules()]
    with caplog.at_level(logging.INFO, logger="llava_manager.training.liger"):
        assert liger.apply_liger(model, "auto") == []
    reason = "no CUDA GPU" if not torch.cuda.is_available() else "not installed"
    assert "Liger kernels not used" in caplog.text and (reason in caplog.text or liger.liger_available())
    assert [m.forward for m in model.modules()] == forwards
    assert liger.apply_liger(model, "false") == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="--use_liger true, but no CUDA GPU"):
        liger.apply_liger(model, "true")
    with pytest.raises(ValueError, match="use one of auto, true, false"):
        liger.apply_liger(model, "yes")


FAKE_LIGER = textwrap.dedent("""
    import transformers.models.qwen2.modeling_qwen2 as modeling_qwen2
    CALLS = []

    def apply_liger_kernel_to_qwen2(rope=True, cross_entropy=False, fused_linear_cross_entropy=True, rms_norm=True,
                                    swiglu=True, model=None):
        CALLS.append(dict(rope=rope, cross_entropy=cross_entropy, flce=fused_linear_cross_entropy,
                          rms_norm=rms_norm, swiglu=swiglu, model=model))
        modeling_qwen2.Qwen2RMSNorm = object  # what Liger does module-wide
        modeling_qwen2.apply_rotary_pos_emb = None
        modeling_qwen2.LIGER_NEW_NAME = 1
        model.norm.forward = lambda x: x  # and on the instance

    MODEL_TYPE_TO_APPLY_LIGER_FN = {"qwen2": apply_liger_kernel_to_qwen2}
""")


@pytest.fixture
def stand_in_liger(tmp_path, monkeypatch):
    """A findable `liger_kernel` package (FAKE_LIGER as its monkey_patch), removed from sys.modules afterwards."""
    package = tmp_path / "liger_kernel" / "transformers"
    package.mkdir(parents=True)
    (tmp_path / "liger_kernel" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "monkey_patch.py").write_text(FAKE_LIGER)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [n for n in sys.modules if n.startswith("liger_kernel")]:
        monkeypatch.delitem(sys.modules, name)
    yield
    for name in [n for n in sys.modules if n.startswith("liger_kernel")]:
        del sys.modules[name]


def test_liger_is_not_imported_with_the_package(stand_in_liger):
    import importlib

    from llava_manager.training import train

    assert liger.liger_available()  # installed, as far as Python can tell
    importlib.reload(liger)
    importlib.reload(train)
    assert not any(name.startswith("liger_kernel") for name in sys.modules)


def test_liger_applies_to_the_llm_instance_and_puts_module_globals_back(stand_in_liger, monkeypatch):
    """With a stand-in liger_kernel and a pretend GPU: Liger's function for the LLM type gets the LLM instance and
    only the instance-level kernels; what it rebinds in transformers' modeling module is restored."""
    import transformers.models.qwen2.modeling_qwen2 as modeling_qwen2

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    saved = dict(vars(modeling_qwen2))
    model = apply_manager(tiny_model())
    assert liger.apply_liger(model, "auto") == ["rms_norm", "swiglu"]
    from liger_kernel.transformers import monkey_patch

    (call,) = monkey_patch.CALLS
    assert call["model"] is model.model.language_model
    assert call == {**call, "rope": False, "cross_entropy": False, "flce": False, "rms_norm": True, "swiglu": True}
    assert vars(modeling_qwen2).keys() == saved.keys()
    assert all(vars(modeling_qwen2)[k] is v for k, v in saved.items())
    assert "forward" in vars(model.model.language_model.norm)  # the instance keeps its kernel


def test_use_liger_flag_parses():
    from llava_manager.training.train_args import parse

    model_args = parse("stage2", ["--output_dir", "/tmp/x", "--report_to", "none"])[0]
    assert model_args.use_liger == "auto"
    assert parse("stage2", ["--output_dir", "/tmp/x", "--use_liger", "false"])[0].use_liger == "false"
