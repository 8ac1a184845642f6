"""LMDB -> batches: record decode, SSD's transforms (batch_sampler, distort, expand, resize,
noise, crop, mirror, mean/scale, emit constraint) and the worker pool behind the data layers.

    pipeline.py   pipeline_for(layer_param, ctx): a data layer's source, transform and batches
    records.py    LmdbReader, decode_record -> Sample (image HxWxC BGR + flat box arrays)
    image_list.py ImageListSource (ImageData's `path label` list)
    transform.py  Transformer (TransformationParameter), AnnotatedPipeline, label_rows
    sampler.py    WindowSampler (batch_sampler)
    image_ops.py  resize / distort / noise pixel operations
    boxes.py      per-sample float32 box arithmetic (Caffe's exact label values)
    loader.py     BatchMaker (batch number -> batch, seeded), Prefetcher (workers, pinning)
"""
from protonet.data.records import CorruptRecord, LmdbReader, Sample, decode_record  # noqa: F401
from protonet.data.transform import AnnotatedPipeline, Transformer, label_rows  # noqa: F401
from protonet.data.pipeline import Pipeline, pipeline_for, sample_processor  # noqa: F401
