"""Names that other Caffe forks give to layer types and fields protonet does not run, so that a
refusal can say which fork a file was written for. Facts from each fork's caffe.proto and its
registered layer types (NVIDIA/caffe, intel/caffe, Synopsys Caffe, eric612's YOLO/SSD forks,
hszhao/PSPNet, chuanqi305/ssd, lzx1413/CAFFE_SSD); protonet's own dialect fields are in the schema.
"""

# dialect -> message -> space-separated field names
_FIELDS = {
    'NVCaffe': {
        'ConvolutionParameter': 'conv_algos_override cudnn_convolution_algo_seeker',
        'LayerParameter': 'detectnet_augmentation_param detectnet_groundtruth_param trt_param',
        'PoolingParameter': 'torch_pooling',
    },
    'Intel Caffe': {
        'BatchNormParameter': 'bias_term filler relu stats_batch_size use_weight_bias',
        'ConvolutionParameter': 'coeff conv_algorithm fusion_type negative_slope relu',
        'InnerProductParameter': 'negative_slope relu',
        'LayerParameter': (
            'box_annotator_ohem_param eval_detection_param mn_activation_param mn_grad_compress_param '
            'multinode psroi_pooling_param region_loss_param reorg_param roi_pooling_param '
            'smooth_l1_loss_param spatial_dropout_param split_param'
        ),
        'NetParameter': 'bn_stats_batch_size compile_net_state multinode',
        'PoolingParameter': 'avg_include_pad axis kernel_size_3d pad_3d stride_3d',
        'ReLUParameter': 'fuse',
        'ReshapeParameter': 'pixelshuffler',
    },
    'Synopsys Caffe': {
        'BatchNormParameter': 'add_eps_before_sqrt icnet update_global_stats',
        'ConcatParameter': 'input_scale input_zero_point output_scale output_zero_point quantize_method saturate',
        'ConvolutionParameter': (
            'dis_mode gen_mode input_scale input_zero_point output_scale output_zero_point '
            'per_channel_scale_output per_channel_scale_weight quantize_method saturate shape_offset '
            'submanifold_sparse weight_fixed weight_scale weight_zero_point'
        ),
        'DetectionOutputParameter': (
            'arm_conf_no_concat arm_loc_no_concat max_classes_per_detection scale_xywh tflite_detection '
            'tflite_use_regular_nms'
        ),
        'EltwiseParameter': 'axis input_scale input_zero_point output_scale output_zero_point quantize_method saturate',
        'InnerProductParameter': (
            'dis_mode gen_mode input_scale input_zero_point output_scale output_zero_point '
            'quantize_method saturate weight_fixed weight_scale weight_zero_point'
        ),
        'InputParameter': 'output_scale output_zero_point',
        'LayerParameter': (
            'accum_param adaptive_bias_channel_param attention_param augmentation_param '
            'batch_to_space_nd_param bias_channel_param black_augmentation_param bn_param '
            'broadcast_to_param coeff_schedule_param corr1d_param correlation_param '
            'count_nonzero_param crop_and_resize_param dense_crf_param dense_image_data_param '
            'depth_to_space_param domain_transform_param downsample_param embedding_lookup_param '
            'embedding_lookup_sparse_param expand_dims_nd_param flow_warp_param gan_loss_param '
            'gather_nd_param gather_param gather_v2_param gemm_param hard_sigmoid_param l1_loss_param '
            'layer_norm_param log_softmax_param lp_normalization_param lpq_loss_param '
            'maskrcnn_detection_param maskrcnn_proposal_param mat_read_param mat_write_param '
            'matmul_param mean_param mirror_pad_param mul_param nms_gather_param nms_param '
            'non_max_suppression_param not_equal_param one_hot_param pad_param piece_param '
            'point_net_param pooling3d_param proposal_param pyramid_roi_align_param range_param '
            'reader_param reduce_all_param reduce_any_param reduce_l1_param reduce_l2_param '
            'reduce_logsumexp_param reduce_max_param reduce_mean_param reduce_min_param '
            'reduce_prod_param reduce_sum_param resample_param reshape_every_iter '
            'resize_nearest_neighbor_param reverse_param reverse_sequence_param rnn_v2_param '
            'roi_align_param scaled_tanh_param scatter_nd_param seg_accuracy_param selu_dropout_param '
            'selu_param space_to_batch_nd_param space_to_depth_param sparse_to_dense_param '
            'spatial_batching_pooling_param squeeze_convolution_param squeeze_inner_product_param '
            'squeeze_param stack_param strided_slice_param tensor2box_param thresholded_relu_param '
            'tile_nd_param topk_gather_param unique_label_param unstack_param upsample_darknet_param '
            'where4_gathernd_crop_param where4_gathernd_param where4_param writer_param xlu_param '
            'yolo_v2_loss_param yolo_v3_loss_param'
        ),
        'NormalizeParameter': 'add_eps_before_sqrt',
        'PoolingParameter': (
            'ceil_mode input_scale input_zero_point output_scale output_shift_instead_division '
            'output_zero_point quantize_method round_mode saturate'
        ),
        'ReLUParameter': 'input_scale input_zero_point maximum minimum output_scale output_zero_point saturate',
        'ScaleParameter': 'dis_mode gen_mode',
        'SoftmaxParameter': 'input_scale input_zero_point output_scale output_zero_point saturate',
    },
    'the YOLO/SSD forks (eric612)': {
        'LayerParameter': (
            'segmentation_evaluate_param yolo_detection_output_param yolo_seg_param '
            'yolov3_detection_output_param yolov3_param'
        ),
    },
    'chuanqi305/ssd': {
        'PriorBoxParameter': 'reduce_boxes',
    },
    'FSSD (lzx1413/CAFFE_SSD)': {
        'LayerParameter': 'focal_loss_param',
    },
}

# dialect -> space-separated layer types
_TYPES = {
    "BVLC Caffe": ("BatchReindex ContrastiveLoss Embed Filter Im2col InfogainLoss LSTM LSTMUnit MemoryData RNN "
                   "WindowData"),
    "the SSD fork": "SmoothL1Loss",
    "NVCaffe": "TRT L1Loss DetectNetTransformation",
    "Intel Caffe": ("BoxAnnotatorOHEM BoxData EvalDetection MKLBatchNorm MnActivation PSROIPooling ROIPooling "
                    "SmoothL1LossOHEM SoftmaxWithLossOHEM SpatialDropout"),
    "Synopsys Caffe": ("Add BroadcastTo Ceil CropAndResize DepthToSpace Div Floor Gather HardSigmoid HardSwish LogSoftmax "
                       "MatMul Mean Mul Pad Pow ResizeNearestNeighbor SSDDecoder SSDSort Shape "
                       "SpaceToDepth Squeeze StridedSlice Sub"),
    "the YOLO/SSD forks (eric612)": ("AssistedExcitation GaussianYolov3 LaneData Reorg RegionLoss SegmentationEvaluate "
                                     "YoloDetectionOutput YoloSeg Yolov3 Yolov3DetectionOutput"),
    "PSPNet": "BN BiasChannel DenseCRF ImageSegData SegAccuracy SpatialProduct",
    "FSSD (lzx1413/CAFFE_SSD)": "FocalLoss",
    "the MobileNet-SSD focal-loss ports": "MultiBoxFocalLoss",
}


def foreign_field(message_name, field_name):
    """The fork that has `field_name` in `message_name` (e.g. "DetectionOutputParameter"), or None."""
    for dialect, messages in _FIELDS.items():
        if field_name in messages.get(message_name, "").split():
            return dialect
    return None


def foreign_type(type_name):
    """The fork that registers layer type `type_name`, or None."""
    return next((d for d, names in _TYPES.items() if type_name in names.split()), None)
