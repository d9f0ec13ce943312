"""Write torchvision's DenseNet121 ImageNet weights as the `.safetensors` file `--vision_backbone` takes, so that a
machine without internet access can fine-tune from them (run this where the internet is reachable, copy the file).

ImageNet weights:        python scripts/export_densenet.py --output towers/densenet121.safetensors
A dry-run stand-in:      python scripts/export_densenet.py --weights random --output /tmp/densenet121.safetensors
Fine-tune from it:       python scripts/train.py --recipe finetune --vision_backbone towers/densenet121.safetensors \
                             --text_backbone towers/albert-base-v2

The file is torchvision's own state dict (`features.*`, `classifier.*`, BatchNorm running statistics), saved with
safetensors, so loading it runs no code. ALBERT needs no export: `hf download albert/albert-base-v2 --local-dir
towers/albert-base-v2` writes its folder (weights, config, tokenizer).
"""

from modeling_xattn.training.apps.export_densenet import main as run


def main(argv=None) -> dict:
    return run(argv, description=__doc__)


if __name__ == "__main__":
    main()
