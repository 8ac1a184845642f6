"""SSD300 with ResNet-101 on VOC2007+2012 trainval, tested on VOC2007 test.

protonet's version of the SSD fork's examples/ssd/ssd_pascal_resnet.py (weiliu89/caffe, branch ssd):
the same data, net, solver and job. Run it from Caffe's root (the directory holding models/,
jobs/, data/, examples/):

    protonet gen examples/ssd/ssd_pascal_resnet.py [--root CAFFE_ROOT] [--run]

It writes the train, test, deploy and solver prototxts into
models/ResNet/VOC0712/SSD_300x300/ (each copied to the job directory) and the job script
jobs/ResNet/VOC0712/SSD_300x300/ResNet_VOC0712_SSD_300x300.sh, which runs `protonet train`.
Missing LMDBs or weights are reported, not fatal; `--run` starts the job.
"""
import math
import os
import shutil

from protonet import NetSpec, caffe_pb2, layers as L, params as P
from protonet.spec import jobs
from protonet.spec.model_libs import ssd as libs

# The directory the paths below are relative to (`protonet gen --root` sets it).
caffe_root = os.getcwd()
# Resume from the newest solverstate in snapshot_dir, if any (otherwise start from pretrain_model).
resume_training = True
# Delete the snapshots older than the one resumed from.
remove_old_models = False

# ---- Data -------------------------------------------------------------------------------------
# LMDBs made by data/VOC0712/create_data.sh.
train_data = "examples/VOC0712/VOC0712_trainval_lmdb"
test_data = "examples/VOC0712/VOC0712_test_lmdb"
# Label map and the test images' names and sizes (data/VOC0712/create_list.sh).
label_map_file = "data/VOC0712/labelmap_voc.prototxt"
name_size_file = "data/VOC0712/test_name_size.txt"
num_classes = 21
num_test_image = 4952
# Pretrained weights: ResNet-101 of github.com/KaimingHe/deep-residual-networks.
pretrain_model = "models/ResNet/ResNet-101-model.caffemodel"

resize_width = 300
resize_height = 300
resize = "{}x{}".format(resize_width, resize_height)

# Crops tried for each training image: the whole image, then random crops that keep at least
# the given overlap with some object (the last: any crop touching one).
def crop_sampler(**sample_constraint):
    return {
        'sampler': {'min_scale': 0.3, 'max_scale': 1.0, 'min_aspect_ratio': 0.5, 'max_aspect_ratio': 2.0},
        'sample_constraint': sample_constraint,
        'max_trials': 50,
        'max_sample': 1,
    }


batch_sampler = [{'sampler': {}, 'max_trials': 1, 'max_sample': 1}]
batch_sampler += [crop_sampler(min_jaccard_overlap=overlap) for overlap in (0.1, 0.3, 0.5, 0.7, 0.9)]
batch_sampler += [crop_sampler(max_jaccard_overlap=1.0)]

train_transform_param = {
    'mirror': True,
    'mean_value': [104, 117, 123],
    'resize_param': {
        'prob': 1,
        'resize_mode': P.Resize.WARP,
        'height': resize_height,
        'width': resize_width,
        'interp_mode': [P.Resize.LINEAR, P.Resize.AREA, P.Resize.NEAREST, P.Resize.CUBIC, P.Resize.LANCZOS4],
    },
    'emit_constraint': {'emit_type': caffe_pb2.EmitConstraint.CENTER},
}
test_transform_param = {
    'mean_value': [104, 117, 123],
    'resize_param': {
        'prob': 1,
        'resize_mode': P.Resize.WARP,
        'height': resize_height,
        'width': resize_width,
        'interp_mode': [P.Resize.LINEAR],
    },
}

# ---- Model ------------------------------------------------------------------------------------
# Learning rate for one image on one GPU (scaled below).
base_lr = 0.00004
job_name = "SSD_{}".format(resize)
model_name = "ResNet_VOC0712_{}".format(job_name)
save_dir = "models/ResNet/VOC0712/{}".format(job_name)
snapshot_dir = "models/ResNet/VOC0712/{}".format(job_name)
job_dir = "jobs/ResNet/VOC0712/{}".format(job_name)
# Where DetectionOutput saves the test detections.
output_result_dir = "{}/data/VOCdevkit/results/VOC2007/{}/Main".format(os.environ['HOME'], job_name)

train_net_file = "{}/train.prototxt".format(save_dir)
test_net_file = "{}/test.prototxt".format(save_dir)
deploy_net_file = "{}/deploy.prototxt".format(save_dir)
solver_file = "{}/solver.prototxt".format(save_dir)
snapshot_prefix = "{}/{}".format(snapshot_dir, model_name)
job_file = "{}/{}.sh".format(job_dir, model_name)

share_location = True
background_label_id = 0
train_on_diff_gt = True
normalization_mode = P.Loss.VALID
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
    'use_difficult_gt': train_on_diff_gt,
    'mining_type': P.MultiBoxLoss.MAX_NEGATIVE,
    'neg_pos_ratio': neg_pos_ratio,
    'neg_overlap': 0.5,
    'code_type': code_type,
}
loss_param = {'normalization': normalization_mode}

# Priors: sizes spread linearly from min_ratio to max_ratio percent of the input over the
# sources after the first, which gets a smaller size of its own.
min_dim = 300
# res3b3 (38x38), res5c (19x19), res5c_relu/conv1_2 (10x10), res5c_relu/conv2_2 (5x5),
# res5c_relu/conv3_2 (3x3), pool6 (1x1).
mbox_source_layers = ['res3b3_relu', 'res5c_relu', 'res5c_relu/conv1_2', 'res5c_relu/conv2_2',
                      'res5c_relu/conv3_2', 'pool6']
min_ratio = 20
max_ratio = 95
step = int(math.floor((max_ratio - min_ratio) / (len(mbox_source_layers) - 2)))
min_sizes = [min_dim * 10 / 100.] + [min_dim * ratio / 100. for ratio in range(min_ratio, max_ratio + 1, step)]
max_sizes = [[]] + [min_dim * (ratio + step) / 100. for ratio in range(min_ratio, max_ratio + 1, step)]
aspect_ratios = [[2], [2, 3], [2, 3], [2, 3], [2, 3], [2, 3]]
prior_variance = [0.1, 0.1, 0.2, 0.2] if code_type == P.PriorBox.CENTER_SIZE else [0.1]
flip = True
clip = True

# ---- Solver -----------------------------------------------------------------------------------
# GPUs to train on ("" trains on the CPU); the batch is split across them.
gpus = "0,1,2,3"
gpulist = [gpu for gpu in gpus.split(",") if gpu]
num_gpus = len(gpulist)
batch_size = 32
accum_batch_size = 32
if num_gpus > 0:
    batch_size_per_device = int(math.ceil(float(batch_size) / num_gpus))
    iter_size = int(math.ceil(float(accum_batch_size) / (batch_size_per_device * num_gpus)))
    solver_mode = P.Solver.GPU
    device_id = int(gpulist[0])
else:
    batch_size_per_device = batch_size
    iter_size = accum_batch_size // batch_size
    solver_mode = P.Solver.CPU
    device_id = 0

# base_lr above is for one image on one GPU; scale it to the loss normalisation.
if normalization_mode == P.Loss.NONE:
    base_lr /= batch_size_per_device
elif normalization_mode == P.Loss.VALID:
    base_lr *= 25. / loc_weight
elif normalization_mode == P.Loss.FULL:
    base_lr *= 2000.  # about 2000 priors per image

# Test on the whole test set.
test_batch_size = 1
test_iter = num_test_image // test_batch_size

solver_param = {
    'base_lr': base_lr,
    'weight_decay': 0.0005,
    'lr_policy': "step",
    'stepsize': 40000,
    'gamma': 0.1,
    'momentum': 0.9,
    'iter_size': iter_size,
    'max_iter': 60000,
    'snapshot': 40000,
    'display': 10,
    'average_loss': 10,
    'type': "SGD",
    'solver_mode': solver_mode,
    'device_id': device_id,
    'debug_info': False,
    'snapshot_after_train': True,
    'test_iter': [test_iter],
    'test_interval': 10000,
    'eval_type': "detection",
    'ap_version': "11point",
    'test_initialization': False,
}

det_out_param = {
    'num_classes': num_classes,
    'share_location': share_location,
    'background_label_id': background_label_id,
    'nms_param': {'nms_threshold': 0.45, 'top_k': 400},
    'save_output_param': {
        'output_directory': output_result_dir,
        'output_name_prefix': "comp4_det_test_",
        'output_format': "VOC",
        'label_map_file': label_map_file,
        'name_size_file': name_size_file,
        'num_test_image': num_test_image,
    },
    'keep_top_k': 200,
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


# ---- Net --------------------------------------------------------------------------------------
def add_extra_layers(net):
    """Three pairs of a 1x1 and a 3x3 stride-2 conv, with batch norm, named after the backbone's
    last layer (`<last>/conv1_1` ...), then a global average pooling, pool6."""
    last = net.keys()[-1]
    from_layer = last
    for i in (1, 2, 3):
        for suffix, num_output, kernel_size, pad, stride in (("_1", 256, 1, 0, 1), ("_2", 512, 3, 1, 2)):
            name = "{}/conv{}{}".format(last, i, suffix)
            libs.ConvBNLayer(net, from_layer, name, True, True, num_output, kernel_size, pad, stride)
            from_layer = name
    net.pool6 = L.Pooling(net[net.keys()[-1]], pool=P.Pooling.AVE, global_pooling=True)


def ssd_net(train):
    """The train net (data, backbone, extra layers, multibox head, MultiBoxLoss) or the test
    net (the same with softmax scores, DetectionOutput and DetectionEvaluate)."""
    net = NetSpec()
    if train:
        net.data, net.label = libs.CreateAnnotatedDataLayer(
            train_data, batch_size=batch_size_per_device, train=True, output_label=True,
            label_map_file=label_map_file, transform_param=train_transform_param, batch_sampler=batch_sampler)
    else:
        net.data, net.label = libs.CreateAnnotatedDataLayer(
            test_data, batch_size=test_batch_size, train=False, output_label=True,
            label_map_file=label_map_file, transform_param=test_transform_param)
    libs.ResNet101Body(net, from_layer='data', use_pool5=False, use_dilation_conv5=True)
    add_extra_layers(net)
    mbox_layers = libs.CreateMultiBoxHead(
        net, data_layer='data', from_layers=mbox_source_layers, use_batchnorm=False,
        min_sizes=min_sizes, max_sizes=max_sizes, aspect_ratios=aspect_ratios,
        num_classes=num_classes, share_location=share_location, flip=flip, clip=clip,
        prior_variance=prior_variance, kernel_size=3, pad=1)

    if train:
        net.mbox_loss = L.MultiBoxLoss(*mbox_layers, net.label, multibox_loss_param=multibox_loss_param,
                                       loss_param=loss_param, include=dict(phase=caffe_pb2.Phase.Value('TRAIN')),
                                       propagate_down=[True, True, False, False])
        return net

    loc, conf, priorbox = mbox_layers
    if multibox_loss_param["conf_loss_type"] == P.MultiBoxLoss.SOFTMAX:
        net.mbox_conf_reshape = L.Reshape(conf, shape=dict(dim=[0, -1, num_classes]))
        net.mbox_conf_softmax = L.Softmax(net.mbox_conf_reshape, axis=2)
        net.mbox_conf_flatten = L.Flatten(net.mbox_conf_softmax, axis=1)
        scores = net.mbox_conf_flatten
    else:
        net.mbox_conf_sigmoid = L.Sigmoid(conf)
        scores = net.mbox_conf_sigmoid
    net.detection_out = L.DetectionOutput(loc, scores, priorbox, detection_output_param=det_out_param,
                                          include=dict(phase=caffe_pb2.Phase.Value('TEST')))
    net.detection_eval = L.DetectionEvaluate(net.detection_out, net.label, detection_evaluate_param=det_eval_param,
                                             include=dict(phase=caffe_pb2.Phase.Value('TEST')))
    return net


# ---- Files ------------------------------------------------------------------------------------
jobs.check_inputs(train_data, test_data, label_map_file, pretrain_model)
jobs.make_dirs(save_dir, job_dir, snapshot_dir)

jobs.write_net(ssd_net(train=True).to_proto(), train_net_file, "{}_train".format(model_name), copy_to=job_dir)
test_net = ssd_net(train=False).to_proto()
jobs.write_net(test_net, test_net_file, "{}_test".format(model_name), copy_to=job_dir)
jobs.write_deploy(test_net, deploy_net_file, "{}_deploy".format(model_name),
                  [1, 3, resize_height, resize_width], copy_to=job_dir)
jobs.write_solver(solver_file, copy_to=job_dir, train_net=train_net_file, test_net=[test_net_file],
                  snapshot_prefix=snapshot_prefix, **solver_param)

last_iter = jobs.latest_snapshot_iter(snapshot_dir, model_name)
resume_from = None
if resume_training and last_iter > 0:
    resume_from = "{}_iter_{}.solverstate".format(snapshot_prefix, last_iter)
if remove_old_models:
    jobs.remove_snapshots_before(snapshot_dir, model_name, last_iter)
jobs.write_job_script(job_file, caffe_root, solver_file, log_file="{}/{}.log".format(job_dir, model_name),
                      weights=pretrain_model, snapshot=resume_from,
                      gpus=gpus if solver_mode == P.Solver.GPU else None)
shutil.copy(os.path.abspath(__file__), job_dir)
