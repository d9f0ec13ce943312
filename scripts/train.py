"""Train the cross-attention fusion model with Accelerate.

One process (CPU or one GPU):      python scripts/train.py
Accelerate (any setup it knows):   accelerate launch --mixed_precision bf16 scripts/train.py
Fine-tune from pretrained towers:  accelerate launch --mixed_precision bf16 scripts/train.py --recipe finetune \
                                       --text_backbone albert-base-v2/ --vision_backbone densenet121.safetensors
Several processes (DDP; gloo/CPU): torchrun --nproc_per_node 2 scripts/train.py
Resume after a crash:              python scripts/train.py --output_dir outputs/xattn --resume_from_checkpoint latest
Your own captioned photos:         python scripts/train.py --dataset imagefolder --data_dir photos/ --image_size 128

With no arguments it trains the multi-task model (tiny preset) on the embedded synthetic dataset, evaluates it and
writes a Hub-ready folder (safetensors, custom code, processor, model card) to outputs/xattn.
"""

from modeling_xattn.training.main import parse_args, train


def main(argv=None):
    return train(parse_args(argv, description=__doc__))


if __name__ == "__main__":
    main()
