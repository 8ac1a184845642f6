"""A small SSD for the shapes dataset, sized to train on a laptop CPU in minutes.

Run it as Caffe users run their NetSpec scripts, from the root that holds the data:

    protonet make-shapes data/shapes
    protonet create-annoset --anno-type detection --label-map-file data/shapes/labelmap.prototxt \
        --encode-type jpg --encoded --redo data/shapes data/shapes/trainval.txt data/shapes/lmdb/shapes_trainval_lmdb
    (the same for test.txt -> shapes_test_lmdb)
    protonet gen examples/quickstart/ssd_shapes.py --root .

It writes train/test/deploy/solver prototxts under models/, and the job script under jobs/
(`protonet quickstart` does all of this for you). The net: a narrow VGG-style body
with BatchNorm (six stride-2 stages, 16 to 128 channels), SSD heads with PriorBox on four scales
(16x16, 8x8, 4x4, 2x2 maps of a 128x128 input), MultiBoxLoss, SSD's full augmentation
(batch_sampler crops, photometric distortion, expansion, mirror), and DetectionOutput plus
DetectionEvaluate in the test net, so that the solver prints the test mAP.
"""
from __future__ import print_function

import math
import os
import shutil
import stat

import caffe
from caffe import layers as L
from caffe import params as P
from caffe.model_libs import ConvBNLayer, CreateAnnotatedDataLayer, CreateMultiBoxHead, check_if_exist, \
    make_if_not_exist
from caffe.proto import caffe_pb2

# The root that holds data/, models/ and jobs/ (Caffe's root; `protonet gen --root` sets it).
caffe_root = os.getcwd()

### The data: made by `protonet make-shapes data/shapes` and `protonet create-annoset` ###
data_dir = "data/shapes"
train_data = "{}/lmdb/shapes_trainval_lmdb".format(data_dir)
test_data = "{}/lmdb/shapes_test_lmdb".format(data_dir)
label_map_file = "{}/labelmap.prototxt".format(data_dir)
name_size_file = "{}/test_name_size.txt".format(data_dir)

resize_width = 128
resize_height = 128
resize = "{}x{}".format(resize_width, resize_height)
mean_value = [104, 117, 123]

# SSD's crops: the whole image, then crops of 30-100% of the side with a minimum overlap with
# some object, then any crop. One sampler is drawn per image among those that succeeded.
batch_sampler = [{'sampler': {}, 'max_trials': 1, 'max_sample': 1}]
for min_overlap in (0.1, 0.3, 0.5, 0.7, 0.9):
    batch_sampler.append({
        'sampler': {'min_scale': 0.3, 'max_scale': 1.0, 'min_aspect_ratio': 0.5, 'max_aspect_ratio': 2.0},
        'sample_constraint': {'min_jaccard_overlap': min_overlap},
        'max_trials': 50,
        'max_sample': 1,
    })
batch_sampler.append({
    'sampler': {'min_scale': 0.3, 'max_scale': 1.0, 'min_aspect_ratio': 0.5, 'max_aspect_ratio': 2.0},
    'sample_constraint': {'max_jaccard_overlap': 1.0},
    'max_trials': 50,
    'max_sample': 1,
})
train_transform_param = {
    'mirror': True,
    'mean_value': mean_value,
    'resize_param': {
        'prob': 1,
        'resize_mode': P.Resize.WARP,
        'height': resize_height,
        'width': resize_width,
        'interp_mode': [P.Resize.LINEAR, P.Resize.AREA, P.Resize.NEAREST, P.Resize.CUBIC, P.Resize.LANCZOS4],
    },
    'distort_param': {
        'brightness_prob': 0.5,
        'brightness_delta': 32,
        'contrast_prob': 0.5,
        'contrast_lower': 0.5,
        'contrast_upper': 1.5,
        'hue_prob': 0.5,
        'hue_delta': 18,
        'saturation_prob': 0.5,
        'saturation_lower': 0.5,
        'saturation_upper': 1.5,
        'random_order_prob': 0.0,
    },
    # The shapes are small already: expand at most 2x (SSD300 uses 4x on VOC).
    'expand_param': {'prob': 0.5, 'max_expand_ratio': 2.0},
    'emit_constraint': {'emit_type': caffe_pb2.EmitConstraint.CENTER},
}
test_transform_param = {
    'mean_value': mean_value,
    'resize_param': {
        'prob': 1,
        'resize_mode': P.Resize.WARP,
        'height': resize_height,
        'width': resize_width,
        'interp_mode': [P.Resize.LINEAR],
    },
}

### The model ###
job_name = "ssd_shapes_{}".format(resize)
model_name = "shapes_{}".format(job_name)
save_dir = "models/quickstart/{}".format(job_name)
snapshot_dir = save_dir
job_dir = "jobs/quickstart/{}".format(job_name)
train_net_file = "{}/train.prototxt".format(save_dir)
test_net_file = "{}/test.prototxt".format(save_dir)
deploy_net_file = "{}/deploy.prototxt".format(save_dir)
solver_file = "{}/solver.prototxt".format(save_dir)
snapshot_prefix = "{}/{}".format(snapshot_dir, model_name)
job_file = "{}/{}.sh".format(job_dir, model_name)

num_classes = 5  # background + circle, square, triangle, star
share_location = True
background_label_id = 0
code_type = P.PriorBox.CENTER_SIZE
neg_pos_ratio = 3.
loc_weight = (neg_pos_ratio + 1.) / 4.
multibox_loss_param = {
    'loc_loss_type': P.MultiBoxLoss.SMOOTH_L1,
    'conf_loss_type': P.MultiBoxLoss.SOFTMAX,
    'loc_weight': loc_weight,
    'num_classes': num_classes,
    'share_location': share_location,
    'match_type': P.MultiBoxLoss.PER_PREDICTION,
    'overlap_threshold': 0.5,
    'use_prior_for_matching': True,
    'background_label_id': background_label_id,
    'use_difficult_gt': True,
    'mining_type': P.MultiBoxLoss.MAX_NEGATIVE,
    'neg_pos_ratio': neg_pos_ratio,
    'neg_overlap': 0.5,
    'code_type': code_type,
    'ignore_cross_boundary_bbox': False,
}
loss_param = {'normalization': P.Loss.VALID}

# Four prediction scales of the 128x128 input; objects are about 8 to 80 pixels there.
mbox_source_layers = ['conv3_2', 'conv4_2', 'conv5_2', 'conv6_2']
steps = [8, 16, 32, 64]
min_sizes = [16, 32, 56, 88]
max_sizes = [32, 56, 88, 120]
aspect_ratios = [[2], [2], [2], [2]]
normalizations = []
prior_variance = [0.1, 0.1, 0.2, 0.2]
flip = True
clip = False

# BatchNorm's moving averages follow the weights faster than Caffe's default 0.999: the whole
# run is a couple of thousand iterations.
bn_param = {'moving_average_fraction': 0.99}

### The solver: one CPU process, batch 16 ###
batch_size = 16
test_batch_size = 8
# Evaluate on the whole test set: one line per test image in the name/size file.
check_if_exist(name_size_file)
with open(name_size_file) as fh:
    num_test_image = sum(1 for line in fh if line.strip())
test_iter = max(1, int(math.ceil(float(num_test_image) / test_batch_size)))
max_iter = 3000
solver_param = {
    'base_lr': 0.01,
    'weight_decay': 0.0005,
    'lr_policy': "multistep",
    'stepvalue': [int(max_iter * 0.6), int(max_iter * 0.85)],
    'gamma': 0.1,
    'momentum': 0.9,
    'iter_size': 1,
    'max_iter': max_iter,
    'snapshot': max_iter // 2,
    'display': 20,
    'average_loss': 20,
    'type': "SGD",
    'solver_mode': P.Solver.CPU,
    'device_id': 0,
    'debug_info': False,
    'snapshot_after_train': True,
    'test_iter': [test_iter],
    'test_interval': max_iter // 3,
    'eval_type': "detection",
    'ap_version': "11point",
    'test_initialization': False,
    'show_per_class_result': True,
    'random_seed': 1,
}
det_out_param = {
    'num_classes': num_classes,
    'share_location': share_location,
    'background_label_id': background_label_id,
    'nms_param': {'nms_threshold': 0.45, 'top_k': 200},
    'keep_top_k': 100,
    'confidence_threshold': 0.01,
    'code_type': code_type,
}
det_eval_param = {
    'num_classes': num_classes,
    'background_label_id': background_label_id,
    'overlap_threshold': 0.5,
    'evaluate_difficult_gt': False,
    'name_size_file': name_size_file,
}


def ShapesNetBody(net, from_layer):
    """Narrow VGG-style body: conv-BN-ReLU blocks; each stage halves the map with a stride-2 conv."""
    # (name, num_output, kernel, pad, stride)
    blocks = [
        ('conv1_1', 16, 3, 1, 2),   # 64x64
        ('conv2_1', 32, 3, 1, 1),
        ('conv2_2', 32, 3, 1, 2),   # 32x32
        ('conv3_1', 64, 3, 1, 1),
        ('conv3_2', 64, 3, 1, 2),   # 16x16, stride 8
        ('conv4_1', 128, 3, 1, 1),
        ('conv4_2', 128, 3, 1, 2),  # 8x8, stride 16
        ('conv5_1', 64, 1, 0, 1),
        ('conv5_2', 128, 3, 1, 2),  # 4x4, stride 32
        ('conv6_1', 64, 1, 0, 1),
        ('conv6_2', 128, 3, 1, 2),  # 2x2, stride 64
    ]
    for name, num_output, kernel, pad, stride in blocks:
        ConvBNLayer(net, from_layer, name, True, True, num_output, kernel, pad, stride, **bn_param)
        from_layer = name
    return net


def build_net(source, batch_size, train, transform_param):
    net = caffe.NetSpec()
    sampler = batch_sampler if train else [{}]
    net.data, net.label = CreateAnnotatedDataLayer(source, batch_size=batch_size, train=train,
        output_label=True, label_map_file=label_map_file, transform_param=transform_param,
        batch_sampler=sampler)
    ShapesNetBody(net, from_layer='data')
    mbox_layers = CreateMultiBoxHead(net, data_layer='data', from_layers=mbox_source_layers,
        use_batchnorm=False, min_sizes=min_sizes, max_sizes=max_sizes, aspect_ratios=aspect_ratios,
        steps=steps, normalizations=normalizations, num_classes=num_classes,
        share_location=share_location, flip=flip, clip=clip, prior_variance=prior_variance,
        kernel_size=3, pad=1)
    return net, mbox_layers


### Write the files ###
check_if_exist(train_data)
check_if_exist(test_data)
check_if_exist(label_map_file)
make_if_not_exist(save_dir)
make_if_not_exist(job_dir)
make_if_not_exist(snapshot_dir)

# Train net.
net, mbox_layers = build_net(train_data, batch_size, True, train_transform_param)
mbox_layers.append(net.label)
net.mbox_loss = L.MultiBoxLoss(*mbox_layers, multibox_loss_param=multibox_loss_param,
    loss_param=loss_param, include=dict(phase=caffe_pb2.Phase.Value('TRAIN')),
    propagate_down=[True, True, False, False])
with open(train_net_file, 'w') as f:
    print('name: "{}_train"'.format(model_name), file=f)
    print(net.to_proto(), file=f)
shutil.copy(train_net_file, job_dir)

# Test net: softmax over classes, DetectionOutput, DetectionEvaluate.
net, mbox_layers = build_net(test_data, test_batch_size, False, test_transform_param)
net.mbox_conf_reshape = L.Reshape(net.mbox_conf, shape=dict(dim=[0, -1, num_classes]))
net.mbox_conf_softmax = L.Softmax(net.mbox_conf_reshape, axis=2)
net.mbox_conf_flatten = L.Flatten(net.mbox_conf_softmax, axis=1)
mbox_layers[1] = net.mbox_conf_flatten
net.detection_out = L.DetectionOutput(*mbox_layers, detection_output_param=det_out_param,
    include=dict(phase=caffe_pb2.Phase.Value('TEST')))
net.detection_eval = L.DetectionEvaluate(net.detection_out, net.label,
    detection_evaluate_param=det_eval_param, include=dict(phase=caffe_pb2.Phase.Value('TEST')))
with open(test_net_file, 'w') as f:
    print('name: "{}_test"'.format(model_name), file=f)
    print(net.to_proto(), file=f)
shutil.copy(test_net_file, job_dir)

# Deploy net: the test net without its data and evaluation layers, fed by an input blob. The
# comment line tells `protonet detect` how images are turned into the `data` blob.
net_param = net.to_proto()
del net_param.layer[0]
del net_param.layer[-1]
net_param.name = '{}_deploy'.format(model_name)
net_param.input.extend(['data'])
net_param.input_shape.extend([caffe_pb2.BlobShape(dim=[1, 3, resize_height, resize_width])])
transform_text = str(caffe_pb2.TransformationParameter(
    mean_value=mean_value,
    resize_param=caffe_pb2.ResizeParameter(prob=1, resize_mode=P.Resize.WARP, height=resize_height,
                                           width=resize_width, interp_mode=[P.Resize.LINEAR])))
with open(deploy_net_file, 'w') as f:
    print('# transform_param {{ {} }}'.format(' '.join(transform_text.split())), file=f)
    print('# labelmap: {}'.format(label_map_file), file=f)
    print(net_param, file=f)
shutil.copy(deploy_net_file, job_dir)

# Solver.
solver = caffe_pb2.SolverParameter(train_net=train_net_file, test_net=[test_net_file],
    snapshot_prefix=snapshot_prefix, **solver_param)
with open(solver_file, 'w') as f:
    print(solver, file=f)
shutil.copy(solver_file, job_dir)

# Job script: resume from the newest snapshot when there is one; the net trains from scratch.
latest = 0
for name in os.listdir(snapshot_dir):
    prefix = "{}_iter_".format(model_name)
    if name.startswith(prefix) and name.endswith(".solverstate"):
        latest = max(latest, int(name[len(prefix):-len(".solverstate")]))
with open(job_file, 'w') as f:
    f.write('cd {}\n'.format(caffe_root))
    f.write('protonet train \\\n')
    f.write('--solver="{}" \\\n'.format(solver_file))
    if latest > 0:
        f.write('--snapshot="{}_iter_{}.solverstate" \\\n'.format(snapshot_prefix, latest))
    f.write('2>&1 | tee {}/{}.log\n'.format(job_dir, model_name))
os.chmod(job_file, stat.S_IRWXU)
shutil.copy(os.path.abspath(__file__), job_dir)
