"""The training library: everything around the model that does not ship next to its weights.

The Hub model is the package's top level (`configuration_xattn`, `modeling_xattn`, `processing_xattn`,
`pipeline_xattn`: they import only each other, as custom code on the Hub must). This subpackage is split by job, and
its dependencies point one way (`tests/test_layout.py` checks it, with no import cycle):

    model  <-  data  <-  collate, tasks  <-  metrics, optimization, checkpoints, plots, hub  <-  evaluation,
    publishing  <-  loop  <-  apps  <-  scripts/

    data/          the data layer, importing nothing above it: options (what to read, as a stream or whole),
                   schema (rows, targets, the batch kinds and their targets, images, labels), sources (every
                   loader, the split policy), shards (WebDataset tar files), streaming (iterable training streams),
                   synthetic (the embedded dataset)
    collate        rows -> model batches; caption pairs, one caption per photo, seeded crops
    tasks          the task registry (every per-task fact), the tasks a run trains, its batch kind, the rows that
                   carry their targets
    towers         pretrained towers in a run: the checks of their files against the options, the locks
    optimization   parameter groups, the warm-up/cosine schedule, Formula 5
    logs           the losses between two logs, summed on the device
    checkpoints    the resumable state and atomic saves
    distributed    collectives shared across processes
    metrics        the COCO caption toolkit, R@K, accuracy, the VQA score (`caption_metric`: as an `evaluate` module)
    evaluation     each task on a dataset, gallery ranking, the results table
    hub            safe loading (safetensors only, pinned code); publishing: the model card and the push
    plots          training curves and caption grids
    loop           the training job (`train(parse_args(argv))`), behind scripts/train.py
    apps/          the jobs behind the other scripts: ablation, benchmark, demo, export_densenet, prediction,
                   visualization
"""
