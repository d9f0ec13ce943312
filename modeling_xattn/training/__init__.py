"""The training library: everything around the model that does not ship next to its weights.

The Hub model is the package's top level (`configuration_xattn`, `modeling_xattn`, `processing_xattn`,
`pipeline_xattn`: they import only each other, as custom code on the Hub must). This subpackage is split by job, and
its dependencies point one way (`tests/test_layout.py` checks it, with no import cycle):

    model  <-  data (options, schema, views, vqa, synthetic), tasks, options, towers, sharding, compilation,
    distributed  <-  data (sources, shards, streaming), collate  <-  inference, metrics, optimization,
    checkpoints, logs, plots, hub  <-  evaluation, publishing  <-  loop  <-  main  <-  apps  <-  scripts/

    data/          the data layer, importing nothing above it: options (what to read, as a stream or whole),
                   schema (rows, the targets they carry and a batch is made of, images, labels), views (one example per
                   image-caption pair, one caption per photo, seeded crops), sources (every loader, the split
                   policy), shards (WebDataset tar files: writing a source's splits, reading a folder), streaming
                   (iterable training streams), synthetic (the embedded dataset), vqa (the official VQA answer
                   normalisation and accuracy)
    options        every command's options as typed dataclasses, the recipes (`TrainingOptions`: a run's all)
    collate        rows -> model batches (`XAttnCollator(targets=..., model=...)`), the cache of processed photos
    tasks          the task registry (every per-task fact: target, head, losses and their weights, evaluator,
                   metrics, Hub task, pipeline, card usage), the tasks a run trains, its batches' targets, the rows
                   that carry them
    towers         pretrained towers in a run: the checks of their files against the options, the locks
    inference      loading a saved model (the one loader), generating captions, two-stage gallery ranking and the
                   shortlist a time budget allows
    optimization   parameter groups, the warm-up/cosine schedule, Formula 5
    logs           the losses between two logs, summed on the device
    checkpoints    the resumable state and atomic saves
    distributed    collectives shared across processes
    sharding       FSDP2 applied by the loop itself (`--fsdp` under torchrun)
    compilation    torch.compile's state in a run (compiled or not, the graphs made)
    metrics        the COCO caption toolkit, R@K, accuracy, the VQA score (`caption_metric`: as an `evaluate` module),
                   the results table
    evaluation     each task scored on a dataset, the loop's validation, the files an evaluation writes
    hub            safe loading (safetensors only, pinned code)
    plots          training curves and caption grids
    publishing     a run's records and its model card (built in one place), the push
    loop           the training loop: a run's state, its epochs and steps, validation and checkpoints on schedule,
                   the end of the run
    main           the training job's set-up (accelerator, data, tokenizer, config, model, optimisation) and
                   `train(parse_args(argv))`, behind scripts/train.py
    apps/          the jobs behind the other scripts, each named as its script: ablation, demo, evaluate,
                   export_densenet, make_shards, predict, push_to_hub, visualize (scripts/benchmark.py runs the
                   clone's benchmarks/, which is not part of the package)
"""

