"""The paper's ablation study (its Table 3): the full model against the same model without cross-attention (concat
fusion), without CBAM, with visual features only and with text features only. Every configuration is trained with the
same seed, data and budget, then evaluated on the test split for every task it supports.

    python scripts/ablation.py                                   # embedded dataset, 1 seed, about 20 min on 2 CPUs
    python scripts/ablation.py --seeds 0 1 2                     # mean ± std over seeds
    python scripts/ablation.py --dataset mvsa --data_dir MVSA_Single --tasks classification -- --model_size base

Arguments after `--` go to scripts/train.py unchanged. Writes ablation.md (the table), ablation.json,
ablation.png (a bar chart) and ablation_curves.png (every run's validation metrics and gates against the step) to
--output_dir.
"""

from modeling_xattn.training.apps.ablation import CONFIGURATIONS  # noqa: F401  (the configurations' names)
from modeling_xattn.training.apps.ablation import main as run


def main(argv=None):
    return run(argv, description=__doc__)


if __name__ == "__main__":
    main()
