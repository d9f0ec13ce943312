"""The accelerate config files README points to: each loads with accelerate's own parser, names the launch it
describes, and FSDP wraps classes the models really have. (These files need GPUs and are not run here; the FSDP
units run on CPU processes in test_fsdp.py, through train.py --fsdp.)"""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from modeling_xattn import XAttnConfig, XAttnForMultiTask
from modeling_xattn.training.sharding import FSDP_UNITS

CONFIGS = Path(__file__).resolve().parents[1] / "scripts" / "accelerate"


@pytest.mark.parametrize("name,kind,machines", [("multi_gpu", "MULTI_GPU", 1), ("multi_node", "MULTI_GPU", 2),
                                               ("fsdp", "FSDP", 1), ("deepspeed_zero2", "DEEPSPEED", 1)])
def test_config_loads_with_accelerates_parser(name, kind, machines):
    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert config.distributed_type == kind and config.num_machines == machines
    assert config.mixed_precision == "bf16" and config.main_training_function == "main"
    if kind == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == 2


def test_fsdp_wraps_layers_the_models_have():
    config = load_config_from_file(str(CONFIGS / "fsdp.yaml"))
    assert config.fsdp_config["fsdp_version"] == 2
    wrapped = set(config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(","))
    model = XAttnForMultiTask(XAttnConfig.from_preset("tiny"))
    classes = {type(module).__name__ for module in model.modules()}
    assert wrapped <= classes, wrapped - classes
    assert set(model._no_split_modules) <= wrapped  # the units the model says must not be split
    assert wrapped == set(FSDP_UNITS)  # train.py --fsdp (torchrun) shards with the same units
