"""RefineDet 512x512 with VGG16: COCO train, tested on minival.

protonet's version of RefineDet's examples/refinedet/VGG16_COCO_512.py: the same data, net, solver
and job. Run it from Caffe's root (the directory holding models/, jobs/, data/, examples/):

    protonet gen examples/refinedet/VGG16_COCO_512.py [--root CAFFE_ROOT] [--run]

It writes the train, test, deploy and solver prototxts into
models/VGGNet/coco/refinedet_vgg16_512x512/ (each copied to the job directory) and the job script
jobs/VGGNet/coco/refinedet_vgg16_512x512/coco_refinedet_vgg16_512x512.sh, which runs `protonet train`.
Missing LMDBs or weights are reported, not fatal; `--run` starts the job.
"""
import math
import os
import shutil

from protonet import NetSpec, caffe_pb2, layers as L, params as P
from protonet.spec import jobs
from protonet.spec.model_libs import refinedet as libs

# The directory the paths below are relative to (`protonet gen --root` sets it).
caffe_root = os.getcwd()
# Resume from the newest solverstate in snapshot_dir, if any (otherwise start from pretrain_model).
resume_training = True
# Delete the snapshots older than the one resumed from.
remove_old_models = False

# ---- Data -------------------------------------------------------------------------------------
# LMDBs made by data/coco/create_data.sh.
train_data = "examples/coco/coco_train_lmdb"
test_data = "examples/coco/coco_minival_lmdb"
# Label map and the test images' names and sizes (data/coco/create_list.sh).
label_map_file = "data/coco/labelmap_coco.prototxt"
name_size_file = "data/coco/minival2014_name_size.txt"
num_classes = 81
num_test_image = 5000
# Pretrained weights: the fully convolutional reduced (atrous) VGG16.
pretrain_model = "models/VGGNet/VGG_ILSVRC_16_layers_fc_reduced.caffemodel"

resize_width = 512
resize_height = 512
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
    'force_color': True,
    'resize_param': {
        'prob': 1,
        'resize_mode': P.Resize.WARP,
        'height': resize_height,
        'width': resize_width,
        'interp_mode': [P.Resize.LINEAR, P.Resize.AREA, P.Resize.NEAREST, P.Resize.CUBIC, P.Resize.LANCZOS4],
    },
    'distort_param': {
        'brightness_prob': 0.5, 'brightness_delta': 32,
        'contrast_prob': 0.5, 'contrast_lower': 0.5, 'contrast_upper': 1.5,
        'hue_prob': 0.5, 'hue_delta': 18,
        'saturation_prob': 0.5, 'saturation_lower': 0.5, 'saturation_upper': 1.5,
        'random_order_prob': 0.0,
    },
    'expand_param': {'prob': 0.5, 'max_expand_ratio': 4.0},
    'emit_constraint': {'emit_type': caffe_pb2.EmitConstraint.CENTER},
}
test_transform_param = {
    'mean_value': [104, 117, 123],
    'force_color': True,
    'resize_param': {
        'prob': 1,
        'resize_mode': P.Resize.WARP,
        'height': resize_height,
        'width': resize_width,
        'interp_mode': [P.Resize.LINEAR],
    },
}

# ---- Model ------------------------------------------------------------------------------------
# New layers: no batch norm (the tested setting), lr multiplier 1.
use_batchnorm = False
lr_mult = 1
# Learning rate for one image on one GPU (scaled below).
base_lr = 0.0004 if use_batchnorm else 0.00004
job_name = "refinedet_vgg16_{}".format(resize)
model_name = "coco_{}".format(job_name)
save_dir = "models/VGGNet/coco/{}".format(job_name)
snapshot_dir = "models/VGGNet/coco/{}".format(job_name)
job_dir = "jobs/VGGNet/coco/{}".format(job_name)

train_net_file = "{}/train.prototxt".format(save_dir)
test_net_file = "{}/test.prototxt".format(save_dir)
deploy_net_file = "{}/deploy.prototxt".format(save_dir)
solver_file = "{}/solver.prototxt".format(save_dir)
snapshot_prefix = "{}/{}".format(snapshot_dir, model_name)
job_file = "{}/{}.sh".format(job_dir, model_name)

# MultiBoxLoss: the ARM's loss uses it with 2 classes (object or not), the ODM's as it is.
share_location = True
background_label_id = 0
train_on_diff_gt = False
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
    'ignore_cross_boundary_bbox': False,
    'objectness_score': 0.01,
}
loss_param = {'normalization': normalization_mode}

# Priors: one square box per cell of each ARM source (strides 8..64), plus 2:1 and 1:2 boxes.
# ARM sources conv4_3, conv5_3, fc7, conv6_2 (strides 8 to 64); ODM sources P3..P6.
arm_source_layers = ['conv4_3', 'conv5_3', 'fc7', 'conv6_2']
odm_source_layers = ['P3', 'P4', 'P5', 'P6']
# L2-normalise conv4_3 and conv5_3 (initial scales 10 and 8) before their transfer blocks.
normalizations = [10, 8, -1, -1]
min_sizes = [32, 64, 128, 256]
max_sizes = [[], [], [], []]
steps = [8, 16, 32, 64]
aspect_ratios = [[2], [2], [2], [2]]
prior_variance = [0.1, 0.1, 0.2, 0.2] if code_type == P.PriorBox.CENTER_SIZE else [0.1]
flip = True
clip = False

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

test_batch_size = 1

solver_param = {
    'base_lr': base_lr,
    'weight_decay': 0.0005,
    'lr_policy': "multistep",
    'stepvalue': [280000, 360000, 400000],
    'gamma': 0.1,
    'momentum': 0.9,
    'iter_size': iter_size,
    'max_iter': 400000,
    'snapshot': 10000,
    'display': 10,
    'average_loss': 10,
    'type': "SGD",
    'solver_mode': solver_mode,
    'device_id': device_id,
    'debug_info': False,
    'snapshot_after_train': True,
}

det_out_param = {
    'num_classes': num_classes,
    'share_location': share_location,
    'background_label_id': background_label_id,
    'nms_param': {'nms_threshold': 0.45, 'top_k': 1000},
    'keep_top_k': 500,
    'confidence_threshold': 0.01,
    'code_type': code_type,
    'objectness_score': 0.01,
}
det_eval_param = {
    'num_classes': num_classes,
    'background_label_id': background_label_id,
    'overlap_threshold': 0.5,
    'evaluate_difficult_gt': False,
    'name_size_file': name_size_file,
}


# ---- Net --------------------------------------------------------------------------------------
def add_conv6(net, use_batchnorm, lr_mult):
    """conv6_1 (1x1) and conv6_2 (3x3, stride 2) on top of the backbone's last layer."""
    last = net.keys()[-1]
    libs.ConvBNLayer(net, last, "conv6_1", use_batchnorm, True, 256, 1, 0, 1, lr_mult=lr_mult)
    libs.ConvBNLayer(net, "conv6_1", "conv6_2", use_batchnorm, True, 512, 3, 1, 2, lr_mult=lr_mult)


def add_transfer_blocks(net, arm_sources, normalizations, use_batchnorm, lr_mult):
    """The transfer connection blocks, deepest first: P6 from the last ARM source; P5..P3 each
    from its source plus P(n+1) upsampled by a deconvolution. A source with a normalization
    value is L2-normalised first (`<source>_norm`). Returns the ARM sources as the head sees
    them (normalised names in place of the raw ones)."""
    sources = list(arm_sources)
    level = 6
    for index in reversed(range(len(sources))):
        source = sources[index]
        if normalizations and normalizations[index] != -1:
            norm_name = "{}_norm".format(source)
            net[norm_name] = L.Normalize(net[source], scale_filler=dict(type="constant", value=normalizations[index]),
                                         across_spatial=False, channel_shared=False)
            sources[index] = source = norm_name
        tl1, tl2, p = "TL{}_1".format(level), "TL{}_2".format(level), "P{}".format(level)
        libs.ConvBNLayer(net, source, tl1, use_batchnorm, True, 256, 3, 1, 1, lr_mult=lr_mult)
        if level == 6:
            libs.ConvBNLayer(net, tl1, tl2, use_batchnorm, True, 256, 3, 1, 1, lr_mult=lr_mult)
            libs.ConvBNLayer(net, tl2, p, use_batchnorm, True, 256, 3, 1, 1, lr_mult=lr_mult)
        else:
            libs.ConvBNLayer(net, tl1, tl2, use_batchnorm, False, 256, 3, 1, 1, lr_mult=lr_mult)
            up = "P{}-up".format(level + 1)
            libs.DeconvBNLayer(net, "P{}".format(level + 1), up, use_batchnorm, False, 256, 2, 0, 2, lr_mult=lr_mult)
            elt = "Elt{}".format(level)
            libs.EltwiseLayer(net, [tl2, up], elt)
            net["{}_relu".format(elt)] = L.ReLU(net[elt], in_place=True)
            libs.ConvBNLayer(net, "{}_relu".format(elt), p, use_batchnorm, True, 256, 3, 1, 1, lr_mult=lr_mult)
        level -= 1
    return sources


def softmax_scores(net, conf_name, classes):
    """Class probabilities of the flat `conf_name` scores: reshape to (N, priors, classes),
    softmax over classes, flatten back."""
    reshape_name = "{}_reshape".format(conf_name)
    net[reshape_name] = L.Reshape(net[conf_name], shape=dict(dim=[0, -1, classes]))
    softmax_name = "{}_softmax".format(conf_name)
    net[softmax_name] = L.Softmax(net[reshape_name], axis=2)
    flatten_name = "{}_flatten".format(conf_name)
    net[flatten_name] = L.Flatten(net[softmax_name], axis=1)
    return net[flatten_name]


def refinedet_net(train):
    """The train net (data, backbone, ARM and ODM heads, both losses) or the test net (the same
    with DetectionOutput and DetectionEvaluate in place of the losses)."""
    net = NetSpec()
    if train:
        net.data, net.label = libs.CreateAnnotatedDataLayer(
            train_data, batch_size=batch_size_per_device, train=True, output_label=True,
            label_map_file=label_map_file, transform_param=train_transform_param, batch_sampler=batch_sampler)
    else:
        net.data, net.label = libs.CreateAnnotatedDataLayer(
            test_data, batch_size=test_batch_size, train=False, output_label=True,
            label_map_file=label_map_file, transform_param=test_transform_param)
    libs.VGGNetBody(net, from_layer='data', fully_conv=True, reduced=True, dilated=False, dropout=False)
    add_conv6(net, use_batchnorm, lr_mult)
    arm_sources = add_transfer_blocks(net, arm_source_layers, normalizations, use_batchnorm, lr_mult)
    arm_loc, arm_conf, arm_priorbox, odm_loc, odm_conf = libs.CreateRefineDetHead(
        net, data_layer='data', from_layers=arm_sources, from_layers2=odm_source_layers,
        use_batchnorm=use_batchnorm, min_sizes=min_sizes, max_sizes=max_sizes, aspect_ratios=aspect_ratios,
        steps=steps, normalizations=[], num_classes=num_classes, share_location=share_location, flip=flip,
        clip=clip, prior_variance=prior_variance, kernel_size=3, pad=1, lr_mult=lr_mult)

    if train:
        arm_loss_param = dict(multibox_loss_param, num_classes=2)
        net.arm_loss = L.MultiBoxLoss(arm_loc, arm_conf, arm_priorbox, net.label,
                                      multibox_loss_param=arm_loss_param, loss_param=loss_param,
                                      include=dict(phase=caffe_pb2.Phase.Value('TRAIN')),
                                      propagate_down=[True, True, False, False])
        arm_scores = softmax_scores(net, "arm_conf", 2)
        # The ODM matches against the ARM-refined priors and skips easy negatives.
        net.odm_loss = L.MultiBoxLoss(odm_loc, odm_conf, arm_priorbox, net.label, arm_scores, arm_loc,
                                      multibox_loss_param=multibox_loss_param, loss_param=loss_param,
                                      include=dict(phase=caffe_pb2.Phase.Value('TRAIN')),
                                      propagate_down=[True, True, False, False, False, False])
    else:
        arm_scores = softmax_scores(net, "arm_conf", 2)
        odm_scores = softmax_scores(net, "odm_conf", num_classes)
        net.detection_out = L.DetectionOutput(odm_loc, odm_scores, arm_priorbox, arm_scores, arm_loc,
                                              detection_output_param=det_out_param,
                                              include=dict(phase=caffe_pb2.Phase.Value('TEST')))
        net.detection_eval = L.DetectionEvaluate(net.detection_out, net.label,
                                                 detection_evaluate_param=det_eval_param,
                                                 include=dict(phase=caffe_pb2.Phase.Value('TEST')))
    return net


# ---- Files ------------------------------------------------------------------------------------
jobs.check_inputs(train_data, test_data, label_map_file, pretrain_model)
jobs.make_dirs(save_dir, job_dir, snapshot_dir)

jobs.write_net(refinedet_net(train=True).to_proto(), train_net_file, "{}_train".format(model_name), copy_to=job_dir)
test_net = refinedet_net(train=False).to_proto()
jobs.write_net(test_net, test_net_file, "{}_test".format(model_name), copy_to=job_dir)
jobs.write_deploy(test_net, deploy_net_file, "{}_deploy".format(model_name),
                  [1, 3, resize_height, resize_width], copy_to=job_dir)
jobs.write_solver(solver_file, copy_to=job_dir, train_net=train_net_file, snapshot_prefix=snapshot_prefix,
                  **solver_param)

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
