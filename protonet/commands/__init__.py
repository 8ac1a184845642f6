"""The command layer: every `protonet` command, one module per group (click lives only here and in
protonet.cli). The library below never imports it.

    caffe.py       train, test, time, device-query (Caffe's `caffe` tool)
    data.py        create-annoset, convert-imageset, compute-image-mean, create-list, make-shapes
    detect.py      detect
    evaluate.py    eval
    files.py       inspect, upgrade
    gen.py         gen
    log.py         parse-log, plot-log
    quickstart.py  quickstart
    nets.py        extract-features, draw-net
    options.py     what the commands share (Caffe flag spellings, glog output)
"""
